// Command applybench times svcproxy's Syncer against the real
// iptables-restore in the current network namespace (run it with
// `ip netns exec` in a fresh namespace): the first full sync of N services ×
// 5 endpoints, then single endpoint changes (partial syncs). It also prints
// the live heap of the tracker (with its Snapshot) and of the Syncer and
// renderer, which together are most of svcproxy's.
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"time"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func main() {
	n := flag.Int("services", 10000, "services")
	batch := flag.Int("batch", 0, "chains per iptables-restore in a full sync (0: default)")
	changes := flag.Int("changes", 5, "endpoint changes to time")
	variant := flag.String("variant", "", "iptables variant: nft or legacy (default: detect)")
	flag.Parse()

	heap0 := liveHeap()
	svcs, slices := pt.Generate(*n, 5)
	tr := proxy.NewTracker("node1", nil, nil)
	for _, s := range svcs {
		tr.OnServiceUpdate(nil, s)
	}
	for _, s := range slices {
		tr.OnEndpointSliceUpdate(nil, s)
	}
	old := slices[*n/2]
	svcs, slices = nil, nil // the tracker keeps none of them
	opts := iptables.DefaultOptions()
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	r := iptables.NewRenderer(opts)
	v := iptables.Variant(*variant)
	if v == "" {
		v = iptables.DetectVariant()
	}
	ipt, err := iptables.NewExec(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := iptables.NewSyncer(ipt, *batch)

	start := time.Now()
	snap, _ := tr.Snapshot()
	plan := r.Render(snap)
	rendered := time.Since(start)
	res, err := s.Sync(plan, true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	chains, rules := plan.Stats()
	fmt.Printf("services=%d chains=%d rules=%d full sync %v (render %v, %d restores)\n", *n, chains, rules, time.Since(start).Round(time.Millisecond), rendered.Round(time.Millisecond), res.Restores)
	plan = nil

	var times []time.Duration
	for i := 1; i <= *changes; i++ {
		cur := old.DeepCopy()
		cur.Endpoints[0].Addresses = []string{fmt.Sprintf("10.250.0.%d", i)}
		tr.OnEndpointSliceUpdate(old, cur)
		old = cur
		start := time.Now()
		snap, _ := tr.Snapshot()
		if _, err := s.Sync(r.Render(snap), false); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		times = append(times, time.Since(start))
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	if len(times) > 0 {
		fmt.Printf("one endpoint change: median %v (min %v, max %v)\n", times[len(times)/2].Round(time.Millisecond), times[0].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
	}
	all := liveHeap()
	runtime.KeepAlive(s)
	runtime.KeepAlive(r)
	tracker := liveHeap() // the Syncer and renderer are unreachable now
	fmt.Printf("live heap: %.1f MiB: the Syncer and renderer %.1f MiB, the tracker with its Snapshot %.1f MiB\n",
		mib(all-heap0), mib(all-tracker), mib(tracker-heap0))
	runtime.KeepAlive(tr)
	runtime.KeepAlive(snap)
}

// liveHeap returns the bytes of live heap objects (after two collections).
func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
