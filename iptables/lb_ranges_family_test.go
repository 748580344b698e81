package iptables_test

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
)

// TestBehaviourLoadBalancerSourceRangesFailClosed: a Service that gives
// loadBalancerSourceRanges, none of them of a family (a dual-stack
// Service with IPv6 ranges only) or none that parses, admits no source
// at all to its load-balancer addresses of that family. The tracker says
// so (LoadBalancerSourceRangesSet with no range); the rules must not open
// the address to everyone instead. Cluster IP and node port stay open.
// Addresses: see behaviour_setup_test.go; 192.0.2.104-105 are the
// load-balancer IPs, 2001:db8:ffff::104 the IPv6 one.
func TestBehaviourLoadBalancerSourceRangesFailClosed(t *testing.T) {
	dual := service("lb-v6-ranges", "10.96.2.24", 80, loadBalancer("192.0.2.104", "2001:db8:50::/64"), nodePort(30104), func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.2.24", "fd00:10:96::224"}
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: "2001:db8:ffff::104"})
	})
	garbage := service("lb-bad-ranges", "10.96.2.25", 80, loadBalancer("192.0.2.105", "not-a-cidr"))
	local := service("lb-v6-ranges-local", "10.96.2.26", 80, loadBalancer("192.0.2.106", "2001:db8:50::/64"), etpLocal)
	eps := []string{"10.244.1.24:8080", "10.244.2.24:8080"}
	dual4 := slice(dual, ready("10.244.1.24", thisNode), ready("10.244.2.24", otherNode))
	dual6 := slice(dual, ready("fd00:10:244:1::24", thisNode))
	dual6.Name, dual6.AddressType = "lb-v6-ranges-v6", discovery.AddressTypeIPv6
	objs := []any{
		dual, dual4, dual6,
		garbage, slice(garbage, ready("10.244.1.25", thisNode)),
		local, slice(local, ready("10.244.1.26", thisNode)),
	}
	scenario{objs: objs, flows: []flow{
		{name: "IPv6 ranges only: outside client dropped at the IPv4 LB IP", from: outsider, to: "192.0.2.104:80", want: dropped},
		{name: "IPv6 ranges only: a client of the old IPv4 range dropped", from: allowedSrc, to: "192.0.2.104:80", want: dropped},
		{name: "IPv6 ranges only: pod dropped", from: podHere, to: "192.0.2.104:80", want: dropped},
		{name: "IPv6 ranges only: UDP port absent, untouched", from: outsider, to: "192.0.2.104:80", proto: "udp", want: untouched},
		{name: "IPv6 ranges only: node port still open", from: outsider, to: "192.168.0.1:30104", want: reach(masq, eps...)},
		{name: "IPv6 ranges only: cluster IP still open", from: podHere, to: "10.96.2.24:80", want: reach(noMasq, eps...)},
		{name: "no range parses: outside client dropped", from: outsider, to: "192.0.2.105:80", want: dropped},
		{name: "no range parses: allowed-looking client dropped", from: allowedSrc, to: "192.0.2.105:80", want: dropped},
		{name: "IPv6 ranges only, local policy: outside client dropped", from: outsider, to: "192.0.2.106:80", want: dropped},
	}}.run(t)

	// The IPv6 half of the dual-stack Service admits its range only.
	e := newEnv(t, objs...)
	snap, _ := e.tracker.Snapshot()
	opts := testOpts()
	opts.IPv6 = true
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}
	fake := iptablestest.NewFake6()
	if err := fake.Restore([]byte(iptables.Render(snap, opts).String())); err != nil {
		t.Fatalf("the IPv6 plan does not load: %v", err)
	}
	node6 := netip.MustParseAddr("2001:db8::1")
	for _, tc := range []struct {
		src, want string
	}{
		{"2001:db8:50::9", "ACCEPT [fd00:10:244:1::24]:8080 masquerade"},
		{"2001:db8:51::9", "DROP"},
	} {
		out, err := fake.Trace(iptablestest.Packet{SrcIP: netip.MustParseAddr(tc.src), DstIP: netip.MustParseAddr("2001:db8:ffff::104"),
			Proto: "tcp", DstPort: 80, LocalAddrs: []netip.Addr{node6}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 1 || out[0].String() != tc.want {
			t.Errorf("IPv6 LB IP from %s: %v, want %s", tc.src, out, tc.want)
		}
	}
}
