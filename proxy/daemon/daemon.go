// Package daemon is the loop around a proxy.Backend that every mode shares:
// source → tracker → Snapshot → Backend.Sync, then conntrack cleanup,
// health, metrics and the one-time removal of leftovers, paced by the
// runner. cmd/svcproxy only builds a Config from flags and calls Run.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/conntrack"
	"github.com/svcproxy/svcproxy/proxy/healthz"
	"github.com/svcproxy/svcproxy/proxy/metrics"
)

// Source delivers Services, EndpointSlices and this node's Node to a
// proxy.Handler (the API server's informers, or a --state file).
type Source interface {
	// Run feeds the handler until ctx is done, calling synced once the
	// first complete view was delivered.
	Run(ctx context.Context, synced func()) error
}

// Config is everything a Daemon needs.
type Config struct {
	// NodeName is this node's name, as in EndpointSlices' nodeName.
	NodeName string
	// Mode names the data plane, for the metrics server.
	Mode string
	// Backend programs the kernel.
	Backend proxy.Backend
	// NewSource returns the source that feeds h. onAPIHealth is to be
	// called with the API server's health (nil: healthy) where there is
	// one.
	NewSource func(h proxy.Handler, onAPIHealth func(error)) (Source, error)
	// Leftovers are removed once our first sync is in (make before
	// break): another mode's objects, upstream kube-proxy's rules.
	Leftovers []proxy.Leftovers
	// SyncPeriod bounds the time between two full syncs; MinSyncPeriod is
	// the least time between two syncs (changes in between are batched).
	SyncPeriod, MinSyncPeriod time.Duration
	// HealthzBindAddress and MetricsBindAddress are host:port; "" turns a
	// server off.
	HealthzBindAddress, MetricsBindAddress string
	// NodePortAddresses are the --nodeport-addresses prefixes: the
	// health-check node ports listen on the local addresses within them;
	// empty means on every address.
	NodePortAddresses []netip.Prefix
	// Conntrack is the conntrack table stale UDP and SCTP flows are
	// deleted from after each successful sync (conntrack.Cleanup); nil
	// means the kernel's (netlink).
	Conntrack conntrack.Interface
	// Registry holds the metrics; nil means a new one.
	Registry *prometheus.Registry
	// OnSourceSynced, if set, is called once the source delivered its
	// first complete view (the Starting event on the Node).
	OnSourceSynced func(ctx context.Context)
	// DriftInterval is how often a Backend that is a proxy.DriftChecker
	// is asked whether its rules are still in place; 0 means
	// DefaultDriftInterval, negative never.
	DriftInterval time.Duration
}

// DefaultDriftInterval is how often the rules are checked for drift: often
// enough that a flushed table is repaired within a few seconds (a full
// sync follows at once, paced only by the min sync period), rarely enough
// that the few iptables -S calls of a check cost nothing noticeable.
const DefaultDriftInterval = 2 * time.Second

// Daemon runs one svcproxy: it programs the node until its context ends.
type Daemon struct {
	cfg      Config
	registry *prometheus.Registry
	metrics  *metrics.Metrics
	health   *healthz.ProxyServer
	services *healthz.ServiceServer
	tracker  *proxy.Tracker
	recorder *metrics.Recorder
	runner   *proxy.Runner

	// Not applied yet: a failed sync's changes and trigger times are
	// folded into the retry.
	pending  []proxy.Change
	triggers []time.Time
	// leftovers not yet removed; they go after each successful sync until
	// each succeeded once (kube-proxy's rules only once ours are in), in
	// the background so that changes keep being applied meanwhile.
	leftMu      sync.Mutex
	leftovers   []proxy.Leftovers
	leftRunning bool
	// backendMu keeps drift checks out of a running sync.
	backendMu sync.Mutex
	// repairPending is set when drift was found and cleared by the next
	// successful full sync: no check runs meanwhile.
	repairPending atomic.Bool
}

// New builds a Daemon; Run starts it.
func New(cfg Config) *Daemon {
	if cfg.Conntrack == nil {
		cfg.Conntrack = conntrack.Netlink{}
	}
	reg := cfg.Registry
	if reg == nil {
		reg = metrics.NewRegistry()
	}
	d := &Daemon{cfg: cfg, registry: reg, leftovers: cfg.Leftovers}
	d.metrics = metrics.New(reg)
	d.health = healthz.NewProxyServer(healthz.Config{BindAddress: cfg.HealthzBindAddress, Timeout: 2 * cfg.SyncPeriod, Counter: d.metrics})
	d.runner = proxy.NewRunner(d.sync, cfg.MinSyncPeriod, cfg.SyncPeriod, nil)
	d.tracker = proxy.NewTracker(cfg.NodeName, func() {
		d.health.QueuedUpdate()
		d.metrics.Queued(time.Now())
		d.runner.Request()
	}, d.metrics.Skipped)
	d.recorder = d.metrics.NewRecorder(d.health.NodeHandler(d.tracker), nil)
	return d
}

// Health returns the proxy's health server (for tests and embedding).
func (d *Daemon) Health() *healthz.ProxyServer { return d.health }

// Run programs the node until ctx is done or the source fails; the rules
// stay in place when it returns (like kube-proxy, so that a restart drops
// no connection).
func (d *Daemon) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	d.services = healthz.NewServiceServer(healthz.ServiceConfig{
		NodePortAddresses: d.cfg.NodePortAddresses,
		Proxy:             d.health.ForServicePorts(),
		OnListenError: func(ns, name string, port int32, err error) {
			logger.Error(err, "Cannot open the health-check node port", "service", ns+"/"+name, "port", port)
		},
	})
	defer d.services.Close()
	if d.cfg.HealthzBindAddress != "" {
		go func() {
			if err := d.health.Run(ctx); err != nil {
				logger.Error(err, "Health server stopped", "address", d.cfg.HealthzBindAddress)
			}
		}()
	}
	if d.cfg.MetricsBindAddress != "" {
		go func() {
			if err := metrics.NewServer(d.cfg.MetricsBindAddress, d.registry, d.cfg.Mode).Run(ctx); err != nil {
				logger.Error(err, "Metrics server stopped", "address", d.cfg.MetricsBindAddress)
			}
		}()
	}

	src, err := d.cfg.NewSource(d.recorder, d.health.SetSourceError)
	if err != nil {
		return err
	}
	srcDone, err := StartSource(ctx, src)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if d.cfg.OnSourceSynced != nil {
		d.cfg.OnSourceSynced(ctx)
	}
	go d.runner.Run(ctx)
	if dc, ok := d.cfg.Backend.(proxy.DriftChecker); ok && d.cfg.DriftInterval >= 0 {
		go d.watchDrift(ctx, dc)
	}
	select {
	case <-ctx.Done():
		logger.Info("Stopping; rules stay in place")
		return nil
	case err := <-srcDone:
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("source: %w", err)
		}
		return nil
	}
}

// StartSource runs src until ctx is done and waits for its first full
// view. The returned channel reports the source's end.
func StartSource(ctx context.Context, src Source) (<-chan error, error) {
	synced := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func() { close(synced) }) }()
	select {
	case <-synced:
		return done, nil
	case err := <-done:
		if err == nil {
			err = errors.New("source stopped before it synced")
		}
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// watchDrift asks dc every DriftInterval whether the rules are still in
// place, and for a full sync when they are not. /healthz counts the rules
// as out of date until that sync is in.
func (d *Daemon) watchDrift(ctx context.Context, dc proxy.DriftChecker) {
	logger := klog.FromContext(ctx)
	interval := d.cfg.DriftInterval
	if interval == 0 {
		interval = DefaultDriftInterval
	}
	for {
		// The interval runs from the end of a check: a check as slow as
		// the interval (a loaded or emulated machine) must not run back
		// to back and starve the syncs of the lock.
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		if d.repairPending.Load() {
			continue // found already; the full sync that repairs it is to come
		}
		d.backendMu.Lock()
		why, err := dc.CheckDrift(ctx)
		d.backendMu.Unlock()
		switch {
		case err != nil:
			logger.V(2).Info("Could not check the rules for drift", "err", err)
		case why != "":
			logger.Info("Rules changed outside svcproxy; repairing with a full sync", "drift", why)
			d.metrics.DriftDetected()
			d.health.QueuedUpdate()
			d.repairPending.Store(true)
			d.runner.RequestFull()
		}
	}
}

// sync is one run of the pipeline; the runner serialises the calls.
func (d *Daemon) sync(ctx context.Context, full bool) error {
	d.backendMu.Lock()
	defer d.backendMu.Unlock()
	logger := klog.FromContext(ctx)
	if d.runner.TakeFullRequest() && !full {
		// Drift was found while this sync waited for the lock: a partial
		// sync would work from what svcproxy believes is in the kernel.
		full = true
	}
	start := time.Now()
	d.triggers = append(d.triggers, d.recorder.TakeTriggerTimes()...)
	snap, changes := d.tracker.Snapshot()
	d.pending = append(d.pending, changes...)
	res, err := d.cfg.Backend.Sync(ctx, snap, full)
	took := time.Since(start) // snapshot, render and apply: what the metrics and the log report
	if len(res.ByFamily) > 0 {
		var fs []string
		for f := range res.ByFamily {
			fs = append(fs, string(f))
		}
		d.metrics.SetFamilies(fs)
	}
	d.metrics.ObserveSync(res.Full, took)
	if err != nil {
		d.metrics.SyncFailed(proxy.IsRestoreError(err))
		return err
	}
	if res.StaleErr != nil {
		logger.Error(res.StaleErr, "Could not delete rules no longer needed; the rest of the sync is in place, retrying at the next sync")
		d.countStaleFailure(res)
	}
	// A full sync (the first after a start, the retry after a failure) is
	// when the pending changes may not say everything: judge every entry.
	ct := conntrack.Options{Reconcile: full || res.Full, IPVS: d.cfg.Mode == "ipvs"}
	if n, err := conntrack.Cleanup(d.cfg.Conntrack, snap, d.pending, ct); err != nil {
		logger.Error(err, "Deleting stale conntrack entries failed", "deleted", n, "reconcile", ct.Reconcile)
	} else if n > 0 || ct.Reconcile {
		logger.V(2).Info("Deleted stale conntrack entries", "entries", n, "reconcile", ct.Reconcile)
	}
	now := time.Now()
	d.health.Updated()
	d.metrics.Synced(now)
	d.metrics.ObserveNetworkProgramming(d.triggers, now)
	d.metrics.SetNoLocalEndpoints(snap)
	if res.ByFamily == nil {
		for table, n := range res.Rules {
			d.metrics.SetIPTablesRules(table, n, res.RulesWritten[table])
		}
	}
	for family, fr := range res.ByFamily {
		for table, n := range fr.Rules {
			d.metrics.SetIPTablesRulesOf(string(family), table, n, fr.RulesWritten[table])
		}
	}
	d.services.SyncServices(snap)
	d.pending, d.triggers = d.pending[:0], d.triggers[:0]
	d.startLeftovers(ctx)
	if full {
		d.repairPending.Store(false)
	}
	if res.Full {
		// A full sync leaves a lot of garbage (the restore input of every
		// chain): hand it back to the OS now rather than keep the peak.
		debug.FreeOSMemory()
	}
	logger.V(2).Info("Synced rules", "full", res.Full, "took", took, "servicePortsChanged", len(changes),
		"chainsWritten", res.ChainsWritten, "chainsDeleted", res.ChainsDeleted, "restores", res.Restores,
		"chains", res.Chains, "rules", res.TotalRules())
	return nil
}

// countStaleFailure counts a sync whose stale-object deletion failed under
// the ip_family label of each family whose deletion failed (a chain of
// one family held by a foreign reference is no failure of the other);
// under every family when the backend does not say which.
func (d *Daemon) countStaleFailure(res proxy.SyncResult) {
	counted := false
	for family, fr := range res.ByFamily {
		if fr.StaleErr != nil {
			d.metrics.StaleDeletionFailedOf(string(family))
			counted = true
		}
	}
	if !counted {
		d.countStaleFailure(res)
	}
}

// startLeftovers starts a round of the removers that have not succeeded
// yet, unless one is running: in the background, because listing and
// deleting another data plane's rules takes seconds on a big node, and the
// sync loop must go on meanwhile. A remover that fails is retried after
// the next successful sync.
func (d *Daemon) startLeftovers(ctx context.Context) {
	d.leftMu.Lock()
	defer d.leftMu.Unlock()
	if d.leftRunning || len(d.leftovers) == 0 {
		return
	}
	d.leftRunning = true
	todo := d.leftovers
	go func() {
		failed := removeLeftovers(ctx, todo)
		d.leftMu.Lock()
		d.leftovers, d.leftRunning = failed, false
		d.leftMu.Unlock()
	}()
}

// removeLeftovers runs the removers in order and returns those that
// failed.
func removeLeftovers(ctx context.Context, todo []proxy.Leftovers) []proxy.Leftovers {
	logger := klog.FromContext(ctx)
	round := time.Now()
	var failed []proxy.Leftovers
	defer func() {
		logger.V(2).Info("Leftovers round done", "removers", len(todo), "failed", len(failed), "took", time.Since(round))
	}()
	for _, l := range todo {
		start := time.Now()
		n, err := l.Remove(ctx)
		if err != nil {
			logger.Error(err, "Removing leftovers failed; retrying after the next sync", "what", l.Name(), "removed", n)
			failed = append(failed, l)
			continue
		}
		if n > 0 {
			logger.Info("Removed leftovers", "what", l.Name(), "objects", n, "took", time.Since(start))
		} else {
			logger.V(2).Info("No leftovers", "what", l.Name(), "took", time.Since(start))
		}
	}
	return failed
}
