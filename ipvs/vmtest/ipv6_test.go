//go:build vm

package vmtest

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// newProxier6 is newProxier for a dual-stack node (newDualStackTopology):
// IPv6 on, node addresses and cluster CIDRs of both families, the IPv6
// rules through ip6tables.
func newProxier6(t testing.TB, tp *topology, mods ...func(*ipvs.Options)) *proxier {
	t.Helper()
	mods = append([]func(*ipvs.Options){func(o *ipvs.Options) {
		o.IPv6 = true
		o.NodeAddresses = append(o.NodeAddresses, netip.MustParseAddr(nodeIP6))
		o.ClusterCIDRs = append(o.ClusterCIDRs, netip.MustParsePrefix(clusterCIDR6))
	}}, mods...)
	p := newProxier(t, tp, mods...)
	var ipt6 iptables.Interface
	must(t, inNS(tp.node, func() error {
		var err error
		ipt6, err = iptables.NewExec6(iptables.DetectVariant())
		return err
	}))
	p.applier = ipvs.NewDualStackApplier(p.kernel, p.ipt, ipt6, p.opts, nil)
	return p
}

// web46Objects is a dual-stack Service it/web (ClusterIPs 10.96.1.10 and
// fd00:10:96::a, TCP and UDP port 80 to 8080) with the IPv4 endpoints eps4
// and the IPv6 ones eps6; mods change the Service.
func web46Objects(eps4, eps6 []pt.EP, mods ...func(*v1.Service)) []any {
	svc := pt.Service("it", "web", "10.96.1.10", "http", 80, append([]func(*v1.Service){func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.1.10", "fd00:10:96::a"}
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "echo", Port: 80, Protocol: v1.ProtocolUDP})
	}}, mods...)...)
	s4 := pt.Slice("it", "web", "web-4", "http", 8080, eps4...)
	s6 := pt.Slice("it", "web", "web-6", "http", 8080, eps6...)
	s6.AddressType = discovery.AddressTypeIPv6
	for _, s := range []*discovery.EndpointSlice{s4, s6} {
		name, port, proto := "echo", int32(8080), v1.ProtocolUDP
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	}
	return []any{svc, s4, s6}
}

// TestIPv6ClusterIPAndNodePort: on a dual-stack node one sync makes a
// dual-stack Service reachable over both families: a pod reaches the IPv6
// ClusterIP over TCP and UDP keeping its own address, an outside client
// reaches the IPv6 node port masqueraded, and IPv4 works as before.
func TestIPv6ClusterIPAndNodePort(t *testing.T) {
	tp := newDualStackTopology(t)
	srv := tp.addPod(t, "srv1", "10.244.1.10", srv1IP6)
	cli := tp.addPod(t, "cli", "10.244.1.20", cliIP6)
	startServer(t, srv, "srv1", 8080)
	startServer6(t, srv, "srv1", 8080)
	p := newProxier6(t, tp)
	p.sync(false, web46Objects([]pt.EP{pt.Ready("10.244.1.10", "node1")}, []pt.EP{pt.Ready(srv1IP6, "node1")}, nodePort(30080, false))...)

	for _, tc := range []struct {
		name, proto, target, source string
		from                        nsHandle
	}{
		{"pod to IPv6 ClusterIP, TCP", "tcp", addr("fd00:10:96::a", 80), cliIP6, cli},
		{"pod to IPv6 ClusterIP, UDP", "udp", addr("fd00:10:96::a", 80), cliIP6, cli},
		{"outside to IPv6 node port, TCP", "tcp", addr(nodeIP6, 30080), podGW6, tp.outside},
		{"node to IPv6 ClusterIP", "tcp", addr("fd00:10:96::a", 80), podGW6, tp.node},
		{"pod to IPv4 ClusterIP", "tcp", addr("10.96.1.10", 80), "10.244.1.20", cli},
		{"outside to IPv4 node port", "tcp", addr(nodeIP, 30080), podGW, tp.outside},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dial(tc.from, tc.proto, tc.target)
			if err != nil {
				t.Fatalf("dial %s %s: %v\nvirtual servers: %v", tc.proto, tc.target, err, p.dumpServices())
			}
			if want := (answer{"srv1", tc.source}); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
	// The kernel holds exactly the plan: a full sync changes nothing.
	if res := p.sync(true, web46Objects([]pt.EP{pt.Ready("10.244.1.10", "node1")}, []pt.EP{pt.Ready(srv1IP6, "node1")}, nodePort(30080, false))...); res.Added+res.Removed != 0 {
		t.Errorf("second full sync: %+v, want no change", res)
	}
}

// TestIPv6NoEndpointsAndSourceRanges: an IPv6 service port without
// endpoints refuses at once (REJECT, ICMPv6 port unreachable: judged with
// UDP, as a REJECTed IPv6 TCP connect is refused only at the SYN
// retransmit); an IPv6 load-balancer address admits the sources of its
// IPv6 ranges only, and none when the ranges are all IPv4 (fail closed).
func TestIPv6NoEndpointsAndSourceRanges(t *testing.T) {
	tp := newDualStackTopology(t)
	srv := tp.addPod(t, "srv1", "10.244.1.10", srv1IP6)
	startServer6(t, srv, "srv1", 8080)
	p := newProxier6(t, tp)
	lb := func(ip string, ranges ...string) func(*v1.Service) {
		return func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.Ports[0].NodePort = 0
			s.Spec.LoadBalancerSourceRanges = ranges
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
		}
	}
	eps6 := []pt.EP{pt.Ready(srv1IP6, "node1")}
	objs := web46Objects(nil, eps6, lb("2001:db8:ffff::10", "fd00:50::2/128"))
	empty := web46Objects(nil, nil)
	for _, o := range empty {
		switch o := o.(type) {
		case *v1.Service:
			o.Name, o.Spec.ClusterIPs, o.Spec.ClusterIP = "empty", []string{"10.96.1.13", "fd00:10:96::d"}, "10.96.1.13"
			objs = append(objs, o)
		}
	}
	closed := web46Objects(nil, eps6, lb("2001:db8:ffff::11", "192.168.50.0/24"))
	for _, o := range closed {
		switch o := o.(type) {
		case *v1.Service:
			o.Name, o.Spec.ClusterIPs, o.Spec.ClusterIP = "closed", []string{"10.96.1.14", "fd00:10:96::e"}, "10.96.1.14"
		case *discovery.EndpointSlice:
			o.Name, o.Labels[discovery.LabelServiceName] = "closed-"+o.Name, "closed"
		}
		objs = append(objs, o)
	}
	p.sync(false, objs...)

	if a, err := dial(tp.outside, "udp", addr("fd00:10:96::d", 80)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("IPv6 service without endpoints: %+v, %v; want connection refused\n%s", a, err, p.dumpServices())
	}
	if a, err := dial(tp.outside, "tcp", addr("2001:db8:ffff::10", 80)); err != nil || a.Server != "srv1" {
		t.Errorf("allowed source to the IPv6 LB address: %+v, %v; want srv1", a, err)
	}
	if a, err := dial(tp.outside, "tcp", addr("2001:db8:ffff::11", 80)); err == nil || !isTimeout(err) {
		t.Errorf("IPv6 LB address whose ranges are all IPv4: %+v, %v; want dropped (timeout)", a, err)
	}
}

// TestIPv6GracefulTermination: as TestGracefulTermination, over IPv6: an
// endpoint removed while a connection to it is open keeps serving it with
// weight 0, new connections go to the other endpoint, and the next sync
// after the connection closed deletes the real server.
func TestIPv6GracefulTermination(t *testing.T) {
	tp := newDualStackTopology(t)
	for _, n := range []struct{ name, ip4, ip6 string }{{"srv1", "10.244.1.10", srv1IP6}, {"srv2", "10.244.1.11", srv2IP6}} {
		startServer6(t, tp.addPod(t, n.name, n.ip4, n.ip6), n.name, 8080)
	}
	cli := tp.addPod(t, "cli", "10.244.1.20", cliIP6)
	p := newProxier6(t, tp)
	vip := addr("fd00:10:96::a", 80)
	p.sync(false, web46Objects(nil, []pt.EP{pt.Ready(srv1IP6, "node1"), pt.Ready(srv2IP6, "node1")})...)

	live := connectedTo(t, cli, vip, "srv1")
	defer live.Close()

	only2 := web46Objects(nil, []pt.EP{pt.Ready(srv2IP6, "node1")})
	if res := p.sync(false, only2...); res.Draining != 1 {
		t.Errorf("draining %d real servers, want 1", res.Draining)
	}
	rs := p.realServer(vip, addr(srv1IP6, 8080))
	if rs == nil || rs.Weight != 0 || rs.ActiveConns != 1 {
		t.Fatalf("removed real server: %+v, want weight 0 and 1 active connection\n%s", rs, p.dumpServices())
	}
	if a, err := live.ask(); err != nil || a.Server != "srv1" {
		t.Errorf("live connection after removal: %+v, %v; want an answer from srv1", a, err)
	}
	for range 4 {
		if a, err := dial(cli, "tcp", vip); err != nil || a.Server != "srv2" {
			t.Errorf("new connection: %+v, %v; want srv2", a, err)
		}
	}
	live.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.realServer(vip, addr(srv1IP6, 8080)) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("real server not deleted after its connection closed\n%s", p.dumpServices())
		}
		time.Sleep(100 * time.Millisecond)
		p.sync(false, only2...)
	}
}

// TestIPv6DumpRestores: the dual-stack --dry-run dump's four sections are
// taken by the real ipset restore (inet6 sets included), ipvsadm -R (IPv6
// virtual servers), iptables-restore and ip6tables-restore, and leave the
// Applier nothing to do but bind the addresses (IPv6 ones with nodad).
func TestIPv6DumpRestores(t *testing.T) {
	tp := newDualStackTopology(t)
	p := newProxier6(t, tp)
	objs := web46Objects([]pt.EP{pt.Ready("10.244.1.10", "node1")}, []pt.EP{pt.Ready(srv1IP6, "node1"), pt.Ready("fd00:10:244:2::10", "node2")},
		nodePort(30080, false), clientIPAffinity(600), func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{"2001:db8:50::/64", "::/0", "198.51.100.0/24"}
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10"}, {IP: "2001:db8:ffff::10"}}
		})
	plan := ipvs.Render(snapshot(t, objs...), p.opts)
	dump := plan.Dump()
	var parts []string
	for _, marker := range []string{"# ipset save", "# ipvsadm -Sn", "# iptables-save", "# ip6tables-save"} {
		i := strings.Index(dump, marker)
		if i < 0 {
			t.Fatalf("dump lacks %q:\n%s", marker, dump)
		}
		parts = append(parts, dump[:i])
		dump = dump[i:]
	}
	parts = append(parts[1:], dump)
	var variant iptables.Variant
	must(t, inNS(tp.node, func() error { variant = iptables.DetectVariant(); return nil }))
	feed(t, tp.node, parts[0], "ipset", "restore", "-exist")
	feed(t, tp.node, dropComments(parts[1]), "ipvsadm", "-R")
	feed(t, tp.node, parts[2], "iptables-"+string(variant)+"-restore", "--noflush")
	feed(t, tp.node, parts[3], "ip6tables-"+string(variant)+"-restore", "--noflush")

	var st *ipvs.State
	must(t, inNS(tp.node, func() error {
		var err error
		st, err = ipvs.ListState(p.kernel, plan, p.opts)
		return err
	}))
	want := []string{"ip link add svcproxy-ipvs0 type dummy"}
	for _, a := range plan.Addresses {
		if a.Is6() {
			want = append(want, "ip addr add "+a.String()+"/128 dev svcproxy-ipvs0 nodad")
		} else {
			want = append(want, "ip addr add "+a.String()+"/32 dev svcproxy-ipvs0")
		}
	}
	if d := cmp.Diff(want, ipvs.Diff(plan, st).Strings()); d != "" {
		t.Errorf("after restoring the dump, a sync would do more than bind addresses (-want +got):\n%s", d)
	}
	if res := p.sync(true, objs...); res.Added != len(want) || res.Removed != 0 {
		t.Errorf("first sync: %+v, want %d additions and no removal", res, len(want))
	}
}
