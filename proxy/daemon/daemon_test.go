package daemon

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/conntrack"
	conntracktest "github.com/svcproxy/svcproxy/proxy/conntrack/testing"
	"github.com/svcproxy/svcproxy/proxy/healthz"
	"github.com/svcproxy/svcproxy/proxy/metrics"
	"github.com/svcproxy/svcproxy/proxy/proxytest"
)

// fakeBackend keeps what it was asked to program, like a kernel would: the
// endpoints of every service port as of the last successful Sync. fail,
// when set, decides per call whether that Sync fails (and then nothing of
// it is kept).
type fakeBackend struct {
	mu      sync.Mutex
	calls   []bool // full flag of every call
	state   map[string][]string
	fail    func(call int) error
	cleaned bool
	// families, when set, are reported per family (SyncResult.ByFamily),
	// as a dual-stack backend does.
	families []v1.IPFamily
	// staleIn, when set, is the family whose stale chains cannot be
	// deleted (SyncResult.StaleErr of that family).
	staleIn v1.IPFamily
}

func (b *fakeBackend) Sync(_ context.Context, snap *proxy.Snapshot, full bool) (proxy.SyncResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, full)
	if b.fail != nil {
		if err := b.fail(len(b.calls)); err != nil {
			return proxy.SyncResult{Full: full}, err
		}
	}
	state := map[string][]string{}
	for _, sp := range snap.ServicePorts() {
		var eps []string
		for _, ep := range sp.ClusterEndpoints {
			eps = append(eps, ep.String())
		}
		state[sp.Name.String()] = eps
	}
	b.state = state
	res := proxy.SyncResult{Full: full, Rules: map[string]int{"nat": len(state)}}
	if len(b.families) > 0 {
		var out proxy.SyncResult
		for _, f := range b.families {
			fr := res
			if f == b.staleIn {
				fr.StaleErr = errors.New("chain SVCP-SVC-X: Device or resource busy")
			}
			out.Add(f, fr)
		}
		return out, nil
	}
	return res, nil
}

func (b *fakeBackend) Cleanup(context.Context) error { b.cleaned = true; return nil }

// snapshot returns the calls so far and the programmed state.
func (b *fakeBackend) snapshot() ([]bool, map[string][]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls), b.state
}

// fakeSource delivers objects to the daemon's handler: the initial ones
// before it reports synced, later ones through send.
type fakeSource struct {
	initial []any
	mu      sync.Mutex
	h       proxy.Handler
}

func (s *fakeSource) Run(ctx context.Context, synced func()) error {
	s.mu.Lock()
	for _, o := range s.initial {
		deliver(s.h, o)
	}
	s.mu.Unlock()
	synced()
	<-ctx.Done()
	return nil
}

func (s *fakeSource) send(old, cur any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch c := cur.(type) {
	case *v1.Service:
		o, _ := old.(*v1.Service)
		s.h.OnServiceUpdate(o, c)
	case *discovery.EndpointSlice:
		o, _ := old.(*discovery.EndpointSlice)
		s.h.OnEndpointSliceUpdate(o, c)
	}
}

func deliver(h proxy.Handler, o any) {
	switch o := o.(type) {
	case *v1.Service:
		h.OnServiceUpdate(nil, o)
	case *discovery.EndpointSlice:
		h.OnEndpointSliceUpdate(nil, o)
	}
}

// fakeConntrack is a conntrack table: the entries put in it stay until a
// cleanup judges them stale.
type fakeConntrack = conntracktest.Fake

// Flows of a client pod to the dns service (udpService), DNATed to one
// endpoint each, and one never DNATed.
var (
	flowTo5  = conntracktest.DNATed(v1.ProtocolUDP, "10.244.1.20:40000", "10.96.0.10:53", "10.244.2.5:53")
	flowTo6  = conntracktest.DNATed(v1.ProtocolUDP, "10.244.1.20:40001", "10.96.0.10:53", "10.244.2.6:53")
	flowTo9  = conntracktest.DNATed(v1.ProtocolUDP, "10.244.1.20:40002", "10.96.0.10:53", "10.244.2.9:53")
	flowNone = conntracktest.Direct(v1.ProtocolUDP, "10.244.1.20:40003", "10.96.0.10:53")
)

// fakeLeftovers counts its calls and fails the first failures of them;
// backend, when set, must have synced successfully before the first call.
type fakeLeftovers struct {
	mu       sync.Mutex
	calls    int
	failures int
	backend  *fakeBackend
	early    bool // called before the backend held any state
}

func (l *fakeLeftovers) Name() string { return "fake leftovers" }

func (l *fakeLeftovers) Remove(context.Context) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.backend != nil {
		if _, state := l.backend.snapshot(); state == nil {
			l.early = true
		}
	}
	l.calls++
	if l.calls <= l.failures {
		return 0, errors.New("foreign reference")
	}
	return 3, nil
}

func (l *fakeLeftovers) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls
}

// udpService is ns/dns at 10.96.0.10:53/UDP with endpoints eps.
func udpService(eps ...string) (*v1.Service, *discovery.EndpointSlice) {
	svc := proxytest.Service("kube-system", "dns", "10.96.0.10", "dns", 53, func(s *v1.Service) {
		s.Spec.Ports[0].Protocol = v1.ProtocolUDP
	})
	var ready []proxytest.EP
	for _, ip := range eps {
		ready = append(ready, proxytest.Ready(ip, "node2"))
	}
	slice := proxytest.Slice("kube-system", "dns", "dns-1", "dns", 53, ready...)
	slice.Ports[0].Protocol = new(v1.ProtocolUDP)
	return svc, slice
}

// start runs a daemon over the fakes until the test ends.
func start(t *testing.T, cfg Config) *Daemon {
	t.Helper()
	if cfg.NodeName == "" {
		cfg.NodeName = "node1"
	}
	if cfg.SyncPeriod == 0 {
		cfg.SyncPeriod = time.Hour
	}
	if cfg.MinSyncPeriod == 0 {
		cfg.MinSyncPeriod = time.Millisecond
	}
	d := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d
}

// eventually polls cond for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func sourceFor(src *fakeSource) func(proxy.Handler, func(error)) (Source, error) {
	return func(h proxy.Handler, _ func(error)) (Source, error) {
		src.h = h
		return src, nil
	}
}

const dnsPort = "kube-system/dns:dns/UDP"

func TestFirstSyncIsFullThenChangesArePartial(t *testing.T) {
	svc, slice := udpService("10.244.2.5")
	be := &fakeBackend{}
	src := &fakeSource{initial: []any{svc, slice}}
	start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: &fakeConntrack{}})

	eventually(t, "the first sync", func() bool { _, st := be.snapshot(); return st != nil })
	calls, state := be.snapshot()
	if !calls[0] {
		t.Errorf("first sync was partial, want full")
	}
	if got := state[dnsPort]; !slices.Equal(got, []string{"10.244.2.5:53"}) {
		t.Errorf("programmed endpoints %v, want [10.244.2.5:53]", got)
	}

	_, slice2 := udpService("10.244.2.5", "10.244.2.6")
	src.send(slice, slice2)
	eventually(t, "the change", func() bool { _, st := be.snapshot(); return len(st[dnsPort]) == 2 })
	calls, _ = be.snapshot()
	if calls[len(calls)-1] {
		t.Errorf("the sync of one change was full, want partial; calls %v", calls)
	}
}

func TestFailedSyncIsRetriedFullWithItsChangesAndConntrack(t *testing.T) {
	svc, slice := udpService("10.244.2.5", "10.244.2.6")
	be := &fakeBackend{}
	ct := conntracktest.NewFake(nil, flowTo5, flowTo6)
	src := &fakeSource{initial: []any{svc, slice}}
	var failOnce sync.Once
	d := start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: ct})
	eventually(t, "the first sync", func() bool { _, st := be.snapshot(); return st != nil })

	// The next sync fails (an iptables-restore failure); the one after
	// succeeds.
	be.mu.Lock()
	be.fail = func(call int) error {
		var err error
		failOnce.Do(func() { err = &proxy.RestoreError{Err: errors.New("iptables-restore: exit status 2")} })
		return err
	}
	be.mu.Unlock()
	_, slice2 := udpService("10.244.2.5")
	src.send(slice, slice2)

	eventually(t, "the retry", func() bool { _, st := be.snapshot(); return len(st[dnsPort]) == 1 })
	calls, _ := be.snapshot()
	if n := len(calls); n < 3 || calls[n-2] || !calls[n-1] {
		t.Errorf("calls (full?) %v: want a partial sync that failed, then a full retry", calls)
	}
	// The endpoint removed in the failed sync still gets its UDP flows
	// deleted, once the retry is in; the other endpoint's stay.
	eventually(t, "conntrack cleanup", func() bool { return !slices.Contains(ct.Entries(), flowTo6) })
	if !slices.Contains(ct.Entries(), flowTo5) {
		t.Errorf("the flow to the remaining endpoint was deleted; deleted %v", ct.Deleted())
	}
	if got := testutil.ToFloat64(d.metrics.IPTablesRestoreFailuresTotal.WithLabelValues(metrics.IPFamily)); got != 1 {
		t.Errorf("restore failures %v, want 1", got)
	}
	if got := testutil.ToFloat64(d.metrics.SyncFailuresTotal.WithLabelValues(metrics.IPFamily)); got != 1 {
		t.Errorf("sync failures %v, want 1", got)
	}
}

func TestNoConntrackCleanupForAFailedSync(t *testing.T) {
	svc, slice := udpService("10.244.2.5", "10.244.2.6")
	be := &fakeBackend{}
	ct := conntracktest.NewFake(nil, flowTo5, flowTo6)
	src := &fakeSource{initial: []any{svc, slice}}
	start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: ct, MinSyncPeriod: time.Millisecond, SyncPeriod: time.Hour})
	eventually(t, "the first sync", func() bool { _, st := be.snapshot(); return st != nil })

	be.mu.Lock()
	be.fail = func(int) error { return errors.New("netlink: operation not permitted") }
	be.mu.Unlock()
	_, slice2 := udpService("10.244.2.5")
	src.send(slice, slice2)
	eventually(t, "two failed syncs", func() bool {
		calls, _ := be.snapshot()
		return len(calls) >= 3
	})
	if got := ct.Deleted(); len(got) != 0 {
		t.Errorf("conntrack entries deleted while the rules still DNAT to the old endpoint: %v", got)
	}
}

// A restart (the first sync) judges every entry against the rules: flows
// whose endpoint is still there keep their entry, and so their endpoint;
// one DNATed to an endpoint that went while svcproxy was down, and one never
// DNATed, go (kubernetes #122740: kube-proxy deletes them all).
func TestFirstSyncKeepsValidConntrackEntries(t *testing.T) {
	svc, slice := udpService("10.244.2.5", "10.244.2.6")
	be := &fakeBackend{}
	ct := conntracktest.NewFake(nil, flowTo5, flowTo6, flowTo9, flowNone)
	src := &fakeSource{initial: []any{svc, slice}}
	start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: ct})
	eventually(t, "the first cleanup", func() bool { return ct.Deletes() > 0 })
	if got, want := ct.Entries(), []conntrack.Entry{flowTo5, flowTo6}; !slices.Equal(got, want) {
		t.Errorf("entries left %v, want %v", got, want)
	}
	if got, want := ct.Deleted(), []conntrack.Entry{flowTo9, flowNone}; !slices.Equal(got, want) {
		t.Errorf("entries deleted %v, want %v", got, want)
	}

	// A later change is judged by its changes: only the removed
	// endpoint's flow goes.
	_, slice2 := udpService("10.244.2.5")
	src.send(slice, slice2)
	eventually(t, "the removed endpoint's flow deleted", func() bool { return !slices.Contains(ct.Entries(), flowTo6) })
	if got, want := ct.Entries(), []conntrack.Entry{flowTo5}; !slices.Equal(got, want) {
		t.Errorf("entries left %v, want %v", got, want)
	}
}

func TestNonRestoreFailureIsNotARestoreFailure(t *testing.T) {
	svc, slice := udpService("10.244.2.5")
	be := &fakeBackend{fail: func(call int) error {
		if call == 1 {
			return errors.New("netlink: no such file or directory")
		}
		return nil
	}}
	src := &fakeSource{initial: []any{svc, slice}}
	d := start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: &fakeConntrack{}})
	eventually(t, "the retry", func() bool { _, st := be.snapshot(); return st != nil })
	if got := testutil.ToFloat64(d.metrics.IPTablesRestoreFailuresTotal.WithLabelValues(metrics.IPFamily)); got != 0 {
		t.Errorf("restore failures %v, want 0 for a netlink failure", got)
	}
	if got := testutil.ToFloat64(d.metrics.SyncFailuresTotal.WithLabelValues(metrics.IPFamily)); got != 1 {
		t.Errorf("sync failures %v, want 1", got)
	}
}

func TestLeftoversGoAfterOurRulesAndAreRetriedUntilRemoved(t *testing.T) {
	svc, slice := udpService("10.244.2.5")
	be := &fakeBackend{}
	src := &fakeSource{initial: []any{svc, slice}}
	flaky := &fakeLeftovers{failures: 1, backend: be}
	steady := &fakeLeftovers{backend: be}
	start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: &fakeConntrack{},
		Leftovers: []proxy.Leftovers{flaky, steady}})

	eventually(t, "the first removal", func() bool { return flaky.count() == 1 && steady.count() == 1 })
	if flaky.early || steady.early {
		t.Errorf("leftovers removed before our first sync was in")
	}
	// The failed one is retried after the next sync; the other is done.
	_, slice2 := udpService("10.244.2.5", "10.244.2.6")
	src.send(slice, slice2)
	eventually(t, "the retry", func() bool { return flaky.count() == 2 })
	_, slice3 := udpService("10.244.2.7")
	src.send(slice2, slice3)
	eventually(t, "a third sync", func() bool { _, st := be.snapshot(); return slices.Equal(st[dnsPort], []string{"10.244.2.7:53"}) })
	if flaky.count() != 2 || steady.count() != 1 {
		t.Errorf("removers called %d and %d times, want 2 and 1 (each until it succeeded once)", flaky.count(), steady.count())
	}
}

func TestSourceThatFailsBeforeSyncingStopsRun(t *testing.T) {
	d := New(Config{NodeName: "node1", Backend: &fakeBackend{}, SyncPeriod: time.Hour,
		NewSource: func(proxy.Handler, func(error)) (Source, error) { return failingSource{}, nil }})
	err := d.Run(context.Background())
	if err == nil || err.Error() != "informers: forbidden" {
		t.Errorf("Run: %v, want the source's error", err)
	}
}

type failingSource struct{}

func (failingSource) Run(context.Context, func()) error { return errors.New("informers: forbidden") }

// driftingBackend is a fakeBackend whose rules an outside agent can remove:
// drifted stays true until the next full sync puts them back.
type driftingBackend struct {
	fakeBackend
	dmu     sync.Mutex
	drifted bool
	checks  int
}

func (b *driftingBackend) Sync(ctx context.Context, snap *proxy.Snapshot, full bool) (proxy.SyncResult, error) {
	res, err := b.fakeBackend.Sync(ctx, snap, full)
	if err == nil && full {
		b.dmu.Lock()
		b.drifted = false
		b.dmu.Unlock()
	}
	return res, err
}

func (b *driftingBackend) CheckDrift(context.Context) (string, error) {
	b.dmu.Lock()
	defer b.dmu.Unlock()
	b.checks++
	if b.drifted {
		return "nat table flushed", nil
	}
	return "", nil
}

func (b *driftingBackend) flush() {
	b.dmu.Lock()
	defer b.dmu.Unlock()
	b.drifted = true
}

func (b *driftingBackend) isDrifted() (bool, int) {
	b.dmu.Lock()
	defer b.dmu.Unlock()
	return b.drifted, b.checks
}

// TestSyncMetricsPerFamily: with a dual-stack backend, every sync's
// duration, timestamp and network programming latency are recorded under
// both ip_family labels, as kube-proxy's two proxiers would.
func TestSyncMetricsPerFamily(t *testing.T) {
	svc, slice := udpService("10.244.2.5")
	be := &fakeBackend{families: []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}}
	src := &fakeSource{initial: []any{svc, slice}}
	d := start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: &fakeConntrack{}})
	eventually(t, "the first sync", func() bool { _, st := be.snapshot(); return st != nil })
	// A histogram series exists once observed: one per family.
	eventually(t, "a sync duration of each family", func() bool {
		return testutil.CollectAndCount(d.metrics.SyncProxyRulesLatency) == 2 && testutil.CollectAndCount(d.metrics.NetworkProgrammingLatency) == 2
	})
	for _, family := range []string{"IPv4", "IPv6"} {
		if testutil.ToFloat64(d.metrics.SyncProxyRulesLastTimestamp.WithLabelValues(family)) == 0 {
			t.Errorf("no last-sync timestamp for %s", family)
		}
	}
}

// A stale chain that cannot go in one family is counted under that
// family's ip_family label only.
func TestStaleDeletionFailureCountedInItsFamily(t *testing.T) {
	svc, slice := udpService("10.244.2.5")
	be := &fakeBackend{families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, staleIn: v1.IPv4Protocol}
	src := &fakeSource{initial: []any{svc, slice}}
	d := start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: &fakeConntrack{}})
	eventually(t, "the failure counted", func() bool {
		return testutil.ToFloat64(d.metrics.StaleDeletionFailuresTotal.WithLabelValues("IPv4")) > 0
	})
	if n := testutil.ToFloat64(d.metrics.StaleDeletionFailuresTotal.WithLabelValues("IPv6")); n != 0 {
		t.Errorf("IPv6 counted %v failures; only IPv4's deletion failed", n)
	}
}

func TestDriftIsRepairedByAFullSync(t *testing.T) {
	svc, slice := udpService("10.244.2.5")
	be := &driftingBackend{}
	src := &fakeSource{initial: []any{svc, slice}}
	d := start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: &fakeConntrack{}, DriftInterval: 5 * time.Millisecond})
	eventually(t, "the first sync", func() bool { _, st := be.snapshot(); return st != nil })
	eventually(t, "a clean check", func() bool { _, n := be.isDrifted(); return n > 0 })
	calls, _ := be.snapshot()

	be.flush()
	eventually(t, "the repair", func() bool { drifted, _ := be.isDrifted(); return !drifted })
	after, _ := be.snapshot()
	if len(after) <= len(calls) || !after[len(after)-1] {
		t.Errorf("calls (full?) before %v, after %v: want a full sync after the drift", calls, after)
	}
	if got := testutil.ToFloat64(d.metrics.DriftDetectedTotal.WithLabelValues(metrics.IPFamily)); got < 1 {
		t.Errorf("drift detections %v, want at least 1", got)
	}
}

// blockingLeftovers blocks in Remove until released.
type blockingLeftovers struct {
	started, release chan struct{}
}

func (l *blockingLeftovers) Name() string { return "slow leftovers" }

func (l *blockingLeftovers) Remove(ctx context.Context) (int, error) {
	close(l.started)
	select {
	case <-l.release:
	case <-ctx.Done():
	}
	return 1, nil
}

// Removing another data plane's rules takes seconds on a big node; changes
// arriving meanwhile are applied all the same.
func TestLeftoversDoNotHoldBackSyncs(t *testing.T) {
	svc, slice := udpService("10.244.2.5")
	be := &fakeBackend{}
	src := &fakeSource{initial: []any{svc, slice}}
	slow := &blockingLeftovers{started: make(chan struct{}), release: make(chan struct{})}
	defer close(slow.release)
	start(t, Config{Backend: be, NewSource: sourceFor(src), Conntrack: &fakeConntrack{}, Leftovers: []proxy.Leftovers{slow}})
	select {
	case <-slow.started:
	case <-time.After(5 * time.Second):
		t.Fatal("leftovers never removed")
	}
	_, slice2 := udpService("10.244.2.5", "10.244.2.6")
	src.send(slice, slice2)
	eventually(t, "the change applied while the leftovers are being removed", func() bool {
		_, st := be.snapshot()
		return len(st[dnsPort]) == 2
	})
}

// Drift found while a partial sync waited for the lock: that sync is full.
func TestSyncAfterDriftIsFull(t *testing.T) {
	be := &fakeBackend{}
	d := New(Config{NodeName: "node1", Backend: be, SyncPeriod: time.Hour, Conntrack: &fakeConntrack{}})
	d.services = healthz.NewServiceServer(healthz.ServiceConfig{})
	defer d.services.Close()
	ctx := context.Background()
	if err := d.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := d.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	d.runner.RequestFull()
	if err := d.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := d.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	calls, _ := be.snapshot()
	if want := []bool{true, false, true, false}; !slices.Equal(calls, want) {
		t.Errorf("syncs (full?) %v, want %v: the sync after RequestFull must be full, once", calls, want)
	}
}
