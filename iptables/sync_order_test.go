package iptables_test

import (
	"net/netip"
	"testing"

	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestSyncNeverBlackholesBetweenRestores replays a sync restore by restore
// (iptables-restore commits each call, and each table of a call, on its own)
// and traces a new connection after every step: a service gaining or losing
// its endpoints must be DNATed or rejected at every moment, never left
// without either (a connection that hangs, and a conntrack entry without NAT
// that outlives the change).
func TestSyncNeverBlackholesBetweenRestores(t *testing.T) {
	svc := pt.Service("ns", "web", "10.96.0.20", "http", 80)
	withEndpoints := pt.Slice("ns", "web", "web-1", "http", 8080, pt.Ready("10.244.2.2", "node2"))
	empty := pt.Slice("ns", "web", "web-1", "http", 8080)
	opts := iptables.DefaultOptions()
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	pkt := iptablestest.Packet{SrcIP: netip.MustParseAddr("10.244.1.5"), DstIP: netip.MustParseAddr("10.96.0.20"),
		Proto: "tcp", DstPort: 80, LocalAddrs: []netip.Addr{netip.MustParseAddr("192.168.0.1")}}

	for _, tc := range []struct {
		name     string
		from, to *discovery.EndpointSlice
	}{
		{name: "0 -> 1 endpoints", from: empty, to: withEndpoints},
		{name: "1 -> 0 endpoints", from: withEndpoints, to: empty},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := proxy.NewTracker("node1", nil, nil)
			tr.OnServiceUpdate(nil, svc)
			tr.OnEndpointSliceUpdate(nil, tc.from)
			fake := iptablestest.NewFake()
			syncer := iptables.NewSyncer(fake, 0)
			r := iptables.NewRenderer(opts)
			snap, _ := tr.Snapshot()
			if _, err := syncer.Sync(r.Render(snap), true); err != nil {
				t.Fatal(err)
			}
			before := len(fake.Restores())
			tr.OnEndpointSliceUpdate(tc.from, tc.to)
			snap, _ = tr.Snapshot()
			if _, err := syncer.Sync(r.Render(snap), false); err != nil {
				t.Fatal(err)
			}
			// Replay: the state before the partial sync, then each restore.
			replay := iptablestest.NewFake()
			all := fake.Restores()
			for i, in := range all {
				if err := replay.Restore(in); err != nil {
					t.Fatalf("replaying restore %d: %v", i, err)
				}
				if i == before-1 {
					// The full sync ended with its jumps (EnsureJump).
					for _, j := range r.Render(snap).InsertOrder() {
						if err := replay.EnsureJump(j); err != nil {
							t.Fatal(err)
						}
					}
				}
				if i < before-1 {
					continue
				}
				outs, err := replay.Trace(pkt)
				if err != nil {
					t.Fatal(err)
				}
				for _, o := range outs {
					if o.Verdict == "ACCEPT" && !o.DNAT.IsValid() {
						t.Errorf("after restore %d of %d the connection is accepted without DNAT (blackholed): %v\n%s", i+1, len(all), outs, replay.Dump())
					}
				}
			}
		})
	}
}
