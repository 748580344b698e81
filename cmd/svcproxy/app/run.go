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
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/conntrack"
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
// renders once and prints the ruleset to out. Otherwise it programs the node
// until ctx is done and leaves the rules in place when it returns (like
// kube-proxy, so that a restart drops no connection).
func (o *Options) Run(ctx context.Context, out io.Writer) error {
	logger := klog.FromContext(ctx)
	if o.Cleanup {
		variant := iptables.DetectVariant()
		ipt, err := iptables.NewExec(variant)
		if err != nil {
			return err
		}
		if err := iptables.Cleanup(ipt); err != nil {
			return err
		}
		logger.Info("Removed svcproxy's iptables rules", "variant", variant)
		return nil
	}
	logger.Info("Starting svcproxy", "mode", o.Mode, "node", o.nodeName, "clusterCIDRs", o.clusterCIDRs,
		"nodePortAddresses", o.nodePortAddresses, "masqueradeAll", o.MasqueradeAll, "syncPeriod", o.SyncPeriod,
		"minSyncPeriod", o.MinSyncPeriod, "dryRun", o.DryRun, "state", o.State)

	var runner *proxy.Runner
	tracker := proxy.NewTracker(o.nodeName, func() {
		if runner != nil {
			runner.Request()
		}
	}, nil)

	if o.DryRun && o.State != "" {
		if err := source.NewFileSource(o.State, tracker, o.StatePoll).Load(); err != nil {
			return err
		}
		snap, _ := tracker.Snapshot()
		_, err := io.WriteString(out, iptables.Render(snap, o.iptablesOptions()).String())
		return err
	}

	var src sourceRunner
	if o.State != "" {
		src = source.NewFileSource(o.State, tracker, o.StatePoll)
	} else {
		cfg, err := source.BuildConfig(o.Kubeconfig, o.Master)
		if err != nil {
			return err
		}
		cfg.UserAgent = "svcproxy"
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		src = source.NewKubeSource(client, o.nodeName, tracker, 0)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	synced := make(chan struct{})
	srcErr := make(chan error, 1)
	go func() { srcErr <- src.Run(ctx, func() { close(synced) }) }()
	select {
	case <-synced:
	case err := <-srcErr:
		if err == nil {
			err = errors.New("source stopped before it synced")
		}
		return err
	case <-ctx.Done():
		return nil
	}

	if o.DryRun {
		snap, _ := tracker.Snapshot()
		_, err := io.WriteString(out, iptables.Render(snap, o.iptablesOptions()).String())
		return err
	}

	variant := iptables.DetectVariant()
	ipt, err := iptables.NewExec(variant)
	if err != nil {
		return err
	}
	logger.Info("Using iptables", "variant", variant)
	syncer := iptables.NewSyncer(ipt, 0)
	renderer := iptables.NewRenderer(o.iptablesOptions())
	var ct conntrack.Interface = conntrack.Netlink{}
	// Changes whose rules are not applied yet: a failed sync's changes are
	// folded into the retry, and their conntrack cleanup waits for it.
	var pending []proxy.Change
	sync := func(ctx context.Context, full bool) error {
		start := time.Now()
		snap, changes := tracker.Snapshot()
		pending = append(pending, changes...)
		plan := renderer.Render(snap)
		res, err := syncer.Sync(plan, full)
		if err != nil {
			return err
		}
		if filters := conntrack.StaleFilters(pending); len(filters) > 0 {
			n, err := ct.Delete(filters)
			if err != nil {
				logger.Error(err, "Deleting stale conntrack entries failed", "filters", len(filters))
			} else {
				logger.V(2).Info("Deleted stale conntrack entries", "entries", n, "filters", len(filters))
			}
		}
		pending = pending[:0]
		if res.Full {
			// A full sync (and the first load before it) leaves a lot of
			// garbage: the restore input of every chain, a parsed state
			// file. Hand it back to the OS now rather than keep the peak
			// RSS for minutes.
			debug.FreeOSMemory()
		}
		chains, rules := plan.Stats()
		logger.V(2).Info("Synced rules", "full", res.Full, "took", time.Since(start), "servicePortsChanged", len(changes),
			"chainsWritten", res.ChainsWritten, "chainsDeleted", res.ChainsDeleted, "restores", res.Restores,
			"chains", chains, "rules", rules)
		return nil
	}
	runner = proxy.NewRunner(sync, o.MinSyncPeriod, o.SyncPeriod, nil)
	go runner.Run(ctx)
	select {
	case <-ctx.Done():
		logger.Info("Stopping; rules stay in place")
		return nil
	case err := <-srcErr:
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("source: %w", err)
		}
		return nil
	}
}
