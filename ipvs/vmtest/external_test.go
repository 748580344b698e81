//go:build vm

package vmtest

import (
	"testing"

	v1 "k8s.io/api/core/v1"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func loadBalancer(ip string, ranges ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 31000 + int32(len(ranges))
		s.Spec.LoadBalancerSourceRanges = ranges
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
	}
}

// TestExternal: ExternalIPs and LoadBalancer IPs answer from outside
// (masqueraded with externalTrafficPolicy Cluster); loadBalancerSourceRanges
// let allowed clients in and drop the others.
func TestExternal(t *testing.T) {
	tp := newTopology(t)
	startServer(t, tp.addPod(t, "srv1", "10.244.1.10"), "srv1", 8080)
	p := newProxier(t, tp)
	ep := pt.Ready("10.244.1.10", "node1")
	p.sync(false,
		pt.Service("it", "ext", "10.96.1.10", "http", 80, func(s *v1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.50"} }),
		pt.Slice("it", "ext", "ext-1", "http", 8080, ep),
		pt.Service("it", "open", "10.96.1.11", "http", 80, loadBalancer("203.0.113.11")),
		pt.Slice("it", "open", "open-1", "http", 8080, ep),
		pt.Service("it", "allowed", "10.96.1.12", "http", 80, loadBalancer("203.0.113.12", "198.51.100.0/24", outsideIP+"/32")),
		pt.Slice("it", "allowed", "allowed-1", "http", 8080, ep),
		pt.Service("it", "denied", "10.96.1.13", "http", 80, loadBalancer("203.0.113.13", "198.51.100.0/24")),
		pt.Slice("it", "denied", "denied-1", "http", 8080, ep),
	)
	for _, target := range []string{"192.0.2.50:80", "203.0.113.11:80", "203.0.113.12:80"} {
		got, err := dial(tp.outside, "tcp", target)
		if err != nil {
			t.Errorf("%s: %v", target, err)
			continue
		}
		if want := (answer{"srv1", podGW}); got != want {
			t.Errorf("%s: got %+v, want %+v", target, got, want)
		}
	}
	if _, err := dial(tp.outside, "tcp", "203.0.113.13:80"); !isTimeout(err) {
		t.Errorf("source outside loadBalancerSourceRanges: %v, want a timeout (dropped)", err)
	}
}

// TestHairpin: a pod reaching itself through its service gets an answer
// (masqueraded, or it would talk to itself with its own address).
func TestHairpin(t *testing.T) {
	tp := newTopology(t)
	srv := tp.addPod(t, "srv1", "10.244.1.10")
	startServer(t, srv, "srv1", 8080)
	p := newProxier(t, tp)
	p.sync(false, webObjects(pt.Ready("10.244.1.10", "node1"))...)
	got, err := dial(srv, "tcp", "10.96.1.10:80")
	if err != nil {
		t.Fatalf("hairpin: %v", err)
	}
	if want := (answer{"srv1", podGW}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
