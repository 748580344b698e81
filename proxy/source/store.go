package source

import (
	"fmt"
	"sync"
	"sync/atomic"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy"
)

// seen is what a source remembers of an object it has sent: enough to tell
// a change from a repeat, and to give the handler an old object (seenObject)
// when the object changes or goes. An informer would keep the whole object,
// which at 10,000 services is most of svcproxy's memory.
type seen struct {
	// version tells two versions apart: the resourceVersion of an object
	// from the API server, a hash of the content of one from a file.
	version string
	// label and trigger are an EndpointSlice's kubernetes.io/service-name
	// label and last-change-trigger-time annotation.
	label, trigger string
}

// kind is one of the kinds a source sends, with what it keeps of them.
type kind[T metav1.Object] struct {
	// name is the Kind, for logs.
	name string
	// keep returns what to remember of an object (but its version).
	keep func(T) seen
	// old rebuilds the old object of an event from what was kept.
	old func(ns, name string, s seen) T
}

var serviceKind = kind[*v1.Service]{
	name: "Service",
	keep: func(*v1.Service) seen { return seen{} },
	old: func(ns, name string, _ seen) *v1.Service {
		return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	},
}

var sliceKind = kind[*discovery.EndpointSlice]{
	name: "EndpointSlice",
	keep: func(s *discovery.EndpointSlice) seen {
		return seen{label: s.Labels[discovery.LabelServiceName], trigger: s.Annotations[proxy.AnnotationTriggerTime]}
	},
	old: func(ns, name string, s seen) *discovery.EndpointSlice {
		o := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		if s.label != "" {
			o.Labels = map[string]string{discovery.LabelServiceName: s.label}
		}
		if s.trigger != "" {
			o.Annotations = map[string]string{proxy.AnnotationTriggerTime: s.trigger}
		}
		return o
	},
}

var nodeKind = kind[*v1.Node]{
	name: "Node",
	keep: func(*v1.Node) seen { return seen{} },
	old: func(_, name string, _ seen) *v1.Node {
		return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	},
}

// eventStore is the store of a client-go Reflector that keeps no objects:
// it strips every object, sends it to the handler as an add, update or
// delete, and remembers only its key and a little of it (seen). It
// replaces a shared informer (reflector, DeltaFIFO, indexer holding every
// object, processor) for a consumer that keeps its own parsed state.
//
// The reflector calls it from one goroutine; events are sent with the
// store's lock held, so they reach the handler in the reflector's order.
type eventStore[T metav1.Object] struct {
	kind kind[T]
	send func(old, cur T)

	mu     sync.Mutex
	objs   map[string]seen // namespace/name
	synced atomic.Bool
}

var _ cache.TransformingStore = (*eventStore[*v1.Service])(nil)

func newEventStore[T metav1.Object](k kind[T], send func(old, cur T)) *eventStore[T] {
	return &eventStore[T]{kind: k, send: send, objs: map[string]seen{}}
}

// Transformer implements cache.TransformingStore: the reflector strips
// objects as they stream in during a watch-list, before it holds them all.
func (s *eventStore[T]) Transformer() cache.TransformFunc { return Strip }

// object strips obj and returns it typed, with its key.
func (s *eventStore[T]) object(obj any) (T, string, bool) {
	var zero T
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	obj, _ = Strip(obj)
	o, ok := obj.(T)
	if !ok || any(o) == nil {
		klog.ErrorS(nil, "Unexpected object from the API server", "want", s.kind.name, "type", fmt.Sprintf("%T", obj))
		return zero, "", false
	}
	return o, cache.MetaObjectToName(o).String(), true
}

func (s *eventStore[T]) remember(o T) seen {
	k := s.kind.keep(o)
	k.version = o.GetResourceVersion()
	return k
}

// oldOf returns the old object for what was kept under key.
func (s *eventStore[T]) oldOf(key string, k seen) T {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	return s.kind.old(ns, name, k)
}

// Add implements cache.ReflectorStore.
func (s *eventStore[T]) Add(obj any) error { return s.upsert(obj) }

// Update implements cache.ReflectorStore.
func (s *eventStore[T]) Update(obj any) error { return s.upsert(obj) }

func (s *eventStore[T]) upsert(obj any) error {
	o, key, ok := s.object(obj)
	if !ok {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upsertLocked(key, o, false)
	return nil
}

// upsertLocked sends o as an add or update. With skipSame, an object whose
// resourceVersion is the one already sent is not sent again (a relist).
func (s *eventStore[T]) upsertLocked(key string, o T, skipSame bool) {
	var old T
	prev, had := s.objs[key]
	if had {
		if skipSame && prev.version != "" && prev.version == o.GetResourceVersion() {
			return
		}
		old = s.kind.old(o.GetNamespace(), o.GetName(), prev)
	}
	s.objs[key] = s.remember(o)
	s.send(old, o)
}

// Delete implements cache.ReflectorStore.
func (s *eventStore[T]) Delete(obj any) error {
	_, key, ok := s.object(obj)
	if !ok {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deleteLocked(key)
	return nil
}

func (s *eventStore[T]) deleteLocked(key string) {
	prev, had := s.objs[key]
	if !had {
		return
	}
	delete(s.objs, key)
	var none T
	s.send(s.oldOf(key, prev), none)
}

// Replace implements cache.ReflectorStore: list is every object there is
// (the initial list, or a relist after the watch broke). Objects gone are
// sent as deletes, new ones as adds, changed ones as updates.
func (s *eventStore[T]) Replace(list []any, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	current := make(map[string]struct{}, len(list))
	for i, obj := range list {
		list[i] = nil // sent: let it go as soon as the handler is done
		o, key, ok := s.object(obj)
		if !ok {
			continue
		}
		current[key] = struct{}{}
		s.upsertLocked(key, o, true)
	}
	for key := range s.objs {
		if _, ok := current[key]; !ok {
			s.deleteLocked(key)
		}
	}
	s.synced.Store(true)
	return nil
}

// Resync implements cache.ReflectorStore; there is nothing to resend.
func (s *eventStore[T]) Resync() error { return nil }

// HasSynced reports whether the handler has been sent the initial list.
func (s *eventStore[T]) HasSynced() bool { return s.synced.Load() }

// len returns the number of objects there are.
func (s *eventStore[T]) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.objs)
}
