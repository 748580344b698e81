package iptables

import (
	"context"
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// Backend is iptables mode as a proxy.Backend: for each IP family, Render
// (with a per-port cache) and a Syncer's partial syncs through that
// family's iptables-restore. Both families are synced in one Sync; a
// failure in one leaves the other's rules in place and fails the Sync, so
// that the retry (a full sync) repairs it.
type Backend struct {
	families []*familyBackend
}

// familyBackend is the part of Backend of one IP family.
type familyBackend struct {
	family   v1.IPFamily
	renderer *Renderer
	syncer   *Syncer
	ipt      Interface
	// applied is the last plan synced successfully; nil before.
	applied *Plan
}

var _ proxy.Backend = (*Backend)(nil)

// NewBackend returns iptables mode for IPv4 only, programming through ipt.
func NewBackend(ipt Interface, opts Options) *Backend {
	return NewDualStackBackend(ipt, opts, nil, Options{})
}

// NewDualStackBackend returns iptables mode programming IPv4 through ipt
// with opts4 and IPv6 through ipt6 with opts6 (whose IPv6 is set here). A
// nil ipt6 (a node without working ip6tables) means IPv4 only.
func NewDualStackBackend(ipt Interface, opts4 Options, ipt6 Interface, opts6 Options) *Backend {
	opts4.IPv6 = false
	b := &Backend{families: []*familyBackend{{family: v1.IPv4Protocol, renderer: NewRenderer(opts4), syncer: NewSyncer(ipt, 0), ipt: ipt}}}
	if ipt6 != nil {
		opts6.IPv6 = true
		b.families = append(b.families, &familyBackend{family: v1.IPv6Protocol, renderer: NewRenderer(opts6), syncer: NewSyncer(ipt6, 0), ipt: ipt6})
	}
	return b
}

// Sync implements proxy.Backend.
func (b *Backend) Sync(_ context.Context, snap *proxy.Snapshot, full bool) (proxy.SyncResult, error) {
	var out proxy.SyncResult
	var errs []error
	for _, f := range b.families {
		plan := f.renderer.Render(snap)
		res, err := f.syncer.Sync(plan, full)
		if err != nil {
			f.applied = nil
			errs = append(errs, fmt.Errorf("%s: %w", f.family, err))
		} else {
			f.applied = plan
		}
		out.Add(f.family, result(plan, res, full))
	}
	return out, errors.Join(errs...)
}

// CheckDrift implements proxy.DriftChecker (see CheckDrift), for every
// family.
func (b *Backend) CheckDrift(context.Context) (string, error) {
	for _, f := range b.families {
		if f.applied == nil {
			continue
		}
		why, err := CheckDrift(f.ipt, f.applied, RootChains)
		if why != "" || err != nil {
			if why != "" {
				why = string(f.family) + ": " + why
			}
			return why, err
		}
	}
	return "", nil
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
// in every family, nothing else.
func (b *Backend) Cleanup(context.Context) error {
	var errs []error
	for _, f := range b.families {
		errs = append(errs, Cleanup(f.ipt))
	}
	return errors.Join(errs...)
}

// ModeLeftovers removes what iptables mode left on a node now run in
// another mode (a mode switch), through each of ipts (nil ones skipped).
func ModeLeftovers(ipts ...Interface) proxy.Leftovers {
	return proxy.LeftoversFunc{What: "svcproxy iptables-mode rules", Func: func(context.Context) (int, error) {
		var errs []error
		for _, ipt := range ipts {
			if ipt != nil {
				errs = append(errs, Cleanup(ipt))
			}
		}
		return 0, errors.Join(errs...)
	}}
}

// KubeProxyLeftovers removes upstream kube-proxy's iptables-mode chains
// and jumps (not kubelet's) through ipt and, when ipt6 is not nil, through
// ipt6: a node where svcproxy does not program IPv6 keeps kube-proxy's
// IPv6 rules (removing them would break IPv6 Services). Then kube-proxy's
// nftables-mode tables go, its ip6 one only with ipt6.
func KubeProxyLeftovers(ipt, ipt6 Interface) proxy.Leftovers {
	return proxy.LeftoversFunc{What: "kube-proxy's iptables and nftables rules", Func: func(ctx context.Context) (int, error) {
		n, err := RemoveKubeProxy(ipt)
		if err != nil {
			return n, err
		}
		families := []string{"ip"}
		if ipt6 != nil {
			n6, err := RemoveKubeProxy(ipt6)
			n += n6
			if err != nil {
				return n, fmt.Errorf("ip6tables: %w", err)
			}
			families = append(families, "ip6")
		}
		tables, err := RemoveKubeProxyNFT(families...)
		return n + tables, err
	}}
}
