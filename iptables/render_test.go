package iptables

import (
	"flag"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

var update = flag.Bool("update", false, "rewrite the golden files (testdata/*.golden, ../testdata/scenarios/*.iptables.golden) instead of comparing: never in CI")

func testOptions() Options {
	o := DefaultOptions()
	o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	return o
}

func snapshotOf(t testing.TB, objs ...any) *proxy.Snapshot {
	t.Helper()
	return pt.Snapshot(t, objs...)
}

// TestGoldenExample renders the bundled example cluster: the README's first
// command prints exactly this.
func TestGoldenExample(t *testing.T) {
	got := Render(pt.LoadStateSnapshot(t, "../examples/cluster.yaml", "node1"), testOptions()).String()
	pt.Golden(t, filepath.Join("testdata", "example.golden"), got, *update)
}

// scenarioDir holds the scenarios both modes render (proxytest.Scenario).
const scenarioDir = "../testdata/scenarios"

// TestGoldenScenarios renders every shared scenario and compares the
// iptables-restore input with <scenario>.iptables.golden; IPVS mode renders
// the same files. TestScenariosLoad (fake_sync_test.go) programs them into
// the fake kernel.
func TestGoldenScenarios(t *testing.T) {
	for _, sc := range pt.Scenarios(t, scenarioDir, "iptables") {
		t.Run(sc.Name, func(t *testing.T) {
			got := Render(sc.Snapshot(t), testOptions()).String()
			pt.Golden(t, sc.Golden("iptables"), got, *update)
		})
	}
}

// chainRules returns the rules of the chains whose names start with prefix,
// and of the named fixed chains, as "-A CHAIN rule" lines.
func chainRules(p *Plan, names ...string) string {
	var b strings.Builder
	for _, tbl := range p.Tables() {
		for _, c := range tbl.Chains {
			for _, n := range names {
				if c.Name == n || (strings.HasSuffix(n, "-") && strings.HasPrefix(c.Name, n)) {
					for _, r := range c.Rules {
						b.WriteString("-A " + c.Name + " " + r + "\n")
					}
				}
			}
		}
	}
	return b.String()
}

func dedent(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n") + "\n"
}

func TestRenderSmallCases(t *testing.T) {
	web := pt.Service("ns", "web", "10.96.0.20", "http", 80)
	webSvc := serviceChain("ns/web:http/TCP")
	tests := []struct {
		name   string
		opts   func(*Options)
		objs   []any
		chains []string
		want   string
	}{
		{
			name:   "one endpoint: masquerade off-cluster sources, DNAT",
			objs:   []any{web, pt.Slice("ns", "web", "w1", "http", 8080, pt.Ready("10.244.2.2", "node2"))},
			chains: []string{svcChainPrefix, DispatchChain},
			want: `
			-A ` + webSvc + ` -m comment --comment "ns/web:http cluster IP" -d 10.96.0.20/32 -p tcp --dport 80 ! -s 10.244.0.0/16 -j MARK --or-mark 0x4000
			-A ` + webSvc + ` -m comment --comment "ns/web:http -> 10.244.2.2:8080" -p tcp -j DNAT --to-destination 10.244.2.2:8080
			-A SVCP-DISPATCH -m comment --comment "ns/web:http cluster IP" -d 10.96.0.20/32 -p tcp --dport 80 -g ` + webSvc,
		},
		{
			name:   "three endpoints: statistic split 1/3, 1/2, rest",
			opts:   func(o *Options) { o.ClusterCIDRs = nil; o.MasqueradeAll = true },
			objs:   []any{web, pt.Slice("ns", "web", "w1", "http", 8080, pt.Ready("10.244.1.2", "node1"), pt.Ready("10.244.2.2", "node2"), pt.Ready("10.244.3.2", "node3"))},
			chains: []string{svcChainPrefix},
			want: `
			-A ` + webSvc + ` -m comment --comment "ns/web:http cluster IP" -d 10.96.0.20/32 -p tcp --dport 80 -j MARK --or-mark 0x4000
			-A ` + webSvc + ` -m comment --comment "ns/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.3333333333 -p tcp -j DNAT --to-destination 10.244.1.2:8080
			-A ` + webSvc + ` -m comment --comment "ns/web:http -> 10.244.2.2:8080" -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.244.2.2:8080
			-A ` + webSvc + ` -m comment --comment "ns/web:http -> 10.244.3.2:8080" -p tcp -j DNAT --to-destination 10.244.3.2:8080`,
		},
		{
			name:   "no endpoints: REJECT in filter, nothing in nat",
			objs:   []any{pt.Service("ns", "web", "10.96.0.20", "http", 80, func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = 30001 })},
			chains: []string{FilterChain, svcChainPrefix, DispatchChain, NodePortsChain},
			want: `
			-A SVCP-FILTER -m comment --comment "ns/web:http has no endpoints" -d 10.96.0.20/32 -p tcp --dport 80 -j REJECT
			-A SVCP-FILTER -m comment --comment "ns/web:http has no endpoints" ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -p tcp --dport 30001 -j REJECT`,
		},
		{
			name:   "no endpoints with nodeport-addresses: REJECT only on those addresses",
			opts:   func(o *Options) { o.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24")} },
			objs:   []any{pt.Service("ns", "web", "10.96.0.20", "http", 80, func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = 30001 })},
			chains: []string{FilterChain},
			want: `
			-A SVCP-FILTER -m comment --comment "ns/web:http has no endpoints" -d 10.96.0.20/32 -p tcp --dport 80 -j REJECT
			-A SVCP-FILTER -m comment --comment "ns/web:http has no endpoints" -d 192.168.0.0/24 -m addrtype --dst-type LOCAL -p tcp --dport 30001 -j REJECT`,
		},
		{
			name: "UDP and SCTP ports",
			objs: []any{pt.Service("ns", "dns", "10.96.0.10", "dns", 53, func(s *v1.Service) {
				s.Spec.Ports[0].Protocol = v1.ProtocolUDP
				s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "sig", Port: 3868, Protocol: v1.ProtocolSCTP})
			})},
			chains: []string{FilterChain},
			want: `
			-A SVCP-FILTER -m comment --comment "ns/dns:dns has no endpoints" -d 10.96.0.10/32 -p udp --dport 53 -j REJECT
			-A SVCP-FILTER -m comment --comment "ns/dns:sig has no endpoints" -d 10.96.0.10/32 -p sctp --dport 3868 -j REJECT`,
		},
		{
			name:   "nodeport-addresses restricts node ports",
			opts:   func(o *Options) { o.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24")} },
			chains: []string{ServicesChain},
			want: `
			-A SVCP-SERVICES -m comment --comment "service portals" -j SVCP-DISPATCH
			-A SVCP-SERVICES -m comment --comment "node ports on local addresses" -d 192.168.0.0/24 -m addrtype --dst-type LOCAL -j SVCP-NODEPORTS`,
		},
		{
			name:   "weird names cannot break the comment quoting",
			objs:   []any{pt.Service("ns", `we"b x`, "10.96.0.20", "h\"t p", 80)},
			chains: []string{FilterChain},
			want: `
			-A SVCP-FILTER -m comment --comment "ns/we_b x:h_t p has no endpoints" -d 10.96.0.20/32 -p tcp --dport 80 -j REJECT`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			got := chainRules(Render(snapshotOf(t, tc.objs...), opts), tc.chains...)
			if d := cmp.Diff(dedent(tc.want), got); d != "" {
				t.Errorf("rules (-want +got):\n%s", d)
			}
		})
	}
}

// TestRendererMatchesRender: the caching Renderer must produce exactly what
// the pure Render produces, across adds, changes and deletes.
func TestRendererMatchesRender(t *testing.T) {
	svcs, slices := pt.Generate(60, 3)
	tr := proxy.NewTracker("node1", nil, nil)
	for _, s := range svcs {
		tr.OnServiceUpdate(nil, s)
	}
	for _, s := range slices {
		tr.OnEndpointSliceUpdate(nil, s)
	}
	r := NewRenderer(testOptions())
	check := func(step string) {
		t.Helper()
		snap, _ := tr.Snapshot()
		if d := cmp.Diff(Render(snap, testOptions()).String(), r.Render(snap).String()); d != "" {
			t.Fatalf("%s: Renderer differs from Render (-Render +Renderer):\n%s", step, d)
		}
	}
	check("initial")
	cur := slices[7].DeepCopy()
	cur.Endpoints = cur.Endpoints[:1]
	tr.OnEndpointSliceUpdate(slices[7], cur)
	check("endpoint removed")
	tr.OnServiceUpdate(svcs[3], nil)
	check("service deleted")
	tr.OnEndpointSliceUpdate(slices[9], nil)
	check("all endpoints gone")
	tr.OnServiceUpdate(nil, svcs[3])
	check("service back")
}

func TestRenderLargeClusterOmitsEndpointComments(t *testing.T) {
	for _, tc := range []struct {
		name         string
		services     int
		wantComments bool
	}{
		{name: "1000 endpoints keep comments", services: 200, wantComments: true},
		{name: "1005 endpoints drop them", services: 201, wantComments: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svcs, slices := pt.Generate(tc.services, 5)
			var objs []any
			for i := range svcs {
				objs = append(objs, svcs[i], slices[i])
			}
			plan := Render(snapshotOf(t, objs...), testOptions())
			for _, c := range plan.NAT {
				if !strings.HasPrefix(c.Name, svcChainPrefix) {
					continue
				}
				if !strings.Contains(c.Rules[0], "--comment") {
					t.Errorf("%s: first rule has no comment: %s", c.Name, c.Rules[0])
				}
				for _, r := range c.Rules[1:] {
					if got := strings.Contains(r, "--comment"); got != tc.wantComments {
						t.Fatalf("%s: comment on DNAT rule = %v, want %v: %s", c.Name, got, tc.wantComments, r)
					}
				}
			}
		})
	}
}

func TestRenderHairpinTree(t *testing.T) {
	// 40 services with 3 local endpoints each: 120 hairpin rules must not
	// be one linear chain walked by every new connection.
	svcs, slices := pt.Generate(40, 3)
	var objs []any
	for i := range svcs {
		for j := range slices[i].Endpoints {
			slices[i].Endpoints[j].NodeName = ptrTo("node1")
		}
		objs = append(objs, svcs[i], slices[i])
	}
	plan := Render(snapshotOf(t, objs...), testOptions())
	var root *Chain
	tree, rules := 0, 0
	for _, c := range plan.NAT {
		switch {
		case c.Name == HairpinChain:
			root = c
		case strings.HasPrefix(c.Name, hairpinChainPrefix):
			tree++
			for _, r := range c.Rules {
				if strings.Contains(r, "MASQUERADE") {
					rules++
				}
			}
		}
	}
	if root == nil || tree == 0 || len(root.Rules) > 16 {
		t.Fatalf("hairpin: root %v, %d tree chains; want a tree with a root of at most 16 rules", root, tree)
	}
	for _, r := range root.Rules {
		if strings.Contains(r, "MASQUERADE") {
			rules++
		}
	}
	if rules != 120 {
		t.Errorf("hairpin rules in the tree: %d, want 120", rules)
	}
}

func ptrTo(s string) *string { return &s }
