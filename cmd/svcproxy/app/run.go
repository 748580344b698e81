package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/conntrack"
	"github.com/svcproxy/svcproxy/proxy/healthz"
	"github.com/svcproxy/svcproxy/proxy/metrics"
	"github.com/svcproxy/svcproxy/proxy/source"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2 // bad flags or a malformed --state file
)

// Main parses args, runs svcproxy until SIGTERM/SIGINT (or once with
// --dry-run) and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	o := NewOptions()
	fs := newFlagSet(o)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintln(stderr, "svcproxy:", err)
		return exitUsage
	}
	if o.ConfigFile != "" {
		warnings, err := o.ApplyConfigFile(o.ConfigFile, &o.ExtraOptions, fs.Changed)
		if err != nil {
			fmt.Fprintln(stderr, "svcproxy:", err)
			return exitUsage
		}
		for _, w := range warnings {
			klog.InfoS("Configuration file", "path", o.ConfigFile, "warning", w)
		}
	}
	if err := o.Complete(); err != nil {
		fmt.Fprintln(stderr, "svcproxy:", err)
		return exitUsage
	}
	if err := o.Validate(); err != nil {
		fmt.Fprintln(stderr, "svcproxy:", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	defer klog.Flush()
	err := o.Run(ctx, stdout)
	var fe *source.FileError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &fe):
		fmt.Fprintln(stderr, "svcproxy:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "svcproxy:", err)
		return exitFailure
	}
}

// sourceRunner is what the file and kube sources have in common.
type sourceRunner interface {
	Run(ctx context.Context, synced func()) error
}

// Run runs svcproxy with completed, validated options. With DryRun it
// renders once and prints the ruleset to out; with Cleanup it removes
// everything of svcproxy's from the node. Otherwise it programs the node
// until ctx is done and leaves the rules in place when it returns (like
// kube-proxy, so that a restart drops no connection).
func (o *Options) Run(ctx context.Context, out io.Writer) error {
	logger := klog.FromContext(ctx)
	if o.Cleanup {
		return o.cleanup(ctx)
	}
	logger.Info("Starting svcproxy", "mode", o.Mode, "node", o.nodeName, "clusterCIDRs", o.clusterCIDRs,
		"nodePortAddresses", o.nodePortAddresses, "masqueradeAll", o.MasqueradeAll, "syncPeriod", o.SyncPeriod,
		"minSyncPeriod", o.MinSyncPeriod, "dryRun", o.DryRun, "state", o.State, "config", o.ConfigFile,
		"healthzBindAddress", o.HealthzBindAddress, "metricsBindAddress", o.MetricsBindAddress)
	if o.DryRun {
		return o.dryRun(ctx, out)
	}
	return o.serve(ctx)
}

// newSource returns the --state file source or the API server's.
func (o *Options) newSource(h proxy.Handler, onAPIHealth func(error)) (sourceRunner, error) {
	if o.State != "" {
		return source.NewFileSource(o.State, h, o.StatePoll), nil
	}
	cfg, err := source.BuildConfig(o.Kubeconfig, o.Master)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "svcproxy"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ks := source.NewKubeSource(client, o.nodeName, h, 0)
	ks.OnAPIHealth = onAPIHealth
	ks.HealthInterval = min(5*time.Second, o.SyncPeriod/2)
	return ks, nil
}

// startSource runs src until ctx is done and waits for its first full
// view. The returned channel reports the source's end.
func startSource(ctx context.Context, src sourceRunner) (<-chan error, error) {
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

// dryRun prints what svcproxy would program, from --state or from the API
// server once its objects are listed.
func (o *Options) dryRun(ctx context.Context, out io.Writer) error {
	tracker := proxy.NewTracker(o.nodeName, nil, nil)
	if o.State != "" {
		if err := source.NewFileSource(o.State, tracker, o.StatePoll).Load(); err != nil {
			return err
		}
	} else {
		src, err := o.newSource(tracker, nil)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if _, err := startSource(ctx, src); err != nil {
			return err
		}
	}
	snap, _ := tracker.Snapshot()
	if o.Mode == ModeIPVS {
		_, err := io.WriteString(out, o.dryRunIPVS(snap))
		return err
	}
	_, err := io.WriteString(out, iptables.Render(snap, o.iptablesOptions()).String())
	return err
}

// cleanup removes everything of both modes: IPVS mode's first (its
// virtual servers, dummy link, ipsets and SVCP-IPVS- chains; nothing, and
// no module loaded, on a host that never ran it), then iptables mode's.
func (o *Options) cleanup(ctx context.Context) error {
	variant := iptables.DetectVariant()
	ipt, err := iptables.NewExec(variant)
	if err != nil {
		return err
	}
	k := ipvs.NewKernel()
	defer k.Close()
	opts := o.ipvsOptions()
	if k.Available() {
		if opts.NodeAddresses, err = k.LocalAddresses(nil); err != nil {
			return err
		}
	}
	if err := ipvs.Cleanup(k, ipt, opts); err != nil {
		return err
	}
	if err := iptables.Cleanup(ipt); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("Removed svcproxy's rules", "variant", variant, "ipvs", k.Available())
	return nil
}

// serve programs the node until ctx is done.
func (o *Options) serve(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	reg := metrics.NewRegistry()
	m := metrics.New(reg)
	health := healthz.NewProxyServer(healthz.Config{BindAddress: o.HealthzBindAddress, Timeout: 2 * o.SyncPeriod, Counter: m})
	be, err := o.newBackend(ctx)
	if err != nil {
		return err
	}
	services := healthz.NewServiceServer(healthz.ServiceConfig{
		Proxy: health,
		OnListenError: func(ns, name string, port int32, err error) {
			logger.Error(err, "Cannot open the health-check node port", "service", ns+"/"+name, "port", port)
		},
	})
	defer services.Close()

	d := &daemon{backend: be, metrics: m, health: health, services: services, conntrack: conntrack.Netlink{}}
	// Make before break: once our first sync is in, what the other mode of
	// ours (a mode switch) and upstream kube-proxy left goes.
	var takeover []func(context.Context) error
	if r, ok := be.(otherModeRemover); ok {
		takeover = append(takeover, r.removeOtherMode)
	}
	if r, ok := be.(kubeProxyRemover); ok && o.RemoveKubeProxyRules {
		takeover = append(takeover, r.removeKubeProxy)
	}
	d.takeover = func(ctx context.Context) error {
		var errs []error
		for _, f := range takeover {
			errs = append(errs, f(ctx))
		}
		return errors.Join(errs...)
	}
	runner := proxy.NewRunner(d.sync, o.MinSyncPeriod, o.SyncPeriod, nil)
	d.tracker = proxy.NewTracker(o.nodeName, func() {
		health.QueuedUpdate()
		m.Queued(time.Now())
		runner.Request()
	}, m.Skipped)
	d.recorder = m.NewRecorder(health.NodeHandler(d.tracker), nil)

	if o.HealthzBindAddress != "" {
		go func() {
			if err := health.Run(ctx); err != nil {
				logger.Error(err, "Health server stopped", "address", o.HealthzBindAddress)
			}
		}()
	}
	if o.MetricsBindAddress != "" {
		go func() {
			if err := metrics.NewServer(o.MetricsBindAddress, reg, o.Mode).Run(ctx); err != nil {
				logger.Error(err, "Metrics server stopped", "address", o.MetricsBindAddress)
			}
		}()
	}

	src, err := o.newSource(d.recorder, health.SetSourceError)
	if err != nil {
		return err
	}
	srcDone, err := startSource(ctx, src)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	o.recordStartEvent(ctx)
	go runner.Run(ctx)
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

// daemon is the state of one running svcproxy, shared by its syncs (which
// the runner serialises).
type daemon struct {
	tracker   *proxy.Tracker
	recorder  *metrics.Recorder
	backend   backend
	metrics   *metrics.Metrics
	health    *healthz.ProxyServer
	services  *healthz.ServiceServer
	conntrack conntrack.Interface

	// Not applied yet: a failed sync's changes and trigger times are
	// folded into the retry.
	pending  []proxy.Change
	triggers []time.Time
	// takeover, until it succeeds once, runs after each successful sync:
	// kube-proxy's rules go only once ours are in place.
	takeover func(context.Context) error
}

func (d *daemon) sync(ctx context.Context, full bool) error {
	logger := klog.FromContext(ctx)
	start := time.Now()
	d.triggers = append(d.triggers, d.recorder.TakeTriggerTimes()...)
	snap, changes := d.tracker.Snapshot()
	d.pending = append(d.pending, changes...)
	res, err := d.backend.Sync(snap, full)
	took := time.Since(start) // snapshot, render and apply: what the metrics and the log report
	d.metrics.ObserveSync(res.Full, took)
	if err != nil {
		d.metrics.IPTablesRestoreFailed()
		return err
	}
	if filters := conntrack.StaleFilters(d.pending); len(filters) > 0 {
		n, err := d.conntrack.Delete(filters)
		if err != nil {
			logger.Error(err, "Deleting stale conntrack entries failed", "filters", len(filters))
		} else {
			logger.V(2).Info("Deleted stale conntrack entries", "entries", n, "filters", len(filters))
		}
	}
	now := time.Now()
	d.health.Updated()
	d.metrics.Synced(now)
	d.metrics.ObserveNetworkProgramming(d.triggers, now)
	d.metrics.SetNoLocalEndpoints(snap)
	for table, n := range res.Rules {
		d.metrics.SetIPTablesRules(table, n, res.RulesWritten[table])
	}
	d.services.SyncServices(snap)
	d.pending, d.triggers = d.pending[:0], d.triggers[:0]
	if d.takeover != nil {
		if err := d.takeover(ctx); err != nil {
			logger.Error(err, "Removing the other mode's or kube-proxy's leftovers failed; retrying after the next sync")
		} else {
			d.takeover = nil
		}
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
