package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/iptables/trace"
	"github.com/svcproxy/svcproxy/ipvs"
	ipvstest "github.com/svcproxy/svcproxy/ipvs/testing"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/config"
)

// ipvsArgs are common(state)'s flags in IPVS mode.
func ipvsArgs(state string, more ...string) []string {
	return append(append(common(state), "--mode", "ipvs"), more...)
}

// Paths through IPVS mode's objects, as prefixes.
var (
	ipvsToService = []string{"filter/INPUT (new connections) -> SVCP-IPVS-FILTER", "ipset SVCP-IPVS-REJECT does not have", "IPVS virtual server -t ", "nat/PREROUTING -> SVCP-IPVS-SERVICES", "nat/POSTROUTING -> SVCP-IPVS-POSTROUTING"}
	ipvsRejected  = []string{"filter/INPUT (new connections) -> SVCP-IPVS-FILTER", "ipset SVCP-IPVS-REJECT has "}
	ipvsDropped   = []string{"filter/INPUT (new connections) -> SVCP-IPVS-FILTER", "ipset SVCP-IPVS-REJECT does not have", "ipset SVCP-IPVS-DROP has "}
	ipvsFromNode  = []string{"nat/OUTPUT, then IPVS (LOCAL_OUT, before filter/OUTPUT)", "IPVS virtual server -t "}
)

// TestExplainIPVS: explain --mode ipvs over the example states, every
// verdict and reason, JSON and text: the reasons the Snapshot gives as in
// iptables mode, and IPVS's own (the scheduler, persistence, IPVS refusing
// the node's own connections, ETP Local for every source).
func TestExplainIPVS(t *testing.T) {
	np := []string{"--node-ip", "192.168.0.1,172.16.0.1"}
	dual := []string{"--state", dualStackState, "--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs, "--mode", "ipvs"}
	for _, tc := range []struct {
		name    string
		args    []string
		want    []want
		notes   []string
		textHas []string
	}{
		{
			name: "cluster IP by name from a pod: the real servers, round robin",
			args: ipvsArgs(exampleState, "web.shop"),
			want: []want{{service: "shop/web", via: viaClusterIP, verdict: verdictDNAT,
				reason:     "2 ready endpoints; 1 terminating, unused while others are ready; 2 real server(s), chosen by round robin (scheduler rr)",
				endpoints:  []string{"10.244.1.10:8080 0.5 node1 local", "10.244.2.10:8080 0.5 node2"},
				masqReason: "the source is inside --cluster-cidr 10.244.0.0/16", path: ipvsToService}},
			textHas: []string{"target      web.shop (node node1, ipvs mode)", "  path      filter/INPUT (new connections) -> SVCP-IPVS-FILTER\n",
				"            IPVS virtual server -t 10.96.100.20:80 -s rr\n", "masquerade no: the source is inside"},
		},
		{
			name: "another scheduler",
			args: ipvsArgs(exampleState, "--ipvs-scheduler", "lc", "web.shop"),
			want: []want{{service: "shop/web", via: viaClusterIP, verdict: verdictDNAT, reason: "chosen by least connections (scheduler lc)",
				endpoints: []string{"10.244.1.10:8080 0.5 node1 local", "10.244.2.10:8080 0.5 node2"}, masqReason: "inside", path: []string{"IPVS virtual server -t 10.96.100.20:80 -s lc"}}},
		},
		{
			name: "no endpoints: REJECT",
			args: ipvsArgs(exampleState, "payments.shop:grpc"),
			want: []want{{service: "shop/payments", via: viaClusterIP, verdict: verdictReject, reason: "no endpoints: the Service has no IPv4 endpoint at all", path: ipvsRejected}},
		},
		{
			name: "only terminating endpoints, none serving: REJECT",
			args: ipvsArgs(explainState, "gone.b"),
			want: []want{{service: "b/gone", via: viaClusterIP, verdict: verdictReject, reason: "only terminating endpoints: all 2 are shutting down and none is serving", path: ipvsRejected}},
		},
		{
			name: "endpoints neither ready nor serving: REJECT",
			args: ipvsArgs(scenarios+"no-endpoints.yaml", "notready.shop"),
			want: []want{{service: "shop/notready", via: viaClusterIP, verdict: verdictReject, reason: "no ready endpoints: 1 not ready, 1 terminating and not serving"}},
		},
		{
			name: "the node to a Service without endpoints: IPVS refuses, the filter never sees it",
			args: ipvsArgs(exampleState, "--from", "node", "--node-ip", "192.168.0.1", "payments.shop:grpc"),
			want: []want{{service: "shop/payments", via: viaClusterIP, verdict: verdictReject,
				reason: "no endpoints: the Service has no IPv4 endpoint at all (does its selector match a running pod?); the virtual server has no real server with a weight: IPVS refuses (IPVS takes the node's own connections in LOCAL_OUT, before the filter's REJECT and DROP)",
				path:   ipvsFromNode}},
		},
		{
			name: "serving terminating endpoints get the traffic when none is ready",
			args: ipvsArgs(scenarios+"terminating-only.yaml", "draining.shop"),
			want: []want{{service: "shop/draining", via: viaClusterIP, verdict: verdictDNAT, reason: "no endpoint is ready: 2 endpoints, serving but terminating, get the traffic",
				endpoints: []string{"10.244.1.90:8080 0.5 node1 local", "10.244.2.90:8080 0.5 node2"}, masqReason: "inside --cluster-cidr", path: ipvsToService}},
		},
		{
			name: "internalTrafficPolicy Local with a local endpoint: that one only",
			args: ipvsArgs(scenarios+"itp-local.yaml", "local.shop"),
			want: []want{{service: "shop/local", via: viaClusterIP, verdict: verdictDNAT, reason: "internalTrafficPolicy Local: this node's endpoints only; 1 ready endpoint; 1 real server(s)",
				endpoints: []string{"10.244.1.40:8080 1 node1 local"}, masqReason: "inside --cluster-cidr"}},
		},
		{
			name: "internalTrafficPolicy Local and no local endpoint: DROP",
			args: ipvsArgs(scenarios+"itp-local.yaml", "remote.shop"),
			want: []want{{service: "shop/remote", via: viaClusterIP, verdict: verdictDrop, reason: "internalTrafficPolicy Local and no endpoint on node1 (1 on other nodes)", path: ipvsDropped}},
		},
		{
			name: "internalTrafficPolicy Local and no local endpoint, from the node: IPVS refuses",
			args: ipvsArgs(scenarios+"itp-local.yaml", append(np, "--from", "node", "remote.shop")...),
			want: []want{{service: "shop/remote", via: viaClusterIP, verdict: verdictReject,
				reason: "internalTrafficPolicy Local and no endpoint on node1 (1 on other nodes); the virtual server has no real server with a weight: IPVS refuses (IPVS takes the node's own connections", path: ipvsFromNode}},
		},
		{
			name: "externalTrafficPolicy Local and no local endpoint on a NodePort Service: DROP, no health check to steer clients",
			args: ipvsArgs(scenarios+"etp-local.yaml", append(np, "--from", "external:203.0.113.7", "192.168.0.1:30091")...),
			want: []want{{service: "shop/remote", via: viaNodePort, verdict: verdictDrop,
				reason: "externalTrafficPolicy Local and no endpoint on node1 (1 on other nodes); the Service has no health-check node port (only a LoadBalancer gets one): clients must be sent to nodes that have an endpoint", path: ipvsDropped}},
		},
		{
			name: "externalTrafficPolicy Local from a pod: dropped too, one virtual server for every source",
			args: ipvsArgs(scenarios+"etp-local.yaml", append(np, "--from", "pod:10.244.1.5", "192.168.0.1:30091")...),
			want: []want{{service: "shop/remote", via: viaNodePort, verdict: verdictDrop,
				reason: "externalTrafficPolicy Local and no endpoint on node1 (1 on other nodes): in IPVS mode pods and the node reach this address through the virtual server outside clients use, so they get this node's endpoints only too", path: ipvsDropped}},
		},
		{
			name: "externalTrafficPolicy Local from the node: IPVS refuses",
			args: ipvsArgs(scenarios+"etp-local.yaml", append(np, "--from", "node", "192.168.0.1:30091")...),
			want: []want{{service: "shop/remote", via: viaNodePort, verdict: verdictReject, reason: "so they get this node's endpoints only too; the virtual server has no real server with a weight: IPVS refuses", path: ipvsFromNode}},
		},
		{
			name: "externalTrafficPolicy Local from a pod with a local endpoint: that one only, source kept",
			args: ipvsArgs(scenarios+"etp-local.yaml", append(np, "--from", "pod:10.244.1.5", "192.168.0.1:30090")...),
			want: []want{{service: "shop/front", via: viaNodePort, verdict: verdictDNAT, reason: "externalTrafficPolicy Local: this node's endpoints only, for pods and the node too (IPVS mode: one virtual server serves every source); 1 ready endpoint",
				endpoints: []string{"10.244.1.30:8080 1 node1 local"}, masqReason: "traffic from a pod keeps its address"}},
		},
		{
			name: "externalTrafficPolicy Local, source allowed by loadBalancerSourceRanges: the local endpoint, client address kept",
			args: ipvsArgs(exampleState, "--from", "external:198.51.100.7", "203.0.113.10:80/tcp"),
			want: []want{{service: "blog/frontend", via: viaLBIP, verdict: verdictDNAT, reason: "externalTrafficPolicy Local: this node's endpoints only; 1 ready endpoint",
				endpoints: []string{"10.244.1.30:8080 1 node1 local"}, masqReason: "externalTrafficPolicy Local: the endpoint sees the client's address",
				path: []string{"filter/INPUT", "ipset SVCP-IPVS-LB-FW has 203.0.113.10,tcp:80", "ipset SVCP-IPVS-LB-SRC has 203.0.113.10,tcp:80,198.51.100.7", "IPVS virtual server -t 203.0.113.10:80"}}},
		},
		{
			name: "source not in loadBalancerSourceRanges: DROP",
			args: ipvsArgs(exampleState, "--from", "external:203.0.113.7", "203.0.113.10:80"),
			want: []want{{service: "blog/frontend", via: viaLBIP, verdict: verdictDrop, reason: "source 203.0.113.7 not in loadBalancerSourceRanges 198.51.100.0/24",
				path: []string{"filter/INPUT", "ipset SVCP-IPVS-LB-FW has ", "ipset SVCP-IPVS-LB-SRC does not have 203.0.113.10,tcp:80,203.0.113.7"}}},
		},
		{
			name: "the node to a load-balancer IP: IPVS takes it before the filter, no source ranges",
			args: ipvsArgs(exampleState, "--from", "node", "--node-ip", "192.168.0.1", "203.0.113.10:80"),
			want: []want{{service: "blog/frontend", via: viaLBIP, verdict: verdictDNAT, reason: "for pods and the node too",
				endpoints: []string{"10.244.1.30:8080 1 node1 local"}, masqReason: "externalTrafficPolicy Local: the endpoint sees the client's address", path: ipvsFromNode}},
		},
		{
			name: "loadBalancerSourceRanges of the other family only: no client may connect",
			args: []string{"--state", scenarios + "dual-stack.yaml", "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--mode", "ipvs",
				"--from", "external:192.168.50.7", "203.0.113.11:80/tcp"},
			want: []want{{service: "demo/lb6", via: viaLBIP, verdict: verdictDrop, reason: "they hold no IPv4 range, so no IPv4 client may connect"}},
		},
		{
			name: "node port from outside, externalTrafficPolicy Cluster: masqueraded",
			args: ipvsArgs(scenarios+"nodeport.yaml", append(np, "--from", "external:203.0.113.7", "192.168.0.1:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictDNAT, reason: "2 ready endpoints",
				endpoints: []string{"10.244.1.20:8080 0.5 node1 local masq", "10.244.2.20:8080 0.5 node2 masq"}, masq: true,
				masqReason: "a node port with externalTrafficPolicy Cluster: the endpoint sees node1's address, not the client's",
				path:       []string{"filter/INPUT", "IPVS virtual server -t 192.168.0.1:30080", "nat/PREROUTING", "ipset SVCP-IPVS-NODE-PORT has 192.168.0.1,tcp:30080"}}},
		},
		{
			name: "node port on the node's second address",
			args: ipvsArgs(scenarios+"nodeport.yaml", append(np, "--from", "external:203.0.113.7", "172.16.0.1:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictDNAT, reason: "2 ready endpoints",
				endpoints: []string{"10.244.1.20:8080 0.5 node1 local masq", "10.244.2.20:8080 0.5 node2 masq"}, masq: true, masqReason: "a node port"}},
		},
		{
			name: "nodePort not on an allowed address: no virtual server",
			args: ipvsArgs(scenarios+"nodeport.yaml", append(np, "--nodeport-addresses", "192.168.0.0/24", "--from", "external:203.0.113.7", "172.16.0.1:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictNoMatch, reason: "nodePort not on an allowed address: 172.16.0.1 is not within --nodeport-addresses 192.168.0.0/24"}},
		},
		{
			name: "node port on loopback: no virtual server",
			args: ipvsArgs(scenarios+"nodeport.yaml", append(np, "--from", "node", "127.0.0.1:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictNoMatch, reason: "node ports do not answer on loopback addresses (127.0.0.1)"}},
		},
		{
			name: "node port on another node's address",
			args: ipvsArgs(scenarios+"nodeport.yaml", append(np, "--from", "external:203.0.113.7", "192.168.0.2:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictNoMatch, reason: "192.168.0.2 is not an address of node1"}},
		},
		{
			name:  "node port with no node address known: the target's is taken as the node's",
			args:  ipvsArgs(scenarios+"nodeport.yaml", "--from", "external:203.0.113.7", "192.168.0.1:30080"),
			want:  []want{{service: "shop/web", via: viaNodePort, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.20:8080 0.5 node1 local masq", "10.244.2.20:8080 0.5 node2 masq"}, masq: true, masqReason: "a node port"}},
			notes: []string{"192.168.0.1 is taken to be an address of node1"},
		},
		{
			name: "external IP from outside: masqueraded",
			args: ipvsArgs(scenarios+"external-ips.yaml", "--from", "external:203.0.113.7", "192.0.2.11:80"),
			want: []want{{service: "shop/legacy", via: viaExternalIP, verdict: verdictDNAT, reason: "ready endpoint", endpoints: []string{"10.244.1.70:8080 0.5 node1 local masq", "10.244.2.70:8080 0.5 node2 masq"},
				masq: true, masqReason: "external traffic with externalTrafficPolicy Cluster: the endpoint sees node1's address"}},
		},
		{
			name: "cluster IP from the node: masqueraded; its address from the Node in the state",
			args: ipvsArgs(explainState, "--from", "node", "b/web:80"),
			want: []want{{service: "b/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.2.10:8080 0.5 node2 masq", "10.244.2.11:8080 0.5 node2 masq"},
				masq: true, masqReason: "source 192.168.0.1 is outside the pod networks (--cluster-cidr)", path: ipvsFromNode}},
			textHas: []string{"node1 itself (192.168.0.1)"},
		},
		{
			name: "--masquerade-all",
			args: ipvsArgs(explainState, "--masquerade-all", "--from", "pod:10.244.1.5", "web.b.svc"),
			want: []want{{service: "b/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.2.10:8080 0.5 node2 masq", "10.244.2.11:8080 0.5 node2 masq"},
				masq: true, masqReason: "--masquerade-all"}},
		},
		{
			name: "a pod reaching itself: hairpin masqueraded on that real server only; persistence",
			args: ipvsArgs(exampleState, "--from", "pod:10.244.1.20", "cart.shop.svc.cluster.local"),
			want: []want{{service: "shop/cart", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints; 2 real server(s), chosen by round robin (scheduler rr); ClientIP affinity: a client keeps its real server for 600 s after its last connection",
				endpoints: []string{"10.244.1.20:8080 0.5 node1 local masq", "10.244.2.20:8080 0.5 node2"}, masq: true, masqReason: "only when the pod reaches itself (10.244.1.20): hairpin traffic is masqueraded (SVCP-IPVS-LOOPBACK)",
				path: []string{"IPVS virtual server -t 10.96.100.30:8080 -s rr -p 600"}}},
		},
		{
			name:  "a pod on another node: this node's plan, with a note",
			args:  ipvsArgs(explainState, "-n", "b", "--from", "remote-pod:10.244.2.5", "web"),
			want:  []want{{service: "b/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.2.10:8080 0.5 node2", "10.244.2.11:8080 0.5 node2"}, masqReason: "inside --cluster-cidr"}},
			notes: []string{"a pod on another node reaches a cluster IP through its own node's rules"},
		},
		{
			name: "headless: no virtual server",
			args: ipvsArgs(explainState, "db.b"),
			want: []want{{service: "b/db", verdict: verdictNoMatch, reason: "headless Service (clusterIP None)"}},
		},
		{
			name: "dual-stack name: both families, a stand-in pod of each",
			args: append(dual, "web.demo:http"),
			want: []want{
				{service: "demo/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.10:8080 0.5 node1 local", "10.244.1.11:8080 0.5 node1 local"}, masqReason: "inside --cluster-cidr 10.244.0.0/16"},
				{service: "demo/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"[fd00:10:244:1::10]:8080 0.5 node1 local", "[fd00:10:244:1::11]:8080 0.5 node1 local"}, masqReason: "inside --cluster-cidr fd00:10:244::/56",
					path: []string{"filter/INPUT", "ipset SVCP-IPVS-6-REJECT does not have fd00:10:96::a,tcp:80", "IPVS virtual server -t [fd00:10:96::a]:80 -s rr"}},
			},
		},
		{
			name: "dual-stack pod: each family from its own address",
			args: append(dual, "--from", "pod:fd00:10:244:1::5,10.244.1.5", "web.demo:http"),
			want: []want{
				{service: "demo/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.10:8080 0.5 node1 local", "10.244.1.11:8080 0.5 node1 local"}, masqReason: "inside"},
				{service: "demo/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"[fd00:10:244:1::10]:8080 0.5 node1 local", "[fd00:10:244:1::11]:8080 0.5 node1 local"}, masqReason: "inside"},
			},
			textHas: []string{"from      a pod on node1 (10.244.1.5)\n", "from      a pod on node1 (fd00:10:244:1::5)\n"},
		},
		{
			name: "IPv6 load-balancer IP from an allowed client",
			args: []string{"--state", scenarios + "dual-stack.yaml", "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--mode", "ipvs", "--from", "external:2001:db8:50::7", "[2001:db8:ffff::10]:80/tcp"},
			want: []want{{service: "demo/lb", via: viaLBIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"[fd00:10:244:1::10]:8080 0.5 node1 local masq", "[fd00:10:244:1::11]:8080 0.5 node1 local masq"}, masq: true, masqReason: "externalTrafficPolicy Cluster",
				path: []string{"filter/INPUT", "ipset SVCP-IPVS-6-LB-SRC has 2001:db8:ffff::10,tcp:80,2001:db8:50::7"}}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runExplainArgs(t, noAPI, append(tc.args, "-o", "json")...)
			if code != 0 {
				t.Fatalf("-o json: exit %d, stderr:\n%s", code, errOut)
			}
			var x explanation
			if err := json.Unmarshal([]byte(out), &x); err != nil {
				t.Fatalf("-o json: %v:\n%s", err, out)
			}
			if x.Mode != "ipvs" || len(x.Results) != len(tc.want) {
				t.Fatalf("mode %q, %d results, want ipvs and %d:\n%s", x.Mode, len(x.Results), len(tc.want), out)
			}
			for i, w := range tc.want {
				if diff := cmp.Diff(w.String(), got(x.Results[i], w).String()); diff != "" {
					t.Errorf("result %d (-want +got):\n%s\njson:\n%s", i, diff, out)
				}
				if r := x.Results[i]; r.Endpoints == nil || r.Drift == nil || len(r.Drift) != 0 || r.Path == nil || r.Kernel != nil {
					t.Errorf("result %d: endpoints %v, drift %v and path %v must be lists, drift empty, no kernel %v", i, r.Endpoints, r.Drift, r.Path, r.Kernel)
				}
			}
			for _, n := range tc.notes {
				if !strings.Contains(strings.Join(x.Notes, "\n"), n) {
					t.Errorf("notes %q lack %q", x.Notes, n)
				}
			}
			code, text, errOut := runExplainArgs(t, noAPI, tc.args...)
			if code != 0 {
				t.Fatalf("text: exit %d, stderr:\n%s", code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(text, "verdict   "+strings.ToUpper(w.verdict)) || !strings.Contains(text, w.reason) {
					t.Errorf("text lacks the verdict %s or the reason %q:\n%s", w.verdict, w.reason, text)
				}
				if w.masqReason != "" && !strings.Contains(text, w.masqReason) {
					t.Errorf("text lacks the masquerade reason %q:\n%s", w.masqReason, text)
				}
			}
			for _, h := range tc.textHas {
				if !strings.Contains(text, h) {
					t.Errorf("text lacks %q:\n%s", h, text)
				}
			}
		})
	}
}

// ipvsNode is a node in IPVS mode for explain --live: the IPVS fake
// (virtual servers, the dummy link, ipsets) and the iptables fakes wired
// to its sets, programmed by svcproxy's own IPVS Backend as the daemon
// would with the flags of args; its addresses (what the namespace lists)
// are the service addresses on the dummy link first, then fakeKernel's.
type ipvsNode struct {
	*fakeKernel
	k    *ipvstest.Fake
	opts ipvs.Options
}

func newIPVSNode(t *testing.T, args ...string) *ipvsNode {
	t.Helper()
	o := config.Defaults()
	fs := newFlagSet(o)
	fs.String("from", "", "")
	fs.StringSlice("node-ip", nil, "")
	fs.StringP("namespace", "n", "", "")
	fs.StringP("output", "o", "", "")
	fs.Bool("live", false, "")
	fs.Bool("all", false, "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	cl, err := loadCluster(context.Background(), o, noAPI, true)
	if err != nil {
		t.Fatal(err)
	}
	n := &ipvsNode{fakeKernel: &fakeKernel{ipt: map[bool]*iptablestest.Fake{false: iptablestest.NewFake(), true: iptablestest.NewFake6()},
		foreign: map[bool][]string{}, raw: map[bool]string{},
		addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("::1"),
			netip.MustParseAddr("2001:db8:50::1"), netip.MustParseAddr("fe80::1")}}, k: ipvstest.NewFake()}
	for _, ipt := range n.ipt {
		if err := n.k.UseIPTables(ipt); err != nil {
			t.Fatal(err)
		}
	}
	n.opts = o.IPVSOptions()
	n.opts.IPv6 = families(cl.snap)[v1.IPv6Protocol]
	n.opts.LocalAddresses = []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("2001:db8:50::1")}
	n.opts.NodeAddresses = n.opts.LocalAddresses
	var ipt6 iptables.Interface
	if n.opts.IPv6 {
		ipt6 = n.ipt[true]
	}
	be := ipvs.NewDualStackBackend(n.k, n.ipt[false], ipt6, n.opts)
	quiet := klog.NewContext(context.Background(), klog.Logger{}) // the zero Logger discards
	if _, err := be.Sync(quiet, cl.snap, true); err != nil {
		t.Fatal(err)
	}
	bound, err := n.k.ListAddresses(ipvs.DummyInterface)
	if err != nil {
		t.Fatal(err)
	}
	n.addrs = append(bound, n.addrs...)
	return n
}

func (n *ipvsNode) deps() explainDeps {
	d := n.fakeKernel.deps()
	d.ipvsKernel = func() ipvs.Interface { return n.k }
	return d
}

func runIPVSLive(t *testing.T, n *ipvsNode, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := runExplain(context.Background(), args, &out, &errOut, n.deps())
	return code, out.String(), errOut.String()
}

// TestExplainIPVSLive: explain --live --mode ipvs on a node programmed by
// the IPVS Backend, intact and tampered with: what the kernel holds
// (ipvs.ListedPlan walked by ipvs.Explain, ipvs.DriftItems), the
// SVCP-IPVS-* jumps and chains, and other programs' rules before IPVS.
func TestExplainIPVSLive(t *testing.T) {
	web := ipvsArgs(exampleState, "--live", "web.shop")
	vip := netip.MustParseAddr("10.96.100.20")
	key := ipvs.ServiceKey{Address: vip, Protocol: v1.ProtocolTCP, Port: 80}
	nodePort := ipvsArgs(exampleState, "--live", "--from", "external:203.0.113.7", "192.168.0.1:30080")
	fromNode := ipvsArgs(exampleState, "--live", "--from", "node", "web.shop")
	dual := []string{"--state", dualStackState, "--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs, "--mode", "ipvs", "--live", "web.demo:http"}
	rs := func(ip string, weight int) *ipvs.RealServer {
		return &ipvs.RealServer{Address: netip.MustParseAddr(ip), Port: 8080, Weight: weight}
	}
	for _, tc := range []struct {
		name    string
		args    []string
		tamper  func(t *testing.T, n *ipvsNode)
		kinds   [][]string // per result
		details []string
		kernel  []string // per result: "verdict n-endpoints"
		textHas []string
	}{
		{
			name: "intact: the kernel agrees", args: web,
			kinds: [][]string{nil}, kernel: []string{"dnat 2"}, textHas: []string{"kernel    agrees: DNAT"},
		},
		{
			name: "a real server deleted", args: web,
			tamper: func(t *testing.T, n *ipvsNode) { must(t, n.k.DeleteDestination(key, rs("10.244.1.10", 0))) },
			kinds:  [][]string{{ipvs.DriftMissingEndpoint}}, details: []string{"endpoint 10.244.1.10:8080: missing in the kernel"},
			kernel:  []string{"dnat 1"},
			textHas: []string{"kernel    DNAT\n", "10.244.2.10:8080  p=1.0000", "            via the path above\n", "drift     missing-endpoint: endpoint 10.244.1.10:8080: missing in the kernel"},
		},
		{
			name: "a real server added by hand", args: web,
			tamper: func(t *testing.T, n *ipvsNode) { must(t, n.k.AddDestination(key, rs("10.244.9.9", 1))) },
			kinds:  [][]string{{ipvs.DriftExtraEndpoint}}, details: []string{"endpoint 10.244.9.9:8080: in the kernel (weight 1), not intended"},
			kernel: []string{"dnat 3"},
		},
		{
			name: "a weight changed", args: web,
			tamper: func(t *testing.T, n *ipvsNode) { must(t, n.k.UpdateDestination(key, rs("10.244.2.10", 3))) },
			kinds:  [][]string{{ipvs.DriftEndpointWeight}}, details: []string{"endpoint 10.244.2.10:8080: weight 3 in the kernel, 1 intended"},
			kernel: []string{"dnat 2"},
		},
		{
			name: "the scheduler changed", args: web,
			tamper: func(t *testing.T, n *ipvsNode) {
				must(t, n.k.UpdateService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "sh"}))
			},
			kinds: [][]string{{ipvs.DriftScheduler}}, details: []string{"virtual server -t 10.96.100.20:80: intended -s rr, the kernel's -s sh"},
			kernel: []string{"dnat 2"},
		},
		{
			name: "the virtual server deleted", args: web,
			tamper:  func(t *testing.T, n *ipvsNode) { must(t, n.k.DeleteService(key)) },
			kinds:   [][]string{{ipvs.DriftVerdict, ipvs.DriftMissingEndpoint, ipvs.DriftMissingEndpoint}},
			details: []string{"intended dnat (", "the kernel's no-match (no virtual server -t 10.96.100.20:80"},
			kernel:  []string{"no-match 0"},
		},
		{
			name: "the address unbound", args: web,
			tamper: func(t *testing.T, n *ipvsNode) {
				must(t, n.k.DeleteAddress(ipvs.DummyInterface, vip))
				n.addrs = slices.DeleteFunc(n.addrs, func(a netip.Addr) bool { return a == vip }) // gone from the namespace's addresses too
			},
			kinds:   [][]string{{driftNotBound, ipvs.DriftVerdict, ipvs.DriftMissingEndpoint, ipvs.DriftMissingEndpoint}},
			details: []string{"10.96.100.20 is not bound to svcproxy-ipvs0: the kernel routes packets to it away, IPVS never sees them"},
			kernel:  []string{"no-match 0"},
		},
		{
			name: "the cluster IP's set entry deleted: the filter rejects", args: web,
			tamper: func(t *testing.T, n *ipvsNode) {
				must(t, n.k.RestoreSets([]byte("del SVCP-IPVS-CLUSTER-IP 10.96.100.20,tcp:80\n")))
			},
			kinds:   [][]string{{ipvs.DriftVerdict, ipvs.DriftMissingEndpoint, ipvs.DriftMissingEndpoint}},
			details: []string{"is a service address but tcp:80 is not one of its service ports: REJECT"},
			kernel:  []string{"reject 0"},
			textHas: []string{"kernel    REJECT\n            via filter/INPUT (new connections) -> SVCP-IPVS-FILTER\n", "            ipset SVCP-IPVS-CLUSTER-IP does not have 10.96.100.20,tcp:80\n", "drift     verdict: intended dnat ("},
		},
		{
			name: "a node port's masquerade entry deleted", args: nodePort,
			tamper: func(t *testing.T, n *ipvsNode) {
				must(t, n.k.RestoreSets([]byte("del SVCP-IPVS-NODE-PORT 192.168.0.1,tcp:30080\n")))
			},
			kinds:   [][]string{{ipvs.DriftMasquerade}},
			details: []string{"intended true (a node port with externalTrafficPolicy Cluster), the kernel's false"},
			kernel:  []string{"dnat 2"},
		},
		{
			name: "the jump from filter INPUT deleted", args: web,
			tamper: func(t *testing.T, n *ipvsNode) { n.deleteRule(t, false, "filter", "INPUT", "-j SVCP-IPVS-FILTER") },
			kinds:  [][]string{{driftMissingJump}}, details: []string{"filter/INPUT has no jump to SVCP-IPVS-FILTER"},
			kernel: []string{"dnat 2"},
		},
		{
			name: "SVCP-IPVS-SERVICES flushed", args: web,
			tamper: func(t *testing.T, n *ipvsNode) { n.restore(t, false, "*nat\n-F SVCP-IPVS-SERVICES\nCOMMIT\n") },
			kinds:  [][]string{{driftChainRules}}, details: []string{"nat/SVCP-IPVS-SERVICES holds 0 rules in the kernel, 4 intended"},
			kernel: []string{"dnat 2"},
		},
		{
			name: "a foreign DROP above our jump in INPUT", args: web,
			tamper: func(t *testing.T, n *ipvsNode) {
				n.restore(t, false, "*filter\n-I INPUT -s 10.244.0.0/16 -j DROP\nCOMMIT\n")
			},
			kinds: [][]string{{driftVerdict, driftForeign}},
			details: []string{"intended DNAT; the kernel's iptables rules give DROP before IPVS sees the packet",
				"a foreign rule earlier in filter/INPUT catches the packet first: -s 10.244.0.0/16 -j DROP"},
			kernel:  []string{"drop 0"},
			textHas: []string{"kernel    DROP\n", "via nat/PREROUTING -m comment --comment svcproxy-ipvs-services -j SVCP-IPVS-SERVICES\n", "          filter/INPUT -s 10.244.0.0/16 -j DROP\n"},
		},
		{
			name: "a foreign DROP before IPVS and a real server deleted: both reported", args: web,
			tamper: func(t *testing.T, n *ipvsNode) {
				n.restore(t, false, "*filter\n-I INPUT -s 10.244.0.0/16 -j DROP\nCOMMIT\n")
				must(t, n.k.DeleteDestination(key, rs("10.244.1.10", 0)))
			},
			kinds:  [][]string{{driftVerdict, ipvs.DriftMissingEndpoint, driftForeign}},
			kernel: []string{"drop 0"},
		},
		{
			name: "a foreign DROP below ours in INPUT: our chain accepts nothing, it catches the packet all the same", args: web,
			tamper: func(t *testing.T, n *ipvsNode) { n.restore(t, false, "*filter\n-A INPUT -j DROP\nCOMMIT\n") },
			kinds:  [][]string{{driftVerdict, driftForeign}}, details: []string{"a foreign rule in filter/INPUT catches the packet: -j DROP"},
			kernel: []string{"drop 0"},
		},
		{
			name: "INPUT's policy DROP", args: web,
			tamper: func(t *testing.T, n *ipvsNode) { n.restore(t, false, "*filter\n:INPUT DROP [0:0]\nCOMMIT\n") },
			kinds:  [][]string{{driftVerdict, driftForeignPolicy}}, details: []string{"the policy of filter/INPUT, DROP, decides the packet"},
			kernel: []string{"drop 0"},
		},
		{
			name: "a foreign rule explain cannot evaluate, above our jump", args: web,
			tamper: func(t *testing.T, n *ipvsNode) {
				n.foreign[false] = append(n.foreign[false], "*filter\n-I INPUT 1 -m physdev --physdev-is-bridged -j DROP\nCOMMIT\n")
			},
			kinds:   [][]string{{driftForeignMay}},
			details: []string{"a foreign rule earlier in filter/INPUT may catch the packet first: -m physdev --physdev-is-bridged -j DROP (explain cannot tell whether it matches)"},
			kernel:  []string{"dnat 2"},
		},
		{
			name: "other programs' rules that change nothing: no drift", args: web,
			tamper: func(t *testing.T, n *ipvsNode) {
				n.foreign[false] = append(n.foreign[false],
					"*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -p udp -m udp --dport 4789 -j CT --notrack\nCOMMIT\n",
					"*filter\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n-A INPUT -m conntrack --ctstate INVALID -j DROP\n-A FORWARD -j DROP\nCOMMIT\n",
					"*nat\n-A POSTROUTING -s 10.88.0.0/16 ! -d 10.88.0.0/16 -j MASQUERADE\nCOMMIT\n")
			},
			kinds: [][]string{nil}, kernel: []string{"dnat 2"},
		},
		{
			name: "kube-proxy's leftovers jumped to before ours DNAT to an old endpoint", args: web,
			tamper: func(t *testing.T, n *ipvsNode) {
				n.restore(t, false, "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.100.20/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.9.9:8080\n"+
					"-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n")
			},
			kinds: [][]string{{driftLeftover, driftMissingEP, driftMissingEP, driftExtraEP, driftForeign}},
			details: []string{"nat/PREROUTING jumps to kube-proxy's KUBE-SERVICES before svcproxy's jump",
				"10.244.1.10:8080 (p=0.5000 intended) is never reached: the kernel's iptables rules DNAT the packet to 10.244.9.9:8080 before IPVS sees it",
				"the kernel's iptables rules DNAT to 10.244.9.9:8080 before IPVS sees the packet, which is no endpoint of this port now",
				"a foreign rule in nat/KUBE-SERVICES catches the packet"},
			kernel: []string{"dnat 1"},
		},
		{
			name: "from the node: filter OUTPUT sees the real server's address, a DROP of the service address there never matches", args: fromNode,
			tamper: func(t *testing.T, n *ipvsNode) {
				n.restore(t, false, "*filter\n-I OUTPUT -d 10.96.100.20/32 -j DROP\nCOMMIT\n")
			},
			kinds: [][]string{nil}, kernel: []string{"dnat 2"},
		},
		{
			name: "from the node: a REDIRECT in nat OUTPUT comes before IPVS", args: fromNode,
			tamper: func(t *testing.T, n *ipvsNode) {
				n.foreign[false] = append(n.foreign[false], "*nat\n-I OUTPUT 1 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15001\nCOMMIT\n")
			},
			kinds:   [][]string{{driftVerdict, driftForeign}},
			details: []string{"intended DNAT; the kernel's iptables rules give UNKNOWN before IPVS sees the packet", "earlier in nat/OUTPUT catches the packet first: -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15001 (its target is one explain does not follow)"},
			kernel:  []string{"unknown 0"},
		},
		{
			name: "no IPVS in the kernel", args: web,
			tamper:  func(t *testing.T, n *ipvsNode) { n.k.NoIPVS = true },
			kinds:   [][]string{{driftNoIPVS, ipvs.DriftVerdict, ipvs.DriftMissingEndpoint, ipvs.DriftMissingEndpoint}},
			details: []string{"the kernel has no IPVS (ip_vs is not loaded)"},
			kernel:  []string{"no-match 0"},
		},
		{
			name: "dual-stack: both families agree", args: dual,
			kinds: [][]string{nil, nil}, kernel: []string{"dnat 2", "dnat 2"},
		},
		{
			name: "dual-stack: an IPv6 real server deleted", args: dual,
			tamper: func(t *testing.T, n *ipvsNode) {
				must(t, n.k.DeleteDestination(ipvs.ServiceKey{Address: netip.MustParseAddr("fd00:10:96::a"), Protocol: v1.ProtocolTCP, Port: 80}, rs("fd00:10:244:1::10", 0)))
			},
			kinds: [][]string{nil, {ipvs.DriftMissingEndpoint}}, details: []string{"endpoint [fd00:10:244:1::10]:8080: missing in the kernel"},
			kernel: []string{"dnat 2", "dnat 1"},
		},
		{
			name: "dual-stack: the IPv6 jump from nat PREROUTING deleted", args: dual,
			tamper: func(t *testing.T, n *ipvsNode) { n.deleteRule(t, true, "nat", "PREROUTING", "-j SVCP-IPVS-SERVICES") },
			kinds:  [][]string{nil, {driftMissingJump}}, details: []string{"nat/PREROUTING has no jump to SVCP-IPVS-SERVICES"},
			kernel: []string{"dnat 2", "dnat 2"},
		},
		{
			name: "dual-stack, IPv6 disabled in the kernel", args: dual,
			tamper: func(t *testing.T, n *ipvsNode) { must(t, n.k.SetSysctl("net/ipv6/conf/all/disable_ipv6", "1")) },
			kinds:  [][]string{nil, {driftNoIPv6}}, details: []string{"IPv6 is disabled (net.ipv6.conf.all.disable_ipv6=1): svcproxy programs no IPv6 in IPVS mode here"},
			kernel: []string{"dnat 2", ""},
		},
		{
			name: "dual-stack without ip6tables", args: dual,
			tamper: func(t *testing.T, n *ipvsNode) { n.no6 = true },
			kinds:  [][]string{nil, {driftNoIP6tables}}, details: []string{"svcproxy programs no IPv6 in IPVS mode"},
			kernel: []string{"dnat 2", ""},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newIPVSNode(t, tc.args[:len(tc.args)-1]...)
			if tc.tamper != nil {
				tc.tamper(t, n)
			}
			wantCode := explainOK
			for _, ks := range tc.kinds {
				if len(ks) > 0 {
					wantCode = explainDrift
				}
			}
			code, out, errOut := runIPVSLive(t, n, append(tc.args, "-o", "json")...)
			if code != wantCode {
				t.Fatalf("-o json: exit %d, want %d; stderr:\n%s\nstdout:\n%s", code, wantCode, errOut, out)
			}
			var x explanation
			if err := json.Unmarshal([]byte(out), &x); err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
			if !x.Live || x.Mode != "ipvs" || len(x.Results) != len(tc.kinds) {
				t.Fatalf("live %v, mode %s, %d results, want %d:\n%s", x.Live, x.Mode, len(x.Results), len(tc.kinds), out)
			}
			checkDriftJSON(t, x, tc.kinds, tc.kernel, tc.details)
			code, text, _ := runIPVSLive(t, n, tc.args...)
			checkDriftText(t, code, wantCode, text, tc.textHas, tc.kinds)
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestExplainIPVSLiveErrors: what keeps explain from reading IPVS mode's
// state or the iptables rules is exit status 2, said on stderr.
func TestExplainIPVSLiveErrors(t *testing.T) {
	web := ipvsArgs(exampleState, "--live", "web.shop")
	for _, tc := range []struct {
		name   string
		tamper func(n *ipvsNode)
		want   string
	}{
		{"the virtual servers cannot be listed", func(n *ipvsNode) { n.k.FailNext("ListServices", errors.New("netlink: permission denied")) },
			"reading this node's rules: IPVS mode's state: listing virtual servers: netlink: permission denied"},
		{"the ipsets cannot be listed", func(n *ipvsNode) {
			n.k.FailNext("ListSets", errors.New(`exec: "ipset": executable file not found in $PATH`))
		},
			"reading this node's rules: IPVS mode's state: listing ipsets: exec: \"ipset\""},
		{"the dummy link's addresses cannot be listed", func(n *ipvsNode) { n.k.FailNext("ListAddresses", errors.New("netlink: operation not permitted")) },
			"reading this node's rules: the addresses of svcproxy-ipvs0: netlink: operation not permitted"},
		{"iptables-save fails", func(n *ipvsNode) { n.saveErr = errors.New("iptables-nft-save: exit status 1") },
			"reading this node's rules: iptables-nft-save: exit status 1"},
		{"the namespace's addresses cannot be listed", func(n *ipvsNode) { n.addrErr = errors.New("netlink: permission denied") },
			"reading this node's rules: this node's addresses: netlink: permission denied"},
		{"rules the kernel would never have taken", func(n *ipvsNode) {
			n.raw[false] = "*filter\n:INPUT ACCEPT [0:0]\n:X - [0:0]\n-A INPUT -j X\n-A X -p tcp -j DNAT --to-destination 10.244.1.1:80\nCOMMIT\n"
		}, "reading this node's rules: tracing 10.244.255.254 -> 10.96.100.20:80 through the kernel's rules"},
	} {
		for _, args := range [][]string{web, ipvsArgs(exampleState, "--live", "--all")} {
			t.Run(tc.name+" "+args[len(args)-1], func(t *testing.T) {
				n := newIPVSNode(t, common(exampleState)...)
				tc.tamper(n)
				code, out, errOut := runIPVSLive(t, n, args...)
				want := tc.want
				if args[len(args)-1] == "--all" {
					want = strings.Split(want, ": tracing")[0]
				}
				if code != explainUsage || out != "" || !strings.Contains(errOut, want) {
					t.Errorf("exit %d (want %d), stdout %q, stderr:\n%s\nwant %q", code, explainUsage, out, errOut, want)
				}
			})
		}
	}
	// The kernel is listed once for every result: kube-dns has two ports.
	n := newIPVSNode(t, common(exampleState)...)
	n.k.ResetCalls()
	if code, _, errOut := runIPVSLive(t, n, ipvsArgs(exampleState, "--live", "kube-dns.kube-system")...); code != 0 || n.saves != 1 {
		t.Errorf("exit %d after %d reads of the iptables rules; stderr:\n%s", code, n.saves, errOut)
	}
	for _, c := range n.k.Calls() {
		if !strings.HasPrefix(c, "List") {
			t.Errorf("explain --live changed the kernel: %s", c)
		}
	}
}

// TestExplainIPVSAll: --live --all in IPVS mode, every service port and
// the node's SVCP-IPVS-* jumps and chains and virtual servers.
func TestExplainIPVSAll(t *testing.T) {
	example := ipvsArgs(exampleState, "--live", "--all")
	dual := []string{"--state", dualStackState, "--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs, "--mode", "ipvs", "--live", "--all"}
	for _, tc := range []struct {
		name    string
		args    []string
		tamper  func(t *testing.T, n *ipvsNode)
		code    int
		lines   []string
		summary string
		check   func(t *testing.T, rep *allReport)
	}{
		{
			name: "intact", args: example, code: explainOK,
			lines: []string{
				"ok     shop/web:http/TCP IPv4  cluster IP 10.96.100.20:80 DNAT 2 endpoints; node port 192.168.0.1:30080 DNAT 2 endpoints; external IP 192.0.2.50:80 DNAT 2 endpoints",
				"ok     shop/payments:grpc/TCP IPv4  cluster IP 10.96.100.40:9090 REJECT",
				"ok     blog/frontend:http/TCP IPv4  cluster IP 10.96.200.10:80 DNAT",
			},
			summary: "service ports checked on node1 (",
			check: func(t *testing.T, rep *allReport) {
				// The addresses on the dummy link are listed first, yet
				// they are no node address for node ports.
				s := rep.Summary
				if rep.Mode != "ipvs" || s.Ports == 0 || s.Agree != s.Ports || s.NodeDrift != 0 {
					t.Errorf("mode %s, summary %+v, node drift %v", rep.Mode, s, rep.Drift)
				}
			},
		},
		{
			name: "a real server deleted", args: example, code: explainDrift,
			tamper: func(t *testing.T, n *ipvsNode) {
				must(t, n.k.DeleteDestination(ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.100.20"), Protocol: v1.ProtocolTCP, Port: 80},
					&ipvs.RealServer{Address: netip.MustParseAddr("10.244.1.10"), Port: 8080}))
			},
			lines: []string{
				"DRIFT  shop/web:http/TCP IPv4  cluster IP 10.96.100.20:80 DNAT 2 endpoints; node port 192.168.0.1:30080 DNAT 2 endpoints",
				"         cluster IP 10.96.100.20:80: missing-endpoint: endpoint 10.244.1.10:8080: missing in the kernel",
			},
			summary: "1 differ; the node's jumps and chains agree",
		},
		{
			name: "a virtual server nobody intends, a jump deleted", args: example, code: explainDrift,
			tamper: func(t *testing.T, n *ipvsNode) {
				must(t, n.k.AddService(&ipvs.VirtualServer{ServiceKey: ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.100.20"), Protocol: v1.ProtocolTCP, Port: 81}, Scheduler: "rr"}))
				n.deleteRule(t, false, "nat", "OUTPUT", "-j SVCP-IPVS-SERVICES")
			},
			lines: []string{
				"ok     shop/web:http/TCP IPv4",
				"DRIFT  node IPv4: missing-jump: nat/OUTPUT has no jump to SVCP-IPVS-SERVICES",
				"DRIFT  node IPv4: extra-virtual-server: the kernel has the virtual server -t 10.96.100.20:81 (0 real servers) that svcproxy does not intend",
			},
			summary: "0 differ; 2 differences in the node's jumps and chains",
		},
		{
			name: "no IPVS in the kernel", args: example, code: explainDrift,
			tamper: func(t *testing.T, n *ipvsNode) { n.k.NoIPVS = true },
			lines: []string{
				"DRIFT  shop/web:http/TCP IPv4",
				"         cluster IP 10.96.100.20:80: no-ipvs: the kernel has no IPVS",
				"DRIFT  node IPv4: no-ipvs: the kernel has no IPVS",
			},
			summary: "0 agree",
		},
		{
			name: "dual-stack, intact", args: dual, code: explainOK,
			lines: []string{"ok     demo/web:http/TCP IPv6  cluster IP [fd00:10:96::a]:80 DNAT 2 endpoints"},
			check: func(t *testing.T, rep *allReport) {
				if rep.Summary.IPv6 == 0 || rep.Summary.Differ != 0 {
					t.Errorf("summary %+v", rep.Summary)
				}
			},
		},
		{
			name: "dual-stack, IPv6 disabled: the IPv6 ports say so, no IPv6 node drift", args: dual, code: explainDrift,
			tamper: func(t *testing.T, n *ipvsNode) {
				must(t, n.k.SetSysctl("net/ipv6/conf/all/disable_ipv6", "1"))
				n.restore(t, true, "*filter\n-F SVCP-IPVS-FILTER\nCOMMIT\n") // not judged
			},
			lines:   []string{"ok     demo/web:http/TCP IPv4", "DRIFT  demo/web:http/TCP IPv6", "         cluster IP [fd00:10:96::a]:80: no-ipv6: IPv6 is disabled"},
			summary: "the node's jumps and chains agree",
		},
		{
			name: "dual-stack, an IPv6 chain flushed", args: dual, code: explainDrift,
			tamper: func(t *testing.T, n *ipvsNode) { n.restore(t, true, "*filter\n-F SVCP-IPVS-FILTER\nCOMMIT\n") },
			lines:  []string{"DRIFT  node IPv6: chain-rules: filter/SVCP-IPVS-FILTER holds 0 rules in the kernel, 4 intended"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newIPVSNode(t, tc.args[:len(tc.args)-2]...)
			if tc.tamper != nil {
				tc.tamper(t, n)
			}
			code, text, errOut := runIPVSLive(t, n, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s\nstdout:\n%s", code, tc.code, errOut, text)
			}
			lines := strings.Split(text, "\n")
			for _, l := range tc.lines {
				if !slices.ContainsFunc(lines, func(s string) bool { return strings.HasPrefix(s, l) }) {
					t.Errorf("no line starts with %q:\n%s", l, text)
				}
			}
			if !strings.Contains(text, tc.summary) {
				t.Errorf("summary lacks %q:\n%s", tc.summary, text)
			}
			code, out, _ := runIPVSLive(t, n, append(tc.args, "-o", "json")...)
			var rep allReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil || code != tc.code {
				t.Fatalf("-o json: exit %d, %v:\n%s", code, err, out)
			}
			if tc.check != nil {
				tc.check(t, &rep)
			}
		})
	}
}

// TestExplainIPVSUnloadableRules: rules that cannot be read or walked —
// never svcproxy's own, but the code says so rather than guess.
func TestExplainIPVSUnloadableRules(t *testing.T) {
	x := &explainer{}
	x.ipvs.plan = &ipvs.Plan{IPTables: &iptables.Plan{Jumps: []iptables.Jump{{Table: iptables.TableFilter, Chain: "NOPE", Args: []string{"-j", "ACCEPT"}}}}}
	if _, err := x.ipvsRules(false); err == nil || !strings.Contains(err.Error(), "IPVS mode's rendered rules do not load") {
		t.Errorf("rules with a jump from a chain that does not exist: %v", err)
	}
	if rs, err := x.ipvsRules(true); rs != nil || err != nil {
		t.Errorf("a family not programmed: %v, %v", rs, err)
	}

	sp := &proxy.ServicePort{Protocol: v1.ProtocolTCP}
	d := dest{sp: sp, dst: netip.MustParseAddrPort("10.96.0.1:80"), via: viaClusterIP}
	x.src = from{kind: fromNode}
	broken, err := trace.ParseLive("*nat\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:X - [0:0]\n-A POSTROUTING -j X\n-A X -p tcp -j DNAT --to-destination 10.244.1.1:80\nCOMMIT\n", false)
	must(t, err)
	fine, err := trace.ParseLive("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n", false)
	must(t, err)
	src := netip.MustParseAddr("192.168.0.1")
	if _, _, err := x.ipvsFirewallDrift(d, src, broken, fine); err == nil || !strings.Contains(err.Error(), "through IPVS mode's rules: nat/X rule 1") {
		t.Errorf("intended rules that cannot be walked: %v", err)
	}
	var ke *kernelError
	if _, _, err := x.ipvsFirewallDrift(d, src, fine, broken); !errors.As(err, &ke) || !strings.Contains(err.Error(), "through the kernel's rules: nat/X rule 1") {
		t.Errorf("kernel rules that cannot be walked: %v", err)
	}
}
