package healthz

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// TestServiceServerDualStackCountsPods: a dual-stack Service has one
// service port per family, and each local pod is an endpoint of both. The
// health check counts local endpoints (pods), as kube-proxy does per
// family: one dual-stack pod is 1, not 2 (the count is the
// X-Load-Balancing-Endpoint-Weight load balancers weigh nodes by).
func TestServiceServerDualStackCountsPods(t *testing.T) {
	v4 := lbPort("shop", "web", "", 30100, ep("10.244.1.10", true, true), ep("10.244.2.10", true, false))
	v4.IPFamily = v1.IPv4Protocol
	v6 := lbPort("shop", "web", "", 30100, ep("fd00:10:244:1::10", true, true), ep("fd00:10:244:2::10", true, false))
	v6.IPFamily = v1.IPv6Protocol
	// Another port of the same pods, and a pod with an IPv6 address only
	// (an endpoint of the IPv6 slice alone): 2 pods.
	v6b := lbPort("shop", "web", "metrics", 30100, ep("fd00:10:244:1::10", true, true), ep("fd00:10:244:1::11", true, true))
	v6b.IPFamily = v1.IPv6Protocol
	for _, tc := range []struct {
		name  string
		ports []*proxy.ServicePort
		want  int
	}{
		{"one dual-stack pod", []*proxy.ServicePort{v4, v6}, 1},
		{"two pods, one of them in the IPv6 slice only", []*proxy.ServicePort{v4, v6, v6b}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl := newFakeListener()
			s := NewServiceServer(ServiceConfig{Listener: fl})
			defer s.Close()
			s.SyncServices(snapshot(tc.ports...))
			got := get(t, fl.client(), "http://0.0.0.0:30100/", "X-Load-Balancing-Endpoint-Weight")
			if w := got.headers["X-Load-Balancing-Endpoint-Weight"]; got.code != http.StatusOK || w != strconv.Itoa(tc.want) {
				t.Errorf("got %d, weight %s, want 200 and %d: %s", got.code, w, tc.want, got.body)
			}
		})
	}
}

// TestServiceServerAnswersIPv6: without --nodeport-addresses a
// health-check node port answers on every local address of both families,
// like kube-proxy's (a listen on 0.0.0.0 with network "tcp" is Go's
// dual-stack socket): a load balancer of a dual-stack or IPv6 Service
// probes the node's IPv6 address.
func TestServiceServerAnswersIPv6(t *testing.T) {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := NewServiceServer(ServiceConfig{})
	defer s.Close()
	s.SyncServices(snapshot(lbPort("shop", "web", "", int32(port), ep("10.244.1.1", true, true))))
	if _, ok := s.Ports()["shop/web"]; !ok {
		t.Fatalf("port %d not opened (taken by someone else meanwhile?)", port)
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, host := range []string{"127.0.0.1", "::1"} {
		url := fmt.Sprintf("http://%s/", net.JoinHostPort(host, strconv.Itoa(port)))
		if got := get(t, c, url); got.code != http.StatusOK {
			t.Errorf("GET %s: %d %s", url, got.code, got.body)
		}
	}
}
