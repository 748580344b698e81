package ipvs_test

import (
	"context"
	"fmt"
	"testing"

	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/ipvs"
	ipvstest "github.com/svcproxy/svcproxy/ipvs/testing"
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

var sizes = []int{1000, 10000, 30000}

// benchCluster returns a tracker holding n services × 5 endpoints, and the
// slices (to change one).
func benchCluster(n int) (*proxy.Tracker, []any) {
	svcs, slices := pt.Generate(n, 5)
	tr := proxy.NewTracker("node1", nil, nil)
	for _, s := range svcs {
		tr.OnServiceUpdate(nil, s)
	}
	var sl []any
	for _, s := range slices {
		tr.OnEndpointSliceUpdate(nil, s)
		sl = append(sl, s)
	}
	return tr, sl
}

// BenchmarkRender renders the whole plan of n services × 5 endpoints.
func BenchmarkRender(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			tr, _ := benchCluster(n)
			snap, _ := tr.Snapshot()
			opts := options()
			var plan *ipvs.Plan
			b.ReportAllocs()
			for b.Loop() {
				plan = ipvs.Render(snap, opts)
			}
			vs, rs, _, entries := plan.Stats()
			b.ReportMetric(float64(vs), "virtual-servers")
			b.ReportMetric(float64(rs), "real-servers")
			b.ReportMetric(float64(entries), "set-entries")
		})
	}
}

// BenchmarkRenderDiff: one endpoint changes; render the new plan and diff
// it against the previous one (what a partial sync computes).
func BenchmarkRenderDiff(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			tr, _ := benchCluster(n)
			snap, _ := tr.Snapshot()
			opts := options()
			before := ipvs.StateOf(ipvs.Render(snap, opts))
			svcs, slices := pt.Generate(n, 5)
			_ = svcs
			s := slices[n/2].DeepCopy()
			s.Endpoints[0].Addresses[0] = "10.250.0.1"
			tr.OnEndpointSliceUpdate(slices[n/2], s)
			snap, _ = tr.Snapshot()
			var ops int
			b.ReportAllocs()
			for b.Loop() {
				c := ipvs.Diff(ipvs.Render(snap, opts), before)
				ops = len(c.Add) + len(c.Remove)
			}
			b.ReportMetric(float64(ops), "ops")
		})
	}
}

// BenchmarkApplierSync: a partial sync of one endpoint change through the
// Applier on fakes (render, diff against memory, apply, iptables rules
// unchanged): svcproxy's own cost, not the kernel's.
func BenchmarkApplierSync(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			tr, _ := benchCluster(n)
			_, slices := pt.Generate(n, 5)
			opts := options()
			opts.GracefulTimeout = 0
			k, ipt := ipvstest.NewFake(), iptablestest.NewFake()
			if err := k.UseIPTables(ipt); err != nil {
				b.Fatal(err)
			}
			a := ipvs.NewApplier(k, ipt, opts, nil)
			snap, _ := tr.Snapshot()
			if _, err := a.Sync(context.Background(), ipvs.Render(snap, opts), true); err != nil {
				b.Fatal(err)
			}
			orig := slices[n/2]
			changed := orig.DeepCopy()
			changed.Endpoints[0].Addresses[0] = "10.250.0.1"
			cur := orig
			b.ReportAllocs()
			for b.Loop() {
				next := changed
				if cur == changed {
					next = orig
				}
				tr.OnEndpointSliceUpdate(cur, next)
				cur = next
				snap, _ := tr.Snapshot()
				if _, err := a.Sync(context.Background(), ipvs.Render(snap, opts), false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
