package ipvs

import (
	"flag"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

var update = flag.Bool("update", false, "rewrite the golden files (testdata/*.golden, ../testdata/scenarios/*.ipvs.golden) instead of comparing: never in CI")

// Test address plan, shared by every test of this package:
//
//	node1 (this node)   192.168.0.1 (NodeAddresses), pods 10.244.1.0/24
//	node2               pods 10.244.2.0/24
//	cluster CIDR        10.244.0.0/16
//	services            10.96.0.0/16; ExternalIPs 192.0.2.0/24;
//	                    LoadBalancer IPs 203.0.113.0/24
//	outside clients     198.51.100.0/24
//
// and for IPv6 (testOptions6, dual-stack):
//
//	node1 (this node)   2001:db8::1 (NodeAddresses)
//	cluster CIDR        fd00:10:244::/56
func testOptions() Options {
	o := DefaultOptions()
	o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	o.NodeAddresses = []netip.Addr{netip.MustParseAddr("192.168.0.1")}
	return o
}

// testOptions6 is testOptions for a dual-stack node.
func testOptions6() Options {
	o := testOptions()
	o.IPv6 = true
	o.ClusterCIDRs = append(o.ClusterCIDRs, netip.MustParsePrefix("fd00:10:244::/56"))
	o.NodeAddresses = append(o.NodeAddresses, netip.MustParseAddr("2001:db8::1"))
	return o
}

// hasIPv6 reports whether a Snapshot has IPv6 service ports.
func hasIPv6(snap *proxy.Snapshot) bool {
	for _, sp := range snap.ServicePorts() {
		if sp.IPFamily == v1.IPv6Protocol {
			return true
		}
	}
	return false
}

func snapshotOf(t testing.TB, objs ...any) *proxy.Snapshot {
	t.Helper()
	return pt.Snapshot(t, objs...)
}

func exampleSnapshot(t testing.TB) *proxy.Snapshot {
	t.Helper()
	return pt.LoadStateSnapshot(t, "../examples/cluster.yaml", "node1")
}

// TestGoldenExample renders the bundled example cluster: --dry-run
// --mode=ipvs prints exactly this.
func TestGoldenExample(t *testing.T) {
	got := Render(exampleSnapshot(t), testOptions()).Dump()
	pt.Golden(t, filepath.Join("testdata", "example.golden"), got, *update)
}

// scenarioDir holds the scenarios both modes render (proxytest.Scenario).
const scenarioDir = "../testdata/scenarios"

// TestGoldenScenarios renders every shared scenario and compares the
// plan's Dump with <scenario>.ipvs.golden; iptables mode renders the same
// files. A scenario with IPv6 service ports is rendered for a dual-stack
// node (testOptions6), as --dry-run prints it. TestScenariosApply
// (applier_test.go) programs them into the fake kernel.
func TestGoldenScenarios(t *testing.T) {
	for _, sc := range pt.Scenarios(t, scenarioDir, "ipvs") {
		t.Run(sc.Name, func(t *testing.T) {
			snap := sc.Snapshot(t)
			opts := testOptions()
			if hasIPv6(snap) {
				opts = testOptions6()
			}
			got := Render(snap, opts).Dump()
			pt.Golden(t, sc.Golden("ipvs"), got, *update)
		})
	}
}

// TestRenderDeterministic renders the same snapshot twice.
func TestRenderDeterministic(t *testing.T) {
	snap := exampleSnapshot(t)
	a, b := Render(snap, testOptions()).Dump(), Render(snap, testOptions()).Dump()
	if a != b {
		t.Errorf("two renders differ:\n%s", cmp.Diff(a, b))
	}
}

// dedent removes the common leading tabs of a literal block and its first
// newline.
func dedent(s string) string {
	s = strings.TrimPrefix(s, "\n")
	lines := strings.Split(s, "\n")
	indent := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, "\t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	for i, l := range lines {
		if len(l) >= indent && indent > 0 {
			lines[i] = l[indent:]
		} else {
			lines[i] = strings.TrimLeft(l, "\t")
		}
	}
	return strings.Join(lines, "\n")
}

// summary renders the parts of a plan that depend on services: addresses,
// virtual servers (ipvsadm -Sn) and non-empty set entries ("SET entry").
func summary(p *Plan) string {
	var b strings.Builder
	b.WriteString("addresses: " + joinAddrs(p.Addresses) + "\n")
	b.WriteString(servicesText(p.Services))
	for _, s := range p.Sets {
		if s.Name == SetIPs || s.Name == SetClusterCIDR {
			continue // derived from addresses / options (not so for IPv6 sets)
		}
		for _, e := range s.Entries {
			b.WriteString(strings.TrimPrefix(s.Name, SetPrefix) + " " + e + "\n")
		}
	}
	return b.String()
}

// lbService makes a Service a LoadBalancer with node port 31000, the
// load-balancer address ip and the source ranges.
func lbService(ip string, ranges ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 31000
		s.Spec.LoadBalancerSourceRanges = ranges
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
	}
}

func TestRender(t *testing.T) {
	np := func(port int32) func(*v1.Service) {
		return func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = port }
	}
	etpLocal := func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }
	itpLocal := func(s *v1.Service) {
		p := v1.ServiceInternalTrafficPolicyLocal
		s.Spec.InternalTrafficPolicy = &p
	}
	extIP := func(ips ...string) func(*v1.Service) { return func(s *v1.Service) { s.Spec.ExternalIPs = ips } }
	affinity := func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
	}
	proto := func(p v1.Protocol) func(*v1.Service) { return func(s *v1.Service) { s.Spec.Ports[0].Protocol = p } }
	slice := func(p v1.Protocol, eps ...pt.EP) *discovery.EndpointSlice {
		s := pt.Slice("ns", "svc", "svc-1", "p", 8080, eps...)
		s.Ports[0].Protocol = ptr.To(p)
		return s
	}
	local1, local2 := pt.Ready("10.244.1.10", "node1"), pt.Ready("10.244.1.11", "node1")
	remote := pt.Ready("10.244.2.10", "node2")

	for _, tc := range []struct {
		name string
		objs []any
		opts func(*Options)
		want string
	}{{
		name: "cluster IP, endpoints sorted, local ones may hairpin",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80), slice(v1.ProtocolTCP, remote, local1)},
		want: `
			addresses: 10.96.0.10
			-A -t 10.96.0.10:80 -s rr
			-a -t 10.96.0.10:80 -r 10.244.1.10:8080 -m -w 1
			-a -t 10.96.0.10:80 -r 10.244.2.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,tcp:80
			LOOPBACK 10.244.1.10,tcp:8080,10.244.1.10
		`,
	}, {
		name: "no endpoints: virtual server without real servers, rejected",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80, np(30001))},
		want: `
			addresses: 10.96.0.10
			-A -t 10.96.0.10:80 -s rr
			-A -t 192.168.0.1:30001 -s rr
			CLUSTER-IP 10.96.0.10,tcp:80
			NODE-PORT 192.168.0.1,tcp:30001
			REJECT 10.96.0.10,tcp:80
			REJECT 192.168.0.1,tcp:30001
		`,
	}, {
		name: "only serving-terminating endpoints: still used",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80), slice(v1.ProtocolTCP, pt.Terminating("10.244.2.10", "node2"))},
		want: `
			addresses: 10.96.0.10
			-A -t 10.96.0.10:80 -s rr
			-a -t 10.96.0.10:80 -r 10.244.2.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,tcp:80
		`,
	}, {
		name: "ClientIP affinity: persistence with the timeout, on every virtual server",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80, affinity, np(30001)), slice(v1.ProtocolTCP, remote)},
		want: `
			addresses: 10.96.0.10
			-A -t 10.96.0.10:80 -s rr -p 60
			-a -t 10.96.0.10:80 -r 10.244.2.10:8080 -m -w 1
			-A -t 192.168.0.1:30001 -s rr -p 60
			-a -t 192.168.0.1:30001 -r 10.244.2.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,tcp:80
			NODE-PORT 192.168.0.1,tcp:30001
		`,
	}, {
		name: "node port on every node address, UDP",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 53, proto(v1.ProtocolUDP), np(30053)), slice(v1.ProtocolUDP, remote)},
		opts: func(o *Options) {
			o.NodeAddresses = []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("172.16.0.1")}
		},
		want: `
			addresses: 10.96.0.10
			-A -u 10.96.0.10:53 -s rr
			-a -u 10.96.0.10:53 -r 10.244.2.10:8080 -m -w 1
			-A -u 172.16.0.1:30053 -s rr
			-a -u 172.16.0.1:30053 -r 10.244.2.10:8080 -m -w 1
			-A -u 192.168.0.1:30053 -s rr
			-a -u 192.168.0.1:30053 -r 10.244.2.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,udp:53
			NODE-PORT 172.16.0.1,udp:30053
			NODE-PORT 192.168.0.1,udp:30053
		`,
	}, {
		name: "SCTP",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 9, proto(v1.ProtocolSCTP)), slice(v1.ProtocolSCTP, remote)},
		want: `
			addresses: 10.96.0.10
			-A --sctp-service 10.96.0.10:9 -s rr
			-a --sctp-service 10.96.0.10:9 -r 10.244.2.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,sctp:9
		`,
	}, {
		name: "externalTrafficPolicy Local: external virtual servers get the local endpoints, not masqueraded",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80, np(30001), etpLocal, extIP("192.0.2.1")), slice(v1.ProtocolTCP, remote, local1)},
		want: `
			addresses: 10.96.0.10 192.0.2.1
			-A -t 10.96.0.10:80 -s rr
			-a -t 10.96.0.10:80 -r 10.244.1.10:8080 -m -w 1
			-a -t 10.96.0.10:80 -r 10.244.2.10:8080 -m -w 1
			-A -t 192.0.2.1:80 -s rr
			-a -t 192.0.2.1:80 -r 10.244.1.10:8080 -m -w 1
			-A -t 192.168.0.1:30001 -s rr
			-a -t 192.168.0.1:30001 -r 10.244.1.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,tcp:80
			EXTERNAL-LOCAL 192.0.2.1,tcp:80
			LOOPBACK 10.244.1.10,tcp:8080,10.244.1.10
		`,
	}, {
		name: "externalTrafficPolicy Local without local endpoints: external traffic dropped",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80, lbService("203.0.113.1"), etpLocal), slice(v1.ProtocolTCP, remote)},
		want: `
			addresses: 10.96.0.10 203.0.113.1
			-A -t 10.96.0.10:80 -s rr
			-a -t 10.96.0.10:80 -r 10.244.2.10:8080 -m -w 1
			-A -t 192.168.0.1:31000 -s rr
			-A -t 203.0.113.1:80 -s rr
			CLUSTER-IP 10.96.0.10,tcp:80
			EXTERNAL-LOCAL 203.0.113.1,tcp:80
			DROP 192.168.0.1,tcp:31000
			DROP 203.0.113.1,tcp:80
		`,
	}, {
		name: "internalTrafficPolicy Local without local endpoints: cluster IP dropped",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80, itpLocal), slice(v1.ProtocolTCP, remote)},
		want: `
			addresses: 10.96.0.10
			-A -t 10.96.0.10:80 -s rr
			CLUSTER-IP 10.96.0.10,tcp:80
			DROP 10.96.0.10,tcp:80
		`,
	}, {
		name: "internalTrafficPolicy Local: only local endpoints behind the cluster IP",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80, itpLocal), slice(v1.ProtocolTCP, remote, local2, local1)},
		want: `
			addresses: 10.96.0.10
			-A -t 10.96.0.10:80 -s rr
			-a -t 10.96.0.10:80 -r 10.244.1.10:8080 -m -w 1
			-a -t 10.96.0.10:80 -r 10.244.1.11:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,tcp:80
			LOOPBACK 10.244.1.10,tcp:8080,10.244.1.10
			LOOPBACK 10.244.1.11,tcp:8080,10.244.1.11
		`,
	}, {
		name: "loadBalancerSourceRanges: firewall entries; a host range without /32, 0.0.0.0/0 in halves",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80, lbService("203.0.113.1", "198.51.100.0/24", "198.51.100.7/32", "0.0.0.0/0")), slice(v1.ProtocolTCP, remote)},
		want: `
			addresses: 10.96.0.10 203.0.113.1
			-A -t 10.96.0.10:80 -s rr
			-a -t 10.96.0.10:80 -r 10.244.2.10:8080 -m -w 1
			-A -t 192.168.0.1:31000 -s rr
			-a -t 192.168.0.1:31000 -r 10.244.2.10:8080 -m -w 1
			-A -t 203.0.113.1:80 -s rr
			-a -t 203.0.113.1:80 -r 10.244.2.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,tcp:80
			EXTERNAL 203.0.113.1,tcp:80
			NODE-PORT 192.168.0.1,tcp:31000
			LB-FW 203.0.113.1,tcp:80
			LB-SRC 203.0.113.1,tcp:80,0.0.0.0/1
			LB-SRC 203.0.113.1,tcp:80,128.0.0.0/1
			LB-SRC 203.0.113.1,tcp:80,198.51.100.0/24
			LB-SRC 203.0.113.1,tcp:80,198.51.100.7
		`,
	}, {
		name: "an ExternalIP claimed twice: the first service in name order wins",
		objs: []any{
			pt.Service("ns", "a", "10.96.0.1", "p", 80, extIP("192.0.2.1")), pt.Slice("ns", "a", "a-1", "p", 8080, remote),
			pt.Service("ns", "b", "10.96.0.2", "p", 80, extIP("192.0.2.1")),
		},
		want: `
			addresses: 10.96.0.1 10.96.0.2 192.0.2.1
			-A -t 10.96.0.1:80 -s rr
			-a -t 10.96.0.1:80 -r 10.244.2.10:8080 -m -w 1
			-A -t 10.96.0.2:80 -s rr
			-A -t 192.0.2.1:80 -s rr
			-a -t 192.0.2.1:80 -r 10.244.2.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.1,tcp:80
			CLUSTER-IP 10.96.0.2,tcp:80
			EXTERNAL 192.0.2.1,tcp:80
			REJECT 10.96.0.2,tcp:80
		`,
	}, {
		name: "scheduler from the options",
		objs: []any{pt.Service("ns", "svc", "10.96.0.10", "p", 80), slice(v1.ProtocolTCP, remote)},
		opts: func(o *Options) { o.Scheduler = "mh" },
		want: `
			addresses: 10.96.0.10
			-A -t 10.96.0.10:80 -s mh
			-a -t 10.96.0.10:80 -r 10.244.2.10:8080 -m -w 1
			CLUSTER-IP 10.96.0.10,tcp:80
		`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			got := summary(Render(snapshotOf(t, tc.objs...), opts))
			if d := cmp.Diff(dedent(tc.want), got); d != "" {
				t.Errorf("plan differs (-want +got):\n%s", d)
			}
		})
	}
}

// TestRenderRules: the iptables part depends only on the options.
func TestRenderRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts func(*Options)
		want string // SVCP-IPVS-SERVICES and the MASQUERADE rule
	}{{
		name: "one cluster CIDR",
		want: `
			-m comment --comment "masquerade off-cluster traffic to cluster IPs" -m set ! --match-set SVCP-IPVS-CLUSTER-CIDR src -m set --match-set SVCP-IPVS-CLUSTER-IP dst,dst -j MARK --or-mark 0x4000
			-m comment --comment "masquerade traffic from service addresses" -m set --match-set SVCP-IPVS-IPS src -m set --match-set SVCP-IPVS-CLUSTER-IP dst,dst -j MARK --or-mark 0x4000
			-m comment --comment "masquerade external traffic, externalTrafficPolicy Cluster" -m set --match-set SVCP-IPVS-EXTERNAL dst,dst -j MARK --or-mark 0x4000
			-m comment --comment "masquerade node ports, externalTrafficPolicy Cluster" -m set --match-set SVCP-IPVS-NODE-PORT dst,dst -j MARK --or-mark 0x4000
			-m comment --comment "service traffic requiring SNAT" -j MASQUERADE --random-fully
		`,
	}, {
		name: "masquerade all, another bit, no --random-fully",
		opts: func(o *Options) { o.MasqueradeAll, o.MasqueradeBit, o.RandomFully = true, 3, false },
		want: `
			-m comment --comment "masquerade all traffic to cluster IPs" -m set --match-set SVCP-IPVS-CLUSTER-IP dst,dst -j MARK --or-mark 0x8
			-m comment --comment "masquerade traffic from service addresses" -m set --match-set SVCP-IPVS-IPS src -m set --match-set SVCP-IPVS-CLUSTER-IP dst,dst -j MARK --or-mark 0x8
			-m comment --comment "masquerade external traffic, externalTrafficPolicy Cluster" -m set --match-set SVCP-IPVS-EXTERNAL dst,dst -j MARK --or-mark 0x8
			-m comment --comment "masquerade node ports, externalTrafficPolicy Cluster" -m set --match-set SVCP-IPVS-NODE-PORT dst,dst -j MARK --or-mark 0x8
			-m comment --comment "service traffic requiring SNAT" -j MASQUERADE
		`,
	}, {
		name: "no cluster CIDR: only the node's own traffic to cluster IPs",
		opts: func(o *Options) { o.ClusterCIDRs = nil },
		want: `
			-m comment --comment "masquerade traffic from service addresses" -m set --match-set SVCP-IPVS-IPS src -m set --match-set SVCP-IPVS-CLUSTER-IP dst,dst -j MARK --or-mark 0x4000
			-m comment --comment "masquerade external traffic, externalTrafficPolicy Cluster" -m set --match-set SVCP-IPVS-EXTERNAL dst,dst -j MARK --or-mark 0x4000
			-m comment --comment "masquerade node ports, externalTrafficPolicy Cluster" -m set --match-set SVCP-IPVS-NODE-PORT dst,dst -j MARK --or-mark 0x4000
			-m comment --comment "service traffic requiring SNAT" -j MASQUERADE --random-fully
		`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			p := Render(snapshotOf(t), opts)
			var got []string
			for _, c := range p.IPTables.NAT {
				switch c.Name {
				case ServicesChain:
					got = append(got, c.Rules...)
				case PostroutingChain:
					got = append(got, c.Rules[len(c.Rules)-1])
				}
			}
			if d := cmp.Diff(dedent(tc.want), strings.Join(got, "\n")+"\n"); d != "" {
				t.Errorf("rules differ (-want +got):\n%s", d)
			}
			if n := len(p.Sets); n != len(setLayout) {
				t.Errorf("%d sets, want all %d of the layout even when empty", n, len(setLayout))
			}
		})
	}
}

// TestSortEntries: the keyed sort orders like compareEntries.
func TestSortEntries(t *testing.T) {
	es := []string{
		"10.96.0.10,tcp:9153", "10.96.0.10,udp:53", "10.96.0.9,tcp:80", "10.96.0.10,tcp:53", "192.0.2.1,sctp:7",
		"203.0.113.1,tcp:80,198.51.100.0/24", "203.0.113.1,tcp:80,0.0.0.0/1", "203.0.113.1,tcp:80,198.51.100.7",
		"203.0.113.1,tcp:80,198.51.100.0/25", "10.244.0.0/16", "10.244.0.0/15", "10.3.0.0/16",
	}
	for _, group := range [][]string{es[:5], es[5:9], es[9:]} {
		a, b := slices.Clone(group), slices.Clone(group)
		slices.SortFunc(a, compareEntries)
		sortEntries(b)
		if d := cmp.Diff(a, b); d != "" {
			t.Errorf("orders differ (-compareEntries +sortEntries):\n%s", d)
		}
	}
}

// TestDumpLineLength: ipset restore reads lines of at most 1024 bytes, so
// no line of the dump may be longer, however many addresses there are.
func TestDumpLineLength(t *testing.T) {
	svcs, slices := pt.Generate(500, 2)
	var objs []any
	for _, s := range svcs {
		objs = append(objs, s)
	}
	for _, s := range slices {
		objs = append(objs, s)
	}
	for i, l := range strings.Split(Render(snapshotOf(t, objs...), testOptions()).Dump(), "\n") {
		if len(l) >= 1024 {
			t.Fatalf("line %d is %d bytes long: %.80s…", i+1, len(l), l)
		}
	}
}
