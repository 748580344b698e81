package metrics

import (
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/proxy"
)

// Recorder is a proxy.Handler that sits between a source and the Tracker: it
// counts Service and EndpointSlice events (kube-proxy's
// sync_proxy_rules_{service,endpoint}_changes_total count every event, not
// only those that change the rules), collects the EndpointSlices'
// last-change-trigger-time annotations for the network programming latency,
// and passes every event on unchanged. It is safe for concurrent use.
type Recorder struct {
	next    proxy.Handler
	metrics *Metrics
	start   time.Time

	mu       sync.Mutex
	triggers map[string][]time.Time // ns/service -> trigger times not yet taken
}

var _ proxy.Handler = (*Recorder)(nil)

// NewRecorder returns a Recorder passing events on to next. Trigger times
// from before the Recorder was created are ignored: at start every existing
// EndpointSlice arrives as an add, and its annotation says when it last
// changed, possibly days ago, which is no network programming latency (as in
// kube-proxy). A nil clock means the real one.
func (m *Metrics) NewRecorder(next proxy.Handler, clk clock.PassiveClock) *Recorder {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Recorder{next: next, metrics: m, start: clk.Now(), triggers: map[string][]time.Time{}}
}

// OnServiceUpdate implements proxy.Handler.
func (r *Recorder) OnServiceUpdate(old, cur *v1.Service) {
	if old != nil || cur != nil {
		r.metrics.ServiceChangesTotal.Inc()
	}
	r.next.OnServiceUpdate(old, cur)
}

// OnEndpointSliceUpdate implements proxy.Handler.
func (r *Recorder) OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice) {
	if old != nil || cur != nil {
		r.metrics.EndpointChangesTotal.Inc()
		r.record(old, cur)
	}
	r.next.OnEndpointSliceUpdate(old, cur)
}

// OnNodeUpdate implements proxy.Handler.
func (r *Recorder) OnNodeUpdate(node *v1.Node) { r.next.OnNodeUpdate(node) }

func (r *Recorder) record(old, cur *discovery.EndpointSlice) {
	s := cur
	if s == nil {
		s = old
	}
	svc := s.Labels[discovery.LabelServiceName]
	if svc == "" {
		return
	}
	key := s.Namespace + "/" + svc
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur == nil {
		// The annotation of a deleted slice dates from its last update,
		// not from the deletion; kube-proxy drops the service's pending
		// trigger times then, and so do we.
		delete(r.triggers, key)
		return
	}
	if old != nil && old.Annotations[proxy.AnnotationTriggerTime] == cur.Annotations[proxy.AnnotationTriggerTime] {
		return // a resync or an update that did not come from a change
	}
	if t := TriggerTime(cur.Annotations); !t.IsZero() && t.After(r.start) {
		r.triggers[key] = append(r.triggers[key], t)
	}
}

// TakeTriggerTimes returns the trigger times collected since the last call
// and forgets them. Call it right before taking the Tracker's Snapshot, so
// that every time returned belongs to a change that Snapshot contains; if
// the sync then fails, keep the times with the pending changes and observe
// them after the retry succeeds.
func (r *Recorder) TakeTriggerTimes() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []time.Time
	for _, ts := range r.triggers {
		out = append(out, ts...)
	}
	clear(r.triggers)
	return out
}

// TriggerTime returns the time in the endpoints.kubernetes.io/last-change-trigger-time
// annotation, or the zero time when it is missing or malformed.
func TriggerTime(annotations map[string]string) time.Time {
	v, ok := annotations[proxy.AnnotationTriggerTime]
	if !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		klog.V(2).InfoS("Ignoring malformed EndpointSlice annotation", "annotation", proxy.AnnotationTriggerTime, "value", v, "err", err)
		return time.Time{}
	}
	return t
}
