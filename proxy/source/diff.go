package source

import (
	"maps"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
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

// fileIndex holds the objects of a State by namespace/name.
type fileIndex struct {
	services map[string]*v1.Service
	slices   map[string]*discovery.EndpointSlice
	nodes    map[string]*v1.Node
}

func newFileIndex(st *State) fileIndex {
	idx := fileIndex{
		services: map[string]*v1.Service{},
		slices:   map[string]*discovery.EndpointSlice{},
		nodes:    map[string]*v1.Node{},
	}
	for _, o := range st.Services {
		idx.services[o.Namespace+"/"+o.Name] = o
	}
	for _, o := range st.EndpointSlices {
		idx.slices[o.Namespace+"/"+o.Name] = o
	}
	for _, o := range st.Nodes {
		idx.nodes[o.Name] = o
	}
	return idx
}

// sendDiff sends h the events that turn idx into next and returns how many
// it sent. Nodes go first so that the zone is known before the services.
func (idx fileIndex) sendDiff(next fileIndex, h proxy.Handler) int {
	n := diff(idx.nodes, next.nodes, func(old, cur *v1.Node) {
		if cur == nil {
			cur = removedNode(old.Name)
		}
		h.OnNodeUpdate(cur)
	})
	n += diff(idx.services, next.services, h.OnServiceUpdate)
	n += diff(idx.slices, next.slices, h.OnEndpointSliceUpdate)
	return n
}

// diff calls send for every object removed from, changed between or added
// to old and cur, in key order, and returns the number of calls.
func diff[T any](old, cur map[string]*T, send func(old, cur *T)) int {
	n := 0
	for _, k := range slices.Sorted(maps.Keys(old)) {
		if _, ok := cur[k]; !ok {
			send(old[k], nil)
			n++
		}
	}
	for _, k := range slices.Sorted(maps.Keys(cur)) {
		o, c := old[k], cur[k]
		if o == nil || !equality.Semantic.DeepEqual(o, c) {
			send(o, c)
			n++
		}
	}
	return n
}
