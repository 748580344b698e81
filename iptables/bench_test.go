package iptables

import (
	"fmt"
	"testing"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// nullIPT accepts everything and counts bytes: it measures svcproxy's own
// cost of a sync, not the kernel's.
type nullIPT struct{ bytes int }

func (n *nullIPT) Restore(data []byte) error                  { n.bytes += len(data); return nil }
func (n *nullIPT) EnsureJump(Jump) error                      { return nil }
func (n *nullIPT) DeleteJump(Jump) error                      { return nil }
func (n *nullIPT) ListChains(string) ([]string, error)        { return nil, nil }
func (n *nullIPT) ListRules(string, string) ([]string, error) { return nil, nil }

func benchTracker(b *testing.B, n int) *proxy.Tracker {
	svcs, slices := pt.Generate(n, 5)
	tr := proxy.NewTracker("node1", nil, nil)
	for _, s := range svcs {
		tr.OnServiceUpdate(nil, s)
	}
	for _, s := range slices {
		tr.OnEndpointSliceUpdate(nil, s)
	}
	return tr
}

var sizes = []int{1000, 10000, 30000}

// BenchmarkRender renders the whole ruleset of n services × 5 endpoints.
func BenchmarkRender(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap, _ := benchTracker(b, n).Snapshot()
			opts := testOptions()
			var plan *Plan
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				plan = Render(snap, opts)
			}
			chains, rules := plan.Stats()
			b.ReportMetric(float64(chains), "chains")
			b.ReportMetric(float64(rules), "rules")
		})
	}
}

// BenchmarkPartialSync measures one endpoint change end to end in
// svcproxy's own code: tracker snapshot, render, diff against what was
// applied, and the iptables-restore input produced (sent to a null
// backend). It uses the caching Renderer, as svcproxy does.
func BenchmarkPartialSync(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			svcs, slices := pt.Generate(n, 5)
			tr := proxy.NewTracker("node1", nil, nil)
			for _, s := range svcs {
				tr.OnServiceUpdate(nil, s)
			}
			for _, s := range slices {
				tr.OnEndpointSliceUpdate(nil, s)
			}
			ipt := &nullIPT{}
			syncer := NewSyncer(ipt, 0)
			renderer := NewRenderer(testOptions())
			snap, _ := tr.Snapshot()
			if _, err := syncer.Sync(renderer.Render(snap), true); err != nil {
				b.Fatal(err)
			}
			ipt.bytes = 0
			old := slices[n/2]
			var written int
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cur := old.DeepCopy()
				cur.Endpoints[0].Addresses = []string{fmt.Sprintf("10.250.%d.%d", i>>8&0xff, i&0xff)}
				tr.OnEndpointSliceUpdate(old, cur)
				old = cur
				snap, _ := tr.Snapshot()
				res, err := syncer.Sync(renderer.Render(snap), false)
				if err != nil {
					b.Fatal(err)
				}
				written += res.ChainsWritten
			}
			b.ReportMetric(float64(written)/float64(b.N), "chains-written/op")
			b.ReportMetric(float64(ipt.bytes)/float64(b.N), "restore-bytes/op")
		})
	}
}
