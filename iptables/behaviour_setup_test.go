package iptables_test

// Behaviour tests: Services and EndpointSlices go through the real Tracker,
// Render and Syncer into a stateful fake of the kernel tables, and a packet
// tracer walks what was applied. Tests assert what connections do, not
// what rule text says.
//
// Test address plan, shared by every behaviour_*_test.go file:
//
//	node1 (this node)       192.168.0.1    local addresses: 192.168.0.1, 172.16.0.1 (a second
//	                                       interface) and 127.0.0.0/8
//	node2                   192.168.0.2
//	cluster CIDR            10.244.0.0/16  node1 pods 10.244.1.0/24, node2 pods 10.244.2.0/24
//	client pod on node1     10.244.1.5
//	client pod on node2     10.244.2.5
//	outside client          203.0.113.7
//	allowed LB client       198.51.100.9   inside loadBalancerSourceRanges 198.51.100.0/24
//	service CIDR            10.96.0.0/16   10.96.0.x ClusterIP tests, 10.96.1.x NodePort, 10.96.2.x external,
//	                                       10.96.3.x and 10.96.131.x many services, 10.96.200.1 deep tree
//	                                       (with its variants in every nibble, even outside 10.96/16)
//	external IPs            192.0.2.10-19
//	load-balancer IPs       192.0.2.100-109
//	endpoints               10.244.1.x on node1, 10.244.2.x on node2, all on port 8080
//	node ports              30000-32767
//
// Every service has one TCP port named "http": port 80 unless said
// otherwise, target port 8080.

import (
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/proxy"
)

const (
	thisNode  = "node1"
	otherNode = "node2"
	testNS    = "ns"
	epPort    = 8080
)

var nodeAddrs = []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("172.16.0.1")}

// client is a source class: where a connection comes from.
type client struct {
	name  string
	ip    string
	local bool // the node itself
}

var (
	podHere    = client{"pod on node1", "10.244.1.5", false}
	podThere   = client{"pod on node2", "10.244.2.5", false}
	node       = client{"node1 itself", "192.168.0.1", true}
	outsider   = client{"outside client", "203.0.113.7", false}
	allowedSrc = client{"allowed LB client", "198.51.100.9", false}
)

// Readable booleans for reach.
const (
	masq   = true
	noMasq = false
)

// reach is the outcome "accepted, DNATed to one of eps".
func reach(masquerade bool, eps ...string) []string {
	out := make([]string, 0, len(eps))
	for _, ep := range eps {
		o := iptablestest.Outcome{Verdict: iptablestest.Accept, DNAT: netip.MustParseAddrPort(ep), Masquerade: masquerade}
		out = append(out, o.String())
	}
	return out
}

var (
	dropped   = []string{"DROP"}
	rejected  = []string{"REJECT"}
	untouched = []string{"ACCEPT"} // accepted, neither DNATed nor masqueraded
)

// --- objects ---

type svcMod func(*v1.Service)

// service returns Service ns/name with one TCP port "http" (port -> 8080).
func service(name, clusterIP string, port int32, mods ...svcMod) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{
				Name: "http", Port: port, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(epPort),
			}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func nodePort(np int32) svcMod {
	return func(s *v1.Service) {
		if s.Spec.Type == v1.ServiceTypeClusterIP {
			s.Spec.Type = v1.ServiceTypeNodePort
		}
		s.Spec.Ports[0].NodePort = np
	}
}

func externalIPs(ips ...string) svcMod {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

func loadBalancer(ip string, sourceRanges ...string) svcMod {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = sourceRanges
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
	}
}

func etpLocal(s *v1.Service) {
	s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
}

func itpLocal(s *v1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
}

func affinity(seconds int32) svcMod {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(seconds)}}
	}
}

func udp(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolUDP }

// ep is one endpoint of a slice.
type ep struct {
	ip, node                    string
	ready, serving, terminating bool
}

func ready(ip, node string) ep       { return ep{ip: ip, node: node, ready: true, serving: true} }
func terminating(ip, node string) ep { return ep{ip: ip, node: node, serving: true, terminating: true} }
func notServing(ip, node string) ep  { return ep{ip: ip, node: node, terminating: true} }

// slice returns the EndpointSlice of svc (one slice, named after it) with
// eps, serving every port of svc on port 8080.
func slice(svc *v1.Service, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace, Name: svc.Name + "-abcde",
			Labels: map[string]string{discovery.LabelServiceName: svc.Name},
		},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, p := range svc.Spec.Ports {
		s.Ports = append(s.Ports, discovery.EndpointPort{
			Name: ptr.To(p.Name), Port: ptr.To[int32](epPort), Protocol: ptr.To(p.Protocol),
		})
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses: []string{e.ip},
			NodeName:  ptr.To(e.node),
			Conditions: discovery.EndpointConditions{
				Ready: ptr.To(e.ready), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminating),
			},
		})
	}
	return s
}

// --- environment ---

// env is node1's svcproxy in iptables mode on a fake kernel.
type env struct {
	t        testing.TB
	tracker  *proxy.Tracker
	fake     *iptablestest.Fake
	syncer   *iptables.Syncer
	opts     iptables.Options
	renderer *iptables.Renderer
	plan     *iptables.Plan
}

func testOpts() iptables.Options {
	o := iptables.DefaultOptions()
	o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	return o
}

// newEnv feeds objs (*v1.Service, *discovery.EndpointSlice) to a tracker
// for node1 and does a full sync into a new Fake, with testOpts.
func newEnv(t testing.TB, objs ...any) *env {
	t.Helper()
	return newEnvWith(t, testOpts(), 0, objs...)
}

// newEnvWith is newEnv with render options and the Syncer's batch size.
func newEnvWith(t testing.TB, opts iptables.Options, batchChains int, objs ...any) *env {
	t.Helper()
	e := &env{t: t, tracker: proxy.NewTracker(thisNode, nil, nil), fake: iptablestest.NewFake(), opts: opts}
	e.syncer = iptables.NewSyncer(e.fake, batchChains)
	e.renderer = iptables.NewRenderer(opts)
	e.add(objs...)
	e.sync(true)
	return e
}

// scenario is a set of objects and what connections do once they are
// programmed. Scenarios use disjoint addresses and node ports, so that they
// also hold all together (TestBehaviourAllTogether).
type scenario struct {
	objs  []any
	flows []flow
	check func(t *testing.T, e *env) // more assertions; may be nil
}

func (s scenario) run(t *testing.T) {
	e := newEnv(t, s.objs...)
	e.checkFlows(t, s.flows)
	if s.check != nil {
		s.check(t, e)
	}
}

// add feeds objects to the tracker as adds or updates; it does not sync.
func (e *env) add(objs ...any) {
	e.t.Helper()
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			e.tracker.OnServiceUpdate(nil, o)
		case *discovery.EndpointSlice:
			e.tracker.OnEndpointSliceUpdate(nil, o)
		default:
			e.t.Fatalf("unexpected object %T", o)
		}
	}
}

// sync renders the tracker's snapshot with the caching Renderer (checking
// that it agrees with Render), syncs it into the Fake and checks that the
// Fake now holds exactly the plan's chains.
func (e *env) sync(full bool) iptables.SyncResult {
	e.t.Helper()
	snap, _ := e.tracker.Snapshot()
	e.plan = e.renderer.Render(snap)
	if diff := cmp.Diff(iptables.Render(snap, e.opts), e.plan); diff != "" {
		e.t.Errorf("Renderer and Render disagree (-Render +Renderer):\n%s", diff)
	}
	res, err := e.syncer.Sync(e.plan, full)
	if err != nil {
		e.t.Fatalf("Sync: %v", err)
	}
	e.checkApplied()
	return res
}

// checkApplied asserts that every chain of the plan is in the Fake with
// exactly its rules, and no other chain of ours is.
func (e *env) checkApplied() {
	e.t.Helper()
	for _, tbl := range e.plan.Tables() {
		var want []string
		for _, c := range tbl.Chains {
			want = append(want, c.Name)
			if diff := cmp.Diff(c.Rules, e.fake.Rules(tbl.Name, c.Name), cmpopts.EquateEmpty()); diff != "" {
				e.t.Errorf("%s/%s in the Fake differs from the plan (-plan +fake):\n%s", tbl.Name, c.Name, diff)
			}
		}
		slices.Sort(want)
		got := ownedChains(e.fake, tbl.Name)
		if diff := cmp.Diff(want, got); diff != "" {
			e.t.Errorf("chains of ours in %s (-plan +fake):\n%s", tbl.Name, diff)
		}
	}
}

func ownedChains(f *iptablestest.Fake, table string) []string {
	var out []string
	for _, c := range f.Chains(table) {
		if iptables.IsOwnedChain(c) {
			out = append(out, c)
		}
	}
	return out
}

// packet builds the first packet of a connection from c to dst ("ip:port").
func packet(c client, dst, proto string) iptablestest.Packet {
	ap := netip.MustParseAddrPort(dst)
	if proto == "" {
		proto = "tcp"
	}
	return iptablestest.Packet{
		SrcIP: netip.MustParseAddr(c.ip), DstIP: ap.Addr(), Proto: proto, DstPort: int(ap.Port()),
		SrcLocal: c.local, LocalAddrs: nodeAddrs,
	}
}

// trace returns the possible outcomes as sorted strings.
func (e *env) trace(t testing.TB, c client, dst, proto string) []string {
	t.Helper()
	outs, err := e.fake.Trace(packet(c, dst, proto))
	if err != nil {
		t.Fatalf("Trace %s -> %s: %v", c.name, dst, err)
	}
	got := make([]string, 0, len(outs))
	for _, o := range outs {
		got = append(got, o.String())
	}
	slices.Sort(got)
	return got
}

// connect makes one connection from c to dst really happen (see
// iptablestest.Fake.Connect: pick in [0, 1) chooses among the random
// branches, and the connection's effects on the xt_recent lists stay) and
// returns the endpoint it was DNATed to, "" if none.
func (e *env) connect(t testing.TB, c client, dst, proto string, pick float64) string {
	t.Helper()
	if proto == "" {
		proto = "tcp"
	}
	p, err := e.fake.Connect(packet(c, dst, proto), pick)
	if err != nil {
		t.Fatalf("Connect %s -> %s: %v", c.name, dst, err)
	}
	if !p.DNAT.IsValid() {
		return ""
	}
	return p.DNAT.String()
}

// flow is one connection and what may become of it.
type flow struct {
	name  string
	from  client
	to    string // "ip:port"
	proto string // "" means tcp
	want  []string
}

// checkFlows traces every flow; on a mismatch it prints every path.
func (e *env) checkFlows(t *testing.T, flows []flow) {
	t.Helper()
	for _, tc := range flows {
		t.Run(tc.name, func(t *testing.T) {
			got := e.trace(t, tc.from, tc.to, tc.proto)
			want := slices.Sorted(slices.Values(tc.want))
			if diff := cmp.Diff(want, got); diff != "" {
				paths, _ := e.fake.Explain(packet(tc.from, tc.to, tc.proto))
				var b strings.Builder
				for _, p := range paths {
					b.WriteString(p.String())
					b.WriteString("\n")
				}
				t.Errorf("%s -> %s: outcomes (-want +got):\n%s\npaths:\n%s", tc.from.name, tc.to, diff, b.String())
				return
			}
			e.checkBalanced(t, packet(tc.from, tc.to, tc.proto))
		})
	}
}

// checkBalanced asserts that a connection that is always DNATed picks each
// of its endpoints with the same probability.
func (e *env) checkBalanced(t *testing.T, p iptablestest.Packet) {
	t.Helper()
	paths, err := e.fake.Explain(p)
	if err != nil {
		t.Fatal(err)
	}
	byEndpoint := map[netip.AddrPort]float64{}
	for _, p := range paths {
		if !p.DNAT.IsValid() {
			return
		}
		byEndpoint[p.DNAT] += p.Probability
	}
	for ep, prob := range byEndpoint {
		if want := 1 / float64(len(byEndpoint)); math.Abs(prob-want) > 1e-6 {
			t.Errorf("endpoint %v is chosen with probability %.6f, want %.6f", ep, prob, want)
		}
	}
}

// chainFor returns the name of the nat chain of ours with the given prefix
// whose rules carry the comment of service port ns/name:http, or fails.
func chainFor(t testing.TB, p *iptables.Plan, prefix, svcName string) string {
	t.Helper()
	cmt := `"` + testNS + "/" + svcName + ":http "
	for _, c := range p.NAT {
		if strings.HasPrefix(c.Name, prefix) && len(c.Rules) > 0 && strings.Contains(c.Rules[0], cmt) {
			return c.Name
		}
	}
	t.Fatalf("no %s* chain for %s in the plan", prefix, svcName)
	return ""
}

// TestBehaviourAllTogether programs every scenario at once: services must
// not disturb each other (shared trees, filter rules, hairpin rules).
func TestBehaviourAllTogether(t *testing.T) {
	var all scenario
	var checks []func(*testing.T, *env)
	for _, s := range []struct {
		name string
		s    scenario
	}{
		{"clusterIP", clusterIPScenario()},
		{"noEndpoints", noEndpointsScenario()},
		{"itpLocal", itpLocalScenario()},
		{"terminating", terminatingScenario()},
		{"affinity", affinityScenario()},
		{"hairpin", hairpinScenario()},
		{"nodePort", nodePortScenario()},
		{"externalIP", externalIPScenario()},
		{"loadBalancer", loadBalancerScenario()},
		{"manyServices", manyServicesScenario()},
		{"deepTree", deepTreeScenario()},
	} {
		all.objs = append(all.objs, s.s.objs...)
		for _, f := range s.s.flows {
			f.name = s.name + "/" + f.name
			all.flows = append(all.flows, f)
		}
		if s.s.check != nil {
			checks = append(checks, s.s.check)
		}
	}
	all.check = func(t *testing.T, e *env) {
		for _, c := range checks {
			c(t, e)
		}
	}
	all.run(t)
}
