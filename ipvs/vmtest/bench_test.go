//go:build vm

package vmtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// BenchmarkSync measures IPVS mode against the real kernel in the VM
// (emulated with TCG, so several times slower than a real node): the first
// full sync of n services × 5 endpoints, then one endpoint change per
// iteration (partial sync), and a full resync without changes. Run it with
//
//	hack/vm/run.sh -test.run '^$' -test.bench . -test.benchtime 10x
func BenchmarkSync(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			tp := newTopology(b)
			p := newProxier(b, tp)
			svcs, slices := pt.Generate(n, 5)
			tr := proxy.NewTracker("node1", nil, nil)
			for _, s := range svcs {
				tr.OnServiceUpdate(nil, s)
			}
			for _, s := range slices {
				tr.OnEndpointSliceUpdate(nil, s)
			}
			sync := func(full bool) (ipvs.SyncResult, time.Duration) {
				snap, _ := tr.Snapshot()
				start := time.Now()
				var res ipvs.SyncResult
				must(b, inNS(tp.node, func() error {
					var err error
					res, err = p.applier.Sync(context.Background(), ipvs.Render(snap, p.opts), full)
					return err
				}))
				return res, time.Since(start)
			}
			_, first := sync(true)
			_, resync := sync(true)
			orig := slices[n/2]
			changed := orig.DeepCopy()
			changed.Endpoints[0].Addresses[0] = "10.250.0.1"
			cur := orig
			b.ResetTimer()
			for b.Loop() {
				next := changed
				if cur == changed {
					next = orig
				}
				tr.OnEndpointSliceUpdate(cur, next)
				cur = next
				if res, _ := sync(false); res.Added+res.Removed == 0 {
					b.Fatalf("endpoint change applied nothing: %+v", res)
				}
			}
			b.ReportMetric(first.Seconds(), "first-sync-s")
			b.ReportMetric(resync.Seconds(), "full-resync-s")
		})
	}
}
