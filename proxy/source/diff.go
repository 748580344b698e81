package source

import (
	"crypto/sha256"
	"encoding/json"
	"maps"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// removedNode stands for a deleted Node: proxy.Handler has no node delete,
// so a deletion is sent as the node without labels (no zone) and with a
// deletion timestamp (not eligible for load-balancer traffic).
func removedNode(name string) *v1.Node {
	// Any set time will do (a fixed one keeps events comparable).
	deleted := metav1.Unix(1, 0)
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, DeletionTimestamp: &deleted}}
}

// fileState is what a FileSource keeps of a loaded file: for every object,
// by namespace/name, a hash of its stripped content as version, and what
// an old object needs.
type fileState struct {
	services map[string]seen
	slices   map[string]seen
	nodes    map[string]seen
}

func newFileState() fileState {
	return fileState{services: map[string]seen{}, slices: map[string]seen{}, nodes: map[string]seen{}}
}

// contentHash is the version of an object from a file: equal for equal
// (stripped) objects.
func contentHash(obj any) string {
	b, err := json.Marshal(obj)
	if err != nil {
		return "" // never equal to a hash: the object counts as changed
	}
	sum := sha256.Sum256(b)
	return string(sum[:16])
}

// add records obj in st and reports whether it differs from what prev holds
// under its key (new or changed).
func (st fileState) add(obj any, prev fileState) bool {
	var m, old map[string]seen
	var k seen
	var key string
	switch o := obj.(type) {
	case *v1.Service:
		m, old, k, key = st.services, prev.services, serviceKind.keep(o), o.Namespace+"/"+o.Name
	case *discovery.EndpointSlice:
		m, old, k, key = st.slices, prev.slices, sliceKind.keep(o), o.Namespace+"/"+o.Name
	case *v1.Node:
		m, old, k, key = st.nodes, prev.nodes, nodeKind.keep(o), o.Name
	default:
		return false
	}
	k.version = contentHash(obj)
	m[key] = k
	p, ok := old[key]
	return !ok || p.version == "" || p.version != k.version
}

// sendDiff sends h the events that turn st into next, whose new and changed
// objects are changed, and returns how many it sent. Nodes go first so
// that the zone is known before the services; removals come before
// changes, and both are in key order.
func (st fileState) sendDiff(next fileState, changed []any, h proxy.Handler) int {
	var svcs []*v1.Service
	var sls []*discovery.EndpointSlice
	var nodes []*v1.Node
	for _, obj := range changed {
		switch o := obj.(type) {
		case *v1.Service:
			svcs = append(svcs, o)
		case *discovery.EndpointSlice:
			sls = append(sls, o)
		case *v1.Node:
			nodes = append(nodes, o)
		}
	}
	n := diff(nodeKind, st.nodes, next.nodes, nodes, func(old, cur *v1.Node) {
		if cur == nil {
			cur = removedNode(old.Name)
		}
		h.OnNodeUpdate(cur)
	})
	n += diff(serviceKind, st.services, next.services, svcs, h.OnServiceUpdate)
	n += diff(sliceKind, st.slices, next.slices, sls, h.OnEndpointSliceUpdate)
	return n
}

// diff sends the removals (keys of old not in cur), then the changes (adds
// and updates), each in key order, and returns the number of calls.
func diff[T metav1.Object](k kind[T], old, cur map[string]seen, changed []T, send func(old, cur T)) int {
	var none T
	n := 0
	for _, key := range slices.Sorted(maps.Keys(old)) {
		if _, ok := cur[key]; !ok {
			send(oldObject(k, key, old[key]), none)
			n++
		}
	}
	keyOf := func(o T) string {
		if o.GetNamespace() == "" {
			return o.GetName()
		}
		return o.GetNamespace() + "/" + o.GetName()
	}
	slices.SortFunc(changed, func(a, b T) int { return strings.Compare(keyOf(a), keyOf(b)) })
	for _, c := range changed {
		o := none
		if prev, ok := old[keyOf(c)]; ok {
			o = oldObject(k, keyOf(c), prev)
		}
		send(o, c)
		n++
	}
	return n
}

// oldObject rebuilds the old object kept under key (namespace/name, or the
// name of a Node).
func oldObject[T metav1.Object](k kind[T], key string, s seen) T {
	ns, name, found := strings.Cut(key, "/")
	if !found {
		ns, name = "", key
	}
	return k.old(ns, name, s)
}
