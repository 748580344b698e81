package iptables_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/proxy"
)

// IPv6 address plan: pods fd00:10:244:1::/64 on node1 (this node) and
// fd00:10:244:2::/64 on node2, services fd00:10:96::/112, node
// 2001:db8::1 (and a link-local fe80::1), outside client 2001:db8:1::9.
var (
	node6    = netip.MustParseAddr("2001:db8::1")
	linkLoc6 = netip.MustParseAddr("fe80::1")
	podHere6 = netip.MustParseAddr("fd00:10:244:1::5")
	outside6 = netip.MustParseAddr("2001:db8:1::9")
)

func ep6(ip string, local bool) *proxy.Endpoint {
	node := "node2"
	if local {
		node = "node1"
	}
	return &proxy.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Serving: true, NodeName: node, IsLocal: local}
}

// port6 is a service port of ns/name at clusterIP with eps, used by every
// traffic path.
func port6(name, clusterIP string, port, nodePort int32, eps ...*proxy.Endpoint) *proxy.ServicePort {
	sp := &proxy.ServicePort{
		Name:         proxy.ServicePortName{Namespace: "ns", Name: name, Port: "http", Protocol: v1.ProtocolTCP},
		Protocol:     v1.ProtocolTCP,
		Port:         port,
		ClusterIP:    netip.MustParseAddr(clusterIP),
		NodePort:     nodePort,
		AllEndpoints: eps, ClusterEndpoints: eps, UsesClusterEndpoints: true,
	}
	for _, e := range eps {
		if e.IsLocal {
			sp.LocalEndpoints = append(sp.LocalEndpoints, e)
		}
	}
	return sp
}

func TestIPv6Render(t *testing.T) {
	var ports []*proxy.ServicePort
	// Enough services to build a dispatch tree.
	for i := range 40 {
		ports = append(ports, port6(fmt.Sprintf("svc%d", i), fmt.Sprintf("fd00:10:96::%x", 0x100+i), 80, 0, ep6("fd00:10:244:2::10", false)))
	}
	web := port6("web", "fd00:10:96::10", 80, 30080, ep6("fd00:10:244:1::10", true), ep6("fd00:10:244:2::10", false))
	empty := port6("empty", "fd00:10:96::20", 80, 0)
	// An IPv4 port in the same Snapshot belongs to the other plan.
	v4 := port6("v4", "10.96.0.10", 80, 0, &proxy.Endpoint{IP: netip.MustParseAddr("10.244.2.10"), Port: 8080, Ready: true, Serving: true, NodeName: "node2"})
	ports = append(ports, web, empty, v4)
	snap := proxy.NewSnapshot("node1", "", ports)

	opts := iptables.DefaultOptions()
	opts.IPv6 = true
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}
	plan := iptables.Render(snap, opts)
	text := plan.String()
	for _, bad := range []string{"10.96.0.10", "/32 "} {
		if strings.Contains(text, bad) {
			t.Errorf("the IPv6 plan holds %q (IPv4)", bad)
		}
	}
	if !strings.Contains(text, ":SVCP-T6-") {
		t.Errorf("no IPv6 dispatch tree node in:\n%s", text)
	}
	if err := iptablestest.NewFake().Restore([]byte(text)); err == nil {
		t.Error("iptables-restore (IPv4) took the IPv6 plan")
	}
	fake := iptablestest.NewFake6()
	if err := fake.Restore([]byte(text)); err != nil {
		t.Fatalf("the IPv6 plan does not load: %v", err)
	}

	pkt := func(src, dst netip.Addr, port int) iptablestest.Packet {
		return iptablestest.Packet{SrcIP: src, DstIP: dst, Proto: "tcp", DstPort: port, SrcLocal: src == node6,
			LocalAddrs: []netip.Addr{node6, linkLoc6}}
	}
	for _, tc := range []struct {
		name string
		pkt  iptablestest.Packet
		want string
	}{
		{"pod to ClusterIP", pkt(podHere6, netip.MustParseAddr("fd00:10:96::10"), 80),
			"ACCEPT [fd00:10:244:1::10]:8080, ACCEPT [fd00:10:244:2::10]:8080"},
		{"pod to a service in the tree", pkt(podHere6, netip.MustParseAddr("fd00:10:96::127"), 80),
			"ACCEPT [fd00:10:244:2::10]:8080"},
		{"outside to NodePort, masqueraded", pkt(outside6, node6, 30080),
			"ACCEPT [fd00:10:244:1::10]:8080 masquerade, ACCEPT [fd00:10:244:2::10]:8080 masquerade"},
		{"no node port on a link-local address", pkt(outside6, linkLoc6, 30080), "ACCEPT"},
		{"service without endpoints is rejected", pkt(podHere6, netip.MustParseAddr("fd00:10:96::20"), 80), "REJECT"},
		{"node to ClusterIP is masqueraded", pkt(node6, netip.MustParseAddr("fd00:10:96::10"), 80),
			"ACCEPT [fd00:10:244:1::10]:8080 masquerade, ACCEPT [fd00:10:244:2::10]:8080 masquerade"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := fake.Trace(tc.pkt)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range out {
				got = append(got, o.String())
			}
			if strings.Join(got, ", ") != tc.want {
				t.Errorf("got %q, want %q", strings.Join(got, ", "), tc.want)
			}
		})
	}
}
