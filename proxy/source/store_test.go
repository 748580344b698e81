package source

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/svcproxy/svcproxy/proxy"
)

func withRV[T metav1.Object](o T, rv string) T {
	o.SetResourceVersion(rv)
	return o
}

// eventLog records events as "op ns/name old-desc", checking them with a
// recorder.
type eventLog struct {
	r      *recorder
	events []string
}

func (l *eventLog) service(old, cur *v1.Service) {
	l.r.OnServiceUpdate(old, cur)
	l.events = append(l.events, describeEvent(old, cur, func(o *v1.Service) string { return "" }))
}

func (l *eventLog) slice(old, cur *discovery.EndpointSlice) {
	l.r.OnEndpointSliceUpdate(old, cur)
	l.events = append(l.events, describeEvent(old, cur, func(o *discovery.EndpointSlice) string {
		return fmt.Sprintf(" (old: label %q trigger %q, %d endpoints)", o.Labels[discovery.LabelServiceName],
			o.Annotations[proxy.AnnotationTriggerTime], len(o.Endpoints))
	}))
}

func describeEvent[T metav1.Object](old, cur T, oldDesc func(T) string) string {
	switch {
	case isNil(old):
		return "add " + cur.GetNamespace() + "/" + cur.GetName()
	case isNil(cur):
		return "delete " + old.GetNamespace() + "/" + old.GetName() + oldDesc(old)
	}
	return "update " + cur.GetNamespace() + "/" + cur.GetName() + oldDesc(old)
}

func isNil[T metav1.Object](o T) bool {
	switch o := any(o).(type) {
	case *v1.Service:
		return o == nil
	case *discovery.EndpointSlice:
		return o == nil
	case *v1.Node:
		return o == nil
	}
	return false
}

func (l *eventLog) take() []string {
	out := l.events
	l.events = nil
	return out
}

func TestEventStoreServices(t *testing.T) {
	l := &eventLog{r: newRecorder()}
	defer l.r.check(t)
	s := newEventStore(serviceKind, l.service)
	if s.HasSynced() {
		t.Fatal("synced before the initial list")
	}
	steps := []struct {
		name string
		do   func() error
		want []string
	}{
		{"initial list", func() error {
			return s.Replace([]any{withRV(service("a", "web", 80), "1"), withRV(service("a", "db", 5432), "1")}, "10")
		}, []string{"add a/web", "add a/db"}},
		{"relist: one changed, one new, one the same", func() error {
			return s.Replace([]any{withRV(service("a", "web", 80), "1"), withRV(service("a", "db", 5433), "2"), withRV(service("b", "api", 443), "3")}, "11")
		}, []string{"update a/db", "add b/api"}},
		{"watch events", func() error {
			return errors.Join(s.Update(withRV(service("a", "web", 81), "4")), s.Add(withRV(service("c", "new", 80), "5")),
				s.Delete(withRV(service("b", "api", 443), "6")), s.Delete(service("z", "unknown", 80)),
				s.Add(withRV(service("a", "web", 82), "7")))
		}, []string{"update a/web", "add c/new", "delete b/api", "update a/web"}},
		{"tombstone and a stranger", func() error {
			return errors.Join(s.Delete(cache.DeletedFinalStateUnknown{Key: "c/new", Obj: service("c", "new", 80)}), s.Add("not an object"))
		}, []string{"delete c/new"}},
		{"relist: gone objects are deleted; no version means changed", func() error {
			return s.Replace([]any{service("a", "web", 82)}, "20")
		}, []string{"update a/web", "delete a/db"}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if d := cmp.Diff(st.want, l.take()); d != "" {
			t.Errorf("%s: events (-want +got):\n%s", st.name, d)
		}
	}
	if !s.HasSynced() || s.len() != 1 {
		t.Errorf("synced %v, %d objects; want true, 1", s.HasSynced(), s.len())
	}
	if d := cmp.Diff(map[string]string{"Service a/web": "82"}, l.r.state(briefDesc)); d != "" {
		t.Errorf("handler state (-want +got):\n%s", d)
	}
}

// An old EndpointSlice carries the label and trigger time of the version
// sent before, not of the new one, and nothing else.
func TestEventStoreSliceOld(t *testing.T) {
	l := &eventLog{r: newRecorder()}
	defer l.r.check(t)
	s := newEventStore(sliceKind, l.slice)
	sl := func(svc, trigger, rv string) *discovery.EndpointSlice {
		o := withRV(slice("a", "web-1", svc, "10.0.0.1"), rv)
		if trigger != "" {
			o.Annotations = map[string]string{proxy.AnnotationTriggerTime: trigger, "other": "x"}
		}
		return o
	}
	if err := s.Replace([]any{sl("web", "t1", "1")}, "1"); err != nil {
		t.Fatal(err)
	}
	_ = s.Update(sl("web2", "t2", "2"))
	_ = s.Update(sl("web2", "", "3"))
	_ = s.Delete(sl("web2", "", "4"))
	want := []string{
		"add a/web-1",
		`update a/web-1 (old: label "web" trigger "t1", 0 endpoints)`,
		`update a/web-1 (old: label "web2" trigger "t2", 0 endpoints)`,
		`delete a/web-1 (old: label "web2" trigger "", 0 endpoints)`,
	}
	if d := cmp.Diff(want, l.take()); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}

// The store strips what it is given, and keeps nothing of it but its
// version, label and trigger time.
func TestEventStoreStrips(t *testing.T) {
	var got *v1.Service
	s := newEventStore(serviceKind, func(_, cur *v1.Service) { got = cur })
	svc := withRV(service("a", "web", 80), "7")
	svc.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	svc.Spec.Selector = map[string]string{"app": "web"}
	if err := s.Add(svc); err != nil {
		t.Fatal(err)
	}
	if got == nil || got.ManagedFields != nil || got.Spec.Selector != nil || got.ResourceVersion != "7" {
		t.Errorf("handed on: %+v", got)
	}
	if d := cmp.Diff(map[string]seen{"a/web": {version: "7"}}, s.objs, cmp.AllowUnexported(seen{})); d != "" {
		t.Errorf("kept (-want +got):\n%s", d)
	}
	if s.Transformer() == nil {
		t.Errorf("no transformer: a watch-list would hold whole objects")
	}
}
