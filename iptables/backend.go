package iptables

import (
	"context"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy"
)

// Backend is iptables mode as a proxy.Backend: Render (with a per-port
// cache) and the Syncer's partial syncs.
type Backend struct {
	renderer *Renderer
	syncer   *Syncer
	ipt      Interface
	// applied is the last plan synced successfully; nil before.
	applied *Plan
}

var _ proxy.Backend = (*Backend)(nil)

// NewBackend returns iptables mode programming through ipt.
func NewBackend(ipt Interface, opts Options) *Backend {
	return &Backend{renderer: NewRenderer(opts), syncer: NewSyncer(ipt, 0), ipt: ipt}
}

// Sync implements proxy.Backend.
func (b *Backend) Sync(_ context.Context, snap *proxy.Snapshot, full bool) (proxy.SyncResult, error) {
	plan := b.renderer.Render(snap)
	res, err := b.syncer.Sync(plan, full)
	if err != nil {
		b.applied = nil
	} else {
		b.applied = plan
	}
	return result(plan, res, full), err
}

// CheckDrift implements proxy.DriftChecker (see CheckDrift).
func (b *Backend) CheckDrift(context.Context) (string, error) {
	if b.applied == nil {
		return "", nil
	}
	return CheckDrift(b.ipt, b.applied, RootChains)
}

// result sums up a sync of plan for the daemon's logs and metrics.
func result(plan *Plan, res SyncResult, full bool) proxy.SyncResult {
	out := proxy.SyncResult{Full: res.Full || full, ChainsWritten: res.ChainsWritten, ChainsDeleted: res.ChainsDeleted,
		Restores: res.Restores, Rules: map[string]int{}, RulesWritten: res.RulesWritten, StaleErr: res.StaleErr}
	for _, t := range plan.Tables() {
		out.Chains += len(t.Chains)
		for _, c := range t.Chains {
			out.Rules[t.Name] += len(c.Rules)
		}
	}
	return out
}

// Result is result for IPVS mode, whose plan carries an iptables Plan.
func Result(plan *Plan, res SyncResult, full bool) proxy.SyncResult { return result(plan, res, full) }

// Cleanup implements proxy.Backend: iptables mode's jumps and chains go,
// nothing else.
func (b *Backend) Cleanup(context.Context) error { return Cleanup(b.ipt) }

// ModeLeftovers removes what iptables mode left on a node now run in
// another mode (a mode switch).
func ModeLeftovers(ipt Interface) proxy.Leftovers {
	return proxy.LeftoversFunc{What: "svcproxy iptables-mode rules", Func: func(context.Context) (int, error) {
		return 0, Cleanup(ipt)
	}}
}

// KubeProxyLeftovers removes upstream kube-proxy's iptables-mode chains
// and jumps (not kubelet's) through ipt, its ip6tables ones (kube-proxy
// runs dual-stack whenever ip6tables works) with the same variant, and its
// nftables-mode tables.
func KubeProxyLeftovers(ipt Interface, variant Variant) proxy.Leftovers {
	return proxy.LeftoversFunc{What: "kube-proxy's iptables and nftables rules", Func: func(ctx context.Context) (int, error) {
		n, err := RemoveKubeProxy(ipt)
		if err != nil {
			return n, err
		}
		// IPv6 is best effort: a node without working ip6tables has none
		// of kube-proxy's rules there either, and is not retried.
		if ip6, err6 := NewExec6(variant); err6 != nil {
			klog.FromContext(ctx).V(2).Info("No ip6tables: not looking for kube-proxy's IPv6 rules", "err", err6)
		} else if n6, err6 := RemoveKubeProxy(NewCachedLister(ip6)); err6 != nil {
			klog.FromContext(ctx).Error(err6, "Removing kube-proxy's ip6tables rules failed")
		} else {
			n += n6
		}
		tables, err := RemoveKubeProxyNFT()
		return n + tables, err
	}}
}
