package healthz

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// Test address plan: node1 is this node; pods 10.244.1.x run on node1,
// 10.244.2.x on node2.

func ep(ip string, ready, local bool) *proxy.Endpoint {
	return &proxy.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: ready, Serving: ready, IsLocal: local}
}

// lbPort is one port of an externalTrafficPolicy: Local LoadBalancer service
// (hcPort != 0) or of another service (hcPort == 0).
func lbPort(ns, name, port string, hcPort int32, eps ...*proxy.Endpoint) *proxy.ServicePort {
	return &proxy.ServicePort{
		Name:                proxy.ServicePortName{Namespace: ns, Name: name, Port: port, Protocol: v1.ProtocolTCP},
		Protocol:            v1.ProtocolTCP,
		HealthCheckNodePort: hcPort,
		ExternalPolicyLocal: hcPort != 0,
		AllEndpoints:        eps,
	}
}

func snapshot(ports ...*proxy.ServicePort) *proxy.Snapshot {
	return proxy.NewSnapshot("node1", "", ports)
}

type healthFunc func() bool

func (f healthFunc) IsHealthy() bool { return f() }

func TestServiceServerSyncServices(t *testing.T) {
	tests := []struct {
		name      string
		snaps     []*proxy.Snapshot
		addresses []netip.Addr
		wantOpen  []string
		wantPorts map[string]int32
	}{
		{
			name:      "nothing",
			snaps:     []*proxy.Snapshot{snapshot()},
			wantPorts: map[string]int32{},
		},
		{
			name: "only services with a health check node port",
			snaps: []*proxy.Snapshot{snapshot(
				lbPort("ns", "local", "http", 30100),
				lbPort("ns", "local", "https", 30100),
				lbPort("ns", "cluster", "http", 0),
			)},
			wantOpen:  []string{"0.0.0.0:30100"},
			wantPorts: map[string]int32{"ns/local": 30100},
		},
		{
			name: "one listener per configured address",
			snaps: []*proxy.Snapshot{snapshot(
				lbPort("ns", "a", "", 30100),
				lbPort("ns", "b", "", 30101),
			)},
			addresses: []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("10.0.0.10")},
			wantOpen:  []string{"10.0.0.10:30100", "10.0.0.10:30101", "192.168.1.10:30100", "192.168.1.10:30101"},
			wantPorts: map[string]int32{"ns/a": 30100, "ns/b": 30101},
		},
		{
			name: "service gone",
			snaps: []*proxy.Snapshot{
				snapshot(lbPort("ns", "a", "", 30100), lbPort("ns", "b", "", 30101)),
				snapshot(lbPort("ns", "b", "", 30101)),
			},
			wantOpen:  []string{"0.0.0.0:30101"},
			wantPorts: map[string]int32{"ns/b": 30101},
		},
		{
			name: "port changed",
			snaps: []*proxy.Snapshot{
				snapshot(lbPort("ns", "a", "", 30100)),
				snapshot(lbPort("ns", "a", "", 30200)),
			},
			wantOpen:  []string{"0.0.0.0:30200"},
			wantPorts: map[string]int32{"ns/a": 30200},
		},
		{
			name: "port moved from one service to another",
			snaps: []*proxy.Snapshot{
				snapshot(lbPort("ns", "a", "", 30100)),
				snapshot(lbPort("ns", "b", "", 30100)),
			},
			wantOpen:  []string{"0.0.0.0:30100"},
			wantPorts: map[string]int32{"ns/b": 30100},
		},
		{
			name: "policy changed to Cluster",
			snaps: []*proxy.Snapshot{
				snapshot(lbPort("ns", "a", "", 30100)),
				snapshot(lbPort("ns", "a", "", 0)),
			},
			wantPorts: map[string]int32{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fl := newFakeListener()
			s := NewServiceServer(ServiceConfig{Addresses: tc.addresses, Listener: fl})
			defer s.Close()
			for _, snap := range tc.snaps {
				s.SyncServices(snap)
			}
			if diff := cmp.Diff(tc.wantOpen, fl.addresses()); diff != "" {
				t.Errorf("open addresses (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantPorts, s.Ports()); diff != "" {
				t.Errorf("Ports (-want +got):\n%s", diff)
			}
			s.Close()
			if open := fl.addresses(); len(open) != 0 {
				t.Errorf("after Close still open: %v", open)
			}
		})
	}
}

func TestServiceServerAnswers(t *testing.T) {
	const body = "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}"
	tests := []struct {
		name         string
		ports        []*proxy.ServicePort
		proxyHealthy bool
		wantCode     int
		wantCount    int
	}{
		{
			name:         "no endpoints",
			ports:        []*proxy.ServicePort{lbPort("shop", "web", "", 30100)},
			proxyHealthy: true,
			wantCode:     http.StatusServiceUnavailable,
		},
		{
			name:         "only remote endpoints",
			ports:        []*proxy.ServicePort{lbPort("shop", "web", "", 30100, ep("10.244.2.1", true, false))},
			proxyHealthy: true,
			wantCode:     http.StatusServiceUnavailable,
		},
		{
			name: "local endpoints counted once per IP over all ports",
			ports: []*proxy.ServicePort{
				lbPort("shop", "web", "http", 30100, ep("10.244.1.1", true, true), ep("10.244.1.2", true, true), ep("10.244.2.1", true, false)),
				lbPort("shop", "web", "https", 30100, ep("10.244.1.1", true, true), ep("10.244.1.3", true, true)),
			},
			proxyHealthy: true,
			wantCode:     http.StatusOK,
			wantCount:    3,
		},
		{
			name: "terminating local endpoints do not count",
			ports: []*proxy.ServicePort{lbPort("shop", "web", "", 30100, func() *proxy.Endpoint {
				e := ep("10.244.1.1", false, true)
				e.Serving, e.Terminating = true, true
				return e
			}())},
			proxyHealthy: true,
			wantCode:     http.StatusServiceUnavailable,
		},
		{
			name:         "proxy unhealthy",
			ports:        []*proxy.ServicePort{lbPort("shop", "web", "", 30100, ep("10.244.1.1", true, true))},
			proxyHealthy: false,
			wantCode:     http.StatusServiceUnavailable,
			wantCount:    1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fl := newFakeListener()
			s := NewServiceServer(ServiceConfig{Listener: fl, Proxy: healthFunc(func() bool { return tc.proxyHealthy })})
			defer s.Close()
			s.SyncServices(snapshot(tc.ports...))
			got := get(t, fl.client(), "http://0.0.0.0:30100/", "Content-Type", "X-Content-Type-Options", "X-Load-Balancing-Endpoint-Weight")
			want := response{
				code: tc.wantCode,
				headers: map[string]string{
					"Content-Type":                     "application/json",
					"X-Content-Type-Options":           "nosniff",
					"X-Load-Balancing-Endpoint-Weight": strconv.Itoa(tc.wantCount),
				},
				body: fmt.Sprintf(body, tc.wantCount, tc.proxyHealthy),
			}
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(response{})); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
		})
	}
}

func TestServiceServerEndpointCountFollowsSnapshots(t *testing.T) {
	fl := newFakeListener()
	s := NewServiceServer(ServiceConfig{Listener: fl})
	defer s.Close()
	url := "http://0.0.0.0:30100/"
	s.SyncServices(snapshot(lbPort("shop", "web", "", 30100)))
	if got := get(t, fl.client(), url); got.code != http.StatusServiceUnavailable {
		t.Errorf("without endpoints: %d", got.code)
	}
	s.SyncServices(snapshot(lbPort("shop", "web", "", 30100, ep("10.244.1.1", true, true))))
	if got := get(t, fl.client(), url); got.code != http.StatusOK {
		t.Errorf("with a local endpoint: %d", got.code)
	}
	s.SyncServices(snapshot(lbPort("shop", "web", "", 30100, ep("10.244.1.1", false, true))))
	if got := get(t, fl.client(), url); got.code != http.StatusServiceUnavailable {
		t.Errorf("endpoint no longer ready: %d", got.code)
	}
}

func TestServiceServerListenErrorRetried(t *testing.T) {
	fl := newFakeListener()
	fl.fail["0.0.0.0:30100"] = errors.New("address already in use")
	var reported []string
	s := NewServiceServer(ServiceConfig{Listener: fl, OnListenError: func(ns, name string, port int32, err error) {
		reported = append(reported, fmt.Sprintf("%s/%s:%d", ns, name, port))
	}})
	defer s.Close()
	snap := snapshot(lbPort("shop", "web", "", 30100), lbPort("shop", "api", "", 30101))
	s.SyncServices(snap)
	if diff := cmp.Diff(map[string]int32{"shop/api": 30101}, s.Ports()); diff != "" {
		t.Errorf("Ports after failure (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"shop/web:30100"}, reported); diff != "" {
		t.Errorf("reported (-want +got):\n%s", diff)
	}
	delete(fl.fail, "0.0.0.0:30100")
	s.SyncServices(snap)
	if diff := cmp.Diff(map[string]int32{"shop/api": 30101, "shop/web": 30100}, s.Ports()); diff != "" {
		t.Errorf("Ports after retry (-want +got):\n%s", diff)
	}
}

func TestServiceServerPartialListenFailureClosesTheRest(t *testing.T) {
	fl := newFakeListener()
	fl.fail["10.0.0.10:30100"] = errors.New("cannot assign requested address")
	s := NewServiceServer(ServiceConfig{
		Listener:  fl,
		Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("10.0.0.10")},
	})
	defer s.Close()
	s.SyncServices(snapshot(lbPort("shop", "web", "", 30100)))
	if open := fl.addresses(); len(open) != 0 {
		t.Errorf("left open after a failed service: %v", open)
	}
}

// TestServiceServerRealSocket runs one health-check port on the loopback
// interface with the real NetListener.
func TestServiceServerRealSocket(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no IPv4 loopback: %v", err)
	}
	port := int32(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	s := NewServiceServer(ServiceConfig{Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	defer s.Close()
	s.SyncServices(snapshot(lbPort("shop", "web", "", port, ep("10.244.1.1", true, true))))
	if _, ok := s.Ports()["shop/web"]; !ok {
		t.Fatalf("port %d not opened (taken by someone else meanwhile?)", port)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	got := get(t, c, url, "X-Load-Balancing-Endpoint-Weight")
	if got.code != http.StatusOK || got.headers["X-Load-Balancing-Endpoint-Weight"] != "1" {
		t.Errorf("got %d weight %q: %s", got.code, got.headers["X-Load-Balancing-Endpoint-Weight"], got.body)
	}
	s.SyncServices(snapshot())
	if _, err := c.Get(url); err == nil {
		t.Errorf("port %d still answers after the service went away", port)
	}
}
