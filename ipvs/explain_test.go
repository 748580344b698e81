package ipvs

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestExplain follows packets through rendered plans: every verdict and
// the reason for it, the endpoints with their probabilities, and whether
// and why the source is masqueraded. The addresses are render_test.go's
// plan.
func TestExplain(t *testing.T) {
	np := func(port int32) func(*v1.Service) {
		return func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = port }
	}
	etpLocal := func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }
	affinity := func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		timeout := int32(600)
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &timeout}}
	}
	local := pt.Ready("10.244.1.10", "node1")
	remote := pt.Ready("10.244.2.10", "node2")
	remote2 := pt.Ready("10.244.2.11", "node2")
	objs := []any{
		pt.Service("ns", "web", "10.96.0.10", "p", 80, np(30080)),
		pt.Slice("ns", "web", "web-1", "p", 8080, local, remote, remote2),
		pt.Service("ns", "empty", "10.96.0.11", "p", 80),
		pt.Service("ns", "loc", "10.96.0.12", "p", 80, np(30081), etpLocal),
		pt.Slice("ns", "loc", "loc-1", "p", 8080, remote),
		pt.Service("ns", "sticky", "10.96.0.13", "p", 80, affinity),
		pt.Slice("ns", "sticky", "sticky-1", "p", 8080, remote),
		pt.Service("ns", "front", "10.96.0.14", "p", 80, lbService("203.0.113.1", "198.51.100.0/24")),
		pt.Slice("ns", "front", "front-1", "p", 8080, remote),
		pt.Service("ns", "own", "10.96.0.15", "p", 80, np(30082), etpLocal),
		pt.Slice("ns", "own", "own-1", "p", 8080, local),
	}
	plan := Render(snapshotOf(t, objs...), testOptions())
	pod := netip.MustParseAddr("10.244.1.20")
	outside := netip.MustParseAddr("198.51.100.7")
	tcp := func(src, dst string, port uint16) Packet {
		return Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Protocol: v1.ProtocolTCP, Port: port}
	}
	third := 1.0 / 3
	for _, tc := range []struct {
		name       string
		pkt        Packet
		verdict    string
		reason     string
		endpoints  map[string]float64
		masquerade string // "" for none, else a word of the reason
		hairpin    string
	}{
		{name: "pod to cluster IP", pkt: Packet{Src: pod, Dst: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80},
			verdict: VerdictDNAT, reason: "round robin", endpoints: map[string]float64{"10.244.1.10:8080": third, "10.244.2.10:8080": third, "10.244.2.11:8080": third}},
		{name: "outside client to cluster IP", pkt: Packet{Src: outside, Dst: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80},
			verdict: VerdictDNAT, endpoints: map[string]float64{"10.244.1.10:8080": third, "10.244.2.10:8080": third, "10.244.2.11:8080": third}, masquerade: "cluster-cidr"},
		{name: "node port, policy Cluster", pkt: tcp("198.51.100.7", "192.168.0.1", 30080),
			verdict: VerdictDNAT, endpoints: map[string]float64{"10.244.1.10:8080": third, "10.244.2.10:8080": third, "10.244.2.11:8080": third}, masquerade: "node port"},
		{name: "no endpoints", pkt: tcp("10.244.1.20", "10.96.0.11", 80), verdict: VerdictReject, reason: "no endpoints"},
		{name: "service address, other port", pkt: tcp("10.244.1.20", "10.96.0.10", 81), verdict: VerdictReject, reason: "not one of its service ports"},
		{name: "policy Local without a local endpoint", pkt: tcp("198.51.100.7", "192.168.0.1", 30081), verdict: VerdictDrop, reason: "Local"},
		{name: "policy Local, pod to the cluster IP", pkt: tcp("10.244.1.20", "10.96.0.12", 80),
			verdict: VerdictDNAT, endpoints: map[string]float64{"10.244.2.10:8080": 1}},
		{name: "policy Local with a local endpoint keeps the client address", pkt: tcp("198.51.100.7", "192.168.0.1", 30082),
			verdict: VerdictDNAT, endpoints: map[string]float64{"10.244.1.10:8080": 1}},
		{name: "affinity", pkt: tcp("10.244.1.20", "10.96.0.13", 80), verdict: VerdictDNAT, reason: "keeps its real server for 600 s",
			endpoints: map[string]float64{"10.244.2.10:8080": 1}},
		{name: "allowed load-balancer source", pkt: tcp("198.51.100.7", "203.0.113.1", 80),
			verdict: VerdictDNAT, endpoints: map[string]float64{"10.244.2.10:8080": 1}, masquerade: "external"},
		{name: "load-balancer source not allowed", pkt: tcp("192.0.2.9", "203.0.113.1", 80), verdict: VerdictDrop, reason: "loadBalancerSourceRanges"},
		{name: "not a service", pkt: tcp("10.244.1.20", "10.244.2.10", 8080), verdict: VerdictNoMatch, reason: "no virtual server"},
		{name: "node to a load-balancer IP: IPVS before the filter, no source ranges", pkt: Packet{Src: netip.MustParseAddr("192.168.0.1"), Dst: netip.MustParseAddr("203.0.113.1"), Protocol: v1.ProtocolTCP, Port: 80, FromNode: true},
			verdict: VerdictDNAT, endpoints: map[string]float64{"10.244.2.10:8080": 1}, masquerade: "external"},
		{name: "node to a node port, policy Local, no local endpoint: IPVS refuses", pkt: Packet{Src: netip.MustParseAddr("192.168.0.1"), Dst: netip.MustParseAddr("192.168.0.1"), Protocol: v1.ProtocolTCP, Port: 30081, FromNode: true},
			verdict: VerdictReject, reason: "IPVS refuses"},
		{name: "node to a service without endpoints", pkt: Packet{Src: netip.MustParseAddr("192.168.0.1"), Dst: netip.MustParseAddr("10.96.0.11"), Protocol: v1.ProtocolTCP, Port: 80, FromNode: true},
			verdict: VerdictReject, reason: "IPVS refuses"},
		{name: "node to another port of a service address", pkt: Packet{Src: netip.MustParseAddr("192.168.0.1"), Dst: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 81, FromNode: true},
			verdict: VerdictReject, reason: "not one of its service ports"},
		{name: "hairpin", pkt: tcp("10.244.1.10", "10.96.0.15", 80), verdict: VerdictDNAT, endpoints: map[string]float64{"10.244.1.10:8080": 1}, hairpin: "10.244.1.10:8080"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := Explain(plan, tc.pkt)
			if e.Verdict != tc.verdict {
				t.Fatalf("verdict %s (%s), want %s\npath: %s", e.Verdict, e.Reason, tc.verdict, strings.Join(e.Path, "\n  "))
			}
			if !strings.Contains(e.Reason, tc.reason) {
				t.Errorf("reason %q lacks %q", e.Reason, tc.reason)
			}
			got := map[string]float64{}
			for _, ep := range e.Endpoints {
				got[ep.String()] = ep.Probability
				if ep.Hairpin != (ep.String() == tc.hairpin) {
					t.Errorf("endpoint %s: hairpin %v", ep, ep.Hairpin)
				}
			}
			if len(tc.endpoints) > 0 || len(got) > 0 {
				if d := cmp.Diff(tc.endpoints, got); d != "" {
					t.Errorf("endpoints (-want +got):\n%s", d)
				}
			}
			if e.Masquerade != (tc.masquerade != "") || (tc.masquerade != "" && !strings.Contains(e.MasqueradeReason, tc.masquerade)) {
				t.Errorf("masquerade %v (%s), want %q", e.Masquerade, e.MasqueradeReason, tc.masquerade)
			}
		})
	}
}

// TestExplainIPv6: the same over a dual-stack plan, with IPv6 sets: an
// IPv6 cluster IP, and an IPv6 load-balancer address whose ranges are all
// IPv4 (fail closed).
func TestExplainIPv6(t *testing.T) {
	objs := append([]any{dualLB("192.168.50.0/24")}, dualSlices()...)
	plan := Render(snapshotOf(t, objs...), testOptions6())
	e := Explain(plan, Packet{Src: netip.MustParseAddr("fd00:10:244:1::20"), Dst: netip.MustParseAddr("fd00:10:96::10"), Protocol: v1.ProtocolTCP, Port: 80})
	if e.Verdict != VerdictDNAT || len(e.Endpoints) != 2 || e.Masquerade {
		t.Errorf("pod to IPv6 cluster IP: %+v", e)
	}
	e = Explain(plan, Packet{Src: netip.MustParseAddr("2001:db8:50::7"), Dst: netip.MustParseAddr("2001:db8:ffff::1"), Protocol: v1.ProtocolTCP, Port: 80})
	if e.Verdict != VerdictDrop || !strings.Contains(e.Reason, "loadBalancerSourceRanges") {
		t.Errorf("IPv6 load-balancer address with IPv4 ranges only: %s (%s), want drop", e.Verdict, e.Reason)
	}
	e = Explain(plan, Packet{Src: netip.MustParseAddr("2001:db8:50::7"), Dst: netip.MustParseAddr("2001:db8::1"), Protocol: v1.ProtocolTCP, Port: 31000})
	if e.Verdict != VerdictDNAT || !e.Masquerade {
		t.Errorf("IPv6 node port from outside: %s, masquerade %v", e.Verdict, e.Masquerade)
	}
}
