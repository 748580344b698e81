package source

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// keptAnnotations are the annotations svcproxy reads; every other one is
// dropped before an object is cached.
var keptAnnotations = map[string]bool{
	proxy.AnnotationTriggerTime:    true,
	proxy.AnnotationLBSourceRanges: true,
}

// Strip drops the parts of a Service, EndpointSlice or Node that svcproxy
// never reads (managed fields, most annotations, owner references, pod
// references, node status and spec but taints) so that the informer caches and the --state
// source hold less: on a real cluster managedFields alone are often larger
// than the rest of an object. It is a cache.TransformFunc; other objects
// (and tombstones) pass unchanged.
func Strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Service:
		stripMeta(&o.ObjectMeta)
		o.Status.Conditions = nil
	case *discovery.EndpointSlice:
		stripMeta(&o.ObjectMeta)
		for i := range o.Endpoints {
			o.Endpoints[i].TargetRef = nil
			o.Endpoints[i].DeprecatedTopology = nil
			o.Endpoints[i].Hostname = nil
		}
	case *v1.Node:
		stripMeta(&o.ObjectMeta)
		// Taints stay: the cluster autoscaler's ToBeDeleted taint makes
		// the node unhealthy for load balancers.
		o.Spec = v1.NodeSpec{Taints: o.Spec.Taints}
		o.Status = v1.NodeStatus{}
	}
	return obj, nil
}

func stripMeta(m *metav1.ObjectMeta) {
	m.ManagedFields = nil
	m.OwnerReferences = nil
	for k := range m.Annotations {
		if !keptAnnotations[k] {
			delete(m.Annotations, k)
		}
	}
	if len(m.Annotations) == 0 {
		m.Annotations = nil
	}
}
