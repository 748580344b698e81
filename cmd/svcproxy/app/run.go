package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/nftables"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/config"
	"github.com/svcproxy/svcproxy/proxy/daemon"
	"github.com/svcproxy/svcproxy/proxy/source"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2 // bad flags or a malformed --state file
)

// Main parses args, runs svcproxy until SIGTERM/SIGINT (or once with
// --dry-run or --cleanup) and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "explain" {
		return explainMain(args[1:], stdout, stderr)
	}
	o := config.Defaults()
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
		warnings, err := o.ApplyConfigFile(o.ConfigFile, fs.Changed)
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
	err := run(ctx, o, stdout)
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

// run runs svcproxy with a completed, validated configuration. With DryRun it
// renders once and prints the ruleset to out; with Cleanup it removes
// everything of svcproxy's from the node. Otherwise it programs the node
// until ctx is done and leaves the rules in place when it returns.
func run(ctx context.Context, o *config.Config, out io.Writer) error {
	if o.Cleanup {
		return cleanup(ctx)
	}
	klog.FromContext(ctx).Info("Starting svcproxy", "mode", o.Mode, "node", o.NodeName(), "clusterCIDRs", o.ClusterCIDRs(),
		"nodePortAddresses", o.NodePortAddressPrefixes(), "masqueradeAll", o.MasqueradeAll, "masqueradeBit", o.MasqueradeBit,
		"syncPeriod", o.SyncPeriod, "minSyncPeriod", o.MinSyncPeriod, "dryRun", o.DryRun, "state", o.State,
		"config", o.ConfigFile, "healthzBindAddress", o.HealthzBindAddress, "metricsBindAddress", o.MetricsBindAddress,
		"ipvsScheduler", o.IPVSScheduler, "removeKubeProxyRules", o.RemoveKubeProxyRules)
	if o.DryRun {
		return dryRun(ctx, o, out)
	}
	cfg, err := daemonConfig(ctx, o)
	if err != nil {
		return err
	}
	return daemon.New(cfg).Run(ctx)
}

// daemonConfig wires the backend of --mode and the leftovers it removes
// after its first sync: the other mode's objects always (a mode switch),
// upstream kube-proxy's with --remove-kube-proxy-rules. kube-proxy's
// ipsets go after its chains, which reference them.
func daemonConfig(ctx context.Context, o *config.Config) (daemon.Config, error) {
	cfg := daemon.Config{
		NodeName: o.NodeName(),
		Mode:     o.Mode,
		NewSource: func(h proxy.Handler, onAPIHealth func(error)) (daemon.Source, error) {
			return newSource(o, h, onAPIHealth)
		},
		SyncPeriod:         o.SyncPeriod,
		MinSyncPeriod:      o.MinSyncPeriod,
		HealthzBindAddress: o.HealthzBindAddress,
		MetricsBindAddress: o.MetricsBindAddress,
		NodePortAddresses:  o.NodePortAddressPrefixes(),
		OnSourceSynced:     func(ctx context.Context) { recordStartEvent(ctx, o) },
	}
	variant := iptables.DetectVariant()
	raw, err := iptables.NewExec(variant)
	if err != nil {
		return cfg, err
	}
	// One iptables-save serves the first sync's listing of our chains and
	// the removal of the other mode's and kube-proxy's, instead of one
	// listing of each table for each of them (seconds at 10k services).
	ipt := iptables.NewCachedLister(raw)
	// IPv6 where ip6tables works; a node without it runs IPv4 only and
	// leaves IPv6 (kube-proxy's rules included) alone.
	var ipt6 *iptables.CachedLister
	if raw6, err := iptables.NewExec6(variant); err != nil {
		klog.FromContext(ctx).Info("No working ip6tables: IPv4 only", "err", err)
	} else {
		ipt6 = iptables.NewCachedLister(raw6)
	}
	kernel := ipvs.NewKernel()
	kubeProxy := []proxy.Leftovers{iptables.KubeProxyLeftovers(ipt, optional(ipt6))}
	switch o.Mode {
	case config.ModeIPVS:
		if !kernel.Available() {
			return cfg, fmt.Errorf("--mode=ipvs: the kernel has no IPVS (modprobe ip_vs, or use --mode=iptables)")
		}
		opts := o.IPVSOptions()
		// IPv6 where ip6tables works and the kernel can bind IPv6
		// addresses: elsewhere every sync would fail on them.
		opts.IPv6 = ipt6 != nil
		if why := ipvs.IPv6Unusable(kernel); opts.IPv6 && why != "" {
			klog.FromContext(ctx).Info("IPVS mode programs IPv4 only", "why", why)
			opts.IPv6 = false
		}
		opts, err := ipvs.HostOptions(kernel, opts, o.NodePortAddressPrefixes())
		if err != nil {
			return cfg, err
		}
		if err := opts.Validate(); err != nil {
			return cfg, err
		}
		be := ipvs.NewDualStackBackend(kernel, ipt, optional(ipt6), opts).WithHostAddresses(func() (local, node []netip.Addr, err error) {
			h, err := ipvs.HostOptions(kernel, opts, o.NodePortAddressPrefixes())
			return h.LocalAddresses, h.NodeAddresses, err
		})
		cfg.Backend = be
		cfg.Leftovers = []proxy.Leftovers{iptables.ModeLeftovers(ipt, optional(ipt6)), nftables.ModeLeftovers()}
		kubeProxy = append(kubeProxy, be.KubeProxyLeftovers())
		klog.FromContext(ctx).Info("Using IPVS", "scheduler", opts.Scheduler, "nodeAddresses", opts.NodeAddresses, "iptablesVariant", variant, "ipv6", opts.IPv6)
	case config.ModeNFTables:
		be, ipv6, err := nftablesBackend(ctx, o)
		if err != nil {
			return cfg, err
		}
		cfg.Backend = be
		// After our first sync: the other modes' objects, of both
		// families (iptables mode's IPv6 chains cannot be in the way).
		cfg.Leftovers = []proxy.Leftovers{iptables.ModeLeftovers(ipt, optional(ipt6)), ipvs.ModeLeftovers(kernel, ipt, optional(ipt6))}
		// kube-proxy's IPv6 rules go only where we program IPv6.
		kp6 := optional(ipt6)
		if !ipv6 {
			kp6 = nil
		}
		kubeProxy = []proxy.Leftovers{iptables.KubeProxyLeftovers(ipt, kp6), ipvs.KubeProxyNodePortLeftovers(kernel)}
		klog.FromContext(ctx).Info("Using nftables", "table", nftables.TableName, "ipv6", ipv6)
	default:
		cfg.Backend = iptables.NewDualStackBackend(ipt, o.IPTablesOptions(false), optional(ipt6), o.IPTablesOptions(true))
		cfg.Leftovers = []proxy.Leftovers{ipvs.ModeLeftovers(kernel, ipt, optional(ipt6)), nftables.ModeLeftovers()}
		kubeProxy = append(kubeProxy, ipvs.KubeProxyNodePortLeftovers(kernel))
		klog.FromContext(ctx).Info("Using iptables", "variant", variant, "ipv6", ipt6 != nil)
	}
	if o.RemoveKubeProxyRules {
		cfg.Leftovers = append(cfg.Leftovers, kubeProxy...)
	}
	// Last: the listing is not needed any more (a retry reads afresh).
	cfg.Leftovers = append(cfg.Leftovers, proxy.LeftoversFunc{What: "the start-up iptables listing",
		Func: func(context.Context) (int, error) {
			ipt.Forget()
			if ipt6 != nil {
				ipt6.Forget()
			}
			return 0, nil
		}})
	return cfg, nil
}

// newNFT returns the knftables Interface of our table of a family (tests
// replace it).
var newNFT = nftables.New

// nftablesBackend returns nftables mode's backend: the ip table always
// (nft must work), the ip6 one where nft works for ip6 too (ipv6 true).
func nftablesBackend(ctx context.Context, o *config.Config) (be *nftables.Backend, ipv6 bool, err error) {
	nft4, err := newNFT(nftables.Families[0])
	if err != nil {
		return nil, false, fmt.Errorf("--mode=nftables: %w (install nftables, or use --mode=iptables)", err)
	}
	v4 := nftables.FamilyConfig{NFT: nft4, Lister: nftables.NewNetlinkLister(nftables.Families[0], nftables.TableName), Opts: o.NFTablesOptions(false)}
	nft6, err := newNFT(nftables.Families[1])
	if err != nil {
		klog.FromContext(ctx).Info("nft does not work for ip6: IPv4 only", "err", err)
		return nftables.NewBackend(v4, nil), false, nil
	}
	v6 := nftables.FamilyConfig{NFT: nft6, Lister: nftables.NewNetlinkLister(nftables.Families[1], nftables.TableName), Opts: o.NFTablesOptions(true)}
	return nftables.NewBackend(v4, &v6), true, nil
}

// optional returns c as an Interface, nil for a nil c (not a typed nil).
func optional(c *iptables.CachedLister) iptables.Interface {
	if c == nil {
		return nil
	}
	return c
}

// newSource returns the --state file source or the API server's.
func newSource(o *config.Config, h proxy.Handler, onAPIHealth func(error)) (daemon.Source, error) {
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
	ks := source.NewKubeSource(client, o.NodeName(), h, 0)
	ks.OnAPIHealth = onAPIHealth
	ks.HealthInterval = min(5*time.Second, o.SyncPeriod/2)
	return ks, nil
}

// dryRun prints what svcproxy would program, from --state or from the API
// server once its objects are listed. In IPVS mode the node addresses are
// the local machine's when it has IPVS, none otherwise (a --state dry run
// on a laptop).
func dryRun(ctx context.Context, o *config.Config, out io.Writer) error {
	tracker := proxy.NewTracker(o.NodeName(), nil, nil)
	if o.State != "" {
		if err := source.NewFileSource(o.State, tracker, o.StatePoll).Load(); err != nil {
			return err
		}
	} else {
		src, err := newSource(o, tracker, nil)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if _, err := daemon.StartSource(ctx, src); err != nil {
			return err
		}
	}
	snap, _ := tracker.Snapshot()
	var text string
	switch o.Mode {
	case config.ModeIPVS:
		k := ipvs.NewKernel()
		defer k.Close()
		// The families the Snapshot has; IPv4 alone when it has none.
		opts := o.IPVSOptions()
		has := families(snap)
		opts.IPv4, opts.IPv6 = has[v1.IPv4Protocol] || !has[v1.IPv6Protocol], has[v1.IPv6Protocol]
		opts, err := ipvs.HostOptions(k, opts, o.NodePortAddressPrefixes())
		if err != nil {
			return err
		}
		text = ipvs.Render(snap, opts).Dump()
	case config.ModeNFTables:
		var err error
		if text, err = dryRunNFTables(ctx, snap, o); err != nil {
			return err
		}
	default:
		text = dryRunIPTables(snap, o)
	}
	_, err := io.WriteString(out, text)
	return err
}

// dryRunIPTables renders iptables mode for every family the Snapshot has.
// With only IPv4 the text is what iptables-restore --noflush takes, as
// ever; otherwise each family's ruleset follows a comment line naming the
// command that takes it as it stands.
func dryRunIPTables(snap *proxy.Snapshot, o *config.Config) string {
	has := families(snap)
	v4 := iptables.Render(snap, o.IPTablesOptions(false)).String()
	if !has[v1.IPv6Protocol] {
		return v4
	}
	v6 := "# ip6tables-restore --noflush\n" + iptables.Render(snap, o.IPTablesOptions(true)).String()
	if !has[v1.IPv4Protocol] {
		return v6
	}
	return "# iptables-restore --noflush\n" + v4 + v6
}

// dryRunNFTables renders nftables mode: the nft -f input that programs an
// empty namespace as svcproxy does, the ip table and, when the Snapshot
// has IPv6 service ports, the ip6 one.
func dryRunNFTables(ctx context.Context, snap *proxy.Snapshot, o *config.Config) (string, error) {
	plans := []*nftables.Plan{nftables.Render(snap, o.NFTablesOptions(false))}
	if families(snap)[v1.IPv6Protocol] {
		plans = append(plans, nftables.Render(snap, o.NFTablesOptions(true)))
	}
	return nftables.DryRun(ctx, plans...)
}

// families returns the IP families of the Snapshot's service ports.
func families(snap *proxy.Snapshot) map[v1.IPFamily]bool {
	has := map[v1.IPFamily]bool{}
	for _, sp := range snap.ServicePorts() {
		has[sp.IPFamily] = true
	}
	return has
}

// cleanup removes everything of every mode: nftables mode's tables, IPVS
// mode's objects (its virtual servers, dummy link, ipsets and SVCP-IPVS-
// chains; nothing, and no module loaded, on a host that never ran it),
// then iptables mode's of both families.
func cleanup(ctx context.Context) error {
	variant := iptables.DetectVariant()
	ipt, err := iptables.NewExec(variant)
	if err != nil {
		return err
	}
	var ipt6 iptables.Interface
	if e6, err := iptables.NewExec6(variant); err == nil {
		ipt6 = e6
	}
	k := ipvs.NewKernel()
	defer k.Close()
	for _, l := range []proxy.Leftovers{nftables.ModeLeftovers(), ipvs.ModeLeftovers(k, ipt, ipt6), iptables.ModeLeftovers(ipt, ipt6)} {
		if _, err := l.Remove(ctx); err != nil {
			return fmt.Errorf("removing %s: %w", l.Name(), err)
		}
	}
	klog.FromContext(ctx).Info("Removed svcproxy's rules", "variant", variant, "ipvs", k.Available())
	return nil
}
