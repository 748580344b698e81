package nftables

import (
	"context"
	"fmt"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// nullNFT takes every transaction and counts the bytes of its nft -f
// text: it measures svcproxy's own cost of a sync, not nft's or the
// kernel's.
type nullNFT struct {
	*knftables.Fake
	bytes, runs int
}

func (n *nullNFT) Run(_ context.Context, tx *knftables.Transaction) error {
	n.bytes += len(tx.String())
	n.runs++
	return nil
}

func benchTracker(n int) *proxy.Tracker {
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

var sizes = []int{1000, 10000}

// BenchmarkRender renders the whole table of n services × 5 endpoints.
func BenchmarkRender(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap, _ := benchTracker(n).Snapshot()
			opts := testOptions()
			var plan *Plan
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				plan = Render(snap, opts)
			}
			chains, rules, elements := plan.Stats()
			b.ReportMetric(float64(chains), "chains")
			b.ReportMetric(float64(rules), "rules")
			b.ReportMetric(float64(elements), "elements")
		})
	}
}

// BenchmarkFullSync builds the transaction of a first full sync of n
// services × 5 endpoints and its nft -f text (sent to a null nft).
func BenchmarkFullSync(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap, _ := benchTracker(n).Snapshot()
			plan := Render(snap, testOptions())
			nft := &nullNFT{Fake: knftables.NewFake(knftables.IPv4Family, TableName)}
			var ops int
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := NewSyncer(nft, FakeLister(nft.Fake)).Sync(context.Background(), plan, true)
				if err != nil {
					b.Fatal(err)
				}
				ops = res.Operations
			}
			b.ReportMetric(float64(ops), "operations")
			b.ReportMetric(float64(nft.bytes)/float64(b.N), "nft-bytes/op")
		})
	}
}

// BenchmarkPartialSync measures one endpoint change end to end in
// svcproxy's own code: tracker snapshot, render (with the Renderer's
// cache, as the Backend does), the difference from what was applied, and
// the transaction's nft -f text (sent to a null nft).
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
			nft := &nullNFT{Fake: knftables.NewFake(knftables.IPv4Family, TableName)}
			syncer := NewSyncer(nft, FakeLister(nft.Fake))
			renderer := NewRenderer(testOptions())
			snap, _ := tr.Snapshot()
			if _, err := syncer.Sync(context.Background(), renderer.Render(snap), true); err != nil {
				b.Fatal(err)
			}
			nft.bytes = 0
			old := slices[n/2]
			var written, ops int
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				cur := old.DeepCopy()
				cur.Endpoints[0].Addresses = []string{fmt.Sprintf("10.250.%d.%d", i>>8&0xff, i&0xff)}
				tr.OnEndpointSliceUpdate(old, cur)
				old = cur
				snap, _ := tr.Snapshot()
				res, err := syncer.Sync(context.Background(), renderer.Render(snap), false)
				if err != nil {
					b.Fatal(err)
				}
				written += res.ChainsWritten
				ops += res.Operations
			}
			b.ReportMetric(float64(written)/float64(b.N), "chains-written/op")
			b.ReportMetric(float64(ops)/float64(b.N), "operations/op")
			b.ReportMetric(float64(nft.bytes)/float64(b.N), "nft-bytes/op")
		})
	}
}
