package proxytest

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// Snapshot feeds Services and EndpointSlices to a tracker for node1 and
// returns its snapshot; any other object fails the test.
func Snapshot(t testing.TB, objs ...any) *proxy.Snapshot {
	t.Helper()
	tr := proxy.NewTracker("node1", nil, nil)
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			tr.OnServiceUpdate(nil, o)
		case *discovery.EndpointSlice:
			tr.OnEndpointSliceUpdate(nil, o)
		default:
			t.Fatalf("unexpected object %T", o)
		}
	}
	snap, _ := tr.Snapshot()
	return snap
}
