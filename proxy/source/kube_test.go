package source

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
)

func service(ns, name string, port int32) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1.ServiceSpec{ClusterIP: "10.96.0.1", Ports: []v1.ServicePort{{Name: "p", Port: port}}},
	}
}

func slice(ns, name, svc, addr string) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints:   []discovery.Endpoint{{Addresses: []string{addr}}},
	}
}

func node(name, zone string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1.LabelTopologyZone: zone}}}
}

// briefDesc describes an object by the fields the tests change.
func briefDesc(o any) string {
	var parts []string
	switch o := o.(type) {
	case *v1.Service:
		for _, p := range o.Spec.Ports {
			parts = append(parts, fmt.Sprint(p.Port))
		}
	case *discovery.EndpointSlice:
		for _, e := range o.Endpoints {
			parts = append(parts, e.Addresses...)
		}
	case *v1.Node:
		parts = append(parts, "zone="+o.Labels[v1.LabelTopologyZone])
	}
	return strings.Join(parts, ",")
}

// runKube starts a KubeSource on client for nodeName and returns once it has
// synced, with the handler state seen by synced.
func runKube(t *testing.T, client kubernetes.Interface, nodeName string) (*recorder, map[string]string) {
	r := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	synced := make(chan map[string]string, 1)
	done := make(chan error)
	go func() {
		done <- NewKubeSource(client, nodeName, r, 0).Run(ctx, func() { synced <- r.state(briefDesc) })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		r.check(t)
	})
	select {
	case st := <-synced:
		return r, st
	case err := <-done:
		t.Fatalf("Run returned before sync: %v", err)
	}
	return nil, nil
}

func TestKubeSource(t *testing.T) {
	initial := map[string]string{
		"Service default/web":         "80",
		"EndpointSlice default/web-1": "10.0.0.1",
		"Node n1":                     "zone=zone-a",
	}
	with := func(changes map[string]string) map[string]string {
		m := maps.Clone(initial)
		for k, v := range changes {
			if v == "" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	type client = kubernetes.Interface
	ctx := context.Background()
	tests := []struct {
		name   string
		action func(c client) error
		want   map[string]string
	}{
		{name: "initial objects", action: func(client) error { return nil }, want: initial},
		{
			name: "service added",
			action: func(c client) error {
				_, err := c.CoreV1().Services("ns2").Create(ctx, service("ns2", "api", 443), metav1.CreateOptions{})
				return err
			},
			want: with(map[string]string{"Service ns2/api": "443"}),
		},
		{
			name: "service updated",
			action: func(c client) error {
				_, err := c.CoreV1().Services("default").Update(ctx, service("default", "web", 8080), metav1.UpdateOptions{})
				return err
			},
			want: with(map[string]string{"Service default/web": "8080"}),
		},
		{
			name:   "service deleted",
			action: func(c client) error { return c.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}) },
			want:   with(map[string]string{"Service default/web": ""}),
		},
		{
			name: "slice added",
			action: func(c client) error {
				_, err := c.DiscoveryV1().EndpointSlices("default").Create(ctx, slice("default", "web-2", "web", "10.0.0.2"), metav1.CreateOptions{})
				return err
			},
			want: with(map[string]string{"EndpointSlice default/web-2": "10.0.0.2"}),
		},
		{
			name: "slice updated",
			action: func(c client) error {
				_, err := c.DiscoveryV1().EndpointSlices("default").Update(ctx, slice("default", "web-1", "web", "10.0.0.9"), metav1.UpdateOptions{})
				return err
			},
			want: with(map[string]string{"EndpointSlice default/web-1": "10.0.0.9"}),
		},
		{
			name: "slice deleted",
			action: func(c client) error {
				return c.DiscoveryV1().EndpointSlices("default").Delete(ctx, "web-1", metav1.DeleteOptions{})
			},
			want: with(map[string]string{"EndpointSlice default/web-1": ""}),
		},
		{
			// The changes to other nodes come first: had they been passed
			// on, they would show by the time n1's change does.
			name: "only this node is delivered",
			action: func(c client) error {
				if _, err := c.CoreV1().Nodes().Update(ctx, node("n2", "zone-x"), metav1.UpdateOptions{}); err != nil {
					return err
				}
				if _, err := c.CoreV1().Nodes().Create(ctx, node("n3", "zone-x"), metav1.CreateOptions{}); err != nil {
					return err
				}
				_, err := c.CoreV1().Nodes().Update(ctx, node("n1", "zone-c"), metav1.UpdateOptions{})
				return err
			},
			want: with(map[string]string{"Node n1": "zone=zone-c"}),
		},
		{
			name:   "node deleted clears the zone",
			action: func(c client) error { return c.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}) },
			want:   with(map[string]string{"Node n1": "zone="}),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientset(service("default", "web", 80), slice("default", "web-1", "web", "10.0.0.1"),
				node("n1", "zone-a"), node("n2", "zone-b"))
			r, atSync := runKube(t, c, "n1")
			if diff := cmp.Diff(initial, atSync); diff != "" {
				t.Fatalf("state at sync (-want +got):\n%s", diff)
			}
			if err := tc.action(c); err != nil {
				t.Fatal(err)
			}
			waitState(t, r, briefDesc, tc.want)
		})
	}
}

func TestKubeSourceWithoutNodeName(t *testing.T) {
	c := fake.NewClientset(service("default", "web", 80), node("n1", "zone-a"))
	_, atSync := runKube(t, c, "")
	if diff := cmp.Diff(map[string]string{"Service default/web": "80"}, atSync); diff != "" {
		t.Errorf("state at sync (-want +got):\n%s", diff)
	}
}

func TestHandlerFuncsDelete(t *testing.T) {
	tests := []struct {
		name      string
		tombstone bool
	}{
		{name: "object"},
		{name: "tombstone", tombstone: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRecorder()
			h := handlerFuncs(r.OnServiceUpdate)
			svc := service("default", "web", 80)
			h.OnAdd(svc, true)
			var del any = svc
			if tc.tombstone {
				del = cache.DeletedFinalStateUnknown{Key: "default/web", Obj: svc}
			}
			h.OnDelete(del)
			h.OnDelete("not an object") // logged and ignored
			r.check(t)
			if got := r.state(briefDesc); len(got) != 0 {
				t.Errorf("state after delete = %v, want empty", got)
			}
		})
	}
}

func TestKubeSourceNodeFieldSelector(t *testing.T) {
	c := fake.NewClientset(node("n1", "zone-a"))
	var mu sync.Mutex
	var selectors []string
	c.PrependReactor("list", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		selectors = append(selectors, a.(k8stesting.ListAction).GetListRestrictions().Fields.String())
		return false, nil, nil
	})
	runKube(t, c, "n1")
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]string{"metadata.name=n1"}, selectors); diff != "" {
		t.Errorf("node list field selectors (-want +got):\n%s", diff)
	}
}
