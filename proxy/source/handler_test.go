package source

import (
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// recorder is a proxy.Handler that keeps the current objects, like a real
// consumer would, and notes events that do not fit its state.
type recorder struct {
	mu       sync.Mutex
	services map[string]*v1.Service
	slices   map[string]*discovery.EndpointSlice
	nodes    map[string]*v1.Node
	counts   map[string]int // "add Service", "update EndpointSlice", ...
	errs     []string
}

var _ proxy.Handler = (*recorder)(nil)

func newRecorder() *recorder {
	return &recorder{
		services: map[string]*v1.Service{},
		slices:   map[string]*discovery.EndpointSlice{},
		nodes:    map[string]*v1.Node{},
		counts:   map[string]int{},
	}
}

// apply moves m from old to cur, checking that old is what m holds.
func apply[T any](r *recorder, kind string, m map[string]*T, key func(*T) string, old, cur *T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op := "update"
	switch {
	case old == nil && cur == nil:
		r.errs = append(r.errs, kind+": event without objects")
		return
	case old == nil:
		op = "add"
		if _, ok := m[key(cur)]; ok {
			r.errs = append(r.errs, fmt.Sprintf("add of existing %s %s", kind, key(cur)))
		}
	case cur == nil:
		op = "delete"
	}
	if old != nil {
		if _, ok := m[key(old)]; !ok {
			r.errs = append(r.errs, fmt.Sprintf("%s of unknown %s %s", op, kind, key(old)))
		}
		delete(m, key(old))
	}
	if cur != nil {
		m[key(cur)] = cur
	}
	r.counts[op+" "+kind]++
}

func (r *recorder) OnServiceUpdate(old, cur *v1.Service) {
	apply(r, "Service", r.services, func(o *v1.Service) string { return o.Namespace + "/" + o.Name }, old, cur)
}

func (r *recorder) OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice) {
	apply(r, "EndpointSlice", r.slices, func(o *discovery.EndpointSlice) string { return o.Namespace + "/" + o.Name }, old, cur)
}

func (r *recorder) OnNodeUpdate(node *v1.Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if node == nil {
		r.errs = append(r.errs, "nil Node")
		return
	}
	r.nodes[node.Name] = node
	r.counts["update Node"]++
}

// state describes every current object with desc, by "Kind ns/name".
func (r *recorder) state(desc func(any) string) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	for k, o := range r.services {
		out["Service "+k] = desc(o)
	}
	for k, o := range r.slices {
		out["EndpointSlice "+k] = desc(o)
	}
	for k, o := range r.nodes {
		out["Node "+k] = desc(o)
	}
	return out
}

func (r *recorder) eventCounts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.counts)
}

func (r *recorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.errs {
		t.Errorf("inconsistent event: %s", e)
	}
}

// fullDesc describes an object by its whole content.
func fullDesc(o any) string {
	b, err := json.Marshal(o)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// stateOf describes a State the way recorder.state does.
func stateOf(st *State, desc func(any) string) map[string]string {
	out := map[string]string{}
	for _, o := range st.Services {
		out["Service "+o.Namespace+"/"+o.Name] = desc(o)
	}
	for _, o := range st.EndpointSlices {
		out["EndpointSlice "+o.Namespace+"/"+o.Name] = desc(o)
	}
	for _, o := range st.Nodes {
		out["Node "+o.Name] = desc(o)
	}
	return out
}

// waitState waits until r's state equals want.
func waitState(t *testing.T, r *recorder, desc func(any) string, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.state(desc)
		if cmp.Equal(want, got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("handler state not reached (-want +got):\n%s", cmp.Diff(want, got))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
