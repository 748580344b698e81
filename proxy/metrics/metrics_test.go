package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/svcproxy/svcproxy/proxy"
)

// upstream lists kube-proxy's metrics (Kubernetes v1.37,
// pkg/proxy/metrics/metrics.go) as exposed: name, type, help text with the
// "[ALPHA] " prefix component-base adds, and label names.
var upstream = []struct {
	name, typ, help string
	labels          []string
}{
	{"kubeproxy_sync_proxy_rules_duration_seconds", "HISTOGRAM", "[ALPHA] SyncProxyRules latency in seconds", []string{"ip_family"}},
	{"kubeproxy_sync_full_proxy_rules_duration_seconds", "HISTOGRAM", "[ALPHA] SyncProxyRules latency in seconds for full resyncs", []string{"ip_family"}},
	{"kubeproxy_sync_partial_proxy_rules_duration_seconds", "HISTOGRAM", "[ALPHA] SyncProxyRules latency in seconds for partial resyncs", []string{"ip_family"}},
	{"kubeproxy_network_programming_duration_seconds", "HISTOGRAM", "[ALPHA] In Cluster Network Programming Latency in seconds", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_last_timestamp_seconds", "GAUGE", "[ALPHA] The last time proxy rules were successfully synced", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "GAUGE", "[ALPHA] The last time a sync of proxy rules was queued", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_iptables_total", "GAUGE", "[ALPHA] Total number of iptables rules owned by kube-proxy", []string{"ip_family", "table"}},
	{"kubeproxy_sync_proxy_rules_iptables_last", "GAUGE", "[ALPHA] Number of iptables rules written by kube-proxy in last sync", []string{"ip_family", "table"}},
	{"kubeproxy_sync_proxy_rules_iptables_restore_failures_total", "COUNTER", "[ALPHA] Cumulative proxy iptables restore failures", []string{"ip_family"}},
	{"kubeproxy_sync_proxy_rules_endpoint_changes_total", "COUNTER", "[ALPHA] Cumulative proxy rules Endpoint changes", nil},
	{"kubeproxy_sync_proxy_rules_service_changes_total", "COUNTER", "[ALPHA] Cumulative proxy rules Service changes", nil},
	{"kubeproxy_sync_proxy_rules_no_local_endpoints_total", "GAUGE", "[ALPHA] Number of services with a Local traffic policy and no endpoints", []string{"ip_family", "traffic_policy"}},
	{"kubeproxy_proxy_healthz_total", "COUNTER", "[ALPHA] Cumulative proxy healthz HTTP status", []string{"code"}},
	{"kubeproxy_proxy_livez_total", "COUNTER", "[ALPHA] Cumulative proxy livez HTTP status", []string{"code"}},
	{"svcproxy_skipped_objects_total", "COUNTER", "", []string{"kind", "reason"}},
	{"svcproxy_sync_proxy_rules_failures_total", "COUNTER", "", []string{"ip_family"}},
	{"svcproxy_drift_detected_total", "COUNTER", "", []string{"ip_family"}},
	{"svcproxy_stale_deletion_failures_total", "COUNTER", "", []string{"ip_family"}},
}

// touchAll gives every metric a value so that Gather reports it.
func touchAll(m *Metrics) {
	m.ObserveSync(true, time.Second)
	m.ObserveSync(false, time.Millisecond)
	m.ObserveNetworkProgramming([]time.Time{time.Unix(100, 0)}, time.Unix(101, 0))
	m.Synced(time.Unix(200, 0))
	m.Queued(time.Unix(199, 0))
	m.SetIPTablesRules(TableNAT, 10, 2)
	m.SetIPTablesRules(TableFilter, 3, 3)
	m.SyncFailed(true)
	m.DriftDetected()
	m.StaleDeletionFailed()
	m.EndpointChangesTotal.Inc()
	m.ServiceChangesTotal.Inc()
	m.SetNoLocalEndpoints(proxy.NewSnapshot("node1", "", nil))
	m.HealthzResponse(http.StatusOK)
	m.LivezResponse(http.StatusServiceUnavailable)
	m.Skipped("Service", "headless")
}

func TestUpstreamNamesHelpAndLabels(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg)
	touchAll(m)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, f := range families {
		got[f.GetName()] = f
	}
	if len(got) != len(upstream) {
		t.Errorf("got %d metric families, want %d", len(got), len(upstream))
	}
	for _, want := range upstream {
		t.Run(want.name, func(t *testing.T) {
			f := got[want.name]
			if f == nil {
				t.Fatalf("metric %s not registered", want.name)
			}
			if typ := f.GetType().String(); typ != want.typ {
				t.Errorf("type %s, want %s", typ, want.typ)
			}
			if want.help != "" && f.GetHelp() != want.help {
				t.Errorf("help %q, want %q", f.GetHelp(), want.help)
			}
			for _, metric := range f.GetMetric() {
				var labels []string
				for _, l := range metric.GetLabel() {
					labels = append(labels, l.GetName())
				}
				if diff := cmp.Diff(want.labels, labels); diff != "" {
					t.Errorf("labels (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestBuckets(t *testing.T) {
	sync := []float64{0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384}
	np := []float64{0, 0.25, 0.5}
	for s := 1; s <= 59; s++ {
		np = append(np, float64(s))
	}
	for s := 60; s <= 115; s += 5 {
		np = append(np, float64(s))
	}
	for s := 120; s <= 300; s += 30 {
		np = append(np, float64(s))
	}
	tests := []struct {
		name string
		want []float64
	}{
		{"kubeproxy_sync_proxy_rules_duration_seconds", sync},
		{"kubeproxy_sync_full_proxy_rules_duration_seconds", sync},
		{"kubeproxy_sync_partial_proxy_rules_duration_seconds", sync},
		{"kubeproxy_network_programming_duration_seconds", np},
	}
	reg := prometheus.NewRegistry()
	touchAll(New(reg))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []float64
			for _, f := range families {
				if f.GetName() != tc.name {
					continue
				}
				for _, b := range f.GetMetric()[0].GetHistogram().GetBucket() {
					got = append(got, b.GetUpperBound())
				}
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b float64) bool {
				return a-b < 1e-9 && b-a < 1e-9
			})); diff != "" {
				t.Errorf("buckets (-want +got):\n%s", diff)
			}
		})
	}
}

func TestObserveSync(t *testing.T) {
	tests := []struct {
		name                string
		full                []bool
		wantAll, wantFull   int
		wantPartial         int
		wantAllSumInSeconds float64
	}{
		{name: "none"},
		{name: "one full", full: []bool{true}, wantAll: 1, wantFull: 1, wantAllSumInSeconds: 0.5},
		{name: "full then partials", full: []bool{true, false, false}, wantAll: 3, wantFull: 1, wantPartial: 2, wantAllSumInSeconds: 1.5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m := New(reg)
			for _, f := range tc.full {
				m.ObserveSync(f, 500*time.Millisecond)
			}
			counts := map[string]int{}
			var sum float64
			families, _ := reg.Gather()
			for _, f := range families {
				for _, metric := range f.GetMetric() {
					if h := metric.GetHistogram(); h != nil {
						counts[f.GetName()] = int(h.GetSampleCount())
						if f.GetName() == "kubeproxy_sync_proxy_rules_duration_seconds" {
							sum = h.GetSampleSum()
						}
					}
				}
			}
			if counts["kubeproxy_sync_proxy_rules_duration_seconds"] != tc.wantAll ||
				counts["kubeproxy_sync_full_proxy_rules_duration_seconds"] != tc.wantFull ||
				counts["kubeproxy_sync_partial_proxy_rules_duration_seconds"] != tc.wantPartial {
				t.Errorf("sample counts %v, want all %d full %d partial %d", counts, tc.wantAll, tc.wantFull, tc.wantPartial)
			}
			if sum != tc.wantAllSumInSeconds {
				t.Errorf("sum %v, want %v", sum, tc.wantAllSumInSeconds)
			}
		})
	}
}

func TestGaugesAndCounters(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.Synced(time.Unix(1700000000, 500000000))
	m.Queued(time.Unix(1700000001, 0))
	m.SetIPTablesRules(TableNAT, 120, 7)
	m.SetIPTablesRules(TableFilter, 4, 4)
	m.SyncFailed(true)
	m.SyncFailed(true)
	m.SyncFailed(false) // a netlink failure: not a restore failure
	m.Skipped("Service", "headless")
	m.Skipped("Service", "headless")
	m.Skipped("EndpointSlice", "no-service-label")
	want := `
# HELP kubeproxy_sync_proxy_rules_iptables_last [ALPHA] Number of iptables rules written by kube-proxy in last sync
# TYPE kubeproxy_sync_proxy_rules_iptables_last gauge
kubeproxy_sync_proxy_rules_iptables_last{ip_family="IPv4",table="filter"} 4
kubeproxy_sync_proxy_rules_iptables_last{ip_family="IPv4",table="nat"} 7
# HELP kubeproxy_sync_proxy_rules_iptables_restore_failures_total [ALPHA] Cumulative proxy iptables restore failures
# TYPE kubeproxy_sync_proxy_rules_iptables_restore_failures_total counter
kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"} 2
# HELP kubeproxy_sync_proxy_rules_iptables_total [ALPHA] Total number of iptables rules owned by kube-proxy
# TYPE kubeproxy_sync_proxy_rules_iptables_total gauge
kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="filter"} 4
kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"} 120
# HELP kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds [ALPHA] The last time a sync of proxy rules was queued
# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} 1.700000001e+09
# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] The last time proxy rules were successfully synced
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7000000005e+09
# HELP svcproxy_skipped_objects_total Services, EndpointSlices and parts of them that svcproxy skipped as invalid or not its own, by kind and reason.
# TYPE svcproxy_skipped_objects_total counter
svcproxy_skipped_objects_total{kind="EndpointSlice",reason="no-service-label"} 1
svcproxy_skipped_objects_total{kind="Service",reason="headless"} 2
# HELP svcproxy_sync_proxy_rules_failures_total Syncs that failed, whatever the cause (iptables-restore, netlink, ipset); each is retried as a full sync.
# TYPE svcproxy_sync_proxy_rules_failures_total counter
svcproxy_sync_proxy_rules_failures_total{ip_family="IPv4"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"kubeproxy_sync_proxy_rules_iptables_last",
		"kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
		"kubeproxy_sync_proxy_rules_iptables_total",
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
		"svcproxy_skipped_objects_total",
		"svcproxy_sync_proxy_rules_failures_total",
	); err != nil {
		t.Error(err)
	}
}

func TestObserveNetworkProgramming(t *testing.T) {
	applied := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		triggers  []time.Time
		wantCount uint64
		wantSum   float64
		// wantLE maps an upper bound to its cumulative count.
		wantLE map[float64]uint64
	}{
		{name: "nothing", wantLE: map[float64]uint64{0: 0, 300: 0}},
		{
			name:      "two changes",
			triggers:  []time.Time{applied.Add(-200 * time.Millisecond), applied.Add(-90 * time.Second)},
			wantCount: 2, wantSum: 90.2,
			wantLE: map[float64]uint64{0: 0, 0.25: 1, 85: 1, 90: 2, 300: 2},
		},
		{
			name:      "trigger after apply (clock skew) counts as zero",
			triggers:  []time.Time{applied.Add(time.Second)},
			wantCount: 1, wantSum: 0,
			wantLE: map[float64]uint64{0: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New(prometheus.NewRegistry())
			m.ObserveNetworkProgramming(tc.triggers, applied)
			var out dto.Metric
			if err := m.NetworkProgrammingLatency.WithLabelValues(IPFamily).(prometheus.Metric).Write(&out); err != nil {
				t.Fatal(err)
			}
			h := out.GetHistogram()
			if h.GetSampleCount() != tc.wantCount {
				t.Errorf("count %d, want %d", h.GetSampleCount(), tc.wantCount)
			}
			if d := h.GetSampleSum() - tc.wantSum; d > 1e-9 || d < -1e-9 {
				t.Errorf("sum %v, want %v", h.GetSampleSum(), tc.wantSum)
			}
			for _, b := range h.GetBucket() {
				if want, ok := tc.wantLE[b.GetUpperBound()]; ok && b.GetCumulativeCount() != want {
					t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
				}
			}
		})
	}
}

func TestSetNoLocalEndpoints(t *testing.T) {
	local := &proxy.Endpoint{Ready: true, Serving: true, IsLocal: true}
	remote := &proxy.Endpoint{Ready: true, Serving: true}
	port := func(name string, internalLocal, externalLocal bool, nodePort int32, all, locals []*proxy.Endpoint) *proxy.ServicePort {
		return &proxy.ServicePort{
			Name:                proxy.ServicePortName{Namespace: "ns", Name: name, Protocol: "TCP"},
			InternalPolicyLocal: internalLocal, ExternalPolicyLocal: externalLocal,
			NodePort: nodePort, AllEndpoints: all, LocalEndpoints: locals,
		}
	}
	tests := []struct {
		name                   string
		ports                  []*proxy.ServicePort
		wantInternal, wantExtr float64
	}{
		{name: "empty"},
		{
			name: "internal local without local endpoints",
			ports: []*proxy.ServicePort{
				port("a", true, false, 0, []*proxy.Endpoint{remote}, nil),
				port("b", true, false, 0, []*proxy.Endpoint{local}, []*proxy.Endpoint{local}),
			},
			wantInternal: 1,
		},
		{
			name: "external local counts only when reachable from outside",
			ports: []*proxy.ServicePort{
				port("a", false, true, 30000, []*proxy.Endpoint{remote}, nil),
				port("b", false, true, 0, []*proxy.Endpoint{remote}, nil),
				port("c", true, true, 30001, []*proxy.Endpoint{remote}, nil),
			},
			wantInternal: 1, wantExtr: 2,
		},
		{
			name:  "no endpoints at all is rejected, not counted",
			ports: []*proxy.ServicePort{port("a", true, true, 30000, nil, nil)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New(prometheus.NewRegistry())
			m.SetNoLocalEndpoints(proxy.NewSnapshot("node1", "", tc.ports))
			gotI := testutil.ToFloat64(m.NoLocalEndpointsTotal.WithLabelValues("internal", IPFamily))
			gotE := testutil.ToFloat64(m.NoLocalEndpointsTotal.WithLabelValues("external", IPFamily))
			if gotI != tc.wantInternal || gotE != tc.wantExtr {
				t.Errorf("internal %v external %v, want %v %v", gotI, gotE, tc.wantInternal, tc.wantExtr)
			}
		})
	}
}

func TestHealthzCounters(t *testing.T) {
	m := New(prometheus.NewRegistry())
	m.HealthzResponse(200)
	m.HealthzResponse(503)
	m.HealthzResponse(503)
	m.LivezResponse(200)
	if got := testutil.ToFloat64(m.ProxyHealthzTotal.WithLabelValues("503")); got != 2 {
		t.Errorf("healthz 503: %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.ProxyLivezTotal.WithLabelValues("200")); got != 1 {
		t.Errorf("livez 200: %v, want 1", got)
	}
}

func TestServerHandler(t *testing.T) {
	reg := NewRegistry()
	m := New(reg)
	m.Skipped("Service", "headless")
	srv := httptest.NewServer(NewServer("127.0.0.1:0", reg, "iptables").Handler())
	defer srv.Close()
	tests := []struct {
		name, path string
		wantCode   int
		wantInBody []string
	}{
		{"metrics", "/metrics", 200, []string{
			`svcproxy_skipped_objects_total{kind="Service",reason="headless"} 1`,
			"kubeproxy_sync_proxy_rules_endpoint_changes_total 0",
			"go_goroutines",
		}},
		{"healthz", "/healthz", 200, []string{"ok"}},
		{"proxy mode", "/proxyMode", 200, []string{"iptables"}},
		{"unknown", "/nope", 404, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantCode)
			}
			for _, s := range tc.wantInBody {
				if !strings.Contains(string(body), s) {
					t.Errorf("body lacks %q:\n%s", s, body)
				}
			}
		})
	}
}

func TestNewPanicsOnDoubleRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg)
	defer func() {
		if recover() == nil {
			t.Error("second New on the same registry did not panic")
		}
	}()
	New(reg)
}

func TestPerFamilyRuleCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.SetIPTablesRulesOf("IPv4", TableNAT, 10, 1)
	m.SetIPTablesRulesOf("IPv6", TableNAT, 6, 2)
	want := `
# HELP kubeproxy_sync_proxy_rules_iptables_total [ALPHA] Total number of iptables rules owned by kube-proxy
# TYPE kubeproxy_sync_proxy_rules_iptables_total gauge
kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"} 10
kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv6",table="nat"} 6
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kubeproxy_sync_proxy_rules_iptables_total"); err != nil {
		t.Error(err)
	}
}
