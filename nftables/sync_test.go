package nftables

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

var ctx = context.Background()

// cluster is a tracker fed with objects, and a Syncer over a strict fake,
// as the Backend drives them: the Renderer's cache makes unchanged ports
// the same fragments from one sync to the next.
type cluster struct {
	t        *testing.T
	tr       *proxy.Tracker
	fake     *strictFake
	syncer   *Syncer
	renderer *Renderer
	clock    *clock
	objs     map[string]any // by kind/ns/name, for updates
}

func newCluster(t *testing.T, objs ...any) *cluster {
	c := &cluster{t: t, tr: proxy.NewTracker("node1", nil, nil), fake: newStrictFake(t, knftables.IPv4Family),
		renderer: NewRenderer(testOptions()), clock: newClock(), objs: map[string]any{}}
	c.syncer = NewSyncer(c.fake, c.fake.lister())
	c.syncer.SetClock(c.clock.now)
	for _, o := range objs {
		c.set(o)
	}
	return c
}

func key(o any) string {
	switch o := o.(type) {
	case *v1.Service:
		return "svc/" + o.Namespace + "/" + o.Name
	case *discovery.EndpointSlice:
		return "slice/" + o.Namespace + "/" + o.Name
	}
	panic(fmt.Sprintf("%T", o))
}

// set adds or replaces an object.
func (c *cluster) set(o any) {
	old := c.objs[key(o)]
	c.objs[key(o)] = o
	switch o := o.(type) {
	case *v1.Service:
		prev, _ := old.(*v1.Service)
		c.tr.OnServiceUpdate(prev, o)
	case *discovery.EndpointSlice:
		prev, _ := old.(*discovery.EndpointSlice)
		c.tr.OnEndpointSliceUpdate(prev, o)
	}
}

// remove deletes an object.
func (c *cluster) remove(o any) {
	old := c.objs[key(o)]
	delete(c.objs, key(o))
	switch old := old.(type) {
	case *v1.Service:
		c.tr.OnServiceUpdate(old, nil)
	case *discovery.EndpointSlice:
		c.tr.OnEndpointSliceUpdate(old, nil)
	}
}

func (c *cluster) snapshot() *proxy.Snapshot {
	snap, _ := c.tr.Snapshot()
	return snap
}

// sync syncs and fails the test on an error or a transaction the kernel
// would refuse.
func (c *cluster) sync(full bool) SyncResult {
	c.t.Helper()
	res, err := c.syncer.Sync(ctx, c.renderer.Render(c.snapshot()), full)
	if err != nil {
		c.t.Fatalf("Sync(full=%v): %v", full, err)
	}
	c.fake.noViolations(c.t)
	return res
}

// lastTx returns the last transaction the Syncer ran, sorted lines.
func (c *cluster) lastTx() string {
	c.t.Helper()
	if len(c.fake.runs) == 0 {
		return ""
	}
	return c.fake.runs[len(c.fake.runs)-1]
}

// fresh returns what a full sync of the current state gives in an empty
// table: the state every sequence of partial syncs must reach.
func (c *cluster) fresh() string {
	c.t.Helper()
	f := newStrictFake(c.t, knftables.IPv4Family)
	if _, err := NewSyncer(f, f.lister()).Sync(ctx, Render(c.snapshot(), testOptions()), true); err != nil {
		c.t.Fatal(err)
	}
	return f.canonical()
}

// equalsFresh fails unless the fake holds what a fresh full sync gives,
// once stale chains had time to go.
func (c *cluster) equalsFresh() {
	c.t.Helper()
	c.clock.advance(StaleChainDelay)
	if _, err := c.syncer.Sync(ctx, c.renderer.Render(c.snapshot()), false); err != nil {
		c.t.Fatal(err)
	}
	if d := cmp.Diff(withoutClients(c.fresh()), withoutClients(c.fake.canonical())); d != "" {
		c.t.Errorf("table after partial syncs differs from a fresh full sync (-fresh +got):\n%s", d)
	}
}

// withoutClients drops from a canonical dump what the kernel adds and a
// full sync keeps: the clients in affinity sets, and the table's comment
// (given only when the table is created).
func withoutClients(dump string) string {
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(l, "add element ip svcproxy "+affinityPrefix), strings.HasPrefix(l, "add element ip6 svcproxy "+affinityPrefix):
		case strings.HasPrefix(l, "add table "):
			out = append(out, strings.Join(strings.Fields(l)[:4], " "))
		default:
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func web(mods ...func(*v1.Service)) *v1.Service {
	return pt.Service("ns", "web", "10.96.0.20", "http", 80, mods...)
}

func webSlice(eps ...pt.EP) *discovery.EndpointSlice {
	return pt.Slice("ns", "web", "web-1", "http", 8080, eps...)
}

func nodePort(port int32) func(*v1.Service) {
	return func(s *v1.Service) {
		if s.Spec.Type == v1.ServiceTypeClusterIP || s.Spec.Type == "" {
			s.Spec.Type = v1.ServiceTypeNodePort
		}
		s.Spec.Ports[0].NodePort = port
	}
}

func affinity(seconds int32) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(seconds)}}
	}
}

// TestPartialSyncSendsOnlyTheDelta: one endpoint more rewrites the one
// chain of the port and nothing else: no element, no other chain, no
// listing.
func TestPartialSyncSendsOnlyTheDelta(t *testing.T) {
	svcs, slices := pt.Generate(50, 3)
	var objs []any
	for i := range svcs {
		objs = append(objs, svcs[i], slices[i])
	}
	c := newCluster(t, objs...)
	if res := c.sync(true); !res.Full || res.Transactions != 1 {
		t.Fatalf("first sync: %+v, want one full transaction", res)
	}
	cur := slices[7].DeepCopy()
	cur.Endpoints = append(cur.Endpoints, cur.Endpoints[0])
	cur.Endpoints[3].Addresses = []string{"10.244.200.1"}
	c.set(cur)
	res := c.sync(false)
	name := "svc-" + slices[7].Namespace + "/" + svcs[7].Name + "/http/tcp"
	want := "flush chain ip svcproxy " + name + "\n" +
		"add rule ip svcproxy " + name + " ip daddr " + svcs[7].Spec.ClusterIP + " ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000\n"
	for i, ep := range []string{slices[7].Endpoints[0].Addresses[0], slices[7].Endpoints[1].Addresses[0], slices[7].Endpoints[2].Addresses[0], "10.244.200.1"} {
		r := "meta l4proto tcp dnat to " + ep + ":8080"
		if i < 3 {
			r = fmt.Sprintf("numgen random mod %d == 0 ", 4-i) + r
		}
		want += "add rule ip svcproxy " + name + " " + r + "\n"
	}
	if d := cmp.Diff(want, c.lastTx()); d != "" {
		t.Errorf("partial transaction (-want +got):\n%s", d)
	}
	if res.Full || res.ChainsWritten != 1 || res.ElementsWritten != 0 || res.Transactions != 1 || res.Operations != 6 {
		t.Errorf("result %+v, want one chain of 6 operations", res)
	}
	c.equalsFresh()
}

// TestPartialSyncNoChange sends nothing at all.
func TestPartialSyncNoChange(t *testing.T) {
	c := newCluster(t, web(), webSlice(pt.Ready("10.244.1.2", "node1")))
	c.sync(true)
	runs := len(c.fake.runs)
	if res := c.sync(false); res.Transactions != 0 || res.Operations != 0 || len(c.fake.runs) != runs {
		t.Errorf("a sync without change ran %d transactions (%+v)", len(c.fake.runs)-runs, res)
	}
}

// TestPartialSyncServiceLifecycle: a service appears (chains and
// elements added), gains a NodePort (elements), loses its endpoints
// (REJECT instead of DNAT: elements move from map to map, the chains go
// stale) and disappears; the stale chains are deleted in a transaction of
// their own once StaleChainDelay has passed. After each step the table is
// what a fresh full sync gives.
func TestPartialSyncServiceLifecycle(t *testing.T) {
	c := newCluster(t, pt.Service("ns", "other", "10.96.0.30", "http", 80), pt.Slice("ns", "other", "o-1", "http", 80, pt.Ready("10.244.2.9", "node2")))
	c.sync(true)

	c.set(web())
	c.set(webSlice(pt.Ready("10.244.1.2", "node1")))
	c.sync(false)
	for _, want := range []string{
		"add chain ip svcproxy svc-ns/web/http/tcp",
		"add element ip svcproxy service-ips { 10.96.0.20 . tcp . 80 : goto svc-ns/web/http/tcp }",
		"add element ip svcproxy hairpin { 10.244.1.2 . 10.244.1.2 }",
	} {
		if !strings.Contains(c.lastTx(), want+"\n") {
			t.Errorf("adding a service: transaction lacks %q:\n%s", want, c.lastTx())
		}
	}
	if strings.Contains(c.lastTx(), "other") {
		t.Errorf("adding a service touched another one:\n%s", c.lastTx())
	}
	c.equalsFresh()

	c.set(web(nodePort(30080)))
	c.sync(false)
	if !strings.Contains(c.lastTx(), "add element ip svcproxy service-nodeports { tcp . 30080 : goto ext-ns/web/http/tcp }") {
		t.Errorf("NodePort added: %s", c.lastTx())
	}
	c.equalsFresh()

	c.set(webSlice())
	res := c.sync(false)
	tx := c.lastTx()
	for _, want := range []string{
		"flush chain ip svcproxy svc-ns/web/http/tcp",
		"flush chain ip svcproxy ext-ns/web/http/tcp",
		"delete element ip svcproxy service-ips { 10.96.0.20 . tcp . 80 }",
		"delete element ip svcproxy service-nodeports { tcp . 30080 }",
		"delete element ip svcproxy hairpin { 10.244.1.2 . 10.244.1.2 }",
		"add element ip svcproxy no-endpoint-services { 10.96.0.20 . tcp . 80 : goto reject-chain }",
		"add element ip svcproxy no-endpoint-nodeports { tcp . 30080 : goto reject-chain }",
	} {
		if !strings.Contains(tx, want+"\n") {
			t.Errorf("losing the endpoints: transaction lacks %q:\n%s", want, tx)
		}
	}
	if strings.Contains(tx, "delete chain") || res.ChainsDeleted != 0 {
		t.Errorf("stale chains deleted in the same transaction (kernels before 6.2 refuse): %s", tx)
	}
	// Before StaleChainDelay: the chains stay (flushed).
	c.clock.advance(StaleChainDelay / 2)
	if res := c.sync(false); res.ChainsDeleted != 0 || res.Transactions != 0 {
		t.Errorf("stale chains deleted too early: %+v", res)
	}
	c.clock.advance(StaleChainDelay / 2)
	res = c.sync(false)
	if res.ChainsDeleted != 2 || res.Transactions != 1 || res.StaleErr != nil {
		t.Errorf("stale chains: %+v, want 2 deleted in one transaction", res)
	}
	if want := "add chain ip svcproxy ext-ns/web/http/tcp\ndelete chain ip svcproxy ext-ns/web/http/tcp\n" +
		"add chain ip svcproxy svc-ns/web/http/tcp\ndelete chain ip svcproxy svc-ns/web/http/tcp\n"; c.lastTx() != want {
		t.Errorf("stale deletion transaction:\n%s\nwant\n%s", c.lastTx(), want)
	}
	c.equalsFresh()

	c.remove(web())
	c.remove(webSlice())
	c.sync(false)
	if want := "delete element ip svcproxy no-endpoint-services { 10.96.0.20 . tcp . 80 }\ndelete element ip svcproxy no-endpoint-nodeports { tcp . 30080 }\n"; c.lastTx() != want {
		t.Errorf("removing the service: %s", c.lastTx())
	}
	c.equalsFresh()
}

// TestPartialSyncChainComesBackBeforeItsDeletion: a chain that goes stale
// and is needed again before StaleChainDelay is rewritten, not deleted.
func TestPartialSyncChainComesBackBeforeItsDeletion(t *testing.T) {
	c := newCluster(t, web(), webSlice(pt.Ready("10.244.1.2", "node1")))
	c.sync(true)
	c.set(webSlice())
	c.sync(false)
	c.set(webSlice(pt.Ready("10.244.1.3", "node1")))
	c.sync(false)
	c.clock.advance(2 * StaleChainDelay)
	if res := c.sync(false); res.ChainsDeleted != 0 {
		t.Errorf("a chain in use was deleted: %+v", res)
	}
	c.equalsFresh()
}

// TestAffinityPartialSync: endpoints of a ClientIP service come with a
// chain and an affinity set each; a removed endpoint's set goes at once
// (no rule refers to it after the transaction), its chain after
// StaleChainDelay; clients recorded in the remaining sets stay.
func TestAffinityPartialSync(t *testing.T) {
	c := newCluster(t, web(affinity(300)), webSlice(pt.Ready("10.244.1.2", "node1"), pt.Ready("10.244.2.2", "node2")))
	c.sync(true)
	set1 := "aff-ns/web/http/tcp/10.244.1.2/8080/300"
	set2 := "aff-ns/web/http/tcp/10.244.2.2/8080/300"
	// A client the kernel recorded.
	tx := c.fake.NewTransaction()
	tx.Add(&knftables.Element{Set: set1, Key: []string{"10.244.9.9"}})
	if err := c.fake.Fake.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	c.set(webSlice(pt.Ready("10.244.1.2", "node1")))
	c.sync(false)
	if !strings.Contains(c.lastTx(), "delete set ip svcproxy "+set2+"\n") || !strings.Contains(c.lastTx(), "flush chain ip svcproxy ep-ns/web/http/tcp/10.244.2.2/8080\n") {
		t.Errorf("endpoint removed: %s", c.lastTx())
	}
	if c.fake.Table.Sets[set1].FindElement("10.244.9.9") == nil {
		t.Errorf("the remaining endpoint's affinity set lost its client")
	}
	c.sync(true)
	if c.fake.Table.Sets[set1].FindElement("10.244.9.9") == nil {
		t.Errorf("a full sync emptied an affinity set")
	}
	// A new timeout is a new set (a set's timeout cannot change in place).
	c.set(web(affinity(60)))
	c.sync(false)
	if c.fake.Table.Sets["aff-ns/web/http/tcp/10.244.1.2/8080/60"] == nil || c.fake.Table.Sets[set1] != nil {
		t.Errorf("timeout changed: sets %v", keys(c.fake.Table.Sets))
	}
	c.equalsFresh()
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestFailedTransactionIsRetriedFull: a failed transaction changes
// nothing, the Syncer forgets what it knew, and the next sync is full
// (whatever the caller asks) and converges.
func TestFailedTransactionIsRetriedFull(t *testing.T) {
	c := newCluster(t, web(), webSlice(pt.Ready("10.244.1.2", "node1")))
	c.sync(true)
	c.fake.fail = func(*knftables.Transaction) error {
		return errors.New("nft: Could not process rule: Cannot allocate memory")
	}
	c.set(webSlice(pt.Ready("10.244.1.3", "node1")))
	before := c.fake.canonical()
	if _, err := c.syncer.Sync(ctx, c.renderer.Render(c.snapshot()), false); err == nil || !strings.Contains(err.Error(), "Cannot allocate memory") {
		t.Fatalf("Sync: %v, want the nft error", err)
	}
	if c.fake.canonical() != before || c.syncer.Known() {
		t.Errorf("after a failed transaction: table changed or the Syncer still trusts its memory")
	}
	if why, err := c.syncer.CheckDrift(ctx); why != "" || err != nil {
		t.Errorf("CheckDrift after a failure: %q %v, want nothing (a full sync comes anyway)", why, err)
	}
	c.fake.fail = nil
	if res := c.sync(false); !res.Full {
		t.Errorf("the sync after a failure was not full: %+v", res)
	}
	c.equalsFresh()
}

// TestFullSyncListingFails: a full sync that cannot list the table fails
// without running anything.
func TestFullSyncListingFails(t *testing.T) {
	f := newStrictFake(t, knftables.IPv4Family)
	s := NewSyncer(f, failingLister{})
	_, err := s.Sync(ctx, Render(pt.Snapshot(t, web()), testOptions()), true)
	if err == nil || !strings.Contains(err.Error(), "netlink: no") || len(f.runs) != 0 {
		t.Errorf("Sync: %v, %d transactions; want the listing's error and none", err, len(f.runs))
	}
}

type failingLister struct{}

func (failingLister) Objects(context.Context) (Objects, error) {
	return Objects{}, errors.New("netlink: no")
}
func (failingLister) CountRules(context.Context, string) (int, error) {
	return 0, errors.New("netlink: no")
}

// TestStaleDeletionFailureIsRetried: chains that cannot be deleted yet
// (an old kernel still holding a reference) do not fail the sync; they
// are reported and tried again.
func TestStaleDeletionFailureIsRetried(t *testing.T) {
	c := newCluster(t, web(), webSlice(pt.Ready("10.244.1.2", "node1")))
	c.sync(true)
	c.set(webSlice())
	c.sync(false)
	c.clock.advance(StaleChainDelay)
	c.fake.fail = func(tx *knftables.Transaction) error {
		if strings.Contains(tx.String(), "delete chain") {
			return errors.New("Error: Could not process rule: Device or resource busy")
		}
		return nil
	}
	res := c.sync(false)
	if res.StaleErr == nil || !strings.Contains(res.StaleErr.Error(), "svc-ns/web/http/tcp") || res.ChainsDeleted != 0 {
		t.Errorf("result %+v, want the deletion's error naming the chain", res)
	}
	c.fake.fail = nil
	if res := c.sync(false); res.StaleErr != nil || res.ChainsDeleted != 1 {
		t.Errorf("retry: %+v, want the chain deleted", res)
	}
	c.equalsFresh()
}

// TestFullSyncRemovesWhatThePlanLacks: a table left by an earlier run
// (other services, a base chain at another priority, a set of an old
// version with another type) is brought to the plan by one full sync;
// affinity sets of endpoints still there keep their clients.
func TestFullSyncRemovesWhatThePlanLacks(t *testing.T) {
	c := newCluster(t, web(affinity(300)), webSlice(pt.Ready("10.244.1.2", "node1")))
	old := `add table ip svcproxy
add chain ip svcproxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip svcproxy svc-ns/gone/http/tcp
add chain ip svcproxy services
add set ip svcproxy hairpin { type ipv4_addr ; }
add set ip svcproxy aff-ns/web/http/tcp/10.244.1.2/8080/300 { type ipv4_addr ; flags dynamic,timeout ; timeout 300s ; }
add set ip svcproxy aff-ns/gone/http/tcp/10.244.1.9/8080/300 { type ipv4_addr ; flags dynamic,timeout ; timeout 300s ; }
add map ip svcproxy old-map { type ipv4_addr : verdict ; }
add rule ip svcproxy nat-prerouting jump services
add rule ip svcproxy svc-ns/gone/http/tcp ip saddr @aff-ns/gone/http/tcp/10.244.1.9/8080/300 drop
add element ip svcproxy hairpin { 10.244.3.3 }
add element ip svcproxy aff-ns/web/http/tcp/10.244.1.2/8080/300 { 10.244.9.9 }
add element ip svcproxy old-map { 10.0.0.1 : goto svc-ns/gone/http/tcp }
`
	if err := c.fake.ParseDump(old); err != nil {
		t.Fatal(err)
	}
	c.sync(true)
	tx := c.lastTx()
	for _, want := range []string{
		"flush chain ip svcproxy svc-ns/gone/http/tcp",
		"delete chain ip svcproxy nat-prerouting\nadd chain ip svcproxy nat-prerouting { type nat hook prerouting priority -101 ; }",
		"delete set ip svcproxy hairpin\nadd set ip svcproxy hairpin { type ipv4_addr . ipv4_addr ; }",
		"delete set ip svcproxy aff-ns/gone/http/tcp/10.244.1.9/8080/300\n",
		"delete map ip svcproxy old-map\n",
	} {
		if !strings.Contains(tx, want) {
			t.Errorf("full sync lacks %q:\n%s", want, tx)
		}
	}
	if strings.Contains(tx, "delete set ip svcproxy aff-ns/web") {
		t.Errorf("a live affinity set was recreated")
	}
	if c.fake.Table.Sets["aff-ns/web/http/tcp/10.244.1.2/8080/300"].FindElement("10.244.9.9") == nil {
		t.Errorf("the live affinity set lost its client")
	}
	if c.fake.Table.Chains["svc-ns/gone/http/tcp"] == nil {
		t.Errorf("the stale chain was deleted at once")
	}
	c.equalsFresh()
	if c.fake.Table.Chains["svc-ns/gone/http/tcp"] != nil {
		t.Errorf("the stale chain is still there after StaleChainDelay")
	}
}

// TestOptionsChangeIsAFullSync: a plan with another fixed part (other
// options) is written in full even when a partial sync is asked for.
func TestOptionsChangeIsAFullSync(t *testing.T) {
	c := newCluster(t, web(), webSlice(pt.Ready("10.244.1.2", "node1")))
	c.sync(true)
	opts := testOptions()
	opts.RandomFully = false
	c.renderer = NewRenderer(opts)
	if res := c.sync(false); !res.Full {
		t.Errorf("%+v, want a full sync", res)
	}
	// Options of the service chains only: a partial sync rewrites them.
	opts.MasqueradeAll = true
	c.renderer = NewRenderer(opts)
	if res := c.sync(false); res.Full || res.ChainsWritten != 1 {
		t.Errorf("%+v, want the one service chain rewritten", res)
	}
}

// TestCheckDrift: a flushed or deleted table, a flushed or emptied fixed
// chain, a rule added to one, are drift; an intact table is not; nothing
// is checked before a first sync.
func TestCheckDrift(t *testing.T) {
	for _, tc := range []struct {
		name, damage, want string
	}{
		{"intact", "", ""},
		{"table flushed", "flush table ip svcproxy", "table ip svcproxy is flushed or gone"},
		{"table deleted", "delete table ip svcproxy", "table ip svcproxy is flushed or gone"},
		{"base chain flushed", "flush chain ip svcproxy nat-prerouting", "chain nat-prerouting has 0 rules, want 1"},
		{"rule added", "add rule ip svcproxy services drop", "chain services has 3 rules, want 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, web(), webSlice(pt.Ready("10.244.1.2", "node1")))
			if why, err := c.syncer.CheckDrift(ctx); why != "" || err != nil {
				t.Errorf("before a sync: %q %v", why, err)
			}
			c.sync(true)
			if tc.damage != "" {
				tx := c.fake.NewTransaction()
				if err := applyText(c.fake.Fake, tc.damage); err != nil {
					t.Fatal(err)
				}
				_ = tx
			}
			why, err := c.syncer.CheckDrift(ctx)
			if err != nil || why != tc.want {
				t.Errorf("CheckDrift = %q, %v; want %q", why, err, tc.want)
			}
			if tc.damage != "" {
				c.sync(true)
				if why, _ := c.syncer.CheckDrift(ctx); why != "" {
					t.Errorf("after the repair: %q", why)
				}
			}
		})
	}
	f := newStrictFake(t, knftables.IPv4Family)
	s := NewSyncer(f, f.lister())
	if _, err := s.Sync(ctx, Render(pt.Snapshot(t, web()), testOptions()), true); err != nil {
		t.Fatal(err)
	}
	s.lister = failingLister{}
	if why, err := s.CheckDrift(ctx); why != "" || err == nil {
		t.Errorf("a lister failure: %q, %v; want an error, no drift", why, err)
	}
}

// applyText runs one nft command on the Fake, as another program would.
func applyText(f *knftables.Fake, cmd string) error {
	tx := f.NewTransaction()
	fields := strings.Fields(cmd)
	switch {
	case fields[0] == "flush" && fields[1] == "table":
		tx.Flush(&knftables.Table{})
	case fields[0] == "delete" && fields[1] == "table":
		tx.Delete(&knftables.Table{})
	case fields[0] == "flush" && fields[1] == "chain":
		tx.Flush(&knftables.Chain{Name: fields[4]})
	case fields[0] == "add" && fields[1] == "rule":
		tx.Add(&knftables.Rule{Chain: fields[4], Rule: strings.Join(fields[5:], " ")})
	default:
		return fmt.Errorf("unknown %q", cmd)
	}
	return f.Run(ctx, tx)
}

// randomBytes returns the i-th input of the random clusters.
func randomBytes(i int) []byte {
	b := make([]byte, 96)
	for j := range b {
		b[j] = byte((i+1)*131 + j*j*17 + i*j)
	}
	return b
}

// TestRandomPartialSyncsEqualAFullSync: from one random snapshot to
// another (weird names, conflicts, every policy), a partial sync leaves
// exactly what a full sync of the second gives, and every transaction is
// one the kernel takes.
func TestRandomPartialSyncsEqualAFullSync(t *testing.T) {
	f := newStrictFake(t, knftables.IPv4Family)
	s := NewSyncer(f, f.lister())
	clk := newClock()
	s.SetClock(clk.now)
	ports := 0
	for i := 0; i < 200; i++ {
		snap := pt.RandomSnapshot(randomBytes(i))
		ports += len(snap.ServicePorts())
		if _, err := s.Sync(ctx, Render(snap, testOptions()), i == 0); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		f.noViolations(t)
		clk.advance(StaleChainDelay)
		if _, err := s.Sync(ctx, Render(snap, testOptions()), false); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if d := cmp.Diff(fullSyncOf(t, snap), f.canonical()); d != "" {
			t.Fatalf("step %d: partial differs from full (-full +partial):\n%s", i, d)
		}
	}
	if ports < 400 {
		t.Errorf("the random clusters had %d service ports in all: too few to prove anything", ports)
	}
}

// fullSyncOf returns the canonical table a full sync of snap gives in an
// empty table.
func fullSyncOf(t *testing.T, snap *proxy.Snapshot) string {
	t.Helper()
	fresh := newStrictFake(t, knftables.IPv4Family)
	if _, err := NewSyncer(fresh, fresh.lister()).Sync(ctx, Render(snap, testOptions()), true); err != nil {
		t.Fatalf("fresh full sync: %v", err)
	}
	fresh.noViolations(t)
	return fresh.canonical()
}

// FuzzSync: whatever the services look like, the full sync of their plan
// is a transaction the kernel takes (names nft accepts, no reference to a
// missing object), and so is a partial sync to another random cluster,
// which leaves what a full sync of that cluster leaves. test/integration
// feeds random plans to the real nft.
func FuzzSync(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("some seed bytes for a first random cluster"))
	f.Add([]byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"))
	for i := 0; i < 20; i++ {
		f.Add(randomBytes(1000 + i))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fake := newStrictFake(t, knftables.IPv4Family)
		s := NewSyncer(fake, fake.lister())
		r := NewRenderer(testOptions())
		if _, err := s.Sync(ctx, r.Render(pt.RandomSnapshot(data)), true); err != nil {
			t.Fatalf("full sync: %v", err)
		}
		fake.noViolations(t)
		half := len(data) / 2
		snap2 := pt.RandomSnapshot(append(append([]byte{}, data[half:]...), data[:half]...))
		if _, err := s.Sync(ctx, r.Render(snap2), false); err != nil {
			t.Fatalf("partial sync: %v", err)
		}
		fake.noViolations(t)
		for _, name := range keys(fake.Table.Chains) {
			if len(name) > maxNameLen || !nameStart(name[0]) {
				t.Errorf("chain name nft refuses: %q", name)
			}
			for i := 0; i < len(name); i++ {
				if !nameChar(name[i]) {
					t.Errorf("chain name nft refuses: %q", name)
					break
				}
			}
		}
	})
}

// nameStart reports whether nft takes c as the first character of a name.
func nameStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '.'
}

// TestStrictFakeRefuses: the strict fake refuses what the kernel refuses.
func TestStrictFakeRefuses(t *testing.T) {
	for _, tc := range []struct{ name, tx, want string }{
		{"deleting a chain with rules", "add chain ip svcproxy a\nadd rule ip svcproxy a drop\ndelete chain ip svcproxy a", "the chain has 1 rules"},
		{"deleting a chain a rule jumps to", "add chain ip svcproxy a\nadd chain ip svcproxy b\nadd rule ip svcproxy a goto b\ndelete chain ip svcproxy b", "refers to chain b"},
		{"deleting a set a rule uses", "add set ip svcproxy s { type ipv4_addr ; }\nadd chain ip svcproxy a\nadd rule ip svcproxy a ip saddr @s drop\ndelete set ip svcproxy s", "refers to set s"},
		{"a map key with another value", "add map ip svcproxy m { type ipv4_addr : verdict ; }\nadd element ip svcproxy m { 10.0.0.1 : drop }\nadd element ip svcproxy m { 10.0.0.1 : accept }", "File exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newStrictFake(t, knftables.IPv4Family)
			tx := f.NewTransaction()
			tx.Add(&knftables.Table{})
			if err := f.Run(ctx, tx); err != nil {
				t.Fatal(err)
			}
			err := f.runText(tc.tx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestSetRedefinedIsAFullSync: a set whose definition changes under the
// same name (never from Render, whose affinity sets carry their timeout
// in the name) cannot be changed in place: the partial sync asked for
// turns into a full one, which recreates it (clients lost).
func TestSetRedefinedIsAFullSync(t *testing.T) {
	f := newStrictFake(t, knftables.IPv4Family)
	s := NewSyncer(f, f.lister())
	base := Render(pt.Snapshot(t), testOptions())
	plan := func(timeout time.Duration) *Plan {
		set := &Set{Name: "aff-x", Type: "ipv4_addr", Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag}, Timeout: timeout, Dynamic: true}
		return &Plan{Family: knftables.IPv4Family, fixed: base.fixed, ports: []*fragment{{name: "x", sets: []*Set{set},
			chains: []*Chain{{Name: "svc-x", Rules: []string{"ip saddr @aff-x drop"}}}}}}
	}
	if _, err := s.Sync(ctx, plan(10*time.Second), true); err != nil {
		t.Fatal(err)
	}
	res, err := s.Sync(ctx, plan(20*time.Second), false)
	if err != nil || !res.Full {
		t.Fatalf("%+v %v, want a full sync", res, err)
	}
	if got := *f.Table.Sets["aff-x"].Timeout; got != 20*time.Second {
		t.Errorf("timeout %v, want the set recreated with 20s", got)
	}
	f.noViolations(t)
}
