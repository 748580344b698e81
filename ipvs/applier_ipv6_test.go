package ipvs_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	clocktesting "k8s.io/utils/clock/testing"

	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/ipvs"
	ipvstest "github.com/svcproxy/svcproxy/ipvs/testing"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// env6 is an Applier on fakes for a dual-stack node: node addresses
// 192.168.0.1 and 2001:db8::1, cluster CIDRs 10.244.0.0/16 and
// fd00:10:244::/56.
type env6 struct {
	*env
	ipt6 *iptablestest.Fake
}

func newEnv6(t *testing.T) *env6 {
	e := &env6{env: &env{t: t, k: ipvstest.NewFake(), ipt: iptablestest.NewFake(), clock: clocktesting.NewFakePassiveClock(time.Unix(1e9, 0))}, ipt6: iptablestest.NewFake6()}
	e.opts = options()
	e.opts.IPv6 = true
	e.opts.NodeAddresses = append(e.opts.NodeAddresses, netip.MustParseAddr("2001:db8::1"))
	e.opts.ClusterCIDRs = append(e.opts.ClusterCIDRs, netip.MustParsePrefix("fd00:10:244::/56"))
	if err := e.k.UseIPTables(e.ipt); err != nil {
		t.Fatal(err)
	}
	if err := e.k.UseIPTables(e.ipt6); err != nil {
		t.Fatal(err)
	}
	e.a = ipvs.NewDualStackApplier(e.k, e.ipt, e.ipt6, e.opts, e.clock)
	return e
}

// web46 is a dual-stack NodePort Service ns/web (TCP and UDP port 80,
// node port 30080) with the IPv4 endpoints eps4 and the IPv6 ones eps6.
func web46(eps4, eps6 []pt.EP) []any {
	svc := pt.Service("ns", "web", "10.96.0.10", "http", 80, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP, NodePort: 30053})
		s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::10"}
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	})
	s4 := pt.Slice("ns", "web", "web-4", "http", 8080, eps4...)
	s6 := pt.Slice("ns", "web", "web-6", "http", 8080, eps6...)
	s6.AddressType = discovery.AddressTypeIPv6
	for _, s := range []*discovery.EndpointSlice{s4, s6} {
		udp := v1.ProtocolUDP
		name, port := "dns", int32(5353)
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: &name, Port: &port, Protocol: &udp})
	}
	return []any{svc, s4, s6}
}

var (
	ep6a = pt.Ready("fd00:10:244:1::10", "node1")
	ep6b = pt.Ready("fd00:10:244:2::10", "node2")
)

// TestApplierDualStack: one sync programs both families — IPv6 virtual
// servers with IPv6 real servers, the IPv6 service addresses on the dummy
// link, the inet6 sets and the ip6tables rules that use them — and a
// second sync of the same plan changes nothing.
func TestApplierDualStack(t *testing.T) {
	e := newEnv6(t)
	objs := web46([]pt.EP{ep1, ep2}, []pt.EP{ep6a, ep6b})
	plan := e.plan(objs...)
	if _, err := e.a.Sync(context.Background(), plan, false); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	e.inSync(plan)

	vs6 := ipvs.ServiceKey{Address: netip.MustParseAddr("fd00:10:96::10"), Protocol: v1.ProtocolTCP, Port: 80}
	ds, err := e.k.ListDestinations(vs6)
	if err != nil {
		t.Fatalf("IPv6 virtual server %s: %v", vs6, err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, d.AddrPort().String())
	}
	slices.Sort(got)
	if d := cmp.Diff([]string{"[fd00:10:244:1::10]:8080", "[fd00:10:244:2::10]:8080"}, got); d != "" {
		t.Errorf("real servers of %s (-want +got):\n%s", vs6, d)
	}
	np6 := ipvs.ServiceKey{Address: netip.MustParseAddr("2001:db8::1"), Protocol: v1.ProtocolUDP, Port: 30053}
	if _, err := e.k.ListDestinations(np6); err != nil {
		t.Errorf("IPv6 node port %s: %v", np6, err)
	}
	addrs, _ := e.k.ListAddresses(ipvs.DummyInterface)
	if !slices.Contains(addrs, netip.MustParseAddr("fd00:10:96::10")) || !slices.Contains(addrs, netip.MustParseAddr("10.96.0.10")) {
		t.Errorf("addresses on %s: %v, want both cluster IPs", ipvs.DummyInterface, addrs)
	}
	if !slices.Contains(e.ipt6.Chains("filter"), ipvs.FilterChain) || !slices.Contains(e.ipt6.Chains("nat"), ipvs.ServicesChain) {
		t.Errorf("ip6tables chains: filter %v, nat %v", e.ipt6.Chains("filter"), e.ipt6.Chains("nat"))
	}
	if r := strings.Join(e.ipt6.Rules("filter", ipvs.FilterChain), "\n"); !strings.Contains(r, ipvs.SetName(ipvs.SetReject, true)) || strings.Contains(r, ipvs.SetReject+" ") {
		t.Errorf("ip6tables filter rules do not use the IPv6 sets:\n%s", r)
	}

	e.k.ResetCalls()
	if _, err := e.a.Sync(context.Background(), plan, true); err != nil {
		t.Fatalf("second Sync: %v", err)
	}
	if calls := e.k.Calls(); len(calls) != 0 {
		t.Errorf("a second full sync changed the kernel: %q", calls)
	}
}

// TestApplierDualStackEndpointChange: removing an IPv6 endpoint drains its
// TCP real servers with active connections (weight 0) and deletes its UDP
// ones at once, exactly as for IPv4, and touches nothing of IPv4.
func TestApplierDualStackEndpointChange(t *testing.T) {
	e := newEnv6(t)
	e.sync(false, web46([]pt.EP{ep1, ep2}, []pt.EP{ep6a, ep6b})...)
	rs := netip.MustParseAddrPort("[fd00:10:244:1::10]:8080")
	for _, k := range []string{"[fd00:10:96::10]:80", "[2001:db8::1]:30080"} {
		ap := netip.MustParseAddrPort(k)
		if !e.k.SetConnections(ipvs.ServiceKey{Address: ap.Addr(), Protocol: v1.ProtocolTCP, Port: ap.Port()}, rs, 1, 0) {
			t.Fatalf("no real server %s on %s", rs, k)
		}
	}
	e.k.ResetCalls()
	res := e.sync(false, web46([]pt.EP{ep1, ep2}, []pt.EP{ep6b})...)
	want := []string{
		"UpdateDestination -t [2001:db8::1]:30080 -r [fd00:10:244:1::10]:8080 -w 0",
		"DeleteDestination -u [2001:db8::1]:30053 -r [fd00:10:244:1::10]:5353",
		"UpdateDestination -t [fd00:10:96::10]:80 -r [fd00:10:244:1::10]:8080 -w 0",
		"DeleteDestination -u [fd00:10:96::10]:53 -r [fd00:10:244:1::10]:5353",
		"RestoreSets del SVCP-IPVS-6-LOOPBACK fd00:10:244:1::10,tcp:8080,fd00:10:244:1::10; del SVCP-IPVS-6-LOOPBACK fd00:10:244:1::10,udp:5353,fd00:10:244:1::10",
	}
	if d := cmp.Diff(want, e.k.Calls()); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	if res.Draining != 2 {
		t.Errorf("draining %d, want the 2 TCP real servers", res.Draining)
	}
}

// TestApplierDualStackIP6TablesFailure: when ip6tables-restore fails the
// sync fails (and the next one is full), the IPv4 rules stay in place,
// and the next sync repairs IPv6.
func TestApplierDualStackIP6TablesFailure(t *testing.T) {
	e := newEnv6(t)
	objs := web46([]pt.EP{ep1}, []pt.EP{ep6a})
	e.ipt6.FailRestoreAt(1)
	_, err := e.a.Sync(context.Background(), e.plan(objs...), false)
	if err == nil || !strings.Contains(err.Error(), "ip6tables") {
		t.Fatalf("Sync with a failing ip6tables-restore: %v, want an ip6tables error", err)
	}
	if !slices.Contains(e.ipt.Chains("nat"), ipvs.ServicesChain) {
		t.Error("IPv4 rules not programmed when ip6tables failed")
	}
	// The IPv6 service address waits for its filter rules (source ranges,
	// REJECT); the IPv4 one is live.
	addrs, _ := e.k.ListAddresses(ipvs.DummyInterface)
	if slices.Contains(addrs, netip.MustParseAddr("fd00:10:96::10")) || !slices.Contains(addrs, netip.MustParseAddr("10.96.0.10")) {
		t.Errorf("addresses after ip6tables failed: %v, want the IPv4 cluster IP only", addrs)
	}
	res := e.sync(false, objs...)
	if !res.Full {
		t.Error("the sync after a failure is not full")
	}
	if !slices.Contains(e.ipt6.Chains("nat"), ipvs.ServicesChain) {
		t.Error("IPv6 rules not repaired by the next sync")
	}
	e.inSync(e.plan(objs...))
}

// TestApplierIPv6PlanWithoutIP6Tables: a plan with IPv6 rules given to an
// Applier without ip6tables is a clear error, not a crash.
func TestApplierIPv6PlanWithoutIP6Tables(t *testing.T) {
	e := newEnv6(t)
	a := ipvs.NewApplier(e.k, e.ipt, e.opts, e.clock)
	_, err := a.Sync(context.Background(), e.plan(web46([]pt.EP{ep1}, []pt.EP{ep6a})...), false)
	if err == nil || !strings.Contains(err.Error(), "no ip6tables") {
		t.Errorf("Sync: %v, want a no-ip6tables error", err)
	}
}

// TestCleanupDualStack: Cleanup (RemoveAll) removes the IPv6 virtual
// servers, the inet6 sets and the ip6tables chains and jumps too, and
// counts what it removed (a mode switch's leftovers log used to say "No
// leftovers" while removing IPVS mode's objects).
func TestCleanupDualStack(t *testing.T) {
	e := newEnv6(t)
	plan := e.plan(web46([]pt.EP{ep1}, []pt.EP{ep6a})...)
	e.sync(false, web46([]pt.EP{ep1}, []pt.EP{ep6a})...)
	n, err := ipvs.RemoveAll(e.k, e.ipt, e.ipt6, e.opts)
	if err != nil {
		t.Fatalf("RemoveAll: %v", err)
	}
	// Every virtual server, the link and every set, counted for the log.
	if want := len(plan.Services) + 1 + len(plan.Sets); n != want {
		t.Errorf("RemoveAll counted %d removed objects, want %d", n, want)
	}
	if n, err := ipvs.RemoveAll(e.k, e.ipt, e.ipt6, e.opts); n != 0 || err != nil {
		t.Errorf("RemoveAll on a clean node: %d, %v; want 0, nil", n, err)
	}
	svcs, _ := e.k.ListServices()
	if len(svcs) != 0 {
		t.Errorf("virtual servers left: %d", len(svcs))
	}
	sets, _ := e.k.ListSets()
	for _, s := range sets {
		if ipvs.IsOwnedSet(s.Name) {
			t.Errorf("set %s left", s.Name)
		}
	}
	for _, tbl := range []string{"filter", "nat"} {
		for _, c := range e.ipt6.Chains(tbl) {
			if ipvs.IsOwnedChain(c) {
				t.Errorf("ip6tables chain %s %s left", tbl, c)
			}
		}
	}
}

// TestApplierDualStackFamiliesIndependent: an IPv6 failure (here the
// kernel refusing an IPv6 address, as on a node with IPv6 disabled) fails
// the sync but does not hold back IPv4: its endpoint removal still goes
// in; the next (full) sync repairs IPv6.
func TestApplierDualStackFamiliesIndependent(t *testing.T) {
	e := newEnv6(t)
	e.opts.GracefulTimeout = 0 // removed real servers go at once
	e.a = ipvs.NewDualStackApplier(e.k, e.ipt, e.ipt6, e.opts, e.clock)
	e.sync(false, web46([]pt.EP{ep1, ep2}, []pt.EP{ep6a})...)

	v6only := pt.Service("ns", "only6", "fd00:10:96::20", "http", 80, func(s *v1.Service) {
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
	})
	objs := append(web46([]pt.EP{ep1}, []pt.EP{ep6a}), v6only)
	e.k.FailNext("AddAddress", errors.New("permission denied"))
	_, err := e.a.Sync(context.Background(), e.plan(objs...), false)
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("Sync: %v, want the refused IPv6 address", err)
	}
	vs4 := ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80}
	ds, _ := e.k.ListDestinations(vs4)
	if len(ds) != 1 || ds[0].Address != netip.MustParseAddr("10.244.1.10") {
		t.Errorf("IPv4 real servers after the IPv6 failure: %v, want 10.244.1.10 only (the removal applied)", ds)
	}
	if res := e.sync(false, objs...); !res.Full {
		t.Error("the sync after the failure is not full")
	}
	e.inSync(e.plan(objs...))
}
