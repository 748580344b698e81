package conntrack_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/conntrack"
	conntracktest "github.com/svcproxy/svcproxy/proxy/conntrack/testing"
)

var addrCmp = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
}

// dns is kube-system/dns: 10.96.0.10:53 over proto, with a node port when
// nodePort is not 0, ExternalIP 192.0.2.10 and LoadBalancer IP
// 198.51.100.10 when external, and endpoints eps ("ip" for port 53, or
// "ip:port").
func dns(proto v1.Protocol, nodePort int32, external bool, eps ...string) *proxy.ServicePort {
	sp := &proxy.ServicePort{
		Name:      proxy.ServicePortName{Namespace: "kube-system", Name: "dns", Port: "dns", Protocol: proto},
		Protocol:  proto,
		Port:      53,
		ClusterIP: netip.MustParseAddr("10.96.0.10"),
		NodePort:  nodePort,
	}
	if external {
		sp.ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.10")}
		sp.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.51.100.10")}
	}
	for _, e := range eps {
		ap, err := netip.ParseAddrPort(e)
		if err != nil {
			ap = netip.AddrPortFrom(netip.MustParseAddr(e), 53)
		}
		sp.AllEndpoints = append(sp.AllEndpoints, &proxy.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Ready: true, Serving: true})
	}
	proxy.SelectEndpoints(sp, "node1", "")
	return sp
}

// other is it/other: 10.96.0.20:53/UDP, with endpoints eps.
func other(eps ...string) *proxy.ServicePort {
	sp := dns(v1.ProtocolUDP, 0, false, eps...)
	sp.Name.Namespace, sp.Name.Name = "it", "other"
	sp.ClusterIP = netip.MustParseAddr("10.96.0.20")
	return sp
}

func TestStaleFilters(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	ep := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	tests := []struct {
		name    string
		changes []proxy.Change
		want    []conntrack.Filter
	}{
		{name: "TCP never needs cleanup",
			changes: []proxy.Change{{Prev: dns(v1.ProtocolTCP, 0, false, "10.244.1.2"), Cur: dns(v1.ProtocolTCP, 0, false)}}},
		{name: "UDP endpoint removed",
			changes: []proxy.Change{{Prev: dns(v1.ProtocolUDP, 0, false, "10.244.1.2", "10.244.2.2"), Cur: dns(v1.ProtocolUDP, 0, false, "10.244.2.2")}},
			want:    []conntrack.Filter{{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53, ReplySrcIP: ep("10.244.1.2"), ReplySrcPort: 53}}},
		{name: "UDP endpoint replaced, with a node port",
			changes: []proxy.Change{{Prev: dns(v1.ProtocolUDP, 30053, false, "10.244.1.2"), Cur: dns(v1.ProtocolUDP, 30053, false, "10.244.1.3")}},
			want: []conntrack.Filter{
				{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53, ReplySrcIP: ep("10.244.1.2"), ReplySrcPort: 53},
				{Protocol: v1.ProtocolUDP, OrigPort: 30053, NodeAddr: true, ReplySrcIP: ep("10.244.1.2"), ReplySrcPort: 53},
			}},
		{name: "UDP endpoint moved to another port",
			changes: []proxy.Change{{Prev: dns(v1.ProtocolUDP, 0, false, "10.244.1.2"), Cur: dns(v1.ProtocolUDP, 0, false, "10.244.1.2:5353")}},
			want:    []conntrack.Filter{{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53, ReplySrcIP: ep("10.244.1.2"), ReplySrcPort: 53}}},
		{name: "UDP from no endpoints to some (#48370): only entries never DNATed",
			changes: []proxy.Change{{Prev: dns(v1.ProtocolUDP, 0, false), Cur: dns(v1.ProtocolUDP, 0, false, "10.244.1.2")}},
			want:    []conntrack.Filter{{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53, NotDNATed: true}}},
		{name: "new UDP service with endpoints (every service on the first sync after a start)",
			changes: []proxy.Change{{Cur: dns(v1.ProtocolUDP, 30053, true, "10.244.1.2")}},
			want: []conntrack.Filter{
				{Protocol: v1.ProtocolUDP, OrigDst: vip, OrigPort: 53, NotDNATed: true},
				{Protocol: v1.ProtocolUDP, OrigDst: ep("192.0.2.10"), OrigPort: 53, NotDNATed: true},
				{Protocol: v1.ProtocolUDP, OrigDst: ep("198.51.100.10"), OrigPort: 53, NotDNATed: true},
				{Protocol: v1.ProtocolUDP, OrigPort: 30053, NodeAddr: true, NotDNATed: true},
			}},
		{name: "SCTP service deleted",
			changes: []proxy.Change{{Prev: dns(v1.ProtocolSCTP, 0, false, "10.244.1.2")}},
			want:    []conntrack.Filter{{Protocol: v1.ProtocolSCTP, OrigDst: vip, OrigPort: 53, ReplySrcIP: ep("10.244.1.2"), ReplySrcPort: 53}}},
		{name: "endpoint still used: nothing to do",
			changes: []proxy.Change{{Prev: dns(v1.ProtocolUDP, 0, false, "10.244.1.2"), Cur: dns(v1.ProtocolUDP, 0, false, "10.244.1.2", "10.244.1.3")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := conntrack.StaleFilters(tc.changes)
			if d := cmp.Diff(tc.want, got, addrCmp); d != "" {
				t.Errorf("filters (-want +got):\n%s", d)
			}
		})
	}
}

// The entries of TestCleanup. Clients: 10.244.1.20 (a pod on this node),
// 192.168.50.2 (outside). The node is 192.168.50.1.
var (
	udp, tcp, sctp = v1.ProtocolUDP, v1.ProtocolTCP, v1.ProtocolSCTP

	toVIPValid    = conntracktest.DNATed(udp, "10.244.1.20:40000", "10.96.0.10:53", "10.244.1.2:53")
	toVIPValid2   = conntracktest.DNATed(udp, "10.244.1.20:40001", "10.96.0.10:53", "10.244.2.2:53")
	toVIPGone     = conntracktest.DNATed(udp, "10.244.1.20:40002", "10.96.0.10:53", "10.244.9.9:53")
	toVIPWrongPt  = conntracktest.DNATed(udp, "10.244.1.20:40003", "10.96.0.10:53", "10.244.1.2:5353")
	toVIPDirect   = conntracktest.Direct(udp, "10.244.1.20:40004", "10.96.0.10:53")
	toExtValid    = conntracktest.DNATed(udp, "192.168.50.2:40005", "192.0.2.10:53", "10.244.2.2:53")
	toLBGone      = conntracktest.DNATed(udp, "192.168.50.2:40006", "198.51.100.10:53", "10.244.9.9:53")
	toLBDirect    = conntracktest.Direct(udp, "192.168.50.2:40007", "198.51.100.10:53")
	toNPValid     = conntracktest.DNATed(udp, "192.168.50.2:40008", "192.168.50.1:30053", "10.244.1.2:53")
	toNPGone      = conntracktest.DNATed(udp, "192.168.50.2:40009", "192.168.50.1:30053", "10.244.9.9:53")
	toNPDirect    = conntracktest.Direct(udp, "192.168.50.2:40010", "192.168.50.1:30053")
	toNPOtherNode = conntracktest.Direct(udp, "10.244.1.20:40011", "192.168.60.7:30053") // another node's node port
	toNPGoneAway  = conntracktest.DNATed(udp, "10.244.1.20:40012", "192.168.60.7:30053", "10.244.9.9:53")
	unrelated     = conntracktest.Direct(udp, "10.244.1.20:40013", "8.8.8.8:53")
	tcpGone       = conntracktest.DNATed(tcp, "10.244.1.20:40014", "10.96.0.10:53", "10.244.9.9:53")
	otherDirect   = conntracktest.Direct(udp, "10.244.1.20:40015", "10.96.0.20:53")
	otherGone     = conntracktest.DNATed(udp, "10.244.1.20:40016", "10.96.0.20:53", "10.244.9.9:53")
	sctpValid     = conntracktest.DNATed(sctp, "10.244.1.20:40017", "10.96.0.10:53", "10.244.1.2:53")
	sctpGone      = conntracktest.DNATed(sctp, "10.244.1.20:40018", "10.96.0.10:53", "10.244.9.9:53")
	v6Direct      = conntracktest.Direct(udp, "[fd00::20]:40019", "[fd00:96::10]:53")
	ipvsValid     = conntracktest.IPVSDNATed(udp, "10.244.1.20:40020", "10.96.0.10:53", "10.244.1.2:53")
	ipvsGone      = conntracktest.IPVSDNATed(udp, "10.244.1.20:40021", "10.96.0.10:53", "10.244.9.9:53")

	everything = []conntrack.Entry{toVIPValid, toVIPValid2, toVIPGone, toVIPWrongPt, toVIPDirect, toExtValid, toLBGone, toLBDirect,
		toNPValid, toNPGone, toNPDirect, toNPOtherNode, toNPGoneAway, unrelated, tcpGone, otherDirect, otherGone, sctpValid, sctpGone, v6Direct,
		ipvsValid, ipvsGone}
	nodeAddrs = []netip.Prefix{netip.MustParsePrefix("192.168.50.1/32"), netip.MustParsePrefix("10.244.1.1/32")}
)

func TestCleanup(t *testing.T) {
	udpDNS := dns(udp, 30053, true, "10.244.1.2", "10.244.2.2")
	sctpDNS := dns(sctp, 0, false, "10.244.1.2")
	otherNone := other()
	fresh := func(ports ...*proxy.ServicePort) []proxy.Change {
		var out []proxy.Change
		for _, sp := range ports {
			out = append(out, proxy.Change{Cur: sp})
		}
		return out
	}
	tests := []struct {
		name      string
		ports     []*proxy.ServicePort // the Snapshot
		changes   []proxy.Change
		reconcile bool
		ipvs      bool // the data plane is IPVS
		nodeErr   error
		want      []conntrack.Entry // deleted
		wantErr   string
	}{
		{
			name:      "first sync after a start: only stale entries go",
			ports:     []*proxy.ServicePort{udpDNS, sctpDNS, otherNone},
			changes:   fresh(udpDNS, sctpDNS, otherNone),
			reconcile: true,
			// IPVS's flows too: the data plane is iptables (a switch from
			// IPVS mode), nothing translates them any more.
			want: []conntrack.Entry{toVIPGone, toVIPWrongPt, toVIPDirect, toLBGone, toLBDirect, toNPGone, toNPDirect, otherGone, sctpGone, ipvsValid, ipvsGone},
		},
		{
			name:      "first sync after a start in IPVS mode: IPVS's and iptables' valid flows stay",
			ports:     []*proxy.ServicePort{udpDNS, sctpDNS, otherNone},
			changes:   fresh(udpDNS, sctpDNS, otherNone),
			reconcile: true,
			ipvs:      true,
			want:      []conntrack.Entry{toVIPGone, toVIPWrongPt, toVIPDirect, toLBGone, toLBDirect, toNPGone, toNPDirect, otherGone, sctpGone, ipvsGone},
		},
		{
			name:    "first sync judged by its changes alone: 'gained endpoints' deletes only entries never DNATed",
			ports:   []*proxy.ServicePort{udpDNS, sctpDNS, otherNone},
			changes: fresh(udpDNS, sctpDNS, otherNone),
			want:    []conntrack.Entry{toVIPDirect, toLBDirect, toNPDirect},
		},
		{
			name:    "endpoint removed: its flows go, from every address and the node port",
			ports:   []*proxy.ServicePort{dns(udp, 30053, true, "10.244.2.2"), sctpDNS, otherNone},
			changes: []proxy.Change{{Prev: udpDNS, Cur: dns(udp, 30053, true, "10.244.2.2")}},
			want:    []conntrack.Entry{toVIPValid, toNPValid, ipvsValid},
		},
		{
			name:      "endpoint removed, after a failed sync: reconciled",
			ports:     []*proxy.ServicePort{dns(udp, 30053, true, "10.244.2.2"), sctpDNS, otherNone},
			changes:   []proxy.Change{{Prev: udpDNS, Cur: dns(udp, 30053, true, "10.244.2.2")}},
			reconcile: true,
			want:      []conntrack.Entry{toVIPValid, toVIPGone, toVIPWrongPt, toVIPDirect, toLBGone, toLBDirect, toNPValid, toNPGone, toNPDirect, otherGone, sctpGone, ipvsValid, ipvsGone},
		},
		{
			name:  "an outdated change cannot delete a valid entry",
			ports: []*proxy.ServicePort{udpDNS},
			ipvs:  true, // IPVS's flow to 10.244.1.2 is valid too
			// Changes kept across a failed sync: 10.244.1.2 went, then
			// came back.
			changes: []proxy.Change{
				{Prev: udpDNS, Cur: dns(udp, 30053, true, "10.244.2.2")},
				{Prev: dns(udp, 30053, true, "10.244.2.2"), Cur: udpDNS},
			},
		},
		{
			name:    "service deleted: flows DNATed to its endpoints go",
			ports:   []*proxy.ServicePort{udpDNS, sctpDNS},
			changes: []proxy.Change{{Prev: other("10.244.9.9")}},
			want:    []conntrack.Entry{otherGone},
		},
		{
			name:      "service deleted while svcproxy retried a failed sync",
			ports:     []*proxy.ServicePort{udpDNS, sctpDNS},
			changes:   []proxy.Change{{Prev: other("10.244.9.9")}},
			reconcile: true,
			want:      []conntrack.Entry{toVIPGone, toVIPWrongPt, toVIPDirect, toLBGone, toLBDirect, toNPGone, toNPDirect, otherGone, sctpGone, ipvsValid, ipvsGone},
		},
		{
			name:      "no endpoints: flows never DNATed stay (nothing better to send them to)",
			ports:     []*proxy.ServicePort{dns(udp, 30053, true), sctpDNS, otherNone},
			reconcile: true,
			want:      []conntrack.Entry{toVIPValid, toVIPValid2, toVIPGone, toVIPWrongPt, toExtValid, toLBGone, toNPValid, toNPGone, otherGone, sctpGone, ipvsValid, ipvsGone},
		},
		{
			name:      "node addresses unknown: node-port flows are left alone",
			ports:     []*proxy.ServicePort{udpDNS, sctpDNS, otherNone},
			reconcile: true,
			nodeErr:   errors.New("netlink: operation not permitted"),
			want:      []conntrack.Entry{toVIPGone, toVIPWrongPt, toVIPDirect, toLBGone, toLBDirect, otherGone, sctpGone, ipvsValid, ipvsGone},
			wantErr:   "operation not permitted",
		},
		{
			name:  "nothing changed, no reconcile: the table is not even read",
			ports: []*proxy.ServicePort{udpDNS, sctpDNS, otherNone},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct := conntracktest.NewFake(nodeAddrs, everything...)
			ct.NodeAddrsErr = tc.nodeErr
			snap := proxy.NewSnapshot("node1", "", slices.Clone(tc.ports))
			n, err := conntrack.Cleanup(ct, snap, tc.changes, conntrack.Options{Reconcile: tc.reconcile, IPVS: tc.ipvs})
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
			got := ct.Deleted()
			if d := cmp.Diff(tc.want, got, addrCmp); d != "" {
				t.Errorf("deleted (-want +got):\n%s", d)
			}
			if n != uint(len(got)) {
				t.Errorf("reported %d deleted, the table lost %d", n, len(got))
			}
			if len(tc.changes) == 0 && !tc.reconcile && ct.Deletes() != 0 {
				t.Errorf("the table was read %d times for nothing", ct.Deletes())
			}
			// Whatever is left: never an IPv6 or TCP entry touched.
			for _, e := range got {
				if e == v6Direct || e.Protocol == tcp {
					t.Errorf("deleted %v", e)
				}
			}
		})
	}
}

// A restart is a reconcile; a second one right after deletes nothing: what
// the first left is all valid.
func TestReconcileIsIdempotent(t *testing.T) {
	udpDNS := dns(udp, 30053, true, "10.244.1.2", "10.244.2.2")
	snap := proxy.NewSnapshot("node1", "", []*proxy.ServicePort{udpDNS, other()})
	ct := conntracktest.NewFake(nodeAddrs, everything...)
	if _, err := conntrack.Cleanup(ct, snap, nil, conntrack.Options{Reconcile: true}); err != nil {
		t.Fatal(err)
	}
	before := len(ct.Deleted())
	if n, err := conntrack.Cleanup(ct, snap, nil, conntrack.Options{Reconcile: true}); err != nil || n != 0 {
		t.Errorf("second reconcile deleted %d (%v): %v", n, err, ct.Deleted()[before:])
	}
	for _, e := range []conntrack.Entry{toVIPValid, toVIPValid2, toExtValid, toNPValid, toNPOtherNode, toNPGoneAway, unrelated} {
		if !slices.Contains(ct.Entries(), e) {
			t.Errorf("valid entry %v deleted", e)
		}
	}
}

// A node port's endpoint on the node itself (host network): DNAT changes
// only the port, and the entry is DNATed all the same.
func TestHostNetworkEndpointBehindANodePort(t *testing.T) {
	sp := dns(udp, 30053, false, "192.168.50.1:5353")
	snap := proxy.NewSnapshot("node1", "", []*proxy.ServicePort{sp})
	valid := conntracktest.DNATed(udp, "192.168.50.2:40000", "192.168.50.1:30053", "192.168.50.1:5353")
	stale := conntracktest.DNATed(udp, "192.168.50.2:40001", "192.168.50.1:30053", "192.168.50.1:53")
	ct := conntracktest.NewFake(nodeAddrs, valid, stale)
	if _, err := conntrack.Cleanup(ct, snap, []proxy.Change{{Cur: sp}}, conntrack.Options{Reconcile: true}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]conntrack.Entry{valid}, ct.Entries(), addrCmp); d != "" {
		t.Errorf("left (-want +got):\n%s", d)
	}
}

// Terminating endpoints still serve while no ready one exists: their flows
// stay; a topology-filtered endpoint that this node does not use goes.
func TestEndpointsTheRulesUse(t *testing.T) {
	sp := dns(udp, 0, false, "10.244.1.2")
	sp.AllEndpoints[0].Ready, sp.AllEndpoints[0].Terminating = false, true
	proxy.SelectEndpoints(sp, "node1", "")
	snap := proxy.NewSnapshot("node1", "", []*proxy.ServicePort{sp})
	ct := conntracktest.NewFake(nodeAddrs, toVIPValid, toVIPValid2)
	if _, err := conntrack.Cleanup(ct, snap, nil, conntrack.Options{Reconcile: true}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]conntrack.Entry{toVIPValid}, ct.Entries(), addrCmp); d != "" {
		t.Errorf("left (-want +got):\n%s", d)
	}
}

func TestFilterMatch(t *testing.T) {
	isNode := func(a netip.Addr) bool { return a == netip.MustParseAddr("192.168.50.1") }
	tests := []struct {
		f    conntrack.Filter
		e    conntrack.Entry
		want bool
	}{
		{conntrack.Filter{Protocol: udp, OrigDst: netip.MustParseAddr("10.96.0.10"), OrigPort: 53, NotDNATed: true}, toVIPDirect, true},
		{conntrack.Filter{Protocol: udp, OrigDst: netip.MustParseAddr("10.96.0.10"), OrigPort: 53, NotDNATed: true}, toVIPValid, false},
		{conntrack.Filter{Protocol: sctp, OrigDst: netip.MustParseAddr("10.96.0.10"), OrigPort: 53, NotDNATed: true}, toVIPDirect, false},
		{conntrack.Filter{Protocol: udp, OrigPort: 30053, NodeAddr: true, NotDNATed: true}, toNPDirect, true},
		{conntrack.Filter{Protocol: udp, OrigPort: 30053, NodeAddr: true, NotDNATed: true}, toNPOtherNode, false},
		{conntrack.Filter{Protocol: udp, OrigPort: 30053, NodeAddr: true, ReplySrcIP: netip.MustParseAddr("10.244.1.2"), ReplySrcPort: 53}, toNPValid, true},
		{conntrack.Filter{Protocol: udp, OrigPort: 30053, NodeAddr: true, ReplySrcIP: netip.MustParseAddr("10.244.1.2"), ReplySrcPort: 5353}, toNPValid, false},
		{conntrack.Filter{Protocol: udp, OrigDst: netip.MustParseAddr("10.96.0.10"), OrigPort: 53, ReplySrcIP: netip.MustParseAddr("10.244.1.2")}, toVIPWrongPt, true},
	}
	for _, tc := range tests {
		if got := tc.f.Match(tc.e, isNode); got != tc.want {
			t.Errorf("%v matches %v: %v, want %v", tc.f, tc.e, got, tc.want)
		}
	}
}

// Dual-stack is one line away: with IPv6 among the families, an IPv6
// service's flows are judged the same way, each family on its own.
func TestIPv6IsOneFamilyMore(t *testing.T) {
	defer conntrack.SetFamilies(conntrack.IPv4, conntrack.IPv6)()
	v4 := dns(udp, 30053, false, "10.244.1.2")
	v6 := dns(udp, 30053, false, "[fd00:244::2]:53")
	v6.Name.Name, v6.ClusterIP = "dns6", netip.MustParseAddr("fd00:96::10")
	snap := proxy.NewSnapshot("node1", "", []*proxy.ServicePort{v4, v6})
	valid6 := conntracktest.DNATed(udp, "[fd00:244::20]:40000", "[fd00:96::10]:53", "[fd00:244::2]:53")
	gone6 := conntracktest.DNATed(udp, "[fd00:244::20]:40001", "[fd00:96::10]:53", "[fd00:244::9]:53")
	direct6 := conntracktest.Direct(udp, "[fd00:244::20]:40002", "[fd00:96::10]:53")
	np6 := conntracktest.DNATed(udp, "[fd00:50::2]:40003", "[fd00:50::1]:30053", "[fd00:244::9]:53")
	ct := conntracktest.NewFake(append(nodeAddrs, netip.MustParsePrefix("fd00:50::1/128")),
		toVIPValid, toVIPGone, valid6, gone6, direct6, np6)
	if _, err := conntrack.Cleanup(ct, snap, nil, conntrack.Options{Reconcile: true}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]conntrack.Entry{toVIPValid, valid6}, ct.Entries(), addrCmp); d != "" {
		t.Errorf("left (-want +got):\n%s", d)
	}
	if ct.Deletes() != 2 {
		t.Errorf("%d passes over the table, want one per family", ct.Deletes())
	}
}

// BenchmarkReconcile: the judgement of a reconcile over 100k UDP entries
// to 10k UDP service ports (the kernel's dump comes on top).
func BenchmarkReconcile(b *testing.B) {
	var ports []*proxy.ServicePort
	for i := range 10000 {
		sp := dns(udp, 0, false, fmt.Sprintf("10.244.%d.%d", i/250, i%250+1))
		sp.Name.Name = fmt.Sprintf("svc%d", i)
		sp.ClusterIP = netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		ports = append(ports, sp)
	}
	snap := proxy.NewSnapshot("node1", "", ports)
	var entries []conntrack.Entry
	for i := range 100000 {
		sp := ports[i%len(ports)]
		ep := sp.ClusterEndpoints[0].String()
		entries = append(entries, conntracktest.DNATed(udp, fmt.Sprintf("10.244.200.%d:%d", i%250+1, 10000+i/250),
			netip.AddrPortFrom(sp.ClusterIP, 53).String(), ep))
	}
	ct := conntracktest.NewFake(nodeAddrs, entries...)
	b.ResetTimer()
	for b.Loop() {
		if n, err := conntrack.Cleanup(ct, snap, nil, conntrack.Options{Reconcile: true}); err != nil || n != 0 {
			b.Fatal(n, err)
		}
	}
}
