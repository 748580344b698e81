package proxy_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// endpointsOf returns "name -> ip:port,..." for every port of the snapshot.
func endpointsOf(snap *proxy.Snapshot) map[string]string {
	out := map[string]string{}
	for _, sp := range snap.ServicePorts() {
		var eps []string
		for _, e := range sp.ClusterEndpoints {
			eps = append(eps, e.String())
		}
		out[sp.Name.String()] = strings.Join(eps, ",")
	}
	return out
}

func changeNames(changes []proxy.Change) []string {
	var out []string
	for _, c := range changes {
		switch {
		case c.Prev == nil:
			out = append(out, "+"+c.Cur.Name.String())
		case c.Cur == nil:
			out = append(out, "-"+c.Prev.Name.String())
		default:
			out = append(out, "~"+c.Cur.Name.String())
		}
	}
	sort.Strings(out)
	return out
}

func TestTrackerMergesSlices(t *testing.T) {
	tr := proxy.NewTracker("node1", nil, nil)
	tr.OnServiceUpdate(nil, pt.Service("shop", "web", "10.96.0.20", "http", 80))
	tr.OnEndpointSliceUpdate(nil, pt.Slice("shop", "web", "web-a", "http", 8080, pt.Ready("10.244.1.2", "node1"), pt.Ready("10.244.2.2", "node2")))
	// The same address in a second slice (a move between slices in
	// progress) is one endpoint; a ready copy wins over a not-ready one.
	dup := pt.Ready("10.244.2.2", "node2")
	dup.Ready = false
	tr.OnEndpointSliceUpdate(nil, pt.Slice("shop", "web", "web-b", "http", 8080, dup, pt.Ready("10.244.3.2", "node3")))
	// A slice for another port name contributes nothing to "http".
	tr.OnEndpointSliceUpdate(nil, pt.Slice("shop", "web", "web-c", "metrics", 9090, pt.Ready("10.244.9.9", "node9")))
	snap, changes := tr.Snapshot()
	want := map[string]string{"shop/web:http/TCP": "10.244.1.2:8080,10.244.2.2:8080,10.244.3.2:8080"}
	if d := cmp.Diff(want, endpointsOf(snap)); d != "" {
		t.Errorf("endpoints (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"+shop/web:http/TCP"}, changeNames(changes)); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
	local := snap.ServicePorts()[0].AllEndpoints[0]
	if !local.IsLocal || snap.ServicePorts()[0].AllEndpoints[1].IsLocal {
		t.Errorf("IsLocal wrong: %+v", snap.ServicePorts()[0].AllEndpoints)
	}
}

func TestTrackerChanges(t *testing.T) {
	web := pt.Service("shop", "web", "10.96.0.20", "http", 80)
	webSlice := pt.Slice("shop", "web", "web-a", "http", 8080, pt.Ready("10.244.1.2", "node1"))
	db := pt.Service("shop", "db", "10.96.0.30", "sql", 5432)

	tr := proxy.NewTracker("node1", nil, nil)
	tr.OnServiceUpdate(nil, web)
	tr.OnEndpointSliceUpdate(nil, webSlice)
	snap1, _ := tr.Snapshot()

	// An update that is undone before the next sync cancels out.
	changed := webSlice.DeepCopy()
	changed.Endpoints[0].Addresses = []string{"10.244.1.99"}
	tr.OnEndpointSliceUpdate(webSlice, changed)
	tr.OnEndpointSliceUpdate(changed, webSlice.DeepCopy())
	// A service added and deleted in between is no change either.
	tr.OnServiceUpdate(nil, db)
	tr.OnServiceUpdate(db, nil)
	snap2, changes := tr.Snapshot()
	if len(changes) != 0 {
		t.Errorf("cancelled changes reported: %v", changeNames(changes))
	}
	if snap1.ServicePorts()[0] != snap2.ServicePorts()[0] {
		t.Errorf("an unchanged port is not shared between snapshots")
	}

	// Real changes: one endpoint moves, a service appears, one goes.
	tr.OnEndpointSliceUpdate(webSlice, changed)
	tr.OnServiceUpdate(nil, db)
	_, changes = tr.Snapshot()
	if d := cmp.Diff([]string{"+shop/db:sql/TCP", "~shop/web:http/TCP"}, changeNames(changes)); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
	tr.OnServiceUpdate(web, nil)
	snap, changes := tr.Snapshot()
	if d := cmp.Diff([]string{"-shop/web:http/TCP"}, changeNames(changes)); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]string{"shop/db:sql/TCP": ""}, endpointsOf(snap)); d != "" {
		t.Errorf("snapshot (-want +got):\n%s", d)
	}
}

func TestTrackerSkips(t *testing.T) {
	tests := []struct {
		name       string
		svc        *v1.Service
		slice      *discovery.EndpointSlice
		wantPorts  []string
		wantReason string
	}{
		{name: "headless", svc: pt.Service("a", "h", "None", "p", 80), wantReason: "Service/headless"},
		{name: "ExternalName", svc: pt.Service("a", "x", "", "p", 80, func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeExternalName
			s.Spec.ExternalName = "example.com"
		}), wantReason: "Service/external-name"},
		{name: "service-proxy-name label", svc: pt.Service("a", "o", "10.96.0.5", "p", 80, func(s *v1.Service) {
			s.Labels = map[string]string{proxy.LabelServiceProxyName: "other-proxy"}
		}), wantReason: "Service/service-proxy-name"},
		{name: "IPv6 single-stack", svc: pt.Service("a", "v6", "fd00::10", "p", 80), wantPorts: []string{"a/v6:p/TCP fd00::10"}},
		{name: "dual-stack: one port per family, IPv4 first", svc: pt.Service("a", "ds", "fd00::10", "p", 80, func(s *v1.Service) {
			s.Spec.ClusterIPs = []string{"fd00::10", "10.96.0.6"}
		}), wantPorts: []string{"a/ds:p/TCP 10.96.0.6", "a/ds:p/TCP fd00::10"}},
		{name: "loopback cluster IP", svc: pt.Service("a", "lo", "127.0.0.1", "p", 80), wantReason: "Service/invalid-cluster-ip"},
		{name: "unspecified cluster IP", svc: pt.Service("a", "un", "0.0.0.0", "p", 80), wantReason: "Service/invalid-cluster-ip"},
		{name: "garbage cluster IP", svc: pt.Service("a", "gb", "10.96.0.300", "p", 80), wantReason: "Service/invalid-cluster-ip"},
		{name: "loopback and multicast external IPs skipped, others kept", svc: pt.Service("a", "ex", "10.96.0.12", "p", 80, func(s *v1.Service) {
			s.Spec.ExternalIPs = []string{"127.0.0.1", "224.0.0.1", "::1", "192.0.2.10"}
		}), wantPorts: []string{"a/ex:p/TCP 10.96.0.12 ext=[192.0.2.10]"}, wantReason: "Service/invalid-address"},
		{name: "multicast and broadcast endpoints skipped", svc: pt.Service("a", "mc", "10.96.0.13", "p", 80), slice: pt.Slice("a", "mc", "mc-1", "p", 80,
			pt.Ready("224.0.0.5", "node1"), pt.Ready("255.255.255.255", "node1"), pt.Ready("127.0.0.1", "node1"), pt.Ready("10.244.1.5", "node1")),
			wantPorts: []string{"a/mc:p/TCP 10.96.0.13 10.244.1.5:80"}, wantReason: "EndpointSlice/invalid-address"},
		{name: "node port below 1024 skipped", svc: pt.Service("a", "np", "10.96.0.14", "p", 80, func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 22
		}), wantPorts: []string{"a/np:p/TCP 10.96.0.14"}, wantReason: "Service/invalid-node-port"},
		{name: "port 0 skipped, other ports kept", svc: pt.Service("a", "z", "10.96.0.7", "p", 80, func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "zero", Port: 0})
		}), wantPorts: []string{"a/z:p/TCP 10.96.0.7"}, wantReason: "Service/invalid-port"},
		{name: "duplicate port name and protocol: the first wins", svc: pt.Service("a", "d", "10.96.0.11", "p", 80, func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "p", Port: 81, Protocol: v1.ProtocolTCP}, v1.ServicePort{Name: "p", Port: 81, Protocol: v1.ProtocolUDP})
		}), wantPorts: []string{"a/d:p/TCP 10.96.0.11", "a/d:p/UDP 10.96.0.11"}, wantReason: "Service/duplicate-port"},
		{name: "FQDN slice", svc: pt.Service("a", "f", "10.96.0.8", "p", 80), slice: func() *discovery.EndpointSlice {
			s := pt.Slice("a", "f", "f-1", "p", 80, pt.Ready("10.244.1.1", "node1"))
			s.AddressType = discovery.AddressTypeFQDN
			s.Endpoints[0].Addresses = []string{"db.example.com"}
			return s
		}(), wantPorts: []string{"a/f:p/TCP 10.96.0.8"}, wantReason: "EndpointSlice/fqdn"},
		{name: "slice without a service label", slice: &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "orphan"}, AddressType: discovery.AddressTypeIPv4,
		}, wantReason: "EndpointSlice/no-service-label"},
		{name: "slice whose service does not exist", slice: pt.Slice("a", "ghost", "ghost-1", "p", 80, pt.Ready("10.244.1.1", "node1"))},
		{name: "bad endpoint address", svc: pt.Service("a", "b", "10.96.0.9", "p", 80), slice: pt.Slice("a", "b", "b-1", "p", 80,
			pt.Ready("not-an-ip", "node1"), pt.Ready("10.244.1.4", "node1")), wantPorts: []string{"a/b:p/TCP 10.96.0.9 10.244.1.4:80"},
			wantReason: "EndpointSlice/invalid-address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var reasons []string
			tr := proxy.NewTracker("node1", nil, func(kind, reason string) { reasons = append(reasons, kind+"/"+reason) })
			if tc.svc != nil {
				tr.OnServiceUpdate(nil, tc.svc)
			}
			if tc.slice != nil {
				tr.OnEndpointSliceUpdate(nil, tc.slice)
			}
			snap, _ := tr.Snapshot()
			var got []string
			for _, sp := range snap.ServicePorts() {
				s := sp.Name.String() + " " + sp.ClusterIP.String()
				if len(sp.ExternalIPs) > 0 {
					s += fmt.Sprintf(" ext=%v", sp.ExternalIPs)
				}
				for _, e := range sp.AllEndpoints {
					s += " " + e.String()
				}
				got = append(got, s)
			}
			if d := cmp.Diff(tc.wantPorts, got); d != "" {
				t.Errorf("ports (-want +got):\n%s", d)
			}
			if tc.wantReason != "" && !contains(reasons, tc.wantReason) {
				t.Errorf("skip reasons %v, want %q among them", reasons, tc.wantReason)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestTrackerNodeZone(t *testing.T) {
	calls := 0
	tr := proxy.NewTracker("node1", func() { calls++ }, nil)
	ep1 := pt.Ready("10.244.1.2", "node1")
	ep1.ForZones = []string{"z1"}
	ep2 := pt.Ready("10.244.2.2", "node2")
	ep2.ForZones = []string{"z2"}
	tr.OnServiceUpdate(nil, pt.Service("a", "web", "10.96.0.20", "http", 80))
	tr.OnEndpointSliceUpdate(nil, pt.Slice("a", "web", "web-1", "http", 80, ep1, ep2))
	snap, _ := tr.Snapshot()
	if got := endpointsOf(snap)["a/web:http/TCP"]; got != "10.244.1.2:80,10.244.2.2:80" {
		t.Errorf("without a zone, hints must be ignored: got %s", got)
	}
	before := calls
	tr.OnNodeUpdate(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node2", Labels: map[string]string{v1.LabelTopologyZone: "z1"}}})
	if calls != before {
		t.Errorf("another node's update triggered a sync")
	}
	tr.OnNodeUpdate(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "z2"}}})
	snap, changes := tr.Snapshot()
	if got := endpointsOf(snap)["a/web:http/TCP"]; got != "10.244.2.2:80" {
		t.Errorf("in zone z2: got %s, want only the z2 endpoint", got)
	}
	if len(changes) != 1 || snap.NodeZone != "z2" {
		t.Errorf("zone change: changes=%v zone=%q", changeNames(changes), snap.NodeZone)
	}
}

// The sources keep no objects: an old object is only its identity (and a
// slice's service label). The tracker keeps no object either: changing
// one after handing it over changes nothing.
func TestTrackerKeepsNoObjects(t *testing.T) {
	tr := proxy.NewTracker("node1", nil, nil)
	svc := pt.Service("shop", "web", "10.96.0.20", "http", 80)
	slice := pt.Slice("shop", "web", "web-a", "http", 8080, pt.Ready("10.244.1.2", "node1"))
	tr.OnServiceUpdate(nil, svc)
	tr.OnEndpointSliceUpdate(nil, slice)
	svc.Spec.Ports[0].Port = 81
	slice.Endpoints[0].Addresses[0] = "10.244.9.9"
	snap, _ := tr.Snapshot()
	if got := endpointsOf(snap); got["shop/web:http/TCP"] != "10.244.1.2:8080" || snap.ServicePorts()[0].Port != 80 {
		t.Errorf("snapshot follows objects changed after the event: %v port %d", got, snap.ServicePorts()[0].Port)
	}

	oldSlice := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-a",
		Labels: map[string]string{discovery.LabelServiceName: "web"}}}
	tr.OnEndpointSliceUpdate(oldSlice, pt.Slice("shop", "web", "web-a", "http", 8080, pt.Ready("10.244.1.3", "node1")))
	snap, changes := tr.Snapshot()
	if got := endpointsOf(snap)["shop/web:http/TCP"]; got != "10.244.1.3:8080" || len(changes) != 1 {
		t.Errorf("after an update with a bare old slice: %q, changes %v", got, changeNames(changes))
	}
	tr.OnEndpointSliceUpdate(oldSlice, nil)
	tr.OnServiceUpdate(&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}}, nil)
	snap, changes = tr.Snapshot()
	if len(snap.ServicePorts()) != 0 || len(changes) != 1 || changes[0].Cur != nil {
		t.Errorf("after deletes with bare old objects: %d ports, changes %v", len(snap.ServicePorts()), changeNames(changes))
	}
}

// Within one slice as across slices, one endpoint per address: the first
// ready copy, or the first copy when none is ready.
func TestTrackerDuplicateAddresses(t *testing.T) {
	notReady := pt.Ready("10.244.1.2", "node-a")
	notReady.Ready = false
	tests := []struct {
		name     string
		slices   [][]pt.EP
		wantNode string
		wantRdy  bool
	}{
		{name: "ready copy after a not-ready one", slices: [][]pt.EP{{notReady, pt.Ready("10.244.1.2", "node-b"), pt.Ready("10.244.1.2", "node-c")}}, wantNode: "node-b", wantRdy: true},
		{name: "both ready: the first", slices: [][]pt.EP{{pt.Ready("10.244.1.2", "node-b"), pt.Ready("10.244.1.2", "node-c")}}, wantNode: "node-b", wantRdy: true},
		{name: "none ready: the first", slices: [][]pt.EP{{notReady, func() pt.EP { e := notReady; e.Node = "node-x"; return e }()}}, wantNode: "node-a"},
		{name: "across slices, in name order", slices: [][]pt.EP{{notReady}, {pt.Ready("10.244.1.2", "node-b")}, {pt.Ready("10.244.1.2", "node-c")}}, wantNode: "node-b", wantRdy: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := proxy.NewTracker("node1", nil, nil)
			tr.OnServiceUpdate(nil, pt.Service("a", "web", "10.96.0.20", "http", 80))
			for i, eps := range tc.slices {
				eps = append(eps, pt.Ready("10.244.0.1", "node-z"))
				tr.OnEndpointSliceUpdate(nil, pt.Slice("a", "web", fmt.Sprintf("web-%d", i), "http", 8080, eps...))
			}
			snap, _ := tr.Snapshot()
			all := snap.ServicePorts()[0].AllEndpoints
			if len(all) != 2 || all[0].String() != "10.244.0.1:8080" {
				t.Fatalf("endpoints %v, want 10.244.0.1:8080 and 10.244.1.2:8080", all)
			}
			if all[1].NodeName != tc.wantNode || all[1].Ready != tc.wantRdy {
				t.Errorf("10.244.1.2: node %s ready %v, want %s %v", all[1].NodeName, all[1].Ready, tc.wantNode, tc.wantRdy)
			}
		})
	}
}

// What was skipped is counted every time the service is built, as when the
// tracker parsed the objects at Snapshot time.
func TestTrackerSkipsCountedPerBuild(t *testing.T) {
	var reasons []string
	tr := proxy.NewTracker("node1", nil, func(kind, reason string) { reasons = append(reasons, kind+"/"+reason) })
	tr.OnServiceUpdate(nil, pt.Service("a", "web", "10.96.0.20", "http", 80, func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "zero"})
		s.Spec.ExternalIPs = []string{"::1"}
	}))
	tr.OnEndpointSliceUpdate(nil, pt.Slice("a", "web", "web-1", "http", 80, pt.Ready("bad", "node1"), pt.Ready("10.244.1.4", "node1")))
	tr.Snapshot()
	want := []string{"Service/invalid-address", "EndpointSlice/invalid-address", "Service/invalid-port"}
	if d := cmp.Diff(want, reasons); d != "" {
		t.Errorf("first build (-want +got):\n%s", d)
	}
	reasons = nil
	tr.Snapshot() // nothing changed: nothing built
	tr.OnNodeUpdate(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{v1.LabelTopologyZone: "z"}}})
	tr.Snapshot()
	if d := cmp.Diff(want, reasons); d != "" {
		t.Errorf("rebuild after a zone change (-want +got):\n%s", d)
	}
}

// A slice that loses its service label leaves its service, and that is a
// change to sync.
func TestTrackerSliceLosesLabel(t *testing.T) {
	calls := 0
	tr := proxy.NewTracker("node1", func() { calls++ }, nil)
	tr.OnServiceUpdate(nil, pt.Service("a", "web", "10.96.0.20", "http", 80))
	s := pt.Slice("a", "web", "web-1", "http", 80, pt.Ready("10.244.1.4", "node1"))
	tr.OnEndpointSliceUpdate(nil, s)
	tr.Snapshot()
	unlabelled := s.DeepCopy()
	unlabelled.Labels = nil
	before := calls
	tr.OnEndpointSliceUpdate(s, unlabelled)
	if calls == before {
		t.Errorf("no change signalled")
	}
	snap, changes := tr.Snapshot()
	if got := endpointsOf(snap)["a/web:http/TCP"]; got != "" || len(changes) != 1 {
		t.Errorf("endpoints %q, changes %v; want none and one change", got, changeNames(changes))
	}
}

// slice6 is an IPv6 slice of service ns/svc with ready endpoints on node.
func slice6(ns, svc, name, portName string, port int32, node string, ips ...string) *discovery.EndpointSlice {
	var eps []pt.EP
	for _, ip := range ips {
		eps = append(eps, pt.Ready(ip, node))
	}
	s := pt.Slice(ns, svc, name, portName, port, eps...)
	s.AddressType = discovery.AddressTypeIPv6
	return s
}

func TestTrackerDualStack(t *testing.T) {
	dual := func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.0.30", "fd00:96::30"}
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalIPs = []string{"192.0.2.30", "2001:db8::30"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.30"}, {IP: "2001:db8:1::30"}}
	}
	for _, tc := range []struct {
		name   string
		mod    func(*v1.Service)
		slices []*discovery.EndpointSlice
		want   []string
	}{
		{
			name: "each family gets its own addresses and its own slices",
			mod:  dual,
			slices: []*discovery.EndpointSlice{
				pt.Slice("a", "web", "web-v4", "http", 8080, pt.Ready("10.244.1.5", "node1")),
				slice6("a", "web", "web-v6", "http", 8080, "node2", "fd00:244:2::5", "fd00:244:2::6"),
			},
			want: []string{
				"IPv4 10.96.0.30 ext=[192.0.2.30] lb=[203.0.113.30] ranges=false[] eps=[10.244.1.5:8080]",
				"IPv6 fd00:96::30 ext=[2001:db8::30] lb=[2001:db8:1::30] ranges=false[] eps=[[fd00:244:2::5]:8080 [fd00:244:2::6]:8080]",
			},
		},
		{
			name: "source ranges split by family",
			mod: func(s *v1.Service) {
				dual(s)
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24", "2001:db8:f::/48"}
			},
			want: []string{
				"IPv4 10.96.0.30 ext=[192.0.2.30] lb=[203.0.113.30] ranges=true[198.51.100.0/24] eps=[]",
				"IPv6 fd00:96::30 ext=[2001:db8::30] lb=[2001:db8:1::30] ranges=true[2001:db8:f::/48] eps=[]",
			},
		},
		{
			name: "only IPv6 ranges: IPv4 load-balancer traffic is closed, not open",
			mod: func(s *v1.Service) {
				dual(s)
				s.Spec.LoadBalancerSourceRanges = []string{"2001:db8:f::/48"}
			},
			want: []string{
				"IPv4 10.96.0.30 ext=[192.0.2.30] lb=[203.0.113.30] ranges=true[] eps=[]",
				"IPv6 fd00:96::30 ext=[2001:db8::30] lb=[2001:db8:1::30] ranges=true[2001:db8:f::/48] eps=[]",
			},
		},
		{
			name: "unparsable ranges count as none",
			mod: func(s *v1.Service) {
				dual(s)
				s.Spec.LoadBalancerSourceRanges = []string{"not-a-cidr"}
			},
			want: []string{
				"IPv4 10.96.0.30 ext=[192.0.2.30] lb=[203.0.113.30] ranges=true[] eps=[]",
				"IPv6 fd00:96::30 ext=[2001:db8::30] lb=[2001:db8:1::30] ranges=true[] eps=[]",
			},
		},
		{
			name: "IPv6 single-stack with an IPv6 slice",
			mod:  func(s *v1.Service) { s.Spec.ClusterIPs = []string{"fd00:96::31"} },
			slices: []*discovery.EndpointSlice{
				slice6("a", "web", "web-v6", "http", 8080, "node1", "fd00:244:1::5", "fe80::1", "::1"),
				pt.Slice("a", "web", "web-v4", "http", 8080, pt.Ready("10.244.1.5", "node1")),
			},
			want: []string{"IPv6 fd00:96::31 ext=[] lb=[] ranges=false[] eps=[[fd00:244:1::5]:8080]"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := proxy.NewTracker("node1", nil, nil)
			svc := pt.Service("a", "web", "10.96.0.30", "http", 80, tc.mod)
			svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
			tr.OnServiceUpdate(nil, svc)
			for _, sl := range tc.slices {
				tr.OnEndpointSliceUpdate(nil, sl)
			}
			snap, changes := tr.Snapshot()
			var got []string
			for _, sp := range snap.ServicePorts() {
				var eps []string
				for _, e := range sp.AllEndpoints {
					eps = append(eps, e.String())
				}
				got = append(got, fmt.Sprintf("%s %s ext=%v lb=%v ranges=%v%v eps=%v", sp.IPFamily, sp.ClusterIP, sp.ExternalIPs,
					sp.LoadBalancerIPs, sp.LoadBalancerSourceRangesSet, sp.LoadBalancerSourceRanges, "["+strings.Join(eps, " ")+"]"))
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("ports (-want +got):\n%s", d)
			}
			if len(changes) != len(tc.want) {
				t.Errorf("%d changes, want one per family port (%d)", len(changes), len(tc.want))
			}
			// One family's change leaves the other family's port alone.
			if len(tc.slices) > 0 {
				sl := tc.slices[0].DeepCopy()
				sl.Endpoints = sl.Endpoints[:0]
				tr.OnEndpointSliceUpdate(tc.slices[0], sl)
				_, changes := tr.Snapshot()
				if len(changes) != 1 || changes[0].Cur.IPFamily != v1.IPFamily(tc.slices[0].AddressType) {
					t.Errorf("changes after emptying the %s slice: %v, want that family's port only", tc.slices[0].AddressType, changeNames(changes))
				}
			}
		})
	}
}

func TestTrackerIPVSSchedulerAnnotation(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want        string
	}{
		{name: "none", want: ""},
		{name: "ours", annotations: map[string]string{proxy.IPVSSchedulerAnnotation: "mh"}, want: "mh"},
		{name: "kube-router's", annotations: map[string]string{proxy.KubeRouterSchedulerAnnotation: "lc"}, want: "lc"},
		{name: "ours wins", annotations: map[string]string{proxy.IPVSSchedulerAnnotation: "sh", proxy.KubeRouterSchedulerAnnotation: "lc"}, want: "sh"},
		{name: "unknown ignored", annotations: map[string]string{proxy.IPVSSchedulerAnnotation: "fastest"}, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reasons []string
			tr := proxy.NewTracker("node1", nil, func(kind, reason string) { reasons = append(reasons, kind+"/"+reason) })
			tr.OnServiceUpdate(nil, pt.Service("a", "web", "10.96.0.40", "http", 80, func(s *v1.Service) { s.Annotations = tc.annotations }))
			snap, _ := tr.Snapshot()
			if got := snap.ServicePorts()[0].IPVSScheduler; got != tc.want {
				t.Errorf("scheduler %q, want %q", got, tc.want)
			}
			if tc.name == "unknown ignored" && !contains(reasons, "Service/invalid-ipvs-scheduler") {
				t.Errorf("skip reasons %v: the unknown scheduler was not reported", reasons)
			}
		})
	}
}

// When every endpoint is selected, the selection is AllEndpoints itself
// (capped: an append must copy), not a copy kept as long as the port.
func TestTrackerSharesSelection(t *testing.T) {
	tr := proxy.NewTracker("node1", nil, nil)
	tr.OnServiceUpdate(nil, pt.Service("a", "web", "10.96.0.20", "http", 80, func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		s.Spec.ExternalIPs = []string{"192.0.2.10"}
	}))
	tr.OnEndpointSliceUpdate(nil, pt.Slice("a", "web", "web-1", "http", 80, pt.Ready("10.244.1.2", "node1"), pt.Ready("10.244.1.3", "node1")))
	snap, _ := tr.Snapshot()
	sp := snap.ServicePorts()[0]
	if len(sp.ClusterEndpoints) != 2 || &sp.ClusterEndpoints[0] != &sp.AllEndpoints[0] || cap(sp.ClusterEndpoints) != 2 {
		t.Errorf("cluster endpoints not shared (or not capped): %v", sp.ClusterEndpoints)
	}
	if len(sp.LocalEndpoints) != 2 || &sp.LocalEndpoints[0] != &sp.AllEndpoints[0] {
		t.Errorf("local endpoints not shared: %v", sp.LocalEndpoints)
	}
}
