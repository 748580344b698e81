package source

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxy"
)

func TestStripKeepsWhatTheProxyReads(t *testing.T) {
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name: "web", Namespace: "shop",
			Labels: map[string]string{discovery.LabelServiceName: "web", proxy.LabelServiceProxyName: "x"},
			Annotations: map[string]string{
				proxy.AnnotationTriggerTime:                        "2026-11-20T09:12:01Z",
				proxy.AnnotationLBSourceRanges:                     "10.0.0.0/8",
				"kubectl.kubernetes.io/last-applied-configuration": "{...a large blob...}",
			},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Service", Name: "web"}},
		}
	}
	slice := &discovery.EndpointSlice{ObjectMeta: meta(), AddressType: discovery.AddressTypeIPv4,
		Endpoints: []discovery.Endpoint{{Addresses: []string{"10.244.1.2"}, NodeName: ptr.To("node1"),
			Hostname: ptr.To("web-0"), TargetRef: &v1.ObjectReference{Kind: "Pod", Name: "web-0"}}}}
	Strip(slice)
	wantMeta := metav1.ObjectMeta{
		Name: "web", Namespace: "shop",
		Labels:      map[string]string{discovery.LabelServiceName: "web", proxy.LabelServiceProxyName: "x"},
		Annotations: map[string]string{proxy.AnnotationTriggerTime: "2026-11-20T09:12:01Z", proxy.AnnotationLBSourceRanges: "10.0.0.0/8"},
	}
	if d := cmp.Diff(wantMeta, slice.ObjectMeta); d != "" {
		t.Errorf("slice metadata (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]discovery.Endpoint{{Addresses: []string{"10.244.1.2"}, NodeName: ptr.To("node1")}}, slice.Endpoints); d != "" {
		t.Errorf("endpoints (-want +got):\n%s", d)
	}
	svc := &v1.Service{ObjectMeta: meta(), Spec: v1.ServiceSpec{ClusterIP: "10.96.0.1"}}
	Strip(svc)
	if d := cmp.Diff(wantMeta, svc.ObjectMeta); d != "" {
		t.Errorf("service metadata (-want +got):\n%s", d)
	}
	if svc.Spec.ClusterIP != "10.96.0.1" {
		t.Errorf("spec changed")
	}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}},
		Status: v1.NodeStatus{Images: []v1.ContainerImage{{Names: []string{"big"}}}}}
	Strip(node)
	if node.Labels[v1.LabelTopologyZone] != "z1" || node.Status.Images != nil {
		t.Errorf("node: %+v", node)
	}
	if got, _ := Strip("not a kube object"); got != "not a kube object" {
		t.Errorf("other objects must pass unchanged")
	}
}

// What the sources hold while reading a whole list, and hand on, is only
// what svcproxy reads (and the resourceVersion).
func TestStripKeepsLittle(t *testing.T) {
	created := metav1.Unix(1_700_000_000, 0)
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "u-1", ResourceVersion: "42", Generation: 3,
			CreationTimestamp: created, Finalizers: []string{"f"},
			Labels: map[string]string{"app": "web", proxy.LabelServiceProxyName: "x"}},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1"},
			Selector: map[string]string{"app": "web"}, IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
			IPFamilyPolicy: ptr.To(v1.IPFamilyPolicySingleStack), LoadBalancerClass: ptr.To("c"),
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, NodePort: 30080, AppProtocol: ptr.To("http")}},
		},
		Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{IP: "192.0.2.1", Hostname: "lb.example.com"}}}},
	}
	Strip(svc)
	want := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", ResourceVersion: "42", CreationTimestamp: created,
			Labels: map[string]string{proxy.LabelServiceProxyName: "x"}},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, NodePort: 30080}},
		},
		Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{IP: "192.0.2.1"}}}},
	}
	if d := cmp.Diff(want, svc); d != "" {
		t.Errorf("service (-want +got):\n%s", d)
	}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "u", Labels: map[string]string{"a": "b", v1.LabelTopologyZone: "z"}}}
	Strip(node)
	if d := cmp.Diff(map[string]string{"a": "b", v1.LabelTopologyZone: "z"}, node.Labels); d != "" || node.UID != "" {
		t.Errorf("node labels (-want +got):\n%s\nuid %q", d, node.UID)
	}
}
