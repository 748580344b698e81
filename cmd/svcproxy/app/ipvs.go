package app

import (
	"context"
	"fmt"
	"slices"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxy"
)

// ipvsOptions maps the command line to IPVS mode's options; NodeAddresses
// are the caller's to fill (they need the kernel).
func (o *Options) ipvsOptions() ipvs.Options {
	opts := ipvs.DefaultOptions()
	opts.Scheduler = o.IPVSScheduler
	opts.ClusterCIDRs = o.clusterCIDRs
	opts.MasqueradeAll = o.MasqueradeAll
	opts.MasqueradeBit = o.MasqueradeBit
	return opts
}

// ipvsBackend is --mode=ipvs.
type ipvsBackend struct {
	ctx     context.Context
	opts    ipvs.Options
	kernel  *ipvs.Kernel
	ipt     iptables.Interface
	variant iptables.Variant
	applier *ipvs.Applier
	plan    *ipvs.Plan // the last one synced
}

// removeKubeProxy removes kube-proxy's iptables and nftables leftovers, then
// its IPVS mode's virtual servers on kube-ipvs0 (but those whose key is in
// our plan: ours now), kube-ipvs0 and its KUBE- ipsets (which its chains,
// gone by then, referenced). Node-port virtual servers are the Applier's.
func (b *ipvsBackend) removeKubeProxy(ctx context.Context) error {
	if err := removeKubeProxyRules(ctx, b.ipt, b.variant); err != nil {
		return err
	}
	var svcs []*ipvs.VirtualServer
	if b.plan != nil {
		svcs = b.plan.Services
	}
	ours := func(k ipvs.ServiceKey) bool {
		_, found := slices.BinarySearchFunc(svcs, k, func(vs *ipvs.VirtualServer, k ipvs.ServiceKey) int { return vs.Compare(k) })
		return found
	}
	n, err := ipvs.RemoveKubeProxy(b.kernel, ours)
	if n > 0 {
		klog.FromContext(ctx).Info("Removed kube-proxy's IPVS-mode leftovers", "objects", n)
	}
	return err
}

func (o *Options) newIPVSBackend(ctx context.Context) (*ipvsBackend, error) {
	k := ipvs.NewKernel()
	if !k.Available() {
		return nil, fmt.Errorf("--mode=ipvs: the kernel has no IPVS (modprobe ip_vs, or use --mode=iptables)")
	}
	opts := o.ipvsOptions()
	addrs, err := k.LocalAddresses(o.nodePortAddresses)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	opts.NodeAddresses = addrs
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	variant := iptables.DetectVariant()
	ipt, err := iptables.NewExec(variant)
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("Using IPVS", "scheduler", opts.Scheduler, "nodeAddresses", addrs, "iptablesVariant", variant)
	return &ipvsBackend{ctx: ctx, opts: opts, kernel: k, ipt: ipt, variant: variant, applier: ipvs.NewApplier(k, ipt, opts, nil)}, nil
}

func (b *ipvsBackend) Sync(snap *proxy.Snapshot, full bool) (syncResult, error) {
	plan := ipvs.Render(snap, b.opts)
	res, err := b.applier.Sync(b.ctx, plan, full)
	b.plan = plan
	out := syncResult{Full: res.Full, ChainsWritten: res.IPTables.ChainsWritten, ChainsDeleted: res.IPTables.ChainsDeleted,
		Restores: res.IPTables.Restores, Rules: map[string]int{}, RulesWritten: res.IPTables.RulesWritten}
	for _, t := range plan.IPTables.Tables() {
		out.Chains += len(t.Chains)
		for _, c := range t.Chains {
			out.Rules[t.Name] += len(c.Rules)
		}
	}
	if res.Draining > 0 || res.Drained > 0 {
		klog.FromContext(b.ctx).V(2).Info("Draining removed real servers", "draining", res.Draining, "deleted", res.Drained)
	}
	return out, err
}

// removeOtherMode removes what iptables mode left on the node, once IPVS
// mode's own state is in place (make before break).
func (b *ipvsBackend) removeOtherMode(ctx context.Context) error {
	return iptables.Cleanup(b.ipt)
}

// removeOtherMode removes what IPVS mode left on the node, once iptables
// mode's rules are in place. On a host that never ran IPVS it changes
// nothing and loads no module.
func (b *iptablesBackend) removeOtherMode(ctx context.Context) error {
	k := ipvs.NewKernel()
	defer k.Close()
	opts := ipvs.DefaultOptions()
	if k.Available() {
		addrs, err := k.LocalAddresses(nil)
		if err != nil {
			return err
		}
		opts.NodeAddresses = addrs
	}
	return ipvs.Cleanup(k, b.ipt, opts)
}

// dryRunIPVS prints IPVS mode's plan in the formats of ipset save, ipvsadm
// -Sn and iptables-save. The node addresses are the local machine's when it
// has IPVS, none otherwise (a --state dry run on a laptop).
func (o *Options) dryRunIPVS(snap *proxy.Snapshot) string {
	opts := o.ipvsOptions()
	k := ipvs.NewKernel()
	defer k.Close()
	if addrs, err := k.LocalAddresses(o.nodePortAddresses); err == nil {
		opts.NodeAddresses = addrs
	}
	return ipvs.Render(snap, opts).Dump()
}
