package app

import (
	"context"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxy"
)

// backend is a data plane: it owns rendering and applying a Snapshot,
// nothing else.
type backend interface {
	// Sync programs snap; full asks for a full resync.
	Sync(snap *proxy.Snapshot, full bool) (syncResult, error)
}

// syncResult says what a sync did, for logs and metrics.
type syncResult struct {
	Full                                   bool
	ChainsWritten, ChainsDeleted, Restores int
	Chains                                 int
	Rules, RulesWritten                    map[string]int // per table
}

// TotalRules sums the rules of every table.
func (r syncResult) TotalRules() int {
	n := 0
	for _, v := range r.Rules {
		n += v
	}
	return n
}

// iptablesBackend is --mode=iptables.
type iptablesBackend struct {
	renderer *iptables.Renderer
	syncer   *iptables.Syncer
	ipt      iptables.Interface
	variant  iptables.Variant
	// kubeIPVS is set once kube-proxy's kube-ipvs0 was seen, so that a
	// retry still destroys its ipsets after the link went.
	kubeIPVS bool
}

// kubeProxyRemover is a backend that can remove upstream kube-proxy's
// leftovers (--remove-kube-proxy-rules) once its own rules are in place.
type kubeProxyRemover interface {
	removeKubeProxy(ctx context.Context) error
}

// removeKubeProxy removes kube-proxy's iptables-mode chains (with the
// iptables variant svcproxy uses) and its nftables-mode tables.
// kube-proxy runs dual-stack whenever ip6tables works, so its ip6tables
// chains go too (svcproxy itself programs IPv4 only).
//
// Then kube-proxy's IPVS mode goes, only where its kube-ipvs0 exists (so
// that nothing is loaded on a host without IPVS): every virtual server on
// kube-ipvs0 and, on the node's addresses, in the node-port range (a node
// port we serve is DNATed before IPVS sees it, but one we do not serve
// would still be answered by kube-proxy's stale virtual server), the link,
// and its KUBE- ipsets.
func (b *iptablesBackend) removeKubeProxy(ctx context.Context) error {
	if err := removeKubeProxyRules(ctx, b.ipt, b.variant); err != nil {
		return err
	}
	k := ipvs.NewKernel()
	defer k.Close()
	if !b.kubeIPVS && !ipvs.KubeProxyPresent(k) {
		return nil
	}
	b.kubeIPVS = true
	opts := ipvs.DefaultOptions()
	if k.Available() {
		addrs, err := k.LocalAddresses(nil)
		if err != nil {
			return err
		}
		opts.NodeAddresses = addrs
	}
	n, err := ipvs.RemoveKubeProxyNodePorts(k, nil, opts)
	if n > 0 {
		klog.FromContext(ctx).Info("Removed kube-proxy's IPVS-mode leftovers", "objects", n)
	}
	return err
}

// removeKubeProxyRules removes kube-proxy's leftovers in either mode of
// ours: its iptables-mode chains through ipt, its ip6tables ones, and its
// nftables tables.
func removeKubeProxyRules(ctx context.Context, ipt iptables.Interface, variant iptables.Variant) error {
	n, err := iptables.RemoveKubeProxy(ipt)
	if err != nil {
		return err
	}
	// IPv6 is best effort: a node without working ip6tables has none of
	// kube-proxy's rules there either, and is not retried every sync.
	n6 := 0
	if ip6, err6 := iptables.NewExec6(variant); err6 != nil {
		klog.FromContext(ctx).V(2).Info("No ip6tables: not looking for kube-proxy's IPv6 rules", "err", err6)
	} else if n6, err6 = iptables.RemoveKubeProxy(ip6); err6 != nil {
		klog.FromContext(ctx).Error(err6, "Removing kube-proxy's ip6tables rules failed")
	}
	tables, err := iptables.RemoveKubeProxyNFT()
	if n > 0 || n6 > 0 || tables > 0 {
		klog.FromContext(ctx).Info("Removed kube-proxy's leftover rules", "iptables", n, "ip6tables", n6, "nftablesTables", tables)
	}
	return err
}

// otherModeRemover is a backend that removes what the other mode left on
// the node (a mode switch), once its own state is in place.
type otherModeRemover interface {
	removeOtherMode(ctx context.Context) error
}

func (o *Options) newBackend(ctx context.Context) (backend, error) {
	if o.Mode == ModeIPVS {
		return o.newIPVSBackend(ctx)
	}
	variant := iptables.DetectVariant()
	ipt, err := iptables.NewExec(variant)
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("Using iptables", "variant", variant)
	return &iptablesBackend{renderer: iptables.NewRenderer(o.iptablesOptions()), syncer: iptables.NewSyncer(ipt, 0), ipt: ipt, variant: variant}, nil
}

func (b *iptablesBackend) Sync(snap *proxy.Snapshot, full bool) (syncResult, error) {
	plan := b.renderer.Render(snap)
	res, err := b.syncer.Sync(plan, full)
	out := syncResult{Full: res.Full || full, ChainsWritten: res.ChainsWritten, ChainsDeleted: res.ChainsDeleted,
		Restores: res.Restores, Rules: map[string]int{}, RulesWritten: res.RulesWritten}
	for _, t := range plan.Tables() {
		out.Chains += len(t.Chains)
		for _, c := range t.Chains {
			out.Rules[t.Name] += len(c.Rules)
		}
	}
	return out, err
}
