package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxy"
)

// Backend is IPVS mode as a proxy.Backend: Render and the Applier.
type Backend struct {
	opts      Options
	k         Interface
	ipt, ipt6 iptables.Interface
	applier   *Applier
	// plan is the last plan synced: its virtual servers are ours when
	// kube-proxy's leftovers are removed (in the background: planMu).
	planMu sync.Mutex
	plan   *Plan
	// applied is the last plan synced successfully; nil before.
	applied *Plan
	// hostAddresses lists the node's addresses (Options.LocalAddresses
	// and NodeAddresses) afresh; nil: fixed at start.
	hostAddresses func() (local, node []netip.Addr, err error)
}

// WithHostAddresses makes every full sync list the node's addresses
// through f, so that node ports follow addresses that come and go (IPv6
// addresses from router advertisements or DHCPv6 arrive after boot) and
// service addresses that are the node's own are not bound. It returns b.
func (b *Backend) WithHostAddresses(f func() (local, node []netip.Addr, err error)) *Backend {
	b.hostAddresses = f
	return b
}

var _ proxy.Backend = (*Backend)(nil)

// NewBackend returns IPVS mode acting through k and ipt with opts, which
// must be valid (Options.Validate) and carry the node addresses.
func NewBackend(k Interface, ipt iptables.Interface, opts Options) *Backend {
	return NewDualStackBackend(k, ipt, nil, opts)
}

// NewDualStackBackend is NewBackend with ip6tables: ipt6 must be non-nil
// when opts.IPv6 is set.
func NewDualStackBackend(k Interface, ipt, ipt6 iptables.Interface, opts Options) *Backend {
	return &Backend{opts: opts, k: k, ipt: ipt, ipt6: ipt6, applier: NewDualStackApplier(k, ipt, ipt6, opts, nil)}
}

// HostOptions returns opts with the node's addresses (LocalAddresses) and
// those NodePorts answer on: the ones within nodePortAddresses, per family
// (all but loopback and link-local of a family without a prefix). Without IPVS in the kernel there are none; nothing is loaded.
func HostOptions(k *Kernel, opts Options, nodePortAddresses []netip.Prefix) (Options, error) {
	if !k.Available() {
		return opts, nil
	}
	all, err := k.LocalAddresses(nil)
	if err != nil {
		return opts, fmt.Errorf("listing the node's addresses: %w", err)
	}
	opts.LocalAddresses = all
	opts.NodeAddresses = nil
	for _, a := range all {
		if within(a, nodePortAddresses) {
			opts.NodeAddresses = append(opts.NodeAddresses, a)
		}
	}
	return opts, nil
}

// Sync implements proxy.Backend.
func (b *Backend) Sync(ctx context.Context, snap *proxy.Snapshot, full bool) (proxy.SyncResult, error) {
	if full && b.hostAddresses != nil {
		b.refreshAddresses(ctx)
	}
	plan := Render(snap, b.opts)
	res, err := b.applier.Sync(ctx, plan, full)
	b.planMu.Lock()
	b.plan = plan
	b.planMu.Unlock()
	b.applied = nil
	if err == nil {
		b.applied = plan
	}
	if res.Draining > 0 || res.Drained > 0 {
		klog.FromContext(ctx).V(2).Info("Draining removed real servers", "draining", res.Draining, "deleted", res.Drained)
	}
	var out proxy.SyncResult
	if plan.IPTables != nil {
		out.Add(v1.IPv4Protocol, iptables.Result(plan.IPTables, res.IPTables, res.Full))
	}
	if plan.IPTables6 != nil {
		out.Add(v1.IPv6Protocol, iptables.Result(plan.IPTables6, res.IPTables6, res.Full))
	}
	return out, err
}

// refreshAddresses lists the node's addresses and takes them when they
// changed; a failure keeps the old ones.
func (b *Backend) refreshAddresses(ctx context.Context) {
	logger := klog.FromContext(ctx)
	local, node, err := b.hostAddresses()
	if err != nil {
		logger.Error(err, "Listing the node's addresses failed; keeping the ones known", "nodeAddresses", b.opts.NodeAddresses)
		return
	}
	if slices.Equal(local, b.opts.LocalAddresses) && slices.Equal(node, b.opts.NodeAddresses) {
		return
	}
	logger.Info("The node's addresses changed", "nodeAddresses", node, "was", b.opts.NodeAddresses)
	b.opts.LocalAddresses, b.opts.NodeAddresses = local, node
	b.applier.SetHostAddresses(local, node)
}

// CheckDrift implements proxy.DriftChecker: the jumps into IPVS mode's
// chains and their rule counts (iptables.CheckDrift), and the service
// addresses on the dummy link (without them IPVS never sees the packets).
// Virtual servers are not listed: a full sync repairs those every sync
// period.
func (b *Backend) CheckDrift(context.Context) (string, error) {
	plan := b.applied
	if plan == nil {
		return "", nil
	}
	roots := []string{ServicesChain, PostroutingChain, FilterChain, ForwardChain}
	if plan.IPTables != nil {
		if why, err := iptables.CheckDrift(b.ipt, plan.IPTables, roots); why != "" || err != nil {
			return why, err
		}
	}
	if plan.IPTables6 != nil && b.ipt6 != nil {
		if why, err := iptables.CheckDrift(b.ipt6, plan.IPTables6, roots); why != "" || err != nil {
			if why != "" {
				why = "IPv6: " + why
			}
			return why, err
		}
	}
	addrs, err := b.k.ListAddresses(plan.Interface)
	switch {
	case IsNotFound(err):
		return fmt.Sprintf("link %s is missing", plan.Interface), nil
	case err != nil:
		return "", err
	case len(addrs) != len(plan.Addresses):
		return fmt.Sprintf("link %s has %d addresses, want %d", plan.Interface, len(addrs), len(plan.Addresses)), nil
	}
	return "", nil
}

// Cleanup implements proxy.Backend: everything of IPVS mode goes (see
// Cleanup).
func (b *Backend) Cleanup(context.Context) error { return Cleanup(b.k, b.ipt, b.ipt6, b.opts) }

// KubeProxyLeftovers removes upstream kube-proxy's IPVS-mode virtual
// servers on kube-ipvs0 (but those whose key is in our last plan: ours
// now), kube-ipvs0 and its KUBE- ipsets. Node-port virtual servers are the
// Applier's. Run it after iptables.KubeProxyLeftovers: an ipset cannot go
// while kube-proxy's chains still reference it.
func (b *Backend) KubeProxyLeftovers() proxy.Leftovers {
	return proxy.LeftoversFunc{What: "kube-proxy's IPVS-mode objects", Func: func(context.Context) (int, error) {
		var svcs []*VirtualServer
		b.planMu.Lock()
		if b.plan != nil {
			svcs = b.plan.Services
		}
		b.planMu.Unlock()
		ours := func(k ServiceKey) bool {
			_, found := slices.BinarySearchFunc(svcs, k, func(vs *VirtualServer, k ServiceKey) int { return vs.Compare(k) })
			return found
		}
		return RemoveKubeProxy(b.k, ours)
	}}
}

// ModeLeftovers removes what IPVS mode left on a node now run in iptables
// mode (a mode switch), its ip6tables rules through ipt6 unless nil. On a
// host that never ran IPVS it changes nothing and loads no module.
func ModeLeftovers(k *Kernel, ipt, ipt6 iptables.Interface) proxy.Leftovers {
	return proxy.LeftoversFunc{What: "svcproxy IPVS-mode objects", Func: func(context.Context) (int, error) {
		opts, err := HostOptions(k, DefaultOptions(), nil)
		if err != nil {
			return 0, err
		}
		return RemoveAll(k, ipt, ipt6, opts)
	}}
}

// KubeProxyNodePortLeftovers removes upstream kube-proxy's IPVS mode from a
// node svcproxy runs in iptables mode, only where its kube-ipvs0 exists
// (so that nothing is loaded on a host without IPVS): every virtual server
// on kube-ipvs0 and, on the node's addresses, in the node-port range (see
// RemoveKubeProxyNodePorts), the link and its KUBE- ipsets.
func KubeProxyNodePortLeftovers(k *Kernel) proxy.Leftovers {
	seen := false // a retry still destroys the ipsets after the link went
	return proxy.LeftoversFunc{What: "kube-proxy's IPVS-mode objects", Func: func(context.Context) (int, error) {
		if !seen && !KubeProxyPresent(k) {
			return 0, nil
		}
		seen = true
		opts, err := HostOptions(k, DefaultOptions(), nil)
		if err != nil {
			return 0, err
		}
		return RemoveKubeProxyNodePorts(k, nil, opts)
	}}
}
