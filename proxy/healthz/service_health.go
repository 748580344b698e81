package healthz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/httpserve"
)

// HealthChecker reports whether the proxy as a whole is healthy;
// *ProxyServer is one.
type HealthChecker interface {
	IsHealthy() bool
}

// ServiceConfig configures a ServiceServer.
type ServiceConfig struct {
	// NodePortAddresses are the --nodeport-addresses prefixes. As in
	// kube-proxy, a health-check node port listens, per family, on each
	// local address within the prefixes of that family (loopback and
	// link-local addresses excepted, as for NodePorts), taken when the
	// port is opened, or on every address of a family no prefix is of;
	// empty means every address of both families (0.0.0.0 as Go's
	// dual-stack socket). A port for which no local address matches is
	// not opened: that is reported like a listen error, and tried again on
	// the next SyncServices.
	NodePortAddresses []netip.Prefix
	// InterfaceAddresses lists the local addresses NodePortAddresses are
	// matched against; nil means HostAddresses.
	InterfaceAddresses func() ([]netip.Addr, error)
	// Listener opens the sockets; nil means NetListener.
	Listener Listener
	// Proxy, if not nil, is consulted on every request: while the proxy is
	// unhealthy every service answers 503, as in kube-proxy.
	Proxy HealthChecker
	// OnListenError, if not nil, is told when a health-check port cannot be
	// opened (kube-proxy records a FailedToStartServiceHealthcheck event on
	// the Service). The port is tried again on the next SyncServices.
	OnListenError func(namespace, name string, port int32, err error)
}

// ServiceServer runs one HTTP server per health-check node port of the
// externalTrafficPolicy: Local LoadBalancer services in a Snapshot. Each
// answers 200 while the node has a ready local endpoint of the service (and
// the proxy is healthy) and 503 otherwise, with the body and headers of
// kube-proxy's service health server. It is safe for concurrent use.
type ServiceServer struct {
	cfg ServiceConfig

	mu       sync.RWMutex
	services map[serviceKey]*hcInstance

	// serving counts the running Serve goroutines (tests wait for them).
	serving sync.WaitGroup
	// serveError reports a server that stopped by itself; klog by default.
	serveError func(err error, k serviceKey, addr string)
}

type serviceKey struct{ namespace, name string }

func (k serviceKey) String() string { return k.namespace + "/" + k.name }

type hcInstance struct {
	port      int32
	servers   []*http.Server
	listeners []net.Listener
	endpoints int // ready local endpoints (distinct IPs); guarded by ServiceServer.mu
	// closed is set before close closes anything: a Serve that returns
	// after it was closed on purpose, whatever its error.
	closed atomic.Bool
}

// NewServiceServer returns a ServiceServer with no port open.
func NewServiceServer(cfg ServiceConfig) *ServiceServer {
	if cfg.Listener == nil {
		cfg.Listener = NetListener{}
	}
	if cfg.InterfaceAddresses == nil {
		cfg.InterfaceAddresses = HostAddresses
	}
	return &ServiceServer{
		cfg:      cfg,
		services: map[serviceKey]*hcInstance{},
		serveError: func(err error, k serviceKey, addr string) {
			klog.ErrorS(err, "Health check server stopped", "service", k, "address", addr)
		},
	}
}

// ipvsInterfaces hold IPVS mode's service addresses (svcproxy's and
// upstream kube-proxy's dummy links), not the node's.
var ipvsInterfaces = []string{"svcproxy-ipvs0", "kube-ipvs0"}

// HostAddresses returns the addresses of the host's interfaces (in the
// caller's network namespace), both families, but those of IPVS mode's
// dummy links.
func HostAddresses() ([]netip.Addr, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	var out []netip.Addr
	for _, ifc := range ifaces {
		if slices.Contains(ipvsInterfaces, ifc.Name) {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("listing the addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// listenAddresses returns the addresses a health-check port listens on:
// 0.0.0.0 (both families) without NodePortAddresses; otherwise, per family,
// the local addresses within the prefixes of that family, sorted, without
// loopback and link-local addresses and duplicates, or every address of a
// family no prefix is of (0.0.0.0 or ::, as node ports do, like
// kube-proxy's per-family proxiers).
func (s *ServiceServer) listenAddresses() ([]netip.Addr, error) {
	prefixes := s.cfg.NodePortAddresses
	if len(prefixes) == 0 {
		return []netip.Addr{netip.IPv4Unspecified()}, nil
	}
	has := map[bool]bool{} // is6 -> a prefix of that family
	for _, p := range prefixes {
		has[p.Addr().Is6()] = true
	}
	var out []netip.Addr
	if !has[false] {
		out = append(out, netip.IPv4Unspecified())
	}
	if !has[true] {
		out = append(out, netip.IPv6Unspecified())
	}
	local, err := s.cfg.InterfaceAddresses()
	if err != nil {
		return nil, err
	}
	matched := false
	for _, a := range local {
		a = a.Unmap()
		if a.IsLoopback() || a.IsLinkLocalUnicast() || slices.Contains(out, a) {
			continue // node ports never answer there
		}
		if slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) }) {
			out, matched = append(out, a), true
		}
	}
	if !matched {
		return nil, fmt.Errorf("no local address within --nodeport-addresses %v", prefixes)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// want is what one service needs: its health-check port and local endpoint
// count.
type want struct {
	port      int32
	endpoints int
}

// desired collects, per service with a health-check node port, the port and
// the number of distinct ready local endpoint IPs over all its ports (a pod
// serving 80 and 443 is one endpoint). Terminating endpoints do not count:
// a node with only those must fail the check so that load balancers drain
// it, as in kube-proxy. A dual-stack pod is an endpoint of each family's
// ports, with one address of each: the families are counted apart and the
// larger count is the service's, as kube-proxy counts per family.
func desired(snap *proxy.Snapshot) map[serviceKey]want {
	out := map[serviceKey]want{}
	ips := map[serviceKey][2]map[netip.Addr]bool{}
	for _, sp := range snap.ServicePorts() {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		k := serviceKey{sp.Name.Namespace, sp.Name.Name}
		fam, ok := ips[k]
		if !ok {
			fam = [2]map[netip.Addr]bool{{}, {}}
			ips[k] = fam
		}
		for _, ep := range sp.AllEndpoints {
			if ep.Ready && ep.IsLocal {
				i := 0
				if ep.IP.Is6() {
					i = 1
				}
				fam[i][ep.IP] = true
			}
		}
		out[k] = want{port: sp.HealthCheckNodePort, endpoints: max(len(fam[0]), len(fam[1]))}
	}
	return out
}

// SyncServices makes the open ports match snap: it closes the ports of
// services that are gone or whose port changed, opens those of new
// services, and updates every service's local endpoint count. A port that
// cannot be opened is logged (and reported to OnListenError) and tried again
// on the next call.
func (s *ServiceServer) SyncServices(snap *proxy.Snapshot) {
	want := desired(snap)
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, inst := range s.services {
		if w, ok := want[k]; !ok || w.port != inst.port {
			klog.V(2).InfoS("Closing health check port", "service", k, "port", inst.port)
			inst.close()
			delete(s.services, k)
		}
	}
	keys := make([]serviceKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	var addrs []netip.Addr // listed once per call, when a port is to be opened
	var addrsErr error
	for _, k := range keys {
		w := want[k]
		if inst := s.services[k]; inst != nil {
			inst.endpoints = w.endpoints
			continue
		}
		if addrs == nil && addrsErr == nil {
			addrs, addrsErr = s.listenAddresses()
		}
		inst, err := s.open(k, w.port, addrs, addrsErr)
		if err != nil {
			klog.ErrorS(err, "Failed to open health check port", "service", k, "port", w.port)
			if s.cfg.OnListenError != nil {
				s.cfg.OnListenError(k.namespace, k.name, w.port, err)
			}
			continue
		}
		klog.V(2).InfoS("Opened health check port", "service", k, "port", w.port, "addresses", addrs)
		inst.endpoints = w.endpoints
		s.services[k] = inst
	}
}

// open listens on port on each of addrs (addrsErr: why there are none) and
// starts serving.
func (s *ServiceServer) open(k serviceKey, port int32, addrs []netip.Addr, addrsErr error) (*hcInstance, error) {
	if addrsErr != nil {
		return nil, addrsErr
	}
	inst := &hcInstance{port: port}
	handler := hcHandler{key: k, s: s}
	for _, a := range addrs {
		addr := net.JoinHostPort(a.String(), strconv.Itoa(int(port)))
		network := "tcp4"
		if a.Is6() {
			network = "tcp6"
		}
		if a.IsUnspecified() && len(addrs) == 1 {
			// Every address of both families, like kube-proxy's: Go
			// listens on 0.0.0.0 with "tcp" as a dual-stack [::] socket.
			network = "tcp"
		}
		l, err := s.cfg.Listener.Listen(context.Background(), network, addr)
		if err != nil {
			inst.close() // whatever this service opened already
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		srv := httpserve.NewServer(handler)
		inst.servers = append(inst.servers, srv)
		inst.listeners = append(inst.listeners, l)
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			err := srv.Serve(l)
			// After close, Serve's error is that of the listener closed
			// under it (net.ErrClosed), or ErrServerClosed: both normal.
			if err == nil || errors.Is(err, http.ErrServerClosed) || inst.closed.Load() {
				return
			}
			s.serveError(err, k, addr)
		}()
	}
	return inst, nil
}

func (inst *hcInstance) close() {
	inst.closed.Store(true)
	// Close, not Shutdown: a health check is one short request. The
	// listeners are closed here too because srv.Close does not know a
	// listener its Serve goroutine has not started on yet, and the port
	// may be reopened at once (by the same service on other addresses or
	// by another service).
	for _, l := range inst.listeners {
		_ = l.Close()
	}
	for _, srv := range inst.servers {
		_ = srv.Close()
	}
	inst.servers, inst.listeners = nil, nil
}

// Close closes every open port.
func (s *ServiceServer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, inst := range s.services {
		inst.close()
		delete(s.services, k)
	}
}

// Ports returns the open health-check ports by "namespace/name".
func (s *ServiceServer) Ports() map[string]int32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]int32, len(s.services))
	for k, inst := range s.services {
		out[k.String()] = inst.port
	}
	return out
}

type hcHandler struct {
	key serviceKey
	s   *ServiceServer
}

func (h hcHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.s.mu.RLock()
	inst := h.s.services[h.key]
	count := 0
	if inst != nil {
		count = inst.endpoints
	}
	h.s.mu.RUnlock()
	if inst == nil {
		// Closed between accepting the connection and now.
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	proxyHealthy := h.s.cfg.Proxy == nil || h.s.cfg.Proxy.IsHealthy()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	if count != 0 && proxyHealthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	// kube-proxy's exact text (a dedented template, tab-indented).
	fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		h.key.namespace, h.key.name, count, proxyHealthy)
}
