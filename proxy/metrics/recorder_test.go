package metrics

import (
	"context"
	"github.com/svcproxy/svcproxy/proxy/httpserve"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/proxy"
)

// countingHandler counts the events passed on to it.
type countingHandler struct{ services, slices, nodes int }

func (h *countingHandler) OnServiceUpdate(_, _ *v1.Service)                    { h.services++ }
func (h *countingHandler) OnEndpointSliceUpdate(_, _ *discovery.EndpointSlice) { h.slices++ }
func (h *countingHandler) OnNodeUpdate(*v1.Node)                               { h.nodes++ }

var start = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

func slice(ns, name, svc string, trigger time.Time) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: name,
		Labels: map[string]string{discovery.LabelServiceName: svc},
	}}
	if !trigger.IsZero() {
		s.Annotations = map[string]string{proxy.AnnotationTriggerTime: trigger.Format(time.RFC3339Nano)}
	}
	return s
}

func TestRecorder(t *testing.T) {
	t1 := start.Add(time.Second)
	t2 := start.Add(2 * time.Second)
	t3 := start.Add(3 * time.Second)
	type event struct{ old, cur *discovery.EndpointSlice }
	tests := []struct {
		name   string
		events []event
		want   []time.Time
	}{
		{name: "no events"},
		{
			name:   "slice existing before start is no latency",
			events: []event{{nil, slice("ns", "a-1", "a", start.Add(-time.Hour))}},
		},
		{
			name:   "add after start",
			events: []event{{nil, slice("ns", "a-1", "a", t1)}},
			want:   []time.Time{t1},
		},
		{
			name: "updates of several slices and services",
			events: []event{
				{nil, slice("ns", "a-1", "a", t1)},
				{slice("ns", "a-1", "a", t1), slice("ns", "a-1", "a", t2)},
				{nil, slice("ns", "b-1", "b", t3)},
			},
			want: []time.Time{t1, t2, t3},
		},
		{
			name: "update keeping the trigger time (resync) is not counted twice",
			events: []event{
				{nil, slice("ns", "a-1", "a", t1)},
				{slice("ns", "a-1", "a", t1), slice("ns", "a-1", "a", t1)},
			},
			want: []time.Time{t1},
		},
		{
			name: "delete drops the service's pending times",
			events: []event{
				{nil, slice("ns", "a-1", "a", t1)},
				{nil, slice("ns", "b-1", "b", t2)},
				{slice("ns", "a-1", "a", t1), nil},
			},
			want: []time.Time{t2},
		},
		{
			name:   "no annotation",
			events: []event{{nil, slice("ns", "a-1", "a", time.Time{})}},
		},
		{
			name: "malformed annotation",
			events: []event{{nil, func() *discovery.EndpointSlice {
				s := slice("ns", "a-1", "a", t1)
				s.Annotations[proxy.AnnotationTriggerTime] = "yesterday"
				return s
			}()}},
		},
		{
			name:   "no service label",
			events: []event{{nil, slice("ns", "a-1", "", t1)}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := New(prometheus.NewRegistry())
			next := &countingHandler{}
			r := m.NewRecorder(next, clocktesting.NewFakePassiveClock(start))
			for _, e := range tc.events {
				r.OnEndpointSliceUpdate(e.old, e.cur)
			}
			got := r.TakeTriggerTimes()
			sortTimes := cmpopts.SortSlices(func(a, b time.Time) bool { return a.Before(b) })
			if diff := cmp.Diff(tc.want, got, sortTimes, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("trigger times (-want +got):\n%s", diff)
			}
			if again := r.TakeTriggerTimes(); len(again) != 0 {
				t.Errorf("second TakeTriggerTimes returned %v, want nothing", again)
			}
			if next.slices != len(tc.events) {
				t.Errorf("passed on %d events, want %d", next.slices, len(tc.events))
			}
			if got := testutil.ToFloat64(m.EndpointChangesTotal); got != float64(len(tc.events)) {
				t.Errorf("endpoint changes %v, want %d", got, len(tc.events))
			}
		})
	}
}

func TestRecorderPassesEventsOn(t *testing.T) {
	m := New(prometheus.NewRegistry())
	next := &countingHandler{}
	r := m.NewRecorder(next, nil)
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"}}
	r.OnServiceUpdate(nil, svc)
	r.OnServiceUpdate(svc, svc)
	r.OnServiceUpdate(svc, nil)
	r.OnNodeUpdate(&v1.Node{})
	if next.services != 3 || next.nodes != 1 {
		t.Errorf("passed on %d service and %d node events, want 3 and 1", next.services, next.nodes)
	}
	if got := testutil.ToFloat64(m.ServiceChangesTotal); got != 3 {
		t.Errorf("service changes %v, want 3", got)
	}
}

func TestServeStopsWithContext(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	reg := prometheus.NewRegistry()
	go func() { errc <- httpserve.Serve(ctx, httpserve.NewServer(NewServer("", reg, "iptables").Handler()), l) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/proxyMode")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "iptables" {
		t.Errorf("/proxyMode = %q", body)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("serve returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}

func TestRunFailsOnBadAddress(t *testing.T) {
	err := NewServer("256.0.0.1:1", prometheus.NewRegistry(), "iptables").Run(context.Background())
	if err == nil {
		t.Fatal("Run on an invalid address succeeded")
	}
}
