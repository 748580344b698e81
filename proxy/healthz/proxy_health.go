// Package healthz serves svcproxy's health the way kube-proxy does (Kubernetes
// v1.37, pkg/proxy/healthcheck), so that probes, load balancers and tools
// written for kube-proxy read it unchanged:
//
//   - ProxyServer: /healthz and /livez on --healthz-bind-address
//     (0.0.0.0:10256), JSON bodies with kube-proxy's fields;
//   - ServiceServer: one HTTP server per health-check node port of an
//     externalTrafficPolicy: Local LoadBalancer service, answering with the
//     number of local endpoints so that cloud load balancers only send
//     traffic to nodes that have some.
package healthz

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/proxy/httpserve"
)

// DefaultBindAddress is kube-proxy's default --healthz-bind-address.
const DefaultBindAddress = "0.0.0.0:10256"

// DefaultTimeout is kube-proxy's health timeout with its default sync period
// (2 × 30 s).
const DefaultTimeout = time.Minute

// ToBeDeletedTaint is the taint the Cluster Autoscaler puts on a node it is
// about to delete; kube-proxy reports such a node not eligible.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ipFamily is the only family svcproxy programs; it keys Health.Status.
const ipFamily = v1.IPv4Protocol

// ProxierHealth is the health of the rules of one IP family.
type ProxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// Health is the body of /healthz and /livez, field for field kube-proxy's
// ProxyHealth.
type Health struct {
	// LastUpdated is the time of the last successful sync; in an answer
	// that says healthy it is the current time, as kube-proxy (and tools
	// that compare it with currentTime) expect.
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is set in /healthz answers only.
	NodeEligible *bool                         `json:"nodeEligible,omitempty"`
	Healthy      bool                          `json:"healthy"`
	Status       map[v1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// ResponseCounter counts the answers of /healthz and /livez by HTTP status;
// *metrics.Metrics is one (kubeproxy_proxy_healthz_total,
// kubeproxy_proxy_livez_total).
type ResponseCounter interface {
	HealthzResponse(code int)
	LivezResponse(code int)
}

// Config configures a ProxyServer.
type Config struct {
	// BindAddress is the "host:port" to serve on; "" means
	// DefaultBindAddress.
	BindAddress string
	// Timeout is how long a queued change may wait for a successful sync
	// before the proxy counts as unhealthy. kube-proxy uses twice its sync
	// period; 0 means DefaultTimeout.
	Timeout time.Duration
	// Clock is the clock; nil means the real one.
	Clock clock.Clock
	// Listener opens the socket; nil means NetListener.
	Listener Listener
	// Counter, if not nil, counts the answers.
	Counter ResponseCounter
}

// ProxyServer tracks whether the rules keep up with the changes and serves
// /healthz and /livez. It is safe for concurrent use.
//
// The two answer different questions:
//
//   - /livez (the liveness probe: "restart me") fails only when svcproxy
//     itself is stuck: a change it has seen (QueuedUpdate) has waited
//     Timeout or longer for a successful sync (Updated), after a sync has
//     succeeded once. That is a wedged sync loop, or rules it can no longer
//     program. Nothing about the API server counts: during an outage no
//     change arrives, and the changes already seen are synced as usual, so
//     /livez stays 200 and a restart (which could not reach the API server
//     either) is never asked for. Before the first successful sync /livez
//     is 200 too: svcproxy may be waiting for its first complete view of
//     the API server.
//   - /healthz (readiness, load balancers) fails when /livez does, and also
//     when no sync succeeded within Timeout of New (creating the server
//     counts as a queued change), when the source (the API server) has
//     failed for Timeout or longer (SetSourceError), and when the node is
//     not eligible (being deleted, or tainted for deletion by the Cluster
//     Autoscaler), so that load balancers drain it.
type ProxyServer struct {
	addr     string
	timeout  time.Duration
	clock    clock.Clock
	listener Listener
	counter  ResponseCounter

	mu          sync.RWMutex
	lastUpdated time.Time // zero until the first successful sync
	// oldestPending is the oldest change not synced yet, zero when none
	// waits; New counts as one (for /healthz only: see oldestQueued).
	oldestPending time.Time
	// oldestQueued is the oldest change QueuedUpdate reported since the
	// last successful sync, zero when none waits: what /livez judges.
	oldestQueued  time.Time
	nodeEligible  bool
	sourceErrorAt time.Time // zero while the source is fine
}

// NewProxyServer returns a ProxyServer. It does not listen until Run.
func NewProxyServer(cfg Config) *ProxyServer {
	s := &ProxyServer{
		addr:     cfg.BindAddress,
		timeout:  cfg.Timeout,
		clock:    cfg.Clock,
		listener: cfg.Listener,
		counter:  cfg.Counter,
		// Until a Node event says otherwise, as kube-proxy before v1.31
		// did (newer kube-proxy waits for its Node before it starts):
		// svcproxy also runs from a --state file with no Node in it.
		nodeEligible: true,
	}
	if s.addr == "" {
		s.addr = DefaultBindAddress
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.clock == nil {
		s.clock = clock.RealClock{}
	}
	if s.listener == nil {
		s.listener = NetListener{}
	}
	s.oldestPending = s.clock.Now()
	return s
}

// QueuedUpdate records that a change arrived that the rules do not reflect
// yet. Only the oldest unsynced change counts.
func (s *ProxyServer) QueuedUpdate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if s.oldestPending.IsZero() {
		s.oldestPending = now
	}
	if s.oldestQueued.IsZero() {
		s.oldestQueued = now
	}
}

// Updated records a successful sync: the rules reflect every change queued
// so far.
func (s *ProxyServer) Updated() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.oldestPending, s.oldestQueued = time.Time{}, time.Time{}
	s.lastUpdated = s.clock.Now()
}

// SetSourceError records whether the source of Services and EndpointSlices
// currently fails (err != nil), for example because the API server cannot
// be reached. It is an svcproxy addition to kube-proxy's semantics: a source
// failing for Timeout or longer makes /healthz fail, because changes that
// should be queued cannot even be seen. It never fails /livez: restarting
// svcproxy does not bring the API server back. nil clears it.
func (s *ProxyServer) SetSourceError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil:
		s.sourceErrorAt = time.Time{}
	case s.sourceErrorAt.IsZero():
		s.sourceErrorAt = s.clock.Now()
	}
}

// SyncNode updates the node's eligibility from its Node object: a node is
// eligible unless it is being deleted (deletionTimestamp set) or carries
// ToBeDeletedTaint. A nil node (deleted) is not eligible.
func (s *ProxyServer) SyncNode(node *v1.Node) {
	eligible := node != nil && node.DeletionTimestamp.IsZero()
	if eligible {
		for _, t := range node.Spec.Taints {
			if t.Key == ToBeDeletedTaint {
				eligible = false
				break
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if eligible != s.nodeEligible {
		klog.InfoS("Node eligibility for load balancer traffic changed", "eligible", eligible)
	}
	s.nodeEligible = eligible
}

// NodeEligible reports the node's eligibility (see SyncNode).
func (s *ProxyServer) NodeEligible() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.nodeEligible
}

// Health returns the proxy's health as /healthz judges it, ignoring the
// node's eligibility: not healthy when Live is not, when no sync succeeded
// within Timeout of New, or when the source has failed for Timeout or
// longer.
func (s *ProxyServer) Health() Health {
	s.mu.RLock()
	defer s.mu.RUnlock()
	now := s.clock.Now()
	healthy := s.liveLocked(now) &&
		(s.oldestPending.IsZero() || now.Sub(s.oldestPending) < s.timeout) &&
		(s.sourceErrorAt.IsZero() || now.Sub(s.sourceErrorAt) < s.timeout)
	return s.healthLocked(now, healthy)
}

// Liveness returns the proxy's health as /livez judges it: not healthy only
// when a change has waited Timeout or longer for a sync after a sync has
// succeeded once (see ProxyServer).
func (s *ProxyServer) Liveness() Health {
	s.mu.RLock()
	defer s.mu.RUnlock()
	now := s.clock.Now()
	return s.healthLocked(now, s.liveLocked(now))
}

func (s *ProxyServer) liveLocked(now time.Time) bool {
	return s.lastUpdated.IsZero() || s.oldestQueued.IsZero() || now.Sub(s.oldestQueued) < s.timeout
}

func (s *ProxyServer) healthLocked(now time.Time, healthy bool) Health {
	return Health{
		LastUpdated: s.lastUpdated,
		CurrentTime: now,
		Healthy:     healthy,
		Status:      map[v1.IPFamily]ProxierHealth{ipFamily: {LastUpdated: s.lastUpdated, Healthy: healthy}},
	}
}

// IsHealthy reports Health().Healthy.
func (s *ProxyServer) IsHealthy() bool { return s.Health().Healthy }

// RulesCurrent reports whether the rules are as current as svcproxy can make
// them: Health without the source's errors. The health-check node ports
// consult it (see ForServicePorts).
func (s *ProxyServer) RulesCurrent() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	now := s.clock.Now()
	return s.liveLocked(now) && (s.oldestPending.IsZero() || now.Sub(s.oldestPending) < s.timeout)
}

// ForServicePorts returns what the health-check node ports of
// externalTrafficPolicy Local services consult: RulesCurrent, not /healthz.
// During an API server outage the rules in place keep working, and a 503 on
// every node at once would make the cloud load balancers drop every node
// (kube-proxy's node ports do not fail for an outage either).
func (s *ProxyServer) ForServicePorts() HealthChecker { return rulesCurrent{s} }

type rulesCurrent struct{ s *ProxyServer }

func (r rulesCurrent) IsHealthy() bool { return r.s.RulesCurrent() }

// IsLive reports Liveness().Healthy.
func (s *ProxyServer) IsLive() bool { return s.Liveness().Healthy }

// Handler returns the HTTP handler serving /healthz and /livez.
func (s *ProxyServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.serveHealthz)
	mux.HandleFunc("/livez", s.serveLivez)
	return mux
}

func (s *ProxyServer) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	h := s.Health()
	eligible := s.NodeEligible()
	h.NodeEligible = &eligible
	code := s.write(w, h, h.Healthy && eligible)
	if s.counter != nil {
		s.counter.HealthzResponse(code)
	}
}

func (s *ProxyServer) serveLivez(w http.ResponseWriter, _ *http.Request) {
	h := s.Liveness()
	code := s.write(w, h, h.Healthy)
	if s.counter != nil {
		s.counter.LivezResponse(code)
	}
}

func (s *ProxyServer) write(w http.ResponseWriter, h Health, ok bool) int {
	code := http.StatusServiceUnavailable
	if ok {
		code = http.StatusOK
		// kube-proxy's compatibility rule: a healthy answer says the
		// rules are current, whatever the last sync time.
		h.LastUpdated = h.CurrentTime
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	body, _ := json.Marshal(h)
	_, _ = w.Write(body)
	return code
}

// Run listens on the bind address and serves /healthz and /livez until ctx
// is done. It returns nil then, or the error that stopped it (for example
// the port in use).
func (s *ProxyServer) Run(ctx context.Context) error {
	l, err := s.listener.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("healthz server on %s: %w", s.addr, err)
	}
	klog.FromContext(ctx).Info("Serving /healthz and /livez", "address", l.Addr().String())
	return httpserve.Serve(ctx, httpserve.NewServer(s.Handler()), l)
}
