package ipvs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// dualLB is a dual-stack LoadBalancer Service with node port 31000, one
// load-balancer address of each family and the given source ranges.
func dualLB(ranges ...string) *v1.Service {
	return pt.Service("ns", "svc", "10.96.0.10", "p", 80, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 31000
		s.Spec.LoadBalancerSourceRanges = ranges
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00:10:96::10")
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.1"}, {IP: "2001:db8:ffff::1"}}
	})
}

// dualSlices are the endpoints of dualLB: one of each family on node1
// (this node), one of each on node2.
func dualSlices() []any {
	return []any{
		pt.Slice("ns", "svc", "svc-4", "p", 8080, pt.Ready("10.244.1.10", "node1"), pt.Ready("10.244.2.10", "node2")),
		slice6("svc", "svc-6", pt.Ready("fd00:10:244:1::10", "node1"), pt.Ready("fd00:10:244:2::10", "node2")),
	}
}

// slice6 is pt.Slice of IPv6 endpoints of port "p" (8080) of ns/svc.
func slice6(svc, name string, eps ...pt.EP) *discovery.EndpointSlice {
	s := pt.Slice("ns", svc, name, "p", 8080, eps...)
	s.AddressType = discovery.AddressTypeIPv6
	return s
}

// TestRenderFamilies: each family's service ports become virtual servers,
// addresses and set entries of that family only, in the sets named for
// it, and only when Options programs the family.
func TestRenderFamilies(t *testing.T) {
	objs := append([]any{dualLB()}, dualSlices()...)
	snap := snapshotOf(t, objs...)

	t.Run("IPv4 only (the default)", func(t *testing.T) {
		p := Render(snap, testOptions())
		for _, a := range p.Addresses {
			if a.Is6() {
				t.Errorf("IPv6 address %s bound on an IPv4-only node", a)
			}
		}
		for _, s := range p.Sets {
			if isIPv6Set(s.Name) {
				t.Errorf("IPv6 set %s on an IPv4-only node", s.Name)
			}
		}
		if p.IPTables == nil || p.IPTables6 != nil {
			t.Errorf("iptables plans: IPv4 %v, IPv6 %v; want IPv4 only", p.IPTables != nil, p.IPTables6 != nil)
		}
	})

	t.Run("dual-stack", func(t *testing.T) {
		p := Render(snap, testOptions6())
		got := summary(p)
		for _, want := range []string{
			"-A -t [fd00:10:96::10]:80 -s rr\n-a -t [fd00:10:96::10]:80 -r [fd00:10:244:1::10]:8080 -m -w 1\n-a -t [fd00:10:96::10]:80 -r [fd00:10:244:2::10]:8080 -m -w 1\n",
			"-A -t [2001:db8::1]:31000 -s rr\n",
			"-A -t [2001:db8:ffff::1]:80 -s rr\n",
			"-A -t 10.96.0.10:80 -s rr\n-a -t 10.96.0.10:80 -r 10.244.1.10:8080 -m -w 1\n-a -t 10.96.0.10:80 -r 10.244.2.10:8080 -m -w 1\n",
			"-A -t 192.168.0.1:31000 -s rr\n",
			"\n6-CLUSTER-IP fd00:10:96::10,tcp:80\n",
			"\n6-NODE-PORT 2001:db8::1,tcp:31000\n",
			"\n6-EXTERNAL 2001:db8:ffff::1,tcp:80\n",
			"\n6-LOOPBACK fd00:10:244:1::10,tcp:8080,fd00:10:244:1::10\n",
			"\n6-CLUSTER-CIDR fd00:10:244::/56\n",
			"\n6-IPS fd00:10:96::10\n",
			"\nCLUSTER-IP 10.96.0.10,tcp:80\n",
			"\nLOOPBACK 10.244.1.10,tcp:8080,10.244.1.10\n",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("missing %q in:\n%s", want, got)
			}
		}
		// No cross-family virtual server, real server or entry.
		for _, vs := range p.Services {
			for _, rs := range vs.Destinations {
				if rs.Address.Is6() != vs.Address.Is6() {
					t.Errorf("virtual server %s has real server %s of the other family", vs.ServiceKey, rs.AddrPort())
				}
			}
		}
		for _, s := range p.Sets {
			for _, e := range s.Entries {
				if strings.Contains(e, ":") && strings.Count(e, ":") > 1 != isIPv6Set(s.Name) {
					t.Errorf("set %s has entry %s of the other family", s.Name, e)
				}
			}
		}
		if !strings.Contains(p.Dump(), "family inet6") || !strings.Contains(p.Dump(), "# ip6tables-save (restore with: ip6tables-restore --noflush)\n") {
			t.Errorf("dump lacks the IPv6 sets or the ip6tables section")
		}
		for _, name := range p.IPTables6.Filter[0].Rules {
			if strings.Contains(name, "match-set SVCP-IPVS-") && !strings.Contains(name, "match-set SVCP-IPVS-6-") {
				t.Errorf("ip6tables rule references an IPv4 set: %s", name)
			}
		}
	})

	t.Run("IPv6 only", func(t *testing.T) {
		o := testOptions6()
		o.IPv4 = false
		p := Render(snap, o)
		for _, a := range p.Addresses {
			if a.Is4() {
				t.Errorf("IPv4 address %s bound on an IPv6-only node", a)
			}
		}
		for _, s := range p.Sets {
			if !isIPv6Set(s.Name) {
				t.Errorf("IPv4 set %s on an IPv6-only node", s.Name)
			}
		}
		if p.IPTables != nil || p.IPTables6 == nil {
			t.Errorf("iptables plans: IPv4 %v, IPv6 %v; want IPv6 only", p.IPTables != nil, p.IPTables6 != nil)
		}
		if strings.Contains(p.Dump(), "# iptables-save") {
			t.Error("IPv6-only dump has an iptables-save section")
		}
	})
}

// TestRenderSourceRangesPerFamily: source ranges are enforced per family;
// a family without a range admits no source (fail closed) while the other
// family's ranges still admit theirs; 0.0.0.0/0 and ::/0, which hash:net
// refuses, are split in halves.
func TestRenderSourceRangesPerFamily(t *testing.T) {
	for _, tc := range []struct {
		name         string
		ranges       []string
		want, absent []string
	}{
		{"IPv4 ranges only", []string{"192.168.50.0/24"},
			[]string{"\nLB-FW 203.0.113.1,tcp:80\n", "\nLB-SRC 203.0.113.1,tcp:80,192.168.50.0/24\n", "\n6-LB-FW 2001:db8:ffff::1,tcp:80\n"},
			[]string{"6-LB-SRC"}},
		{"IPv6 ranges only", []string{"2001:db8:50::/64"},
			[]string{"\nLB-FW 203.0.113.1,tcp:80\n", "\n6-LB-FW 2001:db8:ffff::1,tcp:80\n", "\n6-LB-SRC 2001:db8:ffff::1,tcp:80,2001:db8:50::/64\n"},
			[]string{"\nLB-SRC"}},
		{"everything", []string{"0.0.0.0/0", "::/0"},
			[]string{"\nLB-SRC 203.0.113.1,tcp:80,0.0.0.0/1\n", "\nLB-SRC 203.0.113.1,tcp:80,128.0.0.0/1\n",
				"\n6-LB-SRC 2001:db8:ffff::1,tcp:80,::/1\n", "\n6-LB-SRC 2001:db8:ffff::1,tcp:80,8000::/1\n"},
			[]string{"/0\n"}},
		{"no ranges: open", nil, nil, []string{"LB-FW", "LB-SRC"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := append([]any{dualLB(tc.ranges...)}, dualSlices()...)
			got := summary(Render(snapshotOf(t, objs...), testOptions6()))
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(got, a) {
					t.Errorf("unexpected %q in:\n%s", a, got)
				}
			}
		})
	}
}

// TestRenderNodePortAddressFamilies: a node port gets a virtual server on
// every node address of its family and none on the other family's.
func TestRenderNodePortAddressFamilies(t *testing.T) {
	svc := pt.Service("ns", "svc", "fd00:10:96::10", "p", 80, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 31000
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
	})
	slice := slice6("svc", "svc-6", pt.Ready("fd00:10:244:2::10", "node2"))
	o := testOptions6()
	o.NodeAddresses = append(o.NodeAddresses, netip.MustParseAddr("2001:db8:1::1"))
	var got []string
	for _, vs := range Render(snapshotOf(t, svc, slice), o).Services {
		got = append(got, vs.ServiceKey.String())
	}
	want := "-t [2001:db8::1]:31000 -t [2001:db8:1::1]:31000 -t [fd00:10:96::10]:80"
	if strings.Join(got, " ") != want {
		t.Errorf("virtual servers %q, want %q", strings.Join(got, " "), want)
	}
}

// TestRenderNodeAddressAsExternalIP: an externalIP that is one of the
// node's own addresses gets its virtual server but is neither bound to the
// dummy link nor put in the service-address set, whose REJECT of other
// ports would cut the node's SSH or kubelet off that address.
func TestRenderNodeAddressAsExternalIP(t *testing.T) {
	svc := pt.Service("ns", "svc", "10.96.0.10", "p", 80, func(s *v1.Service) {
		s.Spec.ExternalIPs = []string{"192.168.0.1", "192.0.2.7"}
	})
	slice := pt.Slice("ns", "svc", "svc-1", "p", 8080, pt.Ready("10.244.2.10", "node2"))
	o := testOptions()
	o.LocalAddresses = []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("172.16.0.1")}
	p := Render(snapshotOf(t, svc, slice), o)
	got := summary(p)
	if !strings.Contains(got, "-A -t 192.168.0.1:80 -s rr\n") || !strings.Contains(got, "\nEXTERNAL 192.168.0.1,tcp:80\n") {
		t.Errorf("no virtual server for the node address as externalIP:\n%s", got)
	}
	if slices.Contains(p.Addresses, netip.MustParseAddr("192.168.0.1")) || setHas(p.Sets[0], "192.168.0.1") {
		t.Errorf("node address bound or in %s: %v", SetIPs, p.Addresses)
	}
	if !slices.Contains(p.Addresses, netip.MustParseAddr("192.0.2.7")) {
		t.Errorf("the other externalIP is not bound: %v", p.Addresses)
	}
	// Another port of the node address is not the filter's to reject.
	e := Explain(p, Packet{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("192.168.0.1"), Protocol: v1.ProtocolTCP, Port: 22})
	if e.Verdict != VerdictNoMatch {
		t.Errorf("port 22 of the node address: %s (%s), want no-match (the node's own)", e.Verdict, e.Reason)
	}
}
