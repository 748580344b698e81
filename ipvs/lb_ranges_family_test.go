package ipvs

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestRenderSourceRangesFailClosed: a Service that gives
// loadBalancerSourceRanges, none of them IPv4 (a dual-stack Service with
// IPv6 ranges only) or none that parses, admits no source to its IPv4
// load-balancer addresses: the virtual server is in LB-FW with no LB-SRC
// entry, so the filter rule drops every source. It used to be left out of
// LB-FW, open to everyone.
func TestRenderSourceRangesFailClosed(t *testing.T) {
	dual := func(s *v1.Service) {
		s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00:10:96::10")
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: "2001:db8:ffff::1"})
	}
	for _, tc := range []struct {
		name string
		svc  *v1.Service
	}{
		{"IPv6 ranges only", pt.Service("ns", "svc", "10.96.0.10", "p", 80, lbService("203.0.113.1", "2001:db8:50::/64"), dual)},
		{"no range parses", pt.Service("ns", "svc", "10.96.0.10", "p", 80, lbService("203.0.113.1", "not-a-cidr"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slice := pt.Slice("ns", "svc", "svc-1", "p", 8080, pt.Ready("10.244.2.10", "node2"))
			got := summary(Render(snapshotOf(t, tc.svc, slice), testOptions()))
			if !strings.Contains(got, "LB-FW 203.0.113.1,tcp:80\n") {
				t.Errorf("203.0.113.1:80 is not firewalled (open to every source):\n%s", got)
			}
			if strings.Contains(got, "LB-SRC") {
				t.Errorf("a source is allowed:\n%s", got)
			}
		})
	}
}
