package nftables

// Behaviour tests: Services and EndpointSlices go through the real
// Tracker, Renderer and Syncer into the (strict) knftables Fake, and the
// tracer (trace_test.go) walks what was programmed. The tests assert what
// connections do, the same flows as iptables mode's behaviour tests.
//
// Address plan (iptables mode's):
//
//	node1 (this node)  192.168.0.1, 172.16.0.1, 127.0.0.0/8
//	cluster CIDR       10.244.0.0/16: node1 pods 10.244.1.0/24, node2 pods 10.244.2.0/24
//	client pods        10.244.1.5 (node1), 10.244.2.5 (node2)
//	outside clients    203.0.113.7; 198.51.100.9 inside loadBalancerSourceRanges 198.51.100.0/24
//	services           10.96.0.x ClusterIP, 10.96.1.x NodePort, 10.96.2.x external
//	external IPs       192.0.2.10-19, load-balancer IPs 192.0.2.100-109
//	endpoints          port 8080

import (
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

const (
	thisNode  = "node1"
	otherNode = "node2"
)

var nodeAddrs = []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("172.16.0.1")}

// client is where a connection comes from.
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

const (
	masq   = true
	noMasq = false
)

// reach is the outcome "accepted, DNATed to one of eps".
func reach(masquerade bool, eps ...string) []string {
	var out []string
	for _, ep := range eps {
		out = append(out, outcome{verdict: "accept", dnat: netip.MustParseAddrPort(ep), masq: masquerade}.String())
	}
	return out
}

var (
	dropped   = []string{"DROP"}
	rejected  = []string{"REJECT"}
	untouched = []string{"ACCEPT"}
)

type svcMod = func(*v1.Service)

// service returns Service ns/name with one TCP port "http" (port -> 8080).
func service(name, clusterIP string, port int32, mods ...svcMod) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "http", Port: port, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func externalIPs(ips ...string) svcMod { return func(s *v1.Service) { s.Spec.ExternalIPs = ips } }

func loadBalancer(ip string, sourceRanges ...string) svcMod {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = sourceRanges
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
	}
}

func etpLocal(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }
func itpLocal(s *v1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
}
func udp(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolUDP }

type ep struct {
	ip, node                    string
	ready, serving, terminating bool
}

func ready(ip, node string) ep       { return ep{ip: ip, node: node, ready: true, serving: true} }
func terminating(ip, node string) ep { return ep{ip: ip, node: node, serving: true, terminating: true} }
func notServing(ip, node string) ep  { return ep{ip: ip, node: node, terminating: true} }

// slice returns the EndpointSlice of svc with eps on port 8080.
func slice(svc *v1.Service, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: svc.Namespace, Name: svc.Name + "-abcde", Labels: map[string]string{discovery.LabelServiceName: svc.Name}},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, p := range svc.Spec.Ports {
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To(p.Name), Port: ptr.To[int32](8080), Protocol: ptr.To(p.Protocol)})
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses: []string{e.ip}, NodeName: ptr.To(e.node),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(e.ready), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminating)},
		})
	}
	return s
}

// flow is one connection and what may become of it.
type flow struct {
	name  string
	from  client
	to    string // ip:port
	proto string // "" is tcp
	want  []string
}

type scenario struct {
	objs  []any
	flows []flow
	check func(t *testing.T, c *cluster)
}

func (s scenario) run(t *testing.T) {
	c := newCluster(t, s.objs...)
	c.sync(true)
	c.checkFlows(t, s.flows)
	if s.check != nil {
		s.check(t, c)
	}
}

func packetOf(from client, to, proto string) tracePacket {
	ap := netip.MustParseAddrPort(to)
	if proto == "" {
		proto = "tcp"
	}
	return tracePacket{src: netip.MustParseAddr(from.ip), dst: ap.Addr(), dport: int(ap.Port()), proto: proto, fromNode: from.local}
}

func (c *cluster) tracer() *tracer {
	return newTracer(c.fake.Fake, knftables.IPv4Family, nodeAddrs)
}

func (c *cluster) checkFlows(t *testing.T, flows []flow) {
	t.Helper()
	tr := c.tracer()
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			p := packetOf(f.from, f.to, f.proto)
			got, err := tr.outcomes(p)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(slices.Sorted(slices.Values(f.want)), got); d != "" {
				t.Errorf("%s -> %s: outcomes (-want +got):\n%s", f.from.name, f.to, d)
				return
			}
			checkBalanced(t, tr, p)
		})
	}
}

// checkBalanced asserts that a connection that is always DNATed picks
// each endpoint with the same probability.
func checkBalanced(t *testing.T, tr *tracer, p tracePacket) {
	t.Helper()
	paths, err := tr.trace(p)
	if err != nil {
		t.Fatal(err)
	}
	by := map[netip.AddrPort]float64{}
	total := 0.0
	for _, pa := range paths {
		total += pa.prob
		if !pa.outcome.dnat.IsValid() {
			return
		}
		by[pa.outcome.dnat] += pa.prob
	}
	if math.Abs(total-1) > 1e-9 {
		t.Errorf("paths' probabilities sum to %v", total)
	}
	for ep, prob := range by {
		if want := 1 / float64(len(by)); math.Abs(prob-want) > 1e-9 {
			t.Errorf("endpoint %v is chosen with probability %.6f, want %.6f", ep, prob, want)
		}
	}
}

func TestBehaviourClusterIP(t *testing.T) {
	web := service("web", "10.96.0.10", 80)
	dns := service("dns", "10.96.0.11", 53, udp)
	all := []string{"10.244.1.10:8080", "10.244.2.10:8080", "10.244.2.11:8080"}
	scenario{objs: []any{
		web, slice(web, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode), ready("10.244.2.11", otherNode)),
		dns, slice(dns, ready("10.244.1.11", thisNode), ready("10.244.2.12", otherNode)),
	}, flows: []flow{
		{name: "pod on node1 reaches every endpoint", from: podHere, to: "10.96.0.10:80", want: reach(noMasq, all...)},
		{name: "pod on node2 reaches every endpoint", from: podThere, to: "10.96.0.10:80", want: reach(noMasq, all...)},
		{name: "node reaches every endpoint, masqueraded", from: node, to: "10.96.0.10:80", want: reach(masq, all...)},
		{name: "outside client reaches every endpoint, masqueraded", from: outsider, to: "10.96.0.10:80", want: reach(masq, all...)},
		{name: "udp service from a pod", from: podHere, to: "10.96.0.11:53", proto: "udp", want: reach(noMasq, "10.244.1.11:8080", "10.244.2.12:8080")},
		{name: "udp service from the node", from: node, to: "10.96.0.11:53", proto: "udp", want: reach(masq, "10.244.1.11:8080", "10.244.2.12:8080")},
		{name: "wrong protocol is not a service", from: podHere, to: "10.96.0.11:53", proto: "tcp", want: untouched},
		{name: "wrong port is not a service", from: podHere, to: "10.96.0.10:81", want: untouched},
		{name: "unallocated cluster IP is not a service", from: podHere, to: "10.96.0.99:80", want: untouched},
		{name: "node port of a ClusterIP service does not exist", from: outsider, to: "192.168.0.1:80", want: untouched},
		{name: "pod to pod passes", from: podHere, to: "10.244.2.10:8080", want: untouched},
	}}.run(t)
}

func TestBehaviourNoEndpoints(t *testing.T) {
	empty := service("empty", "10.96.0.20", 80)
	notReady := service("not-ready", "10.96.0.21", 80)
	noSlice := service("no-slice", "10.96.0.22", 80)
	var flows []flow
	for _, c := range []client{podHere, podThere, node, outsider} {
		flows = append(flows,
			flow{name: c.name + " to service without endpoints", from: c, to: "10.96.0.20:80", want: rejected},
			flow{name: c.name + " to service without serving endpoints", from: c, to: "10.96.0.21:80", want: rejected},
			flow{name: c.name + " to service without slices", from: c, to: "10.96.0.22:80", want: rejected},
		)
	}
	flows = append(flows, flow{name: "other port of the same IP", from: podHere, to: "10.96.0.20:81", want: untouched})
	scenario{objs: []any{
		empty, slice(empty),
		notReady, slice(notReady, notServing("10.244.1.21", thisNode), ep{ip: "10.244.2.21", node: otherNode}),
		noSlice,
	}, flows: flows}.run(t)
}

func TestBehaviourInternalTrafficPolicyLocal(t *testing.T) {
	local := service("itp", "10.96.0.30", 80, itpLocal)
	remote := service("itp-remote", "10.96.0.31", 80, itpLocal)
	remoteNP := service("itp-remote-np", "10.96.0.32", 80, itpLocal, nodePort(30032))
	scenario{objs: []any{
		local, slice(local, ready("10.244.1.30", thisNode), ready("10.244.2.30", otherNode)),
		remote, slice(remote, ready("10.244.2.31", otherNode), ready("10.244.2.32", otherNode)),
		remoteNP, slice(remoteNP, ready("10.244.2.33", otherNode)),
	}, flows: []flow{
		{name: "pod on node1 reaches only the local endpoint", from: podHere, to: "10.96.0.30:80", want: reach(noMasq, "10.244.1.30:8080")},
		{name: "node reaches only the local endpoint, masqueraded", from: node, to: "10.96.0.30:80", want: reach(masq, "10.244.1.30:8080")},
		{name: "pod on node1, no local endpoint: drop", from: podHere, to: "10.96.0.31:80", want: dropped},
		{name: "node, no local endpoint: drop", from: node, to: "10.96.0.31:80", want: dropped},
		{name: "outside, no local endpoint: drop", from: outsider, to: "10.96.0.31:80", want: dropped},
		{name: "no local endpoint, cluster IP of a node port service: drop", from: podHere, to: "10.96.0.32:80", want: dropped},
		{name: "no local endpoint, node port still reaches the cluster", from: outsider, to: "192.168.0.1:30032", want: reach(masq, "10.244.2.33:8080")},
		{name: "no local endpoint, node port from a pod", from: podHere, to: "192.168.0.1:30032", want: reach(masq, "10.244.2.33:8080")},
	}}.run(t)
}

func TestBehaviourTerminatingFallback(t *testing.T) {
	term := service("term", "10.96.0.40", 80)
	mixed := service("mixed", "10.96.0.41", 80)
	termLocal := service("term-local", "10.96.0.42", 80, itpLocal)
	scenario{objs: []any{
		term, slice(term, terminating("10.244.1.40", thisNode), terminating("10.244.2.40", otherNode), notServing("10.244.2.41", otherNode)),
		mixed, slice(mixed, ready("10.244.2.42", otherNode), terminating("10.244.1.42", thisNode)),
		termLocal, slice(termLocal, terminating("10.244.1.43", thisNode), ready("10.244.2.43", otherNode)),
	}, flows: []flow{
		{name: "only serving-terminating endpoints: still reachable", from: podHere, to: "10.96.0.40:80", want: reach(noMasq, "10.244.1.40:8080", "10.244.2.40:8080")},
		{name: "ready endpoints win over terminating ones", from: podHere, to: "10.96.0.41:80", want: reach(noMasq, "10.244.2.42:8080")},
		{name: "local policy falls back to the local terminating endpoint", from: podHere, to: "10.96.0.42:80", want: reach(noMasq, "10.244.1.43:8080")},
	}}.run(t)
}

func TestBehaviourHairpin(t *testing.T) {
	hp := service("hairpin", "10.96.0.60", 80)
	scenario{objs: []any{hp, slice(hp, ready(podHere.ip, thisNode), ready("10.244.2.60", otherNode))}, flows: []flow{
		{
			name: "pod reaching itself through its service is masqueraded",
			from: podHere, to: "10.96.0.60:80",
			want: append(reach(masq, "10.244.1.5:8080"), reach(noMasq, "10.244.2.60:8080")...),
		},
		{name: "other pods are not masqueraded", from: podThere, to: "10.96.0.60:80", want: reach(noMasq, "10.244.1.5:8080", "10.244.2.60:8080")},
	}}.run(t)
}

// TestBehaviourSessionAffinity: a first connection goes anywhere; the
// next ones from that client go where it went, whatever the random
// choice; other clients are still balanced; a full sync keeps the
// clients; an endpoint that goes takes its clients' affinity along.
func TestBehaviourSessionAffinity(t *testing.T) {
	sticky := service("sticky", "10.96.0.50", 80, affinity(600))
	eps := []ep{ready("10.244.1.50", thisNode), ready("10.244.2.50", otherNode), ready("10.244.2.51", otherNode)}
	all := []string{"10.244.1.50:8080", "10.244.2.50:8080", "10.244.2.51:8080"}
	c := newCluster(t, sticky, slice(sticky, eps...))
	c.sync(true)
	c.checkFlows(t, []flow{
		{name: "first connection from a pod", from: podHere, to: "10.96.0.50:80", want: reach(noMasq, all...)},
		{name: "first connection from the node", from: node, to: "10.96.0.50:80", want: reach(masq, all...)},
	})
	tr := c.tracer()
	svc := "10.96.0.50:80"
	first, err := tr.connect(packetOf(podHere, svc, ""), 0.5)
	if err != nil {
		t.Fatal(err)
	}
	for _, pick := range []float64{0, 0.5, 0.999} {
		if got, _ := tr.connect(packetOf(podHere, svc, ""), pick); got != first {
			t.Errorf("pick %.3f: %v, want %v like the first connection", pick, got, first)
		}
	}
	if got, _ := tr.outcomes(packetOf(podThere, svc, "")); !cmp.Equal(got, reach(noMasq, all...)) {
		t.Errorf("another client while the first is sticky: %v", got)
	}
	// The kernel holds the client in the endpoint's set: put it in the
	// Fake as the update did, then sync.
	for set, clients := range tr.clients {
		for a := range clients {
			tx := c.fake.NewTransaction()
			tx.Add(&knftables.Element{Set: set, Key: []string{a.String()}})
			if err := c.fake.Fake.Run(ctx, tx); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.sync(true)
	if got, _ := c.tracer().outcomes(packetOf(podHere, svc, "")); !cmp.Equal(got, []string{first.String()}) {
		t.Errorf("after a full sync: %v, want %v still", got, first)
	}
	// The client's endpoint goes: it is balanced over the others.
	var rest []ep
	var restEPs []string
	for _, e := range eps {
		if e.ip+":8080" != first.dnat.String() {
			rest = append(rest, e)
			restEPs = append(restEPs, e.ip+":8080")
		}
	}
	c.set(slice(sticky, rest...))
	c.sync(false)
	if got, _ := c.tracer().outcomes(packetOf(podHere, svc, "")); !cmp.Equal(got, reach(noMasq, restEPs...)) {
		t.Errorf("after its endpoint went: %v, want %v", got, restEPs)
	}
}

func TestBehaviourNodePort(t *testing.T) {
	cl := service("np-cluster", "10.96.1.10", 80, nodePort(30010))
	local := service("np-local", "10.96.1.20", 80, nodePort(30020), etpLocal)
	remoteOnly := service("np-remote", "10.96.1.30", 80, nodePort(30030), etpLocal)
	empty := service("np-empty", "10.96.1.40", 80, nodePort(30040))
	udpNP := service("np-udp", "10.96.1.50", 53, udp, nodePort(30010))
	clusterEPs := []string{"10.244.1.10:8080", "10.244.2.10:8080"}
	localEPs := []string{"10.244.1.20:8080", "10.244.2.20:8080"}
	remoteEPs := []string{"10.244.2.30:8080", "10.244.2.31:8080"}
	scenario{objs: []any{
		cl, slice(cl, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode)),
		local, slice(local, ready("10.244.1.20", thisNode), ready("10.244.2.20", otherNode)),
		remoteOnly, slice(remoteOnly, ready("10.244.2.30", otherNode), ready("10.244.2.31", otherNode)),
		empty, slice(empty),
		udpNP, slice(udpNP, ready("10.244.2.50", otherNode)),
	}, flows: []flow{
		{name: "cluster policy: outside client", from: outsider, to: "192.168.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: pod on node1", from: podHere, to: "192.168.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: pod on node2", from: podThere, to: "192.168.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: node", from: node, to: "192.168.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: cluster IP still works", from: podHere, to: "10.96.1.10:80", want: reach(noMasq, clusterEPs...)},
		{name: "cluster policy: node port on the second local address", from: outsider, to: "172.16.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "no node ports on localhost", from: node, to: "127.0.0.1:30010", want: untouched},
		{name: "another node's node port is forwarded untouched", from: podHere, to: "192.168.0.2:30010", want: untouched},
		{name: "same number, other protocol", from: outsider, to: "192.168.0.1:30010", proto: "udp", want: reach(masq, "10.244.2.50:8080")},
		{name: "unused node port", from: outsider, to: "192.168.0.1:30011", want: untouched},
		{name: "local policy: outside client keeps its source", from: outsider, to: "192.168.0.1:30020", want: reach(noMasq, "10.244.1.20:8080")},
		{name: "local policy: pod on node1 short-circuits", from: podHere, to: "192.168.0.1:30020", want: reach(noMasq, localEPs...)},
		{name: "local policy: pod on node2 short-circuits", from: podThere, to: "192.168.0.1:30020", want: reach(noMasq, localEPs...)},
		{name: "local policy: node short-circuits, masqueraded", from: node, to: "192.168.0.1:30020", want: reach(masq, localEPs...)},
		{name: "local policy, no local endpoint: outside client dropped", from: outsider, to: "192.168.0.1:30030", want: dropped},
		{name: "local policy, no local endpoint: pod short-circuits", from: podHere, to: "192.168.0.1:30030", want: reach(noMasq, remoteEPs...)},
		{name: "local policy, no local endpoint: node short-circuits", from: node, to: "192.168.0.1:30030", want: reach(masq, remoteEPs...)},
		{name: "no endpoints: outside client rejected", from: outsider, to: "192.168.0.1:30040", want: rejected},
		{name: "no endpoints: pod rejected", from: podHere, to: "192.168.0.1:30040", want: rejected},
		{name: "no endpoints: node rejected", from: node, to: "192.168.0.1:30040", want: rejected},
		{name: "no endpoints: cluster IP rejected", from: podHere, to: "10.96.1.40:80", want: rejected},
	}}.run(t)
}

func TestBehaviourExternalIP(t *testing.T) {
	cl := service("ext", "10.96.2.10", 80, externalIPs("192.0.2.10"))
	local := service("ext-local", "10.96.2.11", 80, externalIPs("192.0.2.11"), etpLocal)
	remoteOnly := service("ext-remote", "10.96.2.12", 80, externalIPs("192.0.2.12"), etpLocal)
	empty := service("ext-empty", "10.96.2.13", 80, externalIPs("192.0.2.13"))
	clusterEPs := []string{"10.244.1.10:8080", "10.244.2.10:8080"}
	localEPs := []string{"10.244.1.11:8080", "10.244.2.11:8080"}
	scenario{objs: []any{
		cl, slice(cl, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode)),
		local, slice(local, ready("10.244.1.11", thisNode), ready("10.244.2.11", otherNode)),
		remoteOnly, slice(remoteOnly, ready("10.244.2.12", otherNode)),
		empty, slice(empty),
	}, flows: []flow{
		{name: "cluster policy: outside client", from: outsider, to: "192.0.2.10:80", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: pod", from: podHere, to: "192.0.2.10:80", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: node", from: node, to: "192.0.2.10:80", want: reach(masq, clusterEPs...)},
		{name: "other port of an external IP", from: outsider, to: "192.0.2.10:81", want: untouched},
		{name: "local policy: outside client keeps its source", from: outsider, to: "192.0.2.11:80", want: reach(noMasq, "10.244.1.11:8080")},
		{name: "local policy: pod short-circuits", from: podHere, to: "192.0.2.11:80", want: reach(noMasq, localEPs...)},
		{name: "local policy: node short-circuits, masqueraded", from: node, to: "192.0.2.11:80", want: reach(masq, localEPs...)},
		{name: "local policy, no local endpoint: outside client dropped", from: outsider, to: "192.0.2.12:80", want: dropped},
		{name: "local policy, no local endpoint: pod short-circuits", from: podHere, to: "192.0.2.12:80", want: reach(noMasq, "10.244.2.12:8080")},
		{name: "no endpoints: rejected", from: outsider, to: "192.0.2.13:80", want: rejected},
	}}.run(t)
}

func TestBehaviourLoadBalancer(t *testing.T) {
	fw := service("lb", "10.96.2.20", 80, loadBalancer("192.0.2.100", "198.51.100.0/24"), nodePort(30100))
	open := service("lb-open", "10.96.2.21", 80, loadBalancer("192.0.2.101"), etpLocal)
	fwLocal := service("lb-fw-local", "10.96.2.22", 80, loadBalancer("192.0.2.102", "198.51.100.0/24"), etpLocal)
	empty := service("lb-empty", "10.96.2.23", 80, loadBalancer("192.0.2.103"))
	// Ranges, none of this family: no source at all (fail closed).
	closed := service("lb-closed", "10.96.2.24", 80, loadBalancer("192.0.2.104", "2001:db8::/32"))
	// Nested ranges: the interval set takes only the outer one.
	nested := service("lb-nested", "10.96.2.25", 80, loadBalancer("192.0.2.105", "198.51.100.0/24", "198.51.0.0/16"))
	fwEPs := []string{"10.244.1.20:8080", "10.244.2.20:8080"}
	scenario{objs: []any{
		fw, slice(fw, ready("10.244.1.20", thisNode), ready("10.244.2.20", otherNode)),
		open, slice(open, ready("10.244.1.21", thisNode), ready("10.244.2.21", otherNode)),
		fwLocal, slice(fwLocal, ready("10.244.1.22", thisNode), ready("10.244.2.22", otherNode)),
		empty, slice(empty),
		closed, slice(closed, ready("10.244.2.24", otherNode)),
		nested, slice(nested, ready("10.244.2.25", otherNode)),
	}, flows: []flow{
		{name: "source ranges: allowed client", from: allowedSrc, to: "192.0.2.100:80", want: reach(masq, fwEPs...)},
		{name: "source ranges: other client dropped", from: outsider, to: "192.0.2.100:80", want: dropped},
		{name: "source ranges: pod outside the ranges dropped", from: podHere, to: "192.0.2.100:80", want: dropped},
		{name: "source ranges: the node outside the ranges dropped", from: node, to: "192.0.2.100:80", want: dropped},
		{name: "source ranges do not apply to the node port", from: outsider, to: "192.168.0.1:30100", want: reach(masq, fwEPs...)},
		{name: "source ranges do not apply to the cluster IP", from: podHere, to: "10.96.2.20:80", want: reach(noMasq, fwEPs...)},
		{name: "no ranges, local policy: outside client keeps its source", from: outsider, to: "192.0.2.101:80", want: reach(noMasq, "10.244.1.21:8080")},
		{name: "no ranges, local policy: pod short-circuits", from: podHere, to: "192.0.2.101:80", want: reach(noMasq, "10.244.1.21:8080", "10.244.2.21:8080")},
		{name: "ranges, local policy: allowed client", from: allowedSrc, to: "192.0.2.102:80", want: reach(noMasq, "10.244.1.22:8080")},
		{name: "ranges, local policy: other client dropped", from: outsider, to: "192.0.2.102:80", want: dropped},
		{name: "no endpoints: rejected", from: outsider, to: "192.0.2.103:80", want: rejected},
		{name: "ranges of the other family only: allowed-looking client dropped", from: allowedSrc, to: "192.0.2.104:80", want: dropped},
		{name: "ranges of the other family only: cluster IP still works", from: podHere, to: "10.96.2.24:80", want: reach(noMasq, "10.244.2.24:8080")},
		{name: "nested ranges: inner client allowed", from: allowedSrc, to: "192.0.2.105:80", want: reach(masq, "10.244.2.25:8080")},
		{name: "nested ranges: outer client allowed", from: client{"client in the outer range", "198.51.7.7", false}, to: "192.0.2.105:80", want: reach(masq, "10.244.2.25:8080")},
	}}.run(t)
}

// TestBehaviourOptions: --masquerade-all, several cluster CIDRs, and
// --nodeport-addresses.
func TestBehaviourOptions(t *testing.T) {
	web := service("web", "10.96.0.10", 80, nodePort(30010), etpLocal)
	objs := []any{web, slice(web, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode))}
	both := []string{"10.244.1.10:8080", "10.244.2.10:8080"}
	run := func(t *testing.T, opts Options, flows []flow) {
		c := newCluster(t, objs...)
		c.renderer = NewRenderer(opts)
		c.sync(true)
		c.checkFlows(t, flows)
	}
	t.Run("masquerade-all", func(t *testing.T) {
		o := testOptions()
		o.MasqueradeAll = true
		run(t, o, []flow{{name: "pod to cluster IP masqueraded", from: podHere, to: "10.96.0.10:80", want: reach(masq, both...)}})
	})
	t.Run("no cluster CIDR: no masquerade of ClusterIP traffic", func(t *testing.T) {
		o := testOptions()
		o.ClusterCIDRs = nil
		run(t, o, []flow{
			{name: "outside client to cluster IP", from: outsider, to: "10.96.0.10:80", want: reach(noMasq, both...)},
			{name: "pod to the ETP Local node port is not short-circuited", from: podHere, to: "192.168.0.1:30010", want: reach(noMasq, "10.244.1.10:8080")},
		})
	})
	t.Run("two cluster CIDRs", func(t *testing.T) {
		o := testOptions()
		o.ClusterCIDRs = append(o.ClusterCIDRs, netip.MustParsePrefix("100.64.0.0/16"))
		other := client{"pod of the second CIDR", "100.64.1.5", false}
		run(t, o, []flow{
			{name: "pod of the first CIDR", from: podHere, to: "10.96.0.10:80", want: reach(noMasq, both...)},
			{name: "pod of the second CIDR", from: other, to: "10.96.0.10:80", want: reach(noMasq, both...)},
			{name: "outside client", from: outsider, to: "10.96.0.10:80", want: reach(masq, both...)},
			{name: "pod of the second CIDR short-circuits ETP Local", from: other, to: "192.168.0.1:30010", want: reach(noMasq, both...)},
		})
	})
	t.Run("nodeport-addresses", func(t *testing.T) {
		o := testOptions()
		o.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}
		run(t, o, []flow{
			{name: "node port on an address inside", from: outsider, to: "172.16.0.1:30010", want: reach(noMasq, "10.244.1.10:8080")},
			{name: "no node port on an address outside", from: outsider, to: "192.168.0.1:30010", want: untouched},
		})
	})
}

// TestBehaviourSharedScenarios walks the packets of every shared scenario
// file through what it programs, over both families: each cluster IP
// answers a pod on this node without masquerade (a pod reaching itself
// masqueraded), or refuses or drops as the policies say, so the goldens
// are not only text.
func TestBehaviourSharedScenarios(t *testing.T) {
	for _, sc := range scenariosOf(t) {
		t.Run(sc.name, func(t *testing.T) {
			for _, fam := range []struct {
				family knftables.Family
				opts   Options
				pod    netip.Addr
			}{
				{knftables.IPv4Family, testOptions(), netip.MustParseAddr(podHere.ip)},
				{knftables.IPv6Family, testOptions6(), netip.MustParseAddr("fd00:10:244:1::5")},
			} {
				f := newStrictFake(t, fam.family)
				if _, err := NewSyncer(f, f.lister()).Sync(ctx, Render(sc.snap, fam.opts), true); err != nil {
					t.Fatal(err)
				}
				tr := newTracer(f.Fake, fam.family, nodeAddrs)
				for _, sp := range sc.snap.ServicePorts() {
					if sp.ClusterIP.Is6() != fam.opts.IPv6 {
						continue
					}
					p := tracePacket{src: fam.pod, dst: sp.ClusterIP, dport: int(sp.Port), proto: protoOf(sp.Protocol)}
					got, err := tr.outcomes(p)
					if err != nil {
						t.Fatal(err)
					}
					var want []string
					switch eps := sp.InternalEndpoints(); {
					case !sp.HasEndpoints():
						want = rejected
					case len(eps) == 0:
						want = dropped
					default:
						for _, e := range eps {
							want = append(want, reach(e.IP == fam.pod, e.String())...)
						}
						slices.Sort(want)
					}
					if !cmp.Equal(want, got) {
						t.Errorf("%s: pod to %s:%d: %v, want %v", sp.Name, sp.ClusterIP, sp.Port, got, want)
					}
					checkBalanced(t, tr, p)
				}
			}
		})
	}
}

type namedSnapshot struct {
	name string
	snap *proxy.Snapshot
}

// scenariosOf returns the snapshots of the shared scenario files.
func scenariosOf(t *testing.T) []namedSnapshot {
	var out []namedSnapshot
	for _, sc := range pt.Scenarios(t, scenarioDir) {
		out = append(out, namedSnapshot{sc.Name, sc.Snapshot(t)})
	}
	return out
}

// protoOf is the protocol as the tracer names it.
func protoOf(p v1.Protocol) string { return strings.ToLower(string(p)) }
