package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/config"
	"github.com/svcproxy/svcproxy/proxy/source"
)

// The states the tests explain.
const (
	exampleState = "../../../examples/cluster.yaml"
	scenarios    = "../../../testdata/scenarios/"
	explainState = "testdata/explain.yaml"
)

// noAPI is the API client of the --state tests: asking for it fails.
func noAPI(*config.Config) (kubernetes.Interface, error) {
	return nil, errors.New("no API server in this test")
}

// runExplainArgs runs explain with the state, node1 and the cluster CIDR
// unless args set them.
func runExplainArgs(t *testing.T, client newKubeClient, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := runExplain(context.Background(), args, &out, &errOut, explainDeps{newClient: client})
	return code, out.String(), errOut.String()
}

// common returns the flags every case uses, for state.
func common(state string) []string {
	return []string{"--state", state, "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16"}
}

// want is what one result must say.
type want struct {
	service, via string
	verdict      string
	reason       string   // a substring
	endpoints    []string // "ip:port p node [local] [masq]", sorted by address
	masq         bool
	masqReason   string   // a substring; "" when there is no DNAT
	path         []string // chain name prefixes that must be on the path, in order
}

// wantFields is want without its String method, for printing.
type wantFields want

func (w want) String() string { return fmt.Sprintf("%+v", wantFields(w)) }

// got turns a result into a want, keeping the substrings w looks for.
func got(r portResult, w want) want {
	g := want{service: r.Service, via: r.Via, verdict: r.Verdict, masq: r.Masquerade}
	if strings.Contains(r.Reason, w.reason) {
		g.reason = w.reason
	} else {
		g.reason = r.Reason
	}
	if strings.Contains(r.MasqueradeReason, w.masqReason) && (w.masqReason != "" || r.MasqueradeReason == "") {
		g.masqReason = w.masqReason
	} else {
		g.masqReason = r.MasqueradeReason
	}
	for _, e := range r.Endpoints {
		s := fmt.Sprintf("%s %g %s", endpointAddr(e), e.Probability, e.Node)
		if e.Local {
			s += " local"
		}
		if e.Masquerade {
			s += " masq"
		}
		g.endpoints = append(g.endpoints, s)
	}
	i := 0
	for _, c := range r.Path {
		if i < len(w.path) && strings.HasPrefix(c, w.path[i]) {
			i++
		}
	}
	g.path = w.path[:i]
	if i < len(w.path) {
		g.path = append(slices.Clone(g.path), "MISSING "+w.path[i]+" in "+strings.Join(r.Path, " "))
	}
	return g
}

// Paths through the chains, as prefixes.
var (
	podToService = []string{"nat/PREROUTING", "nat/SVCP-SERVICES", "nat/SVCP-DISPATCH", "nat/SVCP-SVC-", "filter/FORWARD", "nat/POSTROUTING"}
	podRejected  = []string{"nat/PREROUTING", "filter/FORWARD", "filter/SVCP-FILTER"}
)

func TestExplain(t *testing.T) {
	np := []string{"--node-ip", "192.168.0.1,172.16.0.1"}
	for _, tc := range []struct {
		name     string
		args     []string
		dns      string // a substring of the text's dns line
		want     []want
		notes    []string // substrings of the notes
		textHas  []string // more substrings of the text output
		jsonDNS  func(t *testing.T, d *dnsAnswer)
		noCommon bool
	}{
		{
			name: "cluster IP by name from a pod: DNAT to the ready endpoints, none terminating, no masquerade",
			args: append(common(exampleState), "web.shop"),
			dns:  "web.shop.svc.cluster.local -> 10.96.100.20",
			want: []want{{service: "shop/web", via: viaClusterIP, verdict: verdictDNAT,
				reason:     "2 ready endpoints; 1 terminating, unused while others are ready",
				endpoints:  []string{"10.244.1.10:8080 0.5 node1 local", "10.244.2.10:8080 0.5 node2"},
				masqReason: "inside --cluster-cidr 10.244.0.0/16", path: podToService}},
			textHas: []string{"kube-system/kube-dns (10.96.0.10) has 2 ready endpoints", "a stand-in address in --cluster-cidr 10.244.0.0/16",
				"path      to 10.244.1.10:8080, one of 2"},
			jsonDNS: func(t *testing.T, d *dnsAnswer) {
				if !d.KubeDNS.Found || d.KubeDNS.ReadyEndpoints != 2 || !slices.Equal(d.Addresses, []string{"10.96.100.20"}) {
					t.Errorf("dns = %+v", d)
				}
			},
		},
		{
			name: "no endpoints: REJECT",
			args: append(common(exampleState), "payments.shop:grpc"),
			want: []want{{service: "shop/payments", via: viaClusterIP, verdict: verdictReject, reason: "no endpoints: the Service has no IPv4 endpoint at all", path: podRejected}},
		},
		{
			name: "only terminating endpoints, none serving: REJECT",
			args: append(common(explainState), "gone.b"),
			want: []want{{service: "b/gone", via: viaClusterIP, verdict: verdictReject, reason: "only terminating endpoints: all 2 are shutting down and none is serving", path: podRejected}},
		},
		{
			name: "endpoints neither ready nor serving: REJECT",
			args: append(common(scenarios+"no-endpoints.yaml"), "notready.shop"),
			want: []want{{service: "shop/notready", via: viaClusterIP, verdict: verdictReject, reason: "no ready endpoints: 1 not ready, 1 terminating and not serving", path: podRejected}},
		},
		{
			name: "node port without endpoints: REJECT from outside too",
			args: append(common(scenarios+"no-endpoints.yaml"), "--node-ip", "192.168.0.1", "--from", "external:203.0.113.7", "192.168.0.1:30120"),
			want: []want{{service: "shop/np", via: viaNodePort, verdict: verdictReject, reason: "no endpoints", path: []string{"nat/PREROUTING", "filter/INPUT", "filter/SVCP-FILTER"}}},
		},
		{
			name: "serving terminating endpoints get the traffic when none is ready",
			args: append(common(scenarios+"terminating-only.yaml"), "draining.shop"),
			want: []want{{service: "shop/draining", via: viaClusterIP, verdict: verdictDNAT,
				reason:     "no endpoint is ready: 2 endpoints, serving but terminating, get the traffic",
				endpoints:  []string{"10.244.1.90:8080 0.5 node1 local", "10.244.2.90:8080 0.5 node2"},
				masqReason: "inside --cluster-cidr", path: podToService}},
		},
		{
			name: "internalTrafficPolicy Local with a local endpoint: that one only",
			args: append(common(scenarios+"itp-local.yaml"), "local.shop"),
			want: []want{{service: "shop/local", via: viaClusterIP, verdict: verdictDNAT, reason: "internalTrafficPolicy Local: this node's endpoints only; 1 ready endpoint",
				endpoints: []string{"10.244.1.40:8080 1 node1 local"}, masqReason: "inside --cluster-cidr", path: []string{"nat/SVCP-DISPATCH", "nat/SVCP-SVL-"}}},
		},
		{
			name: "internalTrafficPolicy Local and no local endpoint: DROP",
			args: append(common(scenarios+"itp-local.yaml"), "remote.shop"),
			want: []want{{service: "shop/remote", via: viaClusterIP, verdict: verdictDrop, reason: "internalTrafficPolicy Local and no endpoint on node1 (1 on other nodes)", path: podRejected}},
		},
		{
			name: "externalTrafficPolicy Local and no local endpoint: DROP from outside",
			args: append(common(scenarios+"etp-local.yaml"), append(np, "--from", "external:203.0.113.7", "192.168.0.1:30091")...),
			want: []want{{service: "shop/remote", via: viaNodePort, verdict: verdictDrop, reason: "externalTrafficPolicy Local and no endpoint on node1 (1 on other nodes)",
				path: []string{"nat/PREROUTING", "nat/SVCP-NODEPORTS", "filter/INPUT", "filter/SVCP-FILTER"}}},
		},
		{
			name: "externalTrafficPolicy Local from a pod: every endpoint, no masquerade",
			args: append(common(scenarios+"etp-local.yaml"), append(np, "--from", "pod:10.244.1.5", "192.168.0.1:30091")...),
			want: []want{{service: "shop/remote", via: viaNodePort, verdict: verdictDNAT, reason: "traffic from pods and from the node itself goes to every endpoint",
				endpoints: []string{"10.244.2.31:8080 1 node2"}, masqReason: "traffic from a pod keeps its address", path: []string{"nat/SVCP-NODEPORTS", "nat/SVCP-EXT-", "nat/SVCP-SVC-"}}},
		},
		{
			name: "externalTrafficPolicy Local from the node itself: masqueraded",
			args: append(common(scenarios+"etp-local.yaml"), append(np, "--from", "node", "192.168.0.1:30091")...),
			want: []want{{service: "shop/remote", via: viaNodePort, verdict: verdictDNAT, reason: "goes to every endpoint",
				endpoints: []string{"10.244.2.31:8080 1 node2 masq"}, masq: true, masqReason: "traffic from the node itself to an externalTrafficPolicy Local address is masqueraded",
				path: []string{"nat/OUTPUT", "nat/SVCP-NODEPORTS", "nat/SVCP-EXT-", "nat/SVCP-SVC-"}}},
		},
		{
			name: "externalTrafficPolicy Local, source allowed by loadBalancerSourceRanges: the local endpoint, client address kept",
			args: append(common(exampleState), "--from", "external:198.51.100.7", "203.0.113.10:80/tcp"),
			want: []want{{service: "blog/frontend", via: viaLBIP, verdict: verdictDNAT, reason: "externalTrafficPolicy Local: this node's endpoints only; 1 ready endpoint",
				endpoints: []string{"10.244.1.30:8080 1 node1 local"}, masqReason: "externalTrafficPolicy Local: the endpoint sees the client's address",
				path: []string{"nat/SVCP-DISPATCH", "nat/SVCP-FW-", "nat/SVCP-EXT-", "nat/SVCP-SVL-"}}},
		},
		{
			name: "source not in loadBalancerSourceRanges: DROP",
			args: append(common(exampleState), "--from", "external:203.0.113.7", "203.0.113.10:80"),
			want: []want{{service: "blog/frontend", via: viaLBIP, verdict: verdictDrop, reason: "source 203.0.113.7 not in loadBalancerSourceRanges 198.51.100.0/24",
				path: []string{"nat/SVCP-FW-", "filter/FORWARD", "filter/SVCP-FILTER"}}},
		},
		{
			name: "loadBalancerSourceRanges of the other family only: no client may connect",
			args: []string{"--state", scenarios + "dual-stack.yaml", "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56",
				"--from", "external:192.168.50.7", "203.0.113.11:80/tcp"},
			want: []want{{service: "demo/lb6", via: viaLBIP, verdict: verdictDrop, reason: "they hold no IPv4 range, so no IPv4 client may connect"}},
		},
		{
			name: "node port from outside, externalTrafficPolicy Cluster: masqueraded",
			args: append(common(scenarios+"nodeport.yaml"), append(np, "--from", "external:203.0.113.7", "192.168.0.1:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictDNAT, reason: "ready endpoint",
				endpoints: []string{"10.244.1.20:8080 0.5 node1 local masq", "10.244.2.20:8080 0.5 node2 masq"}, masq: true,
				masqReason: "externalTrafficPolicy Cluster: traffic to a node port is masqueraded", path: []string{"nat/PREROUTING", "nat/SVCP-NODEPORTS", "nat/SVCP-SVC-", "nat/SVCP-POSTROUTING"}}},
		},
		{
			name: "nodePort not on an allowed address: no rule takes it",
			args: append(common(scenarios+"nodeport.yaml"), append(np, "--nodeport-addresses", "192.168.0.0/24", "--from", "external:203.0.113.7", "172.16.0.1:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictNoMatch, reason: "nodePort not on an allowed address: 172.16.0.1 is not within --nodeport-addresses 192.168.0.0/24"}},
		},
		{
			name: "node port on loopback: no rule takes it",
			args: append(common(scenarios+"nodeport.yaml"), append(np, "--from", "node", "127.0.0.1:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictNoMatch, reason: "node ports do not answer on loopback addresses"}},
		},
		{
			name: "node port on another node's address: routed on",
			args: append(common(scenarios+"nodeport.yaml"), append(np, "--from", "external:203.0.113.7", "192.168.0.2:30080")...),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictNoMatch, reason: "192.168.0.2 is not an address of node1"}},
		},
		{
			name:  "node port with no node address known: the target's is taken as the node's",
			args:  append(common(scenarios+"nodeport.yaml"), "--from", "external:203.0.113.7", "192.168.0.1:30080"),
			want:  []want{{service: "shop/web", via: viaNodePort, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.20:8080 0.5 node1 local masq", "10.244.2.20:8080 0.5 node2 masq"}, masq: true, masqReason: "externalTrafficPolicy Cluster"}},
			notes: []string{"192.168.0.1 is taken to be an address of node1"},
		},
		{
			name: "external IP from outside: masqueraded",
			args: append(common(scenarios+"external-ips.yaml"), "--from", "external:203.0.113.7", "192.0.2.11:80"),
			want: []want{{service: "shop/legacy", via: viaExternalIP, verdict: verdictDNAT, reason: "ready endpoint", endpoints: []string{"10.244.1.70:8080 0.5 node1 local masq", "10.244.2.70:8080 0.5 node2 masq"},
				masq: true, masqReason: "externalTrafficPolicy Cluster: traffic to a external IP"}},
		},
		{
			name: "cluster IP from the node: masqueraded; its address from the Node in the state",
			args: append(common(explainState), "--from", "node", "b/web:80"),
			want: []want{{service: "b/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.2.10:8080 0.5 node2 masq", "10.244.2.11:8080 0.5 node2 masq"},
				masq: true, masqReason: "the source 192.168.0.1 is outside --cluster-cidr 10.244.0.0/16", path: []string{"nat/OUTPUT", "nat/SVCP-SVC-", "filter/OUTPUT", "nat/POSTROUTING"}}},
			textHas: []string{"node1 itself (192.168.0.1)"},
		},
		{
			name: "--masquerade-all",
			args: append(common(explainState), "--masquerade-all", "--from", "pod:10.244.1.5", "web.b.svc"),
			want: []want{{service: "b/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.2.10:8080 0.5 node2 masq", "10.244.2.11:8080 0.5 node2 masq"},
				masq: true, masqReason: "--masquerade-all"}},
		},
		{
			name: "a pod reaching itself: masqueraded on that path only (hairpin); affinity",
			args: append(common(exampleState), "--from", "pod:10.244.1.20", "cart.shop.svc.cluster.local"),
			want: []want{{service: "shop/cart", via: viaClusterIP, verdict: verdictDNAT, reason: "sessionAffinity ClientIP: a client keeps the endpoint it got for 600 s",
				endpoints: []string{"10.244.1.20:8080 0.5 node1 local masq", "10.244.2.20:8080 0.5 node2"}, masq: true, masqReason: "only when the pod reaches itself (10.244.1.20): hairpin",
				path: []string{"nat/SVCP-SVC-", "nat/SVCP-HAIRPIN"}}},
		},
		{
			name:  "a pod on another node: this node's rules, with a note",
			args:  append(common(explainState), "-n", "b", "--from", "remote-pod:10.244.2.5", "web"),
			want:  []want{{service: "b/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.2.10:8080 0.5 node2", "10.244.2.11:8080 0.5 node2"}, masqReason: "inside --cluster-cidr"}},
			notes: []string{"a pod on another node reaches a cluster IP through its own node's rules"},
		},
		{
			name:    "a name across namespaces from a pod's search path; kube-dns without a ready endpoint",
			args:    append(common(explainState), "-n", "a", "web.b:http"),
			dns:     "web.b.svc.cluster.local -> 10.96.5.10",
			want:    []want{{service: "b/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.2.10:8080 0.5 node2", "10.244.2.11:8080 0.5 node2"}, masqReason: "inside"}},
			textHas: []string{"kube-system/kube-dns (10.96.0.10) has no ready endpoint: names do not resolve"},
			jsonDNS: func(t *testing.T, d *dnsAnswer) {
				if !d.KubeDNS.Found || d.KubeDNS.ReadyEndpoints != 0 {
					t.Errorf("kubeDNS = %+v", d.KubeDNS)
				}
			},
		},
		{
			name: "headless: DNS gives the ready endpoints, no rule",
			args: append(common(explainState), "db.b"),
			dns:  "db.b.svc.cluster.local -> 10.244.2.50",
			want: []want{{service: "b/db", verdict: verdictNoMatch, reason: "headless Service (clusterIP None)"}},
		},
		{
			name: "ExternalName: DNS gives the CNAME, no rule",
			args: append(common(exampleState), "cdn.blog"),
			dns:  "cdn.blog.svc.cluster.local -> CNAME cdn.example.com",
			want: []want{{service: "blog/cdn", verdict: verdictNoMatch, reason: "ExternalName Service"}},
			jsonDNS: func(t *testing.T, d *dnsAnswer) {
				if d.CNAME != "cdn.example.com" {
					t.Errorf("cname = %q", d.CNAME)
				}
			},
		},
		{
			name: "a Service another proxy handles",
			args: append(common(explainState), "other.b"),
			want: []want{{service: "b/other", verdict: verdictNoMatch, reason: "service.kubernetes.io/service-proxy-name=elsewhere hands it to another proxy"}},
		},
		{
			name: "an address with two protocols: both ports",
			args: append(common(exampleState), "10.96.0.10:53"),
			want: []want{
				{service: "kube-system/kube-dns", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.2:53 0.5 node1 local", "10.244.2.2:53 0.5 node2"}, masqReason: "inside"},
				{service: "kube-system/kube-dns", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.2:53 0.5 node1 local", "10.244.2.2:53 0.5 node2"}, masqReason: "inside"},
			},
		},
		{
			name:    "an address and a protocol: that port only",
			args:    append(common(exampleState), "10.96.0.10:53/UDP"),
			want:    []want{{service: "kube-system/kube-dns", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.2:53 0.5 node1 local", "10.244.2.2:53 0.5 node2"}, masqReason: "inside"}},
			textHas: []string{"kube-system/kube-dns port dns UDP IPv4 via cluster IP 10.96.0.10:53"},
		},
		{
			name: "dual-stack name: both families",
			args: []string{"--state", scenarios + "dual-stack.yaml", "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "web.demo:http"},
			dns:  "web.demo.svc.cluster.local -> 10.96.10.10, fd00:10:96::a",
			want: []want{
				{service: "demo/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.10:8080 0.5 node1 local", "10.244.1.11:8080 0.5 node1 local"}, masqReason: "inside --cluster-cidr 10.244.0.0/16"},
				{service: "demo/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"[fd00:10:244:1::10]:8080 0.5 node1 local", "[fd00:10:244:1::11]:8080 0.5 node1 local"}, masqReason: "inside --cluster-cidr fd00:10:244::/56"},
			},
			textHas: []string{"no Service kube-system/kube-dns in the state", "demo/web port http TCP IPv6 via cluster IP [fd00:10:96::a]:80"},
		},
		{
			name: "dual-stack name, IPv4 source: IPv6 not traced",
			args: []string{"--state", scenarios + "dual-stack.yaml", "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--from", "pod:10.244.1.5", "demo/web:http"},
			want: []want{
				{service: "demo/web", via: viaClusterIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.10:8080 0.5 node1 local", "10.244.1.11:8080 0.5 node1 local"}, masqReason: "inside"},
			},
			notes: []string{"IPv6 not traced: the source 10.244.1.5 is not IPv6"},
		},
		{
			name: "IPv6 load-balancer IP from an allowed client",
			args: []string{"--state", scenarios + "dual-stack.yaml", "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--from", "external:2001:db8:50::7", "[2001:db8:ffff::10]:80/tcp"},
			want: []want{{service: "demo/lb", via: viaLBIP, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"[fd00:10:244:1::10]:8080 0.5 node1 local masq", "[fd00:10:244:1::11]:8080 0.5 node1 local masq"}, masq: true, masqReason: "externalTrafficPolicy Cluster"}},
		},
		{
			name: "one endpoint ready, one not",
			args: append(common(explainState), "mixed.b"),
			want: []want{{service: "b/mixed", via: viaClusterIP, verdict: verdictDNAT, reason: "1 ready endpoint; 1 not ready", endpoints: []string{"10.244.2.30:8080 1 node2"}, masqReason: "inside"}},
		},
		{
			name: "topology hints: the endpoint for this node's zone",
			args: append(common(explainState), "zonal.b"),
			want: []want{{service: "b/zonal", via: viaClusterIP, verdict: verdictDNAT, reason: "topology hints: 1 of 2 ready endpoints are meant for this node or its zone", endpoints: []string{"10.244.1.40:8080 1 node1 local"}, masqReason: "inside"}},
		},
		{
			name:    "the stand-in pod is no endpoint",
			args:    append(common(explainState), "edge.c"),
			want:    []want{{service: "c/edge", via: viaClusterIP, verdict: verdictDNAT, reason: "1 ready endpoint", endpoints: []string{"10.244.255.254:8080 1 node2"}, masqReason: "inside"}},
			textHas: []string{"a pod on node1 (10.244.255.253, a stand-in address"},
		},
		{
			name: "a cluster IP svcproxy refuses",
			args: append(common(explainState), "loop.b"),
			dns:  "loop.b.svc.cluster.local -> 127.0.0.5",
			want: []want{{service: "b/loop", verdict: verdictNoMatch, reason: "svcproxy programs nothing for this port"}},
		},
		{
			name: "no cluster IP",
			args: append(common(explainState), "noip.b"),
			dns:  "noip.b.svc.cluster.local -> no address",
			want: []want{{service: "b/noip", verdict: verdictNoMatch, reason: "the Service has no cluster IP"}},
		},
		{
			name: "headless without endpoints",
			args: append(common(exampleState), "blog/db:mysql"),
			dns:  "db.blog.svc.cluster.local -> no address",
			want: []want{{service: "blog/db", verdict: verdictNoMatch, reason: "headless Service"}},
		},
		{
			name:    "node port from the node, no node address known: the target's",
			args:    append(common(scenarios+"nodeport.yaml"), "--from", "node", "192.168.0.1:30080"),
			want:    []want{{service: "shop/web", via: viaNodePort, verdict: verdictDNAT, reason: "2 ready endpoints", endpoints: []string{"10.244.1.20:8080 0.5 node1 local masq", "10.244.2.20:8080 0.5 node2 masq"}, masq: true, masqReason: "externalTrafficPolicy Cluster"}},
			textHas: []string{"node1 itself (192.168.0.1, the node address of the target)"},
		},
		{
			name: "node port on loopback from the node, no node address known",
			args: append(common(scenarios+"nodeport.yaml"), "--from", "node", "127.0.0.1:30080"),
			want: []want{{service: "shop/web", via: viaNodePort, verdict: verdictNoMatch, reason: "node ports do not answer on loopback addresses (127.0.0.1)", path: []string{"nat/OUTPUT", "filter/OUTPUT", "filter/INPUT"}}},
		},
		{
			name: "no --cluster-cidr, pod given: not masqueraded, and said why",
			args: []string{"--state", scenarios + "clusterip.yaml", "--hostname-override", "node1", "--from", "pod:10.244.1.5", "10.96.0.10:80"},
			want: []want{{service: "shop/web", via: viaClusterIP, verdict: verdictDNAT, reason: "3 ready endpoints",
				endpoints: []string{"10.244.1.10:8080 0.3333 node1 local", "10.244.2.10:8080 0.3333 node2", "10.244.2.11:8080 0.3333 node2"}, masqReason: "no --cluster-cidr and no --masquerade-all"}},
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
			if len(x.Results) != len(tc.want) {
				t.Fatalf("%d results, want %d:\n%s", len(x.Results), len(tc.want), out)
			}
			for i, w := range tc.want {
				if diff := cmp.Diff(w.String(), got(x.Results[i], w).String()); diff != "" {
					t.Errorf("result %d (-want +got):\n%s\njson:\n%s", i, diff, out)
				}
				if r := x.Results[i]; r.Endpoints == nil || r.Drift == nil || len(r.Drift) != 0 || r.Path == nil {
					t.Errorf("result %d: endpoints %v, drift %v and path %v must be lists, drift empty", i, r.Endpoints, r.Drift, r.Path)
				}
			}
			for _, n := range tc.notes {
				if !slices.ContainsFunc(x.Notes, func(s string) bool { return strings.Contains(s, n) }) {
					t.Errorf("notes %q lack %q", x.Notes, n)
				}
			}
			if tc.jsonDNS != nil {
				if x.DNS == nil {
					t.Fatal("no dns in the JSON")
				}
				tc.jsonDNS(t, x.DNS)
			}

			code, text, errOut := runExplainArgs(t, noAPI, tc.args...)
			if code != 0 {
				t.Fatalf("text: exit %d, stderr:\n%s", code, errOut)
			}
			has := slices.Clone(tc.textHas)
			if tc.dns != "" {
				has = append(has, "dns         "+tc.dns)
			}
			has = append(has, tc.notes...)
			for _, w := range tc.want {
				has = append(has, "verdict   "+strings.ToUpper(w.verdict), "reason    ", w.reason)
				for _, e := range w.endpoints {
					has = append(has, strings.Fields(e)[0]+"  p=")
				}
				if w.verdict == verdictDNAT {
					yes := "no"
					if w.masq {
						yes = "yes"
					}
					has = append(has, "masquerade "+yes+": ", w.masqReason)
				}
			}
			for _, h := range has {
				if !strings.Contains(text, h) {
					t.Errorf("text output lacks %q:\n%s", h, text)
				}
			}
		})
	}
}

func TestExplainNotFound(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"a typo", []string{"wbe.shop"}, []string{"no Service shop/wbe (wbe.shop.svc.cluster.local)", "closest matches: shop/web"}},
		{"a bare name in the wrong namespace", []string{"web"}, []string{"no Service default/web (web.default.svc.cluster.local)", "closest matches: shop/web"}},
		{"a name in another namespace and a typo", []string{"-n", "blog", "frontnd"}, []string{"no Service blog/frontnd", "closest matches: blog/frontend"}},
		{"nothing close", []string{"kube-system/zzzzzzzzzzzz"}, []string{"no Service kube-system/zzzzzzzzzzzz"}},
		{"two as close", []string{"-n", "blog", "cdb"}, []string{"closest matches: blog/cdn, blog/db"}},
		{"no such port", []string{"web.shop:https"}, []string{"Service shop/web has no port https", "closest matches: http 80/TCP"}},
		{"not a Service name", []string{"web.shop.example.com"}, []string{"web.shop.example.com: not a Service name in cluster.local"}},
		{"a cluster IP on another port", []string{"10.96.100.20:81"}, []string{"no service port 81 on 10.96.100.20", "closest matches: 80/TCP (shop/web:http, cluster IP)"}},
		{"a cluster IP on another protocol", []string{"10.96.100.20:80/udp"}, []string{"no service port 80/UDP on 10.96.100.20"}},
		{"no such address or node port", []string{"10.96.9.9:80"}, []string{"no Service has address 10.96.9.9, and no Service has node port 80"}},
		{"a node port of another protocol", []string{"192.168.0.1:30080/udp"}, []string{"no Service has node port 30080/UDP", "closest matches: 30080/TCP (shop/web:http)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, o := range []string{"text", "json"} {
				code, out, errOut := runExplainArgs(t, noAPI, append(append(common(exampleState), "-o", o), tc.args...)...)
				if code != explainNotFound {
					t.Errorf("-o %s: exit %d, want %d; stderr:\n%s", o, code, explainNotFound, errOut)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(errOut, w) {
						t.Errorf("-o %s: stderr lacks %q:\n%s", o, w, errOut)
					}
				}
				if out != "" {
					t.Errorf("-o %s: stdout should be empty, got:\n%s", o, out)
				}
			}
		})
	}
}

func TestExplainUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: web, namespace: shop}\n  spec: {ports: oops}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := common(exampleState)
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"no target", state, []string{"want exactly one TARGET, got 0"}},
		{"two targets", append(state, "web.shop", "cart.shop"), []string{"want exactly one TARGET, got 2"}},
		{"unknown flag", append(state, "--no-such-flag", "web.shop"), []string{"no-such-flag"}},
		{"bad --output", append(state, "-o", "yaml", "web.shop"), []string{`--output "yaml": want text or json`}},
		{"--all without --live", append(state, "--all"), []string{"--all checks the kernel's rules: it goes with --live"}},
		{"--all and a TARGET", append(state, "--live", "--all", "web.shop"), []string{`--all checks every service port: no TARGET, got ["web.shop"]`}},
		{"--all and --from", append(state, "--live", "--all", "--from", "node"), []string{"--all picks its sources"}},
		{"--mode nftables", append(state, "--mode", "nftables", "web.shop"), []string{"--mode=nftables is not supported yet"}},
		{"--dry-run", append(state, "--dry-run", "web.shop"), []string{"--dry-run and --cleanup do not go with explain"}},
		{"--cleanup", append(state, "--cleanup", "web.shop"), []string{"--dry-run and --cleanup do not go with explain"}},
		{"unknown --from", append(state, "--from", "moon", "web.shop"), []string{`--from "moon": want pod:IP, remote-pod:IP, node or external:IP`}},
		{"--from external without an address", append(state, "--from", "external", "web.shop"), []string{"--from external needs an address"}},
		{"--from remote-pod without an address", append(state, "--from", "remote-pod", "web.shop"), []string{"--from remote-pod needs an address"}},
		{"--from node with an address", append(state, "--from", "node:192.168.0.1", "web.shop"), []string{"--from node takes no address"}},
		{"--from pod with a bad address", append(state, "--from", "pod:10.244.1", "web.shop"), []string{`--from "pod:10.244.1"`}},
		{"bad --node-ip", append(state, "--node-ip", "node1", "web.shop"), []string{"--node-ip"}},
		{"bad --cluster-cidr", append(state, "--cluster-cidr", "10.244.0.0/33", "web.shop"), []string{"--cluster-cidr"}},
		{"missing --config file", append(state, "--config", filepath.Join(dir, "nope.yaml"), "web.shop"), []string{"nope.yaml"}},
		{"an address without a port", append(state, "10.96.0.10"), []string{"an address needs a port"}},
		{"an IPv6 address without a port", append(state, "fd00::1"), []string{"an address needs a port"}},
		{"an unknown protocol", append(state, "10.96.0.10:53/icmp"), []string{`protocol "icmp": want tcp, udp or sctp`}},
		{"port 0", append(state, "10.96.0.10:0"), []string{"port 0"}},
		{"a port out of range", append(state, "web.shop:70000"), []string{"port 70000 out of range"}},
		{"a bad port name", append(state, "web.shop:http_2"), []string{`"http_2" is neither a port number nor a port name`}},
		{"not a DNS name", append(state, "web..shop"), []string{"is not a DNS name, NAMESPACE/NAME or IP:PORT"}},
		{"a bad namespace/name", append(state, "shop/web/x"), []string{"want NAMESPACE/NAME"}},
		{"an empty target", append(state, ""), []string{"empty TARGET"}},
		{"a malformed state file", []string{"--state", bad, "--hostname-override", "node1", "web.shop"}, []string{bad, "item 1", "shop/web"}},
		{"a missing state file", []string{"--state", filepath.Join(dir, "nope.yaml"), "--hostname-override", "node1", "web.shop"}, []string{"nope.yaml"}},
		{"no API server", []string{"--hostname-override", "node1", "web.shop"}, []string{"no API server in this test"}},
		{"--from node and no node address", append(state, "--from", "node", "web.shop"), []string{"nothing to trace", "no IPv4 address of node1 is known"}},
		{"an IPv6 source for an IPv4 Service", append(state, "--from", "pod:fd00:10:244::5", "web.shop"), []string{"nothing to trace", "IPv4 not traced: the source fd00:10:244::5 is not IPv4"}},
		{"no --cluster-cidr for a stand-in pod", []string{"--state", exampleState, "--hostname-override", "node1", "web.shop"}, []string{"nothing to trace", "no IPv4 --cluster-cidr to take a pod address from"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runExplainArgs(t, noAPI, tc.args...)
			if code != explainUsage {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, explainUsage, errOut)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			if out != "" {
				t.Errorf("stdout should be empty, got:\n%s", out)
			}
		})
	}
}

// TestExplainThroughMain: Main hands `explain` over; --help is no error.
func TestExplainThroughMain(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(append([]string{"explain", "-o", "json"}, append(common(exampleState), "web.shop")...), &out, &errOut); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), `"verdict": "dnat"`) {
		t.Errorf("stdout:\n%s", out.String())
	}
	out.Reset()
	errOut.Reset()
	code := Main([]string{"explain", "--help"}, &out, &errOut)
	help := errOut.String()
	if code != 0 || !strings.Contains(help, "Usage: svcproxy explain [flags] TARGET") || !strings.Contains(help, "--from string") || strings.Contains(help, "--healthz-bind-address") {
		t.Errorf("--help: exit %d, want the usage with explain's flags and without the daemon's; stderr:\n%s", code, help)
	}
}

// TestExplainJSONState: a kubectl -o json state file; what loading strips
// (an ExternalName, a Node's addresses) is read back all the same.
func TestExplainJSONState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	state := `{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}},
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}},
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "a"},
   "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [{"name": "http", "port": 80, "nodePort": 30080, "targetPort": 8080}]}},
  {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
   "metadata": {"name": "web-1", "namespace": "a", "labels": {"kubernetes.io/service-name": "web"}},
   "endpoints": [{"addresses": ["10.244.1.7"], "conditions": {"ready": true}, "nodeName": "node1"}],
   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
]}
`
	if err := os.WriteFile(path, []byte(state), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runExplainArgs(t, noAPI, append(common(path), "ext")...)
	if code != 0 || !strings.Contains(out, "ext.default.svc.cluster.local -> CNAME db.example.com") {
		t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, out, errOut = runExplainArgs(t, noAPI, append(common(path), "--from", "node", "a/web")...)
	if code != 0 || !strings.Contains(out, "node1 itself (192.168.0.1)") || !strings.Contains(out, "10.244.1.7:8080") {
		t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

// apiObjects is a small cluster for the API server tests.
func apiObjects() []runtime.Object {
	return []runtime.Object{
		&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}, Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.0.1"}}}},
		&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "b", Name: "web"}, Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: "10.96.5.10", ClusterIPs: []string{"10.96.5.10"},
			Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}}},
		&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "b", Name: "ext"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "cdn.example.com"}},
		&discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "b", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
			AddressType: discovery.AddressTypeIPv4,
			Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.244.2.10"}, NodeName: ptr.To("node2"), Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}},
			Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}}},
	}
}

func TestExplainFromAPIServer(t *testing.T) {
	api := []string{"--kubeconfig", "/dev/null", "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16"}
	client := func(objs ...runtime.Object) newKubeClient {
		return func(o *config.Config) (kubernetes.Interface, error) {
			if o.Kubeconfig != "/dev/null" {
				t.Errorf("client built for kubeconfig %q", o.Kubeconfig)
			}
			return fake.NewClientset(objs...), nil
		}
	}
	code, out, errOut := runExplainArgs(t, client(apiObjects()...), append(api, "--from", "node", "web.b")...)
	if code != 0 || !strings.Contains(out, "node1 itself (192.168.0.1)") || !strings.Contains(out, "10.244.2.10:8080  p=1.0000  node2") {
		t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, out, errOut = runExplainArgs(t, client(apiObjects()...), append(api, "ext.b")...)
	if code != 0 || !strings.Contains(out, "CNAME cdn.example.com") {
		t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	// No Node object: no node address, so --from node has nothing to
	// trace; a pod still has.
	code, _, errOut = runExplainArgs(t, client(apiObjects()[1:]...), append(api, "--from", "node", "web.b")...)
	if code != explainUsage || !strings.Contains(errOut, "no IPv4 address of node1 is known") {
		t.Errorf("without a Node: exit %d, stderr:\n%s", code, errOut)
	}
	if code, _, errOut = runExplainArgs(t, client(apiObjects()[1:]...), append(api, "web.b")...); code != 0 {
		t.Errorf("without a Node, from a pod: exit %d, stderr:\n%s", code, errOut)
	}
	for _, resource := range []string{"services", "endpointslices", "nodes"} {
		t.Run("failing "+resource, func(t *testing.T) {
			failing := func(*config.Config) (kubernetes.Interface, error) {
				c := fake.NewClientset(apiObjects()...)
				c.PrependReactor("*", resource, func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, errors.New("the API server is down")
				})
				return c, nil
			}
			code, out, errOut := runExplainArgs(t, failing, append(api, "web.b")...)
			if code != explainUsage || !strings.Contains(errOut, "the API server is down") || out != "" {
				t.Errorf("exit %d, stdout %q, stderr:\n%s", code, out, errOut)
			}
		})
	}
}

func TestKubeClient(t *testing.T) {
	o := config.Defaults()
	o.Kubeconfig = filepath.Join(t.TempDir(), "nope")
	if _, err := kubeClient(o); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("kubeClient with a missing kubeconfig: %v", err)
	}
	o.Kubeconfig, o.Master = "", "https://192.0.2.1:6443"
	if c, err := kubeClient(o); err != nil || c == nil {
		t.Errorf("kubeClient with --master: %v, %v", c, err)
	}
}

// brokenPipe is a stdout whose reader went away: every write fails.
type brokenPipe struct{ writes int }

func (b *brokenPipe) Write([]byte) (int, error) {
	b.writes++
	return 0, errors.New("write: broken pipe")
}

func TestExplainOutputFails(t *testing.T) {
	for _, o := range []string{"text", "json"} {
		var w brokenPipe
		var errOut bytes.Buffer
		code := runExplain(context.Background(), append(common(exampleState), "-o", o, "web.shop"), &w, &errOut, explainDeps{newClient: noAPI})
		if code != explainUsage || w.writes == 0 || !strings.Contains(errOut.String(), "broken pipe") {
			t.Errorf("-o %s: exit %d after %d writes, stderr:\n%s", o, code, w.writes, errOut.String())
		}
	}
}

func TestAddUnstrippedErrors(t *testing.T) {
	dir := t.TempDir()
	if err := addUnstripped(filepath.Join(dir, "nope.yaml"), &source.State{}); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("kind: List\nitems: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var fe *source.FileError
	if err := addUnstripped(bad, &source.State{}); !errors.As(err, &fe) || !strings.Contains(err.Error(), bad) {
		t.Errorf("malformed file: %v", err)
	}
}

// TestExplainFallbackReasons: what explain says when rules of svcproxy's
// decide in a way the Snapshot does not account for (never, for the rules
// svcproxy renders; possible once the kernel's rules are read).
func TestExplainFallbackReasons(t *testing.T) {
	o := config.Defaults()
	o.HostnameOverride, o.ClusterCIDR = "node1", "10.244.0.0/16"
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	x := &explainer{o: o}
	ep := &proxy.Endpoint{IP: netip.MustParseAddr("10.244.2.10"), Port: 8080, Ready: true, Serving: true, NodeName: "node2"}
	sp := &proxy.ServicePort{IPFamily: v1.IPv4Protocol, Protocol: v1.ProtocolTCP, Port: 80, ClusterIP: netip.MustParseAddr("10.96.0.1"),
		AllEndpoints: []*proxy.Endpoint{ep}, ClusterEndpoints: []*proxy.Endpoint{ep}, UsesClusterEndpoints: true}
	pod := netip.MustParseAddr("10.244.1.5")
	cluster := dest{sp: sp, dst: netip.MustParseAddrPort("10.96.0.1:80"), via: viaClusterIP}
	node := netip.MustParseAddr("192.168.0.1")
	for _, tc := range []struct{ name, got, want string }{
		{"rejected with endpoints", rejectReason(sp), "rejected by a rule of svcproxy's, though the port has endpoints"},
		{"dropped", x.dropReason(cluster, pod, classPod), "dropped by a rule of svcproxy's"},
		{"cluster IP untouched", x.noMatchReason(cluster, nil), "no rule of svcproxy's matched"},
		{"node port on a link-local address", x.noMatchReason(dest{sp: sp, dst: netip.MustParseAddrPort("[fe80::1]:30080"), via: viaNodePort}, nil), "node ports do not answer on link-local addresses (fe80::1)"},
		{"node port untouched", x.noMatchReason(dest{sp: sp, dst: netip.AddrPortFrom(node, 30080), via: viaNodePort}, []netip.Addr{node}), "no rule of svcproxy's matched"},
		{"masqueraded by some rule", x.masqueradeReason(cluster, pod, classPod, true, map[netip.Addr]bool{ep.IP: true}), "a rule on the path marked the connection for masquerade"},
		{"external IP from outside kept, ETP Cluster", x.masqueradeReason(dest{sp: sp, dst: netip.MustParseAddrPort("192.0.2.1:80"), via: viaExternalIP}, netip.MustParseAddr("203.0.113.7"), classExternal, false, nil), ""},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}
