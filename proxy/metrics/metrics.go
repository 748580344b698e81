// Package metrics holds svcproxy's Prometheus metrics. The kubeproxy_* ones
// carry kube-proxy's names, help strings, labels and buckets (as of
// Kubernetes v1.37, pkg/proxy/metrics/metrics.go) so that dashboards and
// alerts written for kube-proxy keep working; svcproxy_* ones are ours.
//
// Nothing here touches a global registry: New registers on the Registerer
// it is given.
package metrics

import (
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/svcproxy/svcproxy/proxy"
)

// IPFamily is the default value of the ip_family label. kube-proxy labels
// most of its metrics by the IP family of the proxier that set them
// ("IPv4", "IPv6"), one proxier per family; svcproxy syncs every family in
// one sync and records the sync's figures for each family it programs
// (SetFamilies), IPv4 until it knows.
const IPFamily = "IPv4"

// Tables are the values of the table label of IPTablesRules.
const (
	TableFilter = "filter"
	TableNAT    = "nat"
)

// help prefixes kube-proxy's help text the way k8s.io/component-base does for
// ALPHA metrics, so that the exposition text is identical to kube-proxy's.
func help(s string) string { return "[ALPHA] " + s }

const subsystem = "kubeproxy"

// syncBuckets are kube-proxy's buckets for sync durations: 1 ms to ~16 s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// networkProgrammingBuckets are kube-proxy's buckets for network programming
// latency. Like component-base's MergeBuckets, they start with a 0 bucket.
var networkProgrammingBuckets = merge(
	prometheus.LinearBuckets(0.25, 0.25, 2), // 0.25s, 0.50s
	prometheus.LinearBuckets(1, 1, 59),      // 1s, 2s, 3s, ... 59s
	prometheus.LinearBuckets(60, 5, 12),     // 60s, 65s, 70s, ... 115s
	prometheus.LinearBuckets(120, 30, 7),    // 2min, 2.5min, 3min, ..., 5min
)

func merge(slices ...[]float64) []float64 {
	out := make([]float64, 1)
	for _, s := range slices {
		out = append(out, s...)
	}
	return out
}

// Metrics are svcproxy's metrics. The fields are exported for tests and for
// callers that need more than the methods offer; the methods set the
// ip_family label.
type Metrics struct {
	SyncProxyRulesLatency             *prometheus.HistogramVec
	SyncFullProxyRulesLatency         *prometheus.HistogramVec
	SyncPartialProxyRulesLatency      *prometheus.HistogramVec
	NetworkProgrammingLatency         *prometheus.HistogramVec
	SyncProxyRulesLastTimestamp       *prometheus.GaugeVec
	SyncProxyRulesLastQueuedTimestamp *prometheus.GaugeVec
	IPTablesRulesTotal                *prometheus.GaugeVec
	IPTablesRulesLastSync             *prometheus.GaugeVec
	IPTablesRestoreFailuresTotal      *prometheus.CounterVec
	SyncFailuresTotal                 *prometheus.CounterVec
	DriftDetectedTotal                *prometheus.CounterVec
	StaleDeletionFailuresTotal        *prometheus.CounterVec
	EndpointChangesTotal              prometheus.Counter
	ServiceChangesTotal               prometheus.Counter
	NoLocalEndpointsTotal             *prometheus.GaugeVec
	ProxyHealthzTotal                 *prometheus.CounterVec
	ProxyLivezTotal                   *prometheus.CounterVec
	SkippedObjectsTotal               *prometheus.CounterVec

	// families are the ip_family values of the sync figures; nil: IPFamily.
	families atomic.Pointer[[]string]
}

// SetFamilies sets the IP families ("IPv4", "IPv6") whose ip_family label
// the sync figures (durations, timestamps, failures, drift, network
// programming latency) are recorded under from now on: the families the
// backend programs. Empty means IPFamily.
func (m *Metrics) SetFamilies(families []string) {
	fs := slices.Clone(families)
	slices.Sort(fs)
	m.families.Store(&fs)
}

// each calls f with every family of SetFamilies.
func (m *Metrics) each(f func(family string)) {
	fs := m.families.Load()
	if fs == nil || len(*fs) == 0 {
		f(IPFamily)
		return
	}
	for _, family := range *fs {
		f(family)
	}
}

// New creates the metrics and registers them on reg. It panics if one of them
// is registered there already (like prometheus.MustRegister), which only a
// programming error can cause.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		SyncProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_duration_seconds",
			Help:      help("SyncProxyRules latency in seconds"),
			Buckets:   syncBuckets,
		}, []string{"ip_family"}),
		SyncFullProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: subsystem,
			Name:      "sync_full_proxy_rules_duration_seconds",
			Help:      help("SyncProxyRules latency in seconds for full resyncs"),
			Buckets:   syncBuckets,
		}, []string{"ip_family"}),
		SyncPartialProxyRulesLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: subsystem,
			Name:      "sync_partial_proxy_rules_duration_seconds",
			Help:      help("SyncProxyRules latency in seconds for partial resyncs"),
			Buckets:   syncBuckets,
		}, []string{"ip_family"}),
		NetworkProgrammingLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Subsystem: subsystem,
			Name:      "network_programming_duration_seconds",
			Help:      help("In Cluster Network Programming Latency in seconds"),
			Buckets:   networkProgrammingBuckets,
		}, []string{"ip_family"}),
		SyncProxyRulesLastTimestamp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_last_timestamp_seconds",
			Help:      help("The last time proxy rules were successfully synced"),
		}, []string{"ip_family"}),
		SyncProxyRulesLastQueuedTimestamp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_last_queued_timestamp_seconds",
			Help:      help("The last time a sync of proxy rules was queued"),
		}, []string{"ip_family"}),
		IPTablesRulesTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_iptables_total",
			Help:      help("Total number of iptables rules owned by kube-proxy"),
		}, []string{"table", "ip_family"}),
		IPTablesRulesLastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_iptables_last",
			Help:      help("Number of iptables rules written by kube-proxy in last sync"),
		}, []string{"table", "ip_family"}),
		IPTablesRestoreFailuresTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_iptables_restore_failures_total",
			Help:      help("Cumulative proxy iptables restore failures"),
		}, []string{"ip_family"}),
		SyncFailuresTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "svcproxy",
			Name:      "sync_proxy_rules_failures_total",
			Help:      "Syncs that failed, whatever the cause (iptables-restore, netlink, ipset); each is retried as a full sync.",
		}, []string{"ip_family"}),
		DriftDetectedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "svcproxy",
			Name:      "drift_detected_total",
			Help:      "Times svcproxy found its rules changed from outside (a flushed table, a deleted jump) and asked for a full sync.",
		}, []string{"ip_family"}),
		StaleDeletionFailuresTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "svcproxy",
			Name:      "stale_deletion_failures_total",
			Help:      "Syncs whose deletion of chains no longer needed failed (another program still references one); the rest of the sync was applied and the deletion is retried.",
		}, []string{"ip_family"}),
		EndpointChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_endpoint_changes_total",
			Help:      help("Cumulative proxy rules Endpoint changes"),
		}),
		ServiceChangesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_service_changes_total",
			Help:      help("Cumulative proxy rules Service changes"),
		}),
		NoLocalEndpointsTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Subsystem: subsystem,
			Name:      "sync_proxy_rules_no_local_endpoints_total",
			Help:      help("Number of services with a Local traffic policy and no endpoints"),
		}, []string{"traffic_policy", "ip_family"}),
		ProxyHealthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Subsystem: subsystem,
			Name:      "proxy_healthz_total",
			Help:      help("Cumulative proxy healthz HTTP status"),
		}, []string{"code"}),
		ProxyLivezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Subsystem: subsystem,
			Name:      "proxy_livez_total",
			Help:      help("Cumulative proxy livez HTTP status"),
		}, []string{"code"}),
		SkippedObjectsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "svcproxy",
			Name:      "skipped_objects_total",
			Help:      "Services, EndpointSlices and parts of them that svcproxy skipped as invalid or not its own, by kind and reason.",
		}, []string{"kind", "reason"}),
	}
	reg.MustRegister(
		m.SyncProxyRulesLatency,
		m.SyncFullProxyRulesLatency,
		m.SyncPartialProxyRulesLatency,
		m.NetworkProgrammingLatency,
		m.SyncProxyRulesLastTimestamp,
		m.SyncProxyRulesLastQueuedTimestamp,
		m.IPTablesRulesTotal,
		m.IPTablesRulesLastSync,
		m.IPTablesRestoreFailuresTotal,
		m.SyncFailuresTotal,
		m.DriftDetectedTotal,
		m.StaleDeletionFailuresTotal,
		m.EndpointChangesTotal,
		m.ServiceChangesTotal,
		m.NoLocalEndpointsTotal,
		m.ProxyHealthzTotal,
		m.ProxyLivezTotal,
		m.SkippedObjectsTotal,
	)
	return m
}

// ObserveSync records the duration of one sync, successful or not, in the
// overall histogram and in the full or partial one (as kube-proxy does).
func (m *Metrics) ObserveSync(full bool, d time.Duration) {
	s := d.Seconds()
	m.each(func(family string) {
		m.SyncProxyRulesLatency.WithLabelValues(family).Observe(s)
		if full {
			m.SyncFullProxyRulesLatency.WithLabelValues(family).Observe(s)
		} else {
			m.SyncPartialProxyRulesLatency.WithLabelValues(family).Observe(s)
		}
	})
}

// Synced records a successful sync that finished at now.
func (m *Metrics) Synced(now time.Time) {
	m.each(func(family string) { m.SyncProxyRulesLastTimestamp.WithLabelValues(family).Set(unixSeconds(now)) })
}

// Queued records that a sync was requested at now (a change arrived).
func (m *Metrics) Queued(now time.Time) {
	m.each(func(family string) { m.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(family).Set(unixSeconds(now)) })
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// SetIPTablesRules sets the number of rules svcproxy owns in table (TableNAT
// or TableFilter) and how many of them the last sync wrote.
func (m *Metrics) SetIPTablesRules(table string, total, written int) {
	m.SetIPTablesRulesOf(IPFamily, table, total, written)
}

// SetIPTablesRulesOf is SetIPTablesRules for one IP family ("IPv4",
// "IPv6"), kube-proxy's ip_family label.
func (m *Metrics) SetIPTablesRulesOf(family, table string, total, written int) {
	m.IPTablesRulesTotal.WithLabelValues(table, family).Set(float64(total))
	m.IPTablesRulesLastSync.WithLabelValues(table, family).Set(float64(written))
}

// SyncFailed counts one failed sync; restore says it was iptables-restore
// that failed (kube-proxy's restore-failure counter counts only those).
func (m *Metrics) SyncFailed(restore bool) {
	m.each(func(family string) {
		m.SyncFailuresTotal.WithLabelValues(family).Inc()
		if restore {
			m.IPTablesRestoreFailuresTotal.WithLabelValues(family).Inc()
		}
	})
}

// DriftDetected counts one detection of rules changed from outside.
func (m *Metrics) DriftDetected() {
	m.each(func(family string) { m.DriftDetectedTotal.WithLabelValues(family).Inc() })
}

// StaleDeletionFailed counts one sync whose stale-object deletion failed,
// under every family of SetFamilies.
func (m *Metrics) StaleDeletionFailed() {
	m.each(m.StaleDeletionFailedOf)
}

// StaleDeletionFailedOf counts one sync whose stale-object deletion failed
// in one IP family ("IPv4", "IPv6").
func (m *Metrics) StaleDeletionFailedOf(family string) {
	m.StaleDeletionFailuresTotal.WithLabelValues(family).Inc()
}

// Skipped counts a skipped object; it is a proxy.SkipFunc.
func (m *Metrics) Skipped(kind, reason string) {
	m.SkippedObjectsTotal.WithLabelValues(kind, reason).Inc()
}

var _ proxy.SkipFunc = (*Metrics)(nil).Skipped

// HealthzResponse counts one /healthz answer with the HTTP status code.
func (m *Metrics) HealthzResponse(code int) {
	m.ProxyHealthzTotal.WithLabelValues(codeLabel(code)).Inc()
}

// LivezResponse counts one /livez answer with the HTTP status code.
func (m *Metrics) LivezResponse(code int) {
	m.ProxyLivezTotal.WithLabelValues(codeLabel(code)).Inc()
}

func codeLabel(code int) string {
	switch code {
	case http.StatusOK:
		return "200"
	case http.StatusServiceUnavailable:
		return "503"
	}
	return http.StatusText(code)
}

// SetNoLocalEndpoints sets, from the Snapshot just programmed, how many
// service ports have a Local traffic policy but no local endpoint to send
// that traffic to (so it is dropped), separately for the internal and the
// external policy. Ports with no endpoints at all are rejected instead and
// not counted, as in kube-proxy.
func (m *Metrics) SetNoLocalEndpoints(snap *proxy.Snapshot) {
	internal, external := map[string]int{}, map[string]int{}
	seen := map[string]bool{IPFamily: true}
	for _, sp := range snap.ServicePorts() {
		family := string(sp.IPFamily)
		if family == "" {
			family = IPFamily
		}
		seen[family] = true
		if !sp.HasEndpoints() || len(sp.LocalEndpoints) > 0 {
			continue
		}
		if sp.InternalPolicyLocal {
			internal[family]++
		}
		if sp.ExternalPolicyLocal && sp.HasExternal() {
			external[family]++
		}
	}
	for family := range seen {
		m.NoLocalEndpointsTotal.WithLabelValues("internal", family).Set(float64(internal[family]))
		m.NoLocalEndpointsTotal.WithLabelValues("external", family).Set(float64(external[family]))
	}
}

// ObserveNetworkProgramming records, for every trigger time (the
// endpoints.kubernetes.io/last-change-trigger-time of a changed
// EndpointSlice), the time from that change to applied, the moment the rules
// reflecting it were in place. Trigger times after applied (clock skew
// between node and control plane) are recorded as 0.
func (m *Metrics) ObserveNetworkProgramming(triggers []time.Time, applied time.Time) {
	m.each(func(family string) {
		h := m.NetworkProgrammingLatency.WithLabelValues(family)
		for _, t := range triggers {
			h.Observe(max(applied.Sub(t), 0).Seconds())
		}
	})
}

// Handler returns the HTTP handler for /metrics serving what g gathers
// (usually the same *prometheus.Registry passed to New).
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}
