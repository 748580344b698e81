package healthz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
		prefixes  []netip.Prefix
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
			name: "one listener per local address within --nodeport-addresses",
			snaps: []*proxy.Snapshot{snapshot(
				lbPort("ns", "a", "", 30100),
				lbPort("ns", "b", "", 30101),
			)},
			prefixes: prefixes("192.168.1.0/24", "10.0.0.0/8"),
			// No IPv6 prefix: every IPv6 address, as for node ports.
			wantOpen:  []string{"10.0.0.10:30100", "10.0.0.10:30101", "10.1.0.10:30100", "10.1.0.10:30101", "192.168.1.10:30100", "192.168.1.10:30101", "[::]:30100", "[::]:30101"},
			wantPorts: map[string]int32{"ns/a": 30100, "ns/b": 30101},
		},
		{
			name:      "one prefix",
			snaps:     []*proxy.Snapshot{snapshot(lbPort("ns", "a", "", 30100))},
			prefixes:  prefixes("192.168.1.10/32"),
			wantOpen:  []string{"192.168.1.10:30100", "[::]:30100"},
			wantPorts: map[string]int32{"ns/a": 30100},
		},
		{
			name:      "loopback addresses never, as for NodePorts",
			snaps:     []*proxy.Snapshot{snapshot(lbPort("ns", "a", "", 30100))},
			prefixes:  prefixes("0.0.0.0/0"),
			wantOpen:  []string{"10.0.0.10:30100", "10.1.0.10:30100", "172.18.0.1:30100", "192.168.1.10:30100", "[::]:30100"},
			wantPorts: map[string]int32{"ns/a": 30100},
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
			s := NewServiceServer(ServiceConfig{NodePortAddresses: tc.prefixes, InterfaceAddresses: nodeAddresses, Listener: fl})
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
		Listener:           fl,
		NodePortAddresses:  prefixes("192.168.1.0/24", "10.0.0.0/16"),
		InterfaceAddresses: nodeAddresses,
	})
	defer s.Close()
	s.SyncServices(snapshot(lbPort("shop", "web", "", 30100)))
	if open := fl.addresses(); len(open) != 0 {
		t.Errorf("left open after a failed service: %v", open)
	}
}

// TestServiceServerRealSocket runs one health-check port with the real
// NetListener and HostAddresses, bound by --nodeport-addresses to one of the
// machine's non-loopback addresses: it answers there and not on loopback.
func TestServiceServerRealSocket(t *testing.T) {
	host, err := HostAddresses()
	if err != nil {
		t.Fatal(err)
	}
	var addr netip.Addr
	for _, a := range host {
		if !a.IsLoopback() {
			addr = a
			break
		}
	}
	if !addr.IsValid() {
		t.Skipf("no non-loopback IPv4 address among %v", host)
	}
	l, err := net.Listen("tcp4", net.JoinHostPort(addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	port := int32(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	s := NewServiceServer(ServiceConfig{NodePortAddresses: []netip.Prefix{netip.PrefixFrom(addr, 32)}})
	defer s.Close()
	s.SyncServices(snapshot(lbPort("shop", "web", "", port, ep("10.244.1.1", true, true))))
	if _, ok := s.Ports()["shop/web"]; !ok {
		t.Fatalf("port %d not opened (taken by someone else meanwhile?)", port)
	}
	url := fmt.Sprintf("http://%s/", net.JoinHostPort(addr.String(), strconv.Itoa(int(port))))
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	got := get(t, c, url, "X-Load-Balancing-Endpoint-Weight")
	if got.code != http.StatusOK || got.headers["X-Load-Balancing-Endpoint-Weight"] != "1" {
		t.Errorf("got %d weight %q: %s", got.code, got.headers["X-Load-Balancing-Endpoint-Weight"], got.body)
	}
	if _, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port)); err == nil {
		t.Errorf("port %d answers on 127.0.0.1, outside --nodeport-addresses %s/32", port, addr)
	}
	s.SyncServices(snapshot())
	if _, err := c.Get(url); err == nil {
		t.Errorf("port %d still answers after the service went away", port)
	}
}

// nodeAddresses is a node's interface addresses, as HostAddresses lists
// them: loopback, the node network (twice, on two links), a second network,
// a bridge and an address in a prefix of its own.
func nodeAddresses() ([]netip.Addr, error) {
	return addrs("127.0.0.1", "192.168.1.10", "10.0.0.10", "10.1.0.10", "192.168.1.10", "172.18.0.1", "127.0.0.53"), nil
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestServiceServerNoMatchingAddress: with no local address within
// --nodeport-addresses the port is not opened, that is reported, and it is
// opened once an address appears. The addresses are listed at most once per
// SyncServices, and only when a port is to be opened.
func TestServiceServerNoMatchingAddress(t *testing.T) {
	fl := newFakeListener()
	local := addrs("127.0.0.1", "10.0.0.10")
	var listed int
	var listErr error
	var reported []string
	s := NewServiceServer(ServiceConfig{
		Listener:          fl,
		NodePortAddresses: prefixes("192.168.1.0/24", "127.0.0.0/8"),
		InterfaceAddresses: func() ([]netip.Addr, error) {
			listed++
			return local, listErr
		},
		OnListenError: func(ns, name string, port int32, err error) {
			reported = append(reported, fmt.Sprintf("%s/%s:%d: %v", ns, name, port, err))
		},
	})
	defer s.Close()
	snap := snapshot(lbPort("shop", "web", "", 30100), lbPort("shop", "api", "", 30101))
	s.SyncServices(snap)
	if diff := cmp.Diff([]string{
		"shop/api:30101: no local address within --nodeport-addresses [192.168.1.0/24 127.0.0.0/8]",
		"shop/web:30100: no local address within --nodeport-addresses [192.168.1.0/24 127.0.0.0/8]",
	}, reported); diff != "" {
		t.Errorf("reported (-want +got):\n%s", diff)
	}
	if open := fl.addresses(); len(open) != 0 || len(s.Ports()) != 0 {
		t.Errorf("open: %v, Ports %v", open, s.Ports())
	}
	if listed != 1 {
		t.Errorf("addresses listed %d times in one SyncServices, want 1", listed)
	}

	listErr = errors.New("netlink: permission denied")
	reported = nil
	s.SyncServices(snap)
	if len(reported) != 2 || !strings.Contains(reported[0], "netlink: permission denied") {
		t.Errorf("listing error reported as %q", reported)
	}

	listErr = nil
	local = append(local, netip.MustParseAddr("192.168.1.10"))
	reported = nil
	s.SyncServices(snap)
	if diff := cmp.Diff([]string{"192.168.1.10:30100", "192.168.1.10:30101", "[::]:30100", "[::]:30101"}, fl.addresses()); diff != "" {
		t.Errorf("open once an address appeared (-want +got):\n%s", diff)
	}
	if len(reported) != 0 {
		t.Errorf("reported %q", reported)
	}
	listed = 0
	s.SyncServices(snap)
	if listed != 0 {
		t.Errorf("addresses listed %d times with every port open, want 0", listed)
	}
}

// TestServiceServerCloseIsQuiet: closing a health-check port (its service
// went away, its port changed, or Close) is normal and logs no error, however
// the Serve goroutine sees it; a server that stops by itself is reported.
func TestServiceServerCloseIsQuiet(t *testing.T) {
	fl := newFakeListener()
	var mu sync.Mutex
	var errs []string
	s := NewServiceServer(ServiceConfig{Listener: fl, NodePortAddresses: prefixes("10.0.0.0/8"), InterfaceAddresses: nodeAddresses})
	s.serveError = func(err error, k serviceKey, addr string) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, fmt.Sprintf("%s %s: %v", k, addr, err))
	}
	for i := range 200 {
		s.SyncServices(snapshot(lbPort("shop", "web", "", 30100+int32(i%2), ep("10.244.1.1", true, true))))
		if i%10 == 0 {
			// with a connection being served
			if got := get(t, fl.client(), fmt.Sprintf("http://10.0.0.10:%d/", 30100+i%2)); got.code != http.StatusOK {
				t.Fatalf("%d: %+v", i, got)
			}
		}
		if i%3 == 0 {
			s.SyncServices(snapshot())
		}
	}
	s.Close()
	s.serving.Wait()
	if len(errs) != 0 {
		t.Errorf("closing health-check ports reported %d errors, first %q", len(errs), errs[0])
	}

	s = NewServiceServer(ServiceConfig{Listener: brokenListener{}})
	done := make(chan string, 1)
	s.serveError = func(err error, k serviceKey, addr string) { done <- fmt.Sprintf("%s %s: %v", k, addr, err) }
	defer s.Close()
	s.SyncServices(snapshot(lbPort("shop", "web", "", 30100)))
	select {
	case got := <-done:
		if want := "shop/web 0.0.0.0:30100: accept: broken"; got != want {
			t.Errorf("reported %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a server whose Accept failed was not reported")
	}
}

// brokenListener's listeners fail every Accept.
type brokenListener struct{}

func (brokenListener) Listen(_ context.Context, _, address string) (net.Listener, error) {
	return brokenConnListener{fakeAddr(address)}, nil
}

type brokenConnListener struct{ addr net.Addr }

func (l brokenConnListener) Accept() (net.Conn, error) { return nil, errors.New("accept: broken") }
func (l brokenConnListener) Close() error              { return nil }
func (l brokenConnListener) Addr() net.Addr            { return l.addr }

// With --nodeport-addresses of both families, a health-check port listens
// on the node's addresses of both within them, never on loopback or
// link-local ones.
func TestServiceServerDualStackAddresses(t *testing.T) {
	fl := newFakeListener()
	s := NewServiceServer(ServiceConfig{Listener: fl, NodePortAddresses: prefixes("192.168.1.0/24", "2001:db8::/64", "fe80::/10", "::1/128"),
		InterfaceAddresses: func() ([]netip.Addr, error) {
			return addrs("127.0.0.1", "::1", "192.168.1.10", "2001:db8::10", "fe80::10", "fd00::10"), nil
		}})
	defer s.Close()
	s.SyncServices(snapshot(lbPort("shop", "web", "", 30100)))
	got := fl.addresses()
	slices.Sort(got)
	if diff := cmp.Diff([]string{"192.168.1.10:30100", "[2001:db8::10]:30100"}, got); diff != "" {
		t.Errorf("listening on (-want +got):\n%s", diff)
	}

	// IPv4 prefixes only: IPv6 node ports answer on every IPv6 address
	// (kube-proxy's per-family semantics), and so does the health check.
	fl4 := newFakeListener()
	s4 := NewServiceServer(ServiceConfig{Listener: fl4, NodePortAddresses: prefixes("192.168.1.0/24"),
		InterfaceAddresses: func() ([]netip.Addr, error) { return addrs("192.168.1.10", "2001:db8::10"), nil }})
	defer s4.Close()
	s4.SyncServices(snapshot(lbPort("shop", "web", "", 30100)))
	got = fl4.addresses()
	slices.Sort(got)
	if diff := cmp.Diff([]string{"192.168.1.10:30100", "[::]:30100"}, got); diff != "" {
		t.Errorf("IPv4 prefixes only: listening on (-want +got):\n%s", diff)
	}
}
