package conntrack

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

func port(proto v1.Protocol, nodePort int32, eps ...string) *proxy.ServicePort {
	sp := &proxy.ServicePort{
		Name:      proxy.ServicePortName{Namespace: "kube-system", Name: "kube-dns", Port: "dns", Protocol: proto},
		Protocol:  proto,
		Port:      53,
		ClusterIP: netip.MustParseAddr("10.96.0.10"),
		NodePort:  nodePort,
	}
	for _, e := range eps {
		ep := &proxy.Endpoint{IP: netip.MustParseAddr(e), Port: 53, Ready: true, Serving: true}
		sp.AllEndpoints = append(sp.AllEndpoints, ep)
	}
	proxy.SelectEndpoints(sp, "node1", "")
	return sp
}

func TestStaleFilters(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	ep := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	tests := []struct {
		name    string
		changes []proxy.Change
		want    []Filter
	}{
		{name: "TCP never needs cleanup",
			changes: []proxy.Change{{Prev: port(v1.ProtocolTCP, 0, "10.244.1.2"), Cur: port(v1.ProtocolTCP, 0)}}},
		{name: "UDP endpoint removed",
			changes: []proxy.Change{{Prev: port(v1.ProtocolUDP, 0, "10.244.1.2", "10.244.2.2"), Cur: port(v1.ProtocolUDP, 0, "10.244.2.2")}},
			want:    []Filter{{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53, ReplySrcIP: ep("10.244.1.2")}}},
		{name: "UDP endpoint replaced, with a node port",
			changes: []proxy.Change{{Prev: port(v1.ProtocolUDP, 30053, "10.244.1.2"), Cur: port(v1.ProtocolUDP, 30053, "10.244.1.3")}},
			want: []Filter{
				{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53, ReplySrcIP: ep("10.244.1.2")},
				{Protocol: v1.ProtocolUDP, OrigPort: 30053, ReplySrcIP: ep("10.244.1.2")},
			}},
		{name: "UDP from no endpoints to some (#48370)",
			changes: []proxy.Change{{Prev: port(v1.ProtocolUDP, 0), Cur: port(v1.ProtocolUDP, 0, "10.244.1.2")}},
			want:    []Filter{{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53}}},
		{name: "new UDP service with endpoints",
			changes: []proxy.Change{{Cur: port(v1.ProtocolUDP, 0, "10.244.1.2")}},
			want:    []Filter{{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53}}},
		{name: "SCTP service deleted",
			changes: []proxy.Change{{Prev: port(v1.ProtocolSCTP, 0, "10.244.1.2")}},
			want:    []Filter{{Protocol: v1.ProtocolSCTP, OrigDst: vip, OrigPort: 53, ReplySrcIP: ep("10.244.1.2")}}},
		{name: "endpoint still used: nothing to do",
			changes: []proxy.Change{{Prev: port(v1.ProtocolUDP, 0, "10.244.1.2"), Cur: port(v1.ProtocolUDP, 0, "10.244.1.2", "10.244.1.3")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := StaleFilters(tc.changes)
			if d := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
				t.Errorf("filters (-want +got):\n%s", d)
			}
		})
	}
}
