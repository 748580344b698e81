package app

import (
	"context"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
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
}

func (o *Options) newBackend(ctx context.Context) (backend, error) {
	variant := iptables.DetectVariant()
	ipt, err := iptables.NewExec(variant)
	if err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("Using iptables", "variant", variant)
	return &iptablesBackend{renderer: iptables.NewRenderer(o.iptablesOptions()), syncer: iptables.NewSyncer(ipt, 0)}, nil
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
