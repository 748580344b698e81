package source

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// keptAnnotations are the annotations svcproxy reads; every other one is
// dropped before an object is handed on.
var keptAnnotations = map[string]bool{
	proxy.AnnotationTriggerTime:         true,
	proxy.AnnotationLBSourceRanges:      true,
	proxy.IPVSSchedulerAnnotation:       true,
	proxy.KubeRouterSchedulerAnnotation: true,
}

// keptLabels are the labels of Services and EndpointSlices svcproxy reads
// (a Node keeps all of its labels).
var keptLabels = map[string]bool{
	discovery.LabelServiceName:  true,
	proxy.LabelServiceProxyName: true,
}

// Strip drops the parts of a Service, EndpointSlice or Node that svcproxy
// never reads (managed fields, uid, creation time, owner references and
// finalizers, most labels and annotations, a Service's selector and IP
// family fields, pod references, node status and spec but taints) so that
// what the sources hold while they read a whole list, and what the
// handlers are given, is small: on a real cluster managedFields alone are
// often larger than the rest of an object. The resourceVersion stays (the
// API source tells changes from repeats by it), and so do a Service's
// ports whole. It is a cache.TransformFunc; other objects (and tombstones)
// pass unchanged.
func Strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *v1.Service:
		stripMeta(&o.ObjectMeta, true)
		s := &o.Spec
		s.Selector = nil
		s.IPFamilies = nil
		s.IPFamilyPolicy = nil
		s.LoadBalancerIP = ""
		s.LoadBalancerClass = nil
		s.AllocateLoadBalancerNodePorts = nil
		s.PublishNotReadyAddresses = false
		s.TrafficDistribution = nil
		s.ExternalName = ""
		for i := range s.Ports {
			s.Ports[i].AppProtocol = nil
		}
		o.Status.Conditions = nil
		for i := range o.Status.LoadBalancer.Ingress {
			ing := &o.Status.LoadBalancer.Ingress[i]
			ing.Hostname = ""
			ing.Ports = nil
		}
	case *discovery.EndpointSlice:
		stripMeta(&o.ObjectMeta, true)
		for i := range o.Endpoints {
			o.Endpoints[i].TargetRef = nil
			o.Endpoints[i].DeprecatedTopology = nil
			o.Endpoints[i].Hostname = nil
		}
		for i := range o.Ports {
			o.Ports[i].AppProtocol = nil
		}
	case *v1.Node:
		stripMeta(&o.ObjectMeta, false)
		// Taints stay: the cluster autoscaler's ToBeDeleted taint makes
		// the node unhealthy for load balancers.
		o.Spec = v1.NodeSpec{Taints: o.Spec.Taints}
		o.Status = v1.NodeStatus{}
	}
	return obj, nil
}

// stripMeta keeps the name, namespace, resourceVersion, creation and
// deletion time, the
// annotations svcproxy reads and, with filterLabels, only the labels it
// reads (all labels without).
func stripMeta(m *metav1.ObjectMeta, filterLabels bool) {
	*m = metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		ResourceVersion:   m.ResourceVersion,
		CreationTimestamp: m.CreationTimestamp, // the oldest Service wins an address conflict
		DeletionTimestamp: m.DeletionTimestamp,
		Labels:            m.Labels,
		Annotations:       m.Annotations,
	}
	if filterLabels {
		m.Labels = filter(m.Labels, keptLabels)
	}
	m.Annotations = filter(m.Annotations, keptAnnotations)
}

// filter returns the entries of m that keep names: m itself when that is
// all of them, a new map when not (deleting keys would not shrink m), nil
// when none.
func filter(m map[string]string, keep map[string]bool) map[string]string {
	n := 0
	for k := range m {
		if keep[k] {
			n++
		}
	}
	switch n {
	case 0:
		return nil
	case len(m):
		return m
	}
	out := make(map[string]string, n)
	for k, v := range m {
		if keep[k] {
			out[k] = v
		}
	}
	return out
}
