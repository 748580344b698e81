//go:build !race

// Heap figures of -race builds are not svcproxy's: this file is left out
// of them (hack/test.sh runs it in a build without -race).

package proxy_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// apiServerObjects returns n Services × 5 endpoints as an API server hands
// them out (after the source's Strip): with uid, resourceVersion, creation
// time, IP families, selector, target ports, the defaulted policies and
// the slices' controller labels.
func apiServerObjects(n int) ([]*v1.Service, []*discovery.EndpointSlice) {
	svcs, slices := pt.Generate(n, 5)
	created := metav1.NewTime(time.Unix(1_700_000_000, 0))
	for i, s := range svcs {
		s.UID = types.UID(fmt.Sprintf("4f1f7f64-8d0e-4c9b-9d7e-%012d", i))
		s.ResourceVersion = fmt.Sprint(100000 + i)
		s.CreationTimestamp = created
		s.Labels = map[string]string{"app": s.Name}
		s.Spec.Selector = map[string]string{"app": s.Name}
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol}
		s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
		s.Spec.SessionAffinity = v1.ServiceAffinityNone
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyCluster)
		s.Spec.Ports[0].TargetPort = intstr.FromInt32(8080)
		if s.Spec.Type == v1.ServiceTypeNodePort {
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
		}
	}
	for i, s := range slices {
		s.UID = types.UID(fmt.Sprintf("9a1f7f64-8d0e-4c9b-9d7e-%012d", i))
		s.ResourceVersion = fmt.Sprint(200000 + i)
		s.CreationTimestamp = created
		s.Generation = 1
		s.Labels["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
		s.Annotations = map[string]string{proxy.AnnotationTriggerTime: "2026-11-20T09:12:01Z"}
	}
	return svcs, slices
}

func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestTrackerMemory checks what the tracker keeps per service of a 10,000
// services × 5 endpoints cluster, with its Snapshot, once the objects it was
// handed are gone (the sources keep none): go test -v -run TrackerMemory
// ./proxy/ prints it. It was 5.3 kB when the tracker kept the API objects
// (3.9 kB of them), 1.6 kB since it keeps their parsed form.
func TestTrackerMemory(t *testing.T) {
	const n = 10000
	h0 := liveHeap()
	svcs, slices := apiServerObjects(n)
	h1 := liveHeap()
	tr := proxy.NewTracker("node1", nil, nil)
	for _, s := range svcs {
		tr.OnServiceUpdate(nil, s)
	}
	for _, s := range slices {
		tr.OnEndpointSliceUpdate(nil, s)
	}
	snap, _ := tr.Snapshot()
	if got := len(snap.ServicePorts()); got != n {
		t.Fatalf("%d service ports, want %d", got, n)
	}
	svcs, slices = nil, nil
	h2 := liveHeap()
	perService := (h2 - h0) / n
	t.Logf("API objects: %d B/service; tracker with its Snapshot, the objects dropped: %d B/service", (h1-h0)/n, perService)
	if perService > 2500 {
		t.Errorf("the tracker keeps %d B per service, want at most 2500 (does it keep API objects again?)", perService)
	}
	runtime.KeepAlive(tr)
	runtime.KeepAlive(snap)
}
