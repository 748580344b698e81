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
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// The address plan is the one in render_test.go.

func options() ipvs.Options {
	o := ipvs.DefaultOptions()
	o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	o.NodeAddresses = []netip.Addr{netip.MustParseAddr("192.168.0.1")}
	return o
}

func snapshot(t testing.TB, objs ...any) *proxy.Snapshot {
	t.Helper()
	tr := proxy.NewTracker("node1", nil, nil)
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			tr.OnServiceUpdate(nil, o)
		case *discovery.EndpointSlice:
			tr.OnEndpointSliceUpdate(nil, o)
		}
	}
	snap, _ := tr.Snapshot()
	return snap
}

// env is an Applier on fakes.
type env struct {
	t     *testing.T
	k     *ipvstest.Fake
	ipt   *iptablestest.Fake
	clock *clocktesting.FakePassiveClock
	a     *ipvs.Applier
	opts  ipvs.Options
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, k: ipvstest.NewFake(), ipt: iptablestest.NewFake(), clock: clocktesting.NewFakePassiveClock(time.Unix(1e9, 0)), opts: options()}
	// One fake kernel: the iptables rules match the ipsets, which cannot
	// be destroyed while a rule uses them.
	if err := e.k.UseIPTables(e.ipt); err != nil {
		t.Fatal(err)
	}
	e.a = ipvs.NewApplier(e.k, e.ipt, e.opts, e.clock)
	return e
}

func (e *env) plan(objs ...any) *ipvs.Plan { return ipvs.Render(snapshot(e.t, objs...), e.opts) }

func (e *env) sync(full bool, objs ...any) ipvs.SyncResult {
	e.t.Helper()
	res, err := e.a.Sync(context.Background(), e.plan(objs...), full)
	if err != nil {
		e.t.Fatalf("Sync: %v", err)
	}
	return res
}

// inSync checks that the fake kernel holds exactly what plan says.
func (e *env) inSync(plan *ipvs.Plan) {
	e.t.Helper()
	st, err := ipvs.ListState(e.k, plan, e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	if c := ipvs.Diff(plan, st); !c.Empty() {
		e.t.Errorf("kernel differs from the plan: %v", c.Strings())
	}
}

func web(eps ...pt.EP) []any {
	return []any{
		pt.Service("ns", "web", "10.96.0.10", "http", 80, func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
		}),
		pt.Slice("ns", "web", "web-1", "http", 8080, eps...),
	}
}

var (
	ep1 = pt.Ready("10.244.1.10", "node1")
	ep2 = pt.Ready("10.244.2.10", "node2")
	ep3 = pt.Ready("10.244.2.11", "node2")
)

func TestApplierFirstSync(t *testing.T) {
	e := newEnv(t)
	res := e.sync(false, web(ep1, ep2)...)
	if !res.Full {
		t.Error("first sync not full")
	}
	e.inSync(e.plan(web(ep1, ep2)...))
	want := map[string]string{
		"net/ipv4/vs/conntrack": "1", "net/ipv4/vs/expire_nodest_conn": "1", "net/ipv4/vs/expire_quiescent_template": "1",
		"net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2",
		"net/ipv4/vs/conn_reuse_mode": "1", // kernel >= 5.9: left as is
	}
	got := e.k.Sysctls()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("sysctl %s = %q, want %q", k, got[k], v)
		}
	}
	if k := e.k.Link(ipvs.DummyInterface); k != "dummy" {
		t.Errorf("link %s: kind %q, want dummy", ipvs.DummyInterface, k)
	}
	for _, c := range []string{ipvs.FilterChain, ipvs.ForwardChain} {
		if !slices.Contains(e.ipt.Chains("filter"), c) {
			t.Errorf("filter chain %s missing", c)
		}
	}
	if !strings.Contains(strings.Join(e.ipt.Rules("nat", "PREROUTING"), "\n"), ipvs.ServicesChain) {
		t.Errorf("no jump to %s in PREROUTING: %v", ipvs.ServicesChain, e.ipt.Rules("nat", "PREROUTING"))
	}
}

// TestApplierNoChange: a second sync, partial or full, changes nothing in
// the kernel; a partial one does not even list it.
func TestApplierNoChange(t *testing.T) {
	e := newEnv(t)
	e.sync(false, web(ep1, ep2)...)
	e.k.ResetCalls()
	e.k.FailNext("ListServices", errors.New("a partial sync must not list"))
	if res := e.sync(false, web(ep1, ep2)...); res.Added+res.Removed != 0 || res.Full {
		t.Errorf("partial sync: %+v", res)
	}
	e.k.FailNext("ListServices", nil) // consume
	if res := e.sync(true, web(ep1, ep2)...); res.Added+res.Removed != 0 {
		t.Errorf("full sync: %+v", res)
	}
	if calls := e.k.Calls(); len(calls) != 0 {
		t.Errorf("kernel calls on syncs without change: %v", calls)
	}
}

// TestApplierEndpointChange: exactly the operations of the change.
func TestApplierEndpointChange(t *testing.T) {
	e := newEnv(t)
	e.opts.GracefulTimeout = 0 // delete at once: see TestApplierGraceful
	e.a = ipvs.NewApplier(e.k, e.ipt, e.opts, e.clock)
	e.sync(false, web(ep1, ep2)...)
	e.k.ResetCalls()
	e.sync(false, web(ep2, ep3)...)
	want := []string{
		"AddDestination -t 10.96.0.10:80 -r 10.244.2.11:8080 -w 1",
		"AddDestination -t 192.168.0.1:30080 -r 10.244.2.11:8080 -w 1",
		"DeleteDestination -t 10.96.0.10:80 -r 10.244.1.10:8080",
		"DeleteDestination -t 192.168.0.1:30080 -r 10.244.1.10:8080",
		"RestoreSets del SVCP-IPVS-LOOPBACK 10.244.1.10,tcp:8080,10.244.1.10",
	}
	if d := cmp.Diff(want, e.k.Calls()); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	e.inSync(e.plan(web(ep2, ep3)...))
}

func TestApplierGraceful(t *testing.T) {
	e := newEnv(t)
	vsKey := ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80}
	npKey := ipvs.ServiceKey{Address: netip.MustParseAddr("192.168.0.1"), Protocol: v1.ProtocolTCP, Port: 30080}
	rs1 := netip.MustParseAddrPort("10.244.1.10:8080")
	weightOf := func(k ipvs.ServiceKey) map[string]int {
		ds, err := e.k.ListDestinations(k)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int{}
		for _, d := range ds {
			m[d.AddrPort().String()] = d.Weight
		}
		return m
	}
	e.sync(false, web(ep1, ep2)...)
	e.k.SetConnections(vsKey, rs1, 2, 0)
	e.k.SetConnections(npKey, rs1, 1, 0)

	// Removed: weight 0, kept while connections are active.
	res := e.sync(false, web(ep2)...)
	if res.Draining != 2 || res.Drained != 0 {
		t.Errorf("after removal: %+v, want 2 draining", res)
	}
	if d := cmp.Diff(map[string]int{"10.244.1.10:8080": 0, "10.244.2.10:8080": 1}, weightOf(vsKey)); d != "" {
		t.Errorf("weights (-want +got):\n%s", d)
	}
	// A full sync (which lists the kernel) keeps draining, too.
	e.k.ResetCalls()
	if res := e.sync(true, web(ep2)...); res.Draining != 2 || len(e.k.Calls()) != 0 {
		t.Errorf("full sync while draining: %+v, calls %v", res, e.k.Calls())
	}

	// The cluster IP's connections end: deleted at the next sync; the node
	// port's one outlives the timeout: deleted then.
	e.k.SetConnections(vsKey, rs1, 0, 3)
	res = e.sync(false, web(ep2)...)
	if res.Drained != 1 || res.Draining != 1 {
		t.Errorf("after connections ended: %+v, want 1 drained, 1 draining", res)
	}
	if _, ok := weightOf(vsKey)["10.244.1.10:8080"]; ok {
		t.Error("drained real server not deleted")
	}
	e.clock.SetTime(e.clock.Now().Add(e.opts.GracefulTimeout))
	res = e.sync(false, web(ep2)...)
	if res.Drained != 1 || res.Draining != 0 {
		t.Errorf("after the timeout: %+v, want 1 drained, none left", res)
	}
	e.inSync(e.plan(web(ep2)...))
}

// TestApplierGracefulComeback: an endpoint that returns while draining gets
// its weight back and is not deleted later.
func TestApplierGracefulComeback(t *testing.T) {
	e := newEnv(t)
	vsKey := ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80}
	e.sync(false, web(ep1, ep2)...)
	e.k.SetConnections(vsKey, netip.MustParseAddrPort("10.244.1.10:8080"), 1, 0)
	e.sync(false, web(ep2)...)
	e.k.ResetCalls()
	res := e.sync(false, web(ep1, ep2)...)
	if res.Draining != 0 {
		t.Errorf("draining after the endpoint came back: %d", res.Draining)
	}
	calls := strings.Join(e.k.Calls(), "\n")
	if !strings.Contains(calls, "UpdateDestination -t 10.96.0.10:80 -r 10.244.1.10:8080 -w 1") || strings.Contains(calls, "Delete") {
		t.Errorf("calls: %s", calls)
	}
	e.inSync(e.plan(web(ep1, ep2)...))
}

// TestApplierUDPNotDrained: UDP real servers go at once.
func TestApplierUDPNotDrained(t *testing.T) {
	e := newEnv(t)
	objs := func(eps ...pt.EP) []any {
		s := pt.Slice("ns", "dns", "dns-1", "dns", 53, eps...)
		p := v1.ProtocolUDP
		s.Ports[0].Protocol = &p
		return []any{pt.Service("ns", "dns", "10.96.0.53", "dns", 53, func(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolUDP }), s}
	}
	e.sync(false, objs(ep1, ep2)...)
	e.k.SetConnections(ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.0.53"), Protocol: v1.ProtocolUDP, Port: 53}, netip.MustParseAddrPort("10.244.1.10:53"), 1, 1)
	if res := e.sync(false, objs(ep2)...); res.Draining != 0 {
		t.Errorf("UDP draining: %+v", res)
	}
	e.inSync(e.plan(objs(ep2)...))
}

// TestApplierOnlyOurs: a restarted Applier finds the kernel as its
// predecessor left it, changes nothing, removes stale objects of ours and
// leaves everyone else's alone: virtual servers on other addresses or on
// node addresses outside the node-port range, other links, sets and chains.
func TestApplierOnlyOurs(t *testing.T) {
	e := newEnv(t)
	e.sync(false, append(web(ep1), pt.Service("ns", "old", "10.96.0.99", "p", 81, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30099
	}))...)
	foreign := []*ipvs.VirtualServer{
		{ServiceKey: ipvs.ServiceKey{Address: netip.MustParseAddr("192.168.0.1"), Protocol: v1.ProtocolTCP, Port: 80}, Scheduler: "wlc"},
		{ServiceKey: ipvs.ServiceKey{Address: netip.MustParseAddr("172.17.0.1"), Protocol: v1.ProtocolTCP, Port: 30080}, Scheduler: "rr"},
	}
	for _, vs := range foreign {
		if err := e.k.AddService(vs); err != nil {
			t.Fatal(err)
		}
	}
	e.k.AddLink("eth0", "veth")
	if err := e.k.RestoreSets([]byte("create KUBE-CLUSTER-IP hash:ip,port\nadd KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n")); err != nil {
		t.Fatal(err)
	}
	if err := e.ipt.Restore([]byte("*nat\n:SVCP-SERVICES - [0:0]\n-A SVCP-SERVICES -j RETURN\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}

	e.a = ipvs.NewApplier(e.k, e.ipt, e.opts, e.clock) // a restart
	e.k.ResetCalls()
	e.sync(false, web(ep1)...)
	want := []string{
		"DeleteAddress 10.96.0.99 svcproxy-ipvs0",
		"DeleteService -t 10.96.0.99:81",
		"DeleteService -t 192.168.0.1:30099",
		"RestoreSets del SVCP-IPVS-IPS 10.96.0.99; del SVCP-IPVS-CLUSTER-IP 10.96.0.99,tcp:81; del SVCP-IPVS-NODE-PORT 192.168.0.1,tcp:30099; " +
			"del SVCP-IPVS-REJECT 10.96.0.99,tcp:81; del SVCP-IPVS-REJECT 192.168.0.1,tcp:30099",
	}
	if d := cmp.Diff(want, e.k.Calls()); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	for _, vs := range foreign {
		if _, err := e.k.ListDestinations(vs.ServiceKey); err != nil {
			t.Errorf("foreign virtual server %s: %v", vs.ServiceKey, err)
		}
	}
	if e.k.Link("eth0") == "" {
		t.Error("foreign link deleted")
	}
	if _, ok := e.k.SetEntries("KUBE-CLUSTER-IP"); !ok {
		t.Error("foreign set deleted")
	}
	for _, c := range []string{"SVCP-SERVICES", "KUBE-SERVICES"} {
		if !slices.Contains(e.ipt.Chains("nat"), c) {
			t.Errorf("chain %s of someone else deleted", c)
		}
	}
}

// TestApplierFailure: a failed operation fails the sync, the others are
// still applied, nothing is removed, and the next sync (full) repairs.
func TestApplierFailure(t *testing.T) {
	e := newEnv(t)
	e.opts.GracefulTimeout = 0
	e.a = ipvs.NewApplier(e.k, e.ipt, e.opts, e.clock)
	e.sync(false, web(ep1)...)
	e.k.FailNext("AddDestination", errors.New("injected"))
	_, err := e.a.Sync(context.Background(), e.plan(web(ep2, ep3)...), false)
	if err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("Sync: %v, want the injected error", err)
	}
	ds, _ := e.k.ListDestinations(ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80})
	if len(ds) != 2 {
		t.Errorf("after the failed sync: %d real servers, want 2 (one added, the old one kept)", len(ds))
	}
	if res := e.sync(false, web(ep2, ep3)...); !res.Full {
		t.Error("sync after a failure not full")
	}
	e.inSync(e.plan(web(ep2, ep3)...))
}

// TestApplierRequiredSysctl: without net/ipv4/vs/conntrack nothing is
// programmed (IPVS traffic could not be masqueraded).
func TestApplierRequiredSysctl(t *testing.T) {
	e := newEnv(t)
	e.k.FailNext("SetSysctl", errors.New("read-only file system"))
	if _, err := e.a.Sync(context.Background(), e.plan(web(ep1)...), false); err == nil || !strings.Contains(err.Error(), "net/ipv4/vs/conntrack") {
		t.Fatalf("Sync: %v, want an error about net/ipv4/vs/conntrack", err)
	}
	if calls := e.k.Calls(); len(calls) != 1 {
		t.Errorf("calls: %v, want only the failed sysctl", calls)
	}
	e.sync(false, web(ep1)...)
}

func TestCleanup(t *testing.T) {
	e := newEnv(t)
	e.sync(false, web(ep1, ep2)...)
	foreign := &ipvs.VirtualServer{ServiceKey: ipvs.ServiceKey{Address: netip.MustParseAddr("192.168.0.1"), Protocol: v1.ProtocolTCP, Port: 22}, Scheduler: "rr"}
	if err := e.k.AddService(foreign); err != nil {
		t.Fatal(err)
	}
	if err := e.k.RestoreSets([]byte("create OTHER hash:ip\n")); err != nil {
		t.Fatal(err)
	}
	if err := e.ipt.Restore([]byte("*filter\n:SVCP-FILTER - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := ipvs.Cleanup(e.k, e.ipt, nil, e.opts); err != nil {
		t.Fatal(err)
	}
	svcs, _ := e.k.ListServices()
	if len(svcs) != 1 || svcs[0].ServiceKey != foreign.ServiceKey {
		t.Errorf("virtual servers left: %v, want only %v", svcs, foreign.ServiceKey)
	}
	sets, _ := e.k.ListSets()
	if len(sets) != 1 || sets[0].Name != "OTHER" {
		t.Errorf("sets left: %v", sets)
	}
	if e.k.Link(ipvs.DummyInterface) != "" {
		t.Error("dummy link left")
	}
	for _, tbl := range []string{"filter", "nat"} {
		for _, c := range e.ipt.Chains(tbl) {
			if ipvs.IsOwnedChain(c) {
				t.Errorf("chain %s left", c)
			}
		}
	}
	if !slices.Contains(e.ipt.Chains("filter"), "SVCP-FILTER") {
		t.Error("iptables mode's chain removed")
	}
	// Twice is fine.
	if err := ipvs.Cleanup(e.k, e.ipt, nil, e.opts); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

// TestCleanupWithoutIPVS: on a host that never ran IPVS mode (no ip_vs
// loaded), Cleanup succeeds without touching IPVS.
func TestCleanupWithoutIPVS(t *testing.T) {
	k, ipt := ipvstest.NewFake(), iptablestest.NewFake()
	k.NoIPVS = true
	if err := k.UseIPTables(ipt); err != nil {
		t.Fatal(err)
	}
	if err := ipvs.Cleanup(k, ipt, nil, options()); err != nil {
		t.Fatal(err)
	}
}

// TestScenariosApply programs every shared scenario (testdata/scenarios,
// whose rendering TestGoldenScenarios pins) into the wired fake kernel,
// which refuses what the kernel refuses, then checks that the kernel holds
// exactly the plan, that a second full sync changes nothing, and that
// Cleanup leaves nothing of ours, sets included.
func TestScenariosApply(t *testing.T) {
	for _, sc := range pt.Scenarios(t, "../testdata/scenarios", "ipvs") {
		t.Run(sc.Name, func(t *testing.T) {
			e := newEnv(t)
			plan := ipvs.Render(sc.Snapshot(t), e.opts)
			if _, err := e.a.Sync(context.Background(), plan, true); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			e.inSync(plan)
			e.k.ResetCalls()
			if _, err := e.a.Sync(context.Background(), plan, true); err != nil {
				t.Fatalf("second Sync: %v", err)
			}
			if calls := e.k.Calls(); len(calls) != 0 {
				t.Errorf("a second full sync of the same plan changed the kernel: %q", calls)
			}
			if err := ipvs.Cleanup(e.k, e.ipt, nil, e.opts); err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			sets, _ := e.k.ListSets()
			for _, s := range sets {
				if ipvs.IsOwnedSet(s.Name) {
					t.Errorf("set %s left after Cleanup", s.Name)
				}
			}
		})
	}
}
