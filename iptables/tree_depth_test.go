package iptables_test

import (
	"math/big"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/proxy"
)

// deepAddrs returns 9 addresses next to base and, for every nibble of the
// address, base with that nibble's top bit flipped: a tree that consumes
// 4 bits per level would need a level per nibble (31 for IPv6).
func deepAddrs(base netip.Addr) []netip.Addr {
	b := new(big.Int).SetBytes(base.AsSlice())
	bits := base.BitLen()
	var out []netip.Addr
	add := func(v *big.Int) {
		buf := make([]byte, bits/8)
		v.FillBytes(buf)
		a, _ := netip.AddrFromSlice(buf)
		out = append(out, a)
	}
	for i := range 9 {
		add(new(big.Int).Add(b, big.NewInt(int64(i))))
	}
	for n := 0; n < bits/4-1; n++ {
		flip := new(big.Int).Lsh(big.NewInt(8), uint(bits-4*(n+1)))
		add(new(big.Int).Xor(b, flip))
	}
	return out
}

// TestDispatchTreeDepthIPv6: a Service's addresses (externalIPs can be set
// by whoever creates Services) or local endpoints (a selector-less
// Service's EndpointSlice) chosen so that the IPv6 dispatch or hairpin tree
// would be 31 levels deep: nf_tables refuses a chain graph deeper than 16
// jumps ("Too many links"), which fails the IPv6 sync of every Service on
// the node. The trees stay shallow enough for the kernel whatever the
// addresses, and the deepest address still reaches its endpoint.
func TestDispatchTreeDepthIPv6(t *testing.T) {
	ext := deepAddrs(netip.MustParseAddr("fd00:10:96::a0"))
	hairpin := deepAddrs(netip.MustParseAddr("fd00:10:244:1::a0"))
	ep := &proxy.Endpoint{IP: netip.MustParseAddr("fd00:10:244:2::10"), Port: 8080, Ready: true, Serving: true, NodeName: "node2"}
	deep := &proxy.ServicePort{
		Name:     proxy.ServicePortName{Namespace: "ns", Name: "deep", Port: "http", Protocol: v1.ProtocolTCP},
		IPFamily: v1.IPv6Protocol, Protocol: v1.ProtocolTCP, Port: 80,
		ClusterIP: netip.MustParseAddr("fd00:10:96::5"), ExternalIPs: ext,
		AllEndpoints: []*proxy.Endpoint{ep}, ClusterEndpoints: []*proxy.Endpoint{ep}, UsesClusterEndpoints: true,
	}
	var local []*proxy.Endpoint
	for _, a := range hairpin {
		local = append(local, &proxy.Endpoint{IP: a, Port: 8080, Ready: true, Serving: true, NodeName: "node1", IsLocal: true})
	}
	pods := &proxy.ServicePort{
		Name:     proxy.ServicePortName{Namespace: "ns", Name: "pods", Port: "http", Protocol: v1.ProtocolTCP},
		IPFamily: v1.IPv6Protocol, Protocol: v1.ProtocolTCP, Port: 80,
		ClusterIP:    netip.MustParseAddr("fd00:10:96::6"),
		AllEndpoints: local, ClusterEndpoints: local, UsesClusterEndpoints: true,
	}
	opts := iptables.DefaultOptions()
	opts.IPv6 = true
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}
	plan := iptables.Render(proxy.NewSnapshot("node1", "", []*proxy.ServicePort{deep, pods}), opts)
	fake := iptablestest.NewFake6()
	if err := fake.Restore([]byte(plan.String())); err != nil {
		t.Fatalf("ip6tables-restore refuses the plan: %v", err)
	}
	for _, dst := range []netip.Addr{ext[0], ext[len(ext)-1], ext[9]} {
		out, err := fake.Trace(iptablestest.Packet{SrcIP: netip.MustParseAddr("2001:db8:1::9"), DstIP: dst, Proto: "tcp", DstPort: 80,
			LocalAddrs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || out[0].String() != "ACCEPT [fd00:10:244:2::10]:8080 masquerade" {
			t.Errorf("to [%s]:80: %v", dst, out)
		}
	}

	// IPv4 keys cannot go deeper than 8 levels: the same construction
	// loads (and renders as before).
	ext4 := deepAddrs(netip.MustParseAddr("10.96.0.160"))
	ep4 := &proxy.Endpoint{IP: netip.MustParseAddr("10.244.2.10"), Port: 8080, Ready: true, Serving: true, NodeName: "node2"}
	deep4 := &proxy.ServicePort{
		Name:     proxy.ServicePortName{Namespace: "ns", Name: "deep", Port: "http", Protocol: v1.ProtocolTCP},
		IPFamily: v1.IPv4Protocol, Protocol: v1.ProtocolTCP, Port: 80,
		ClusterIP: netip.MustParseAddr("10.96.0.5"), ExternalIPs: ext4,
		AllEndpoints: []*proxy.Endpoint{ep4}, ClusterEndpoints: []*proxy.Endpoint{ep4}, UsesClusterEndpoints: true,
	}
	plan4 := iptables.Render(proxy.NewSnapshot("node1", "", []*proxy.ServicePort{deep4}), iptables.DefaultOptions())
	if err := iptablestest.NewFake().Restore([]byte(plan4.String())); err != nil {
		t.Fatalf("iptables-restore refuses the IPv4 plan: %v", err)
	}
}
