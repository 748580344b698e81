//go:build !race

// Heap figures of -race builds are not svcproxy's: this file is left out
// of them (hack/test.sh runs it in a build without -race).

package source

import (
	"fmt"
	"runtime"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxy"
)

// apiObjects returns n Services and n EndpointSlices of 5 endpoints as the
// API server sends them (but managedFields).
func apiObjects(n int) []any {
	var out []any
	for i := range n {
		ns, name := fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("svc-%d", i)
		svc := service(ns, name, 80)
		svc.UID = "4f1f7f64-8d0e-4c9b-9d7e-0d6c1b1f0a11"
		svc.ResourceVersion = fmt.Sprint(100000 + i)
		svc.CreationTimestamp = metav1.Now()
		svc.Labels = map[string]string{"app": name}
		svc.Spec.Selector = map[string]string{"app": name}
		svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol}
		svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
		sl := slice(ns, name+"-abcde", name, "10.244.0.1")
		sl.ResourceVersion = fmt.Sprint(200000 + i)
		sl.Labels["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io"
		sl.Annotations = map[string]string{proxy.AnnotationTriggerTime: "2026-11-20T09:12:01Z"}
		sl.Endpoints = nil
		for j := range 5 {
			sl.Endpoints = append(sl.Endpoints, discovery.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.244.%d.%d", j, i%250)},
				Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
				NodeName:   ptr.To(fmt.Sprintf("node%d", j)), TargetRef: &v1.ObjectReference{Kind: "Pod", Name: name},
			})
		}
		out = append(out, svc, sl)
	}
	return out
}

func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestEventStoreMemory compares what the API source keeps of 10,000
// Services and EndpointSlices with what an informer's cache would hold of
// the same objects, stripped.
func TestEventStoreMemory(t *testing.T) {
	const n = 10000
	split := func(objs []any) (svcs, slices []any) {
		for _, o := range objs {
			if _, ok := o.(*v1.Service); ok {
				svcs = append(svcs, o)
			} else {
				slices = append(slices, o)
			}
		}
		return svcs, slices
	}

	h0 := liveHeap()
	svcStore := newEventStore(serviceKind, func(_, _ *v1.Service) {})
	sliceStore := newEventStore(sliceKind, func(_, _ *discovery.EndpointSlice) {})
	svcs, slices := split(apiObjects(n))
	if err := svcStore.Replace(svcs, "1"); err != nil {
		t.Fatal(err)
	}
	if err := sliceStore.Replace(slices, "1"); err != nil {
		t.Fatal(err)
	}
	svcs, slices = nil, nil
	kept := liveHeap() - h0
	runtime.KeepAlive(svcStore)
	runtime.KeepAlive(sliceStore)

	h1 := liveHeap()
	informer := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for _, o := range apiObjects(n) {
		o, _ = Strip(o)
		if err := informer.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	cached := liveHeap() - h1
	runtime.KeepAlive(informer)

	per := kept / (2 * n)
	t.Logf("kept per object: %d B (an informer cache of the stripped objects: %d B)", per, cached/(2*n))
	if per > 250 {
		t.Errorf("the API source keeps %d B per object, want at most 250 (does it keep objects again?)", per)
	}
}
