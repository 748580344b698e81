package nftables

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestObjectName: clean parts make a readable name; anything nft does not
// take in a name, or a name too long, ends in a hash; the two kinds never
// collide, and different parts give different names.
func TestObjectName(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct {
		parts []string
		want  string
	}{
		{[]string{"ns", "web", "http", "tcp"}, "svc-ns/web/http/tcp"},
		{[]string{"kube-system", "kube-dns", "53", "udp", "10.244.1.2", "53"}, "svc-kube-system/kube-dns/53/udp/10.244.1.2/53"},
		{[]string{"ns", "web", "http", "tcp", "fd00::1", "8080"}, "svc-ns/web/http/tcp/fd00__1/8080-"},
		{[]string{"n s", "we\"b", "http", "tcp"}, "svc-n_s/we_b/http/tcp-"},
		{[]string{"", "web", "http", "tcp"}, "svc-/web/http/tcp-"},
	} {
		got := objectName(svcChainPrefix, tc.parts...)
		if strings.HasSuffix(tc.want, "-") {
			if !strings.HasPrefix(got, tc.want) || len(got) != len(tc.want)+hashLen {
				t.Errorf("objectName(%q) = %q, want %q and a hash", tc.parts, got, tc.want)
			}
		} else if got != tc.want {
			t.Errorf("objectName(%q) = %q, want %q", tc.parts, got, tc.want)
		}
	}
	a := objectName(svcChainPrefix, long, long, long, long, long)
	b := objectName(svcChainPrefix, long, long, long, long, long+"b")
	if len(a) > maxNameLen || len(b) > maxNameLen || a == b {
		t.Errorf("long names: %q (%d), %q (%d): want distinct, at most %d", a, len(a), b, len(b), maxNameLen)
	}
	// "a-b" + "c" and "a" + "b-c" differ: "/" separates the parts.
	if objectName("x-", "a-b", "c") == objectName("x-", "a", "b-c") {
		t.Errorf("parts are not kept apart")
	}
}

// TestMinimalPrefixes: an interval set refuses overlapping elements, so
// ranges inside another go, and invalid ones.
func TestMinimalPrefixes(t *testing.T) {
	in := []netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("198.51.100.7/32"), netip.MustParsePrefix("192.0.2.1/24"), netip.MustParsePrefix("10.0.0.0/8"), {},
	}
	got := minimalPrefixes(in)
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/24")}
	if !cmp.Equal(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })) {
		t.Errorf("minimalPrefixes = %v, want %v", got, want)
	}
	if got := minimalPrefixes([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("10.0.0.0/8")}); len(got) != 1 {
		t.Errorf("0.0.0.0/0 holds everything: %v", got)
	}
}

// TestRenderSmallCases pins the rule forms of a few services.
func TestRenderSmallCases(t *testing.T) {
	web := pt.Service("ns", "web", "10.96.0.20", "http", 80)
	for _, tc := range []struct {
		name  string
		opts  func(*Options)
		objs  []any
		names []string
		want  string
	}{
		{
			name:  "one endpoint: masquerade off-cluster sources, DNAT",
			objs:  []any{web, pt.Slice("ns", "web", "w1", "http", 8080, pt.Ready("10.244.2.2", "node2"))},
			names: []string{"per-port", serviceIPsMap},
			want: `
			svc-ns/web/http/tcp: ip daddr 10.96.0.20 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000
			svc-ns/web/http/tcp: meta l4proto tcp dnat to 10.244.2.2:8080
			service-ips: 10.96.0.20 . tcp . 80 : goto svc-ns/web/http/tcp`,
		},
		{
			name:  "three endpoints, masquerade-all, mark bit 13: numgen 1/3, 1/2, rest",
			opts:  func(o *Options) { o.ClusterCIDRs = nil; o.MasqueradeAll = true; o.MasqueradeBit = 13 },
			objs:  []any{web, pt.Slice("ns", "web", "w1", "http", 8080, pt.Ready("10.244.1.2", "node1"), pt.Ready("10.244.2.2", "node2"), pt.Ready("10.244.3.2", "node3"))},
			names: []string{"per-port", hairpinSet},
			want: `
			svc-ns/web/http/tcp: ip daddr 10.96.0.20 meta mark set meta mark | 0x2000
			svc-ns/web/http/tcp: numgen random mod 3 == 0 meta l4proto tcp dnat to 10.244.1.2:8080
			svc-ns/web/http/tcp: numgen random mod 2 == 0 meta l4proto tcp dnat to 10.244.2.2:8080
			svc-ns/web/http/tcp: meta l4proto tcp dnat to 10.244.3.2:8080
			hairpin: 10.244.1.2 . 10.244.1.2`,
		},
		{
			name:  "no cluster CIDR, no masquerade-all: no mark",
			opts:  func(o *Options) { o.ClusterCIDRs = nil },
			objs:  []any{web, pt.Slice("ns", "web", "w1", "http", 8080, pt.Ready("10.244.2.2", "node2"))},
			names: []string{"per-port"},
			want:  `svc-ns/web/http/tcp: meta l4proto tcp dnat to 10.244.2.2:8080`,
		},
		{
			name: "two cluster CIDRs: the named set",
			opts: func(o *Options) {
				o.ClusterCIDRs = append(o.ClusterCIDRs, netip.MustParsePrefix("100.64.0.0/16"))
			},
			objs:  []any{web, pt.Slice("ns", "web", "w1", "http", 8080, pt.Ready("10.244.2.2", "node2"))},
			names: []string{"per-port", clusterCIDRsSet},
			want: `
			svc-ns/web/http/tcp: ip daddr 10.96.0.20 ip saddr != @cluster-cidrs meta mark set meta mark | 0x4000
			svc-ns/web/http/tcp: meta l4proto tcp dnat to 10.244.2.2:8080
			cluster-cidrs: 10.244.0.0/16
			cluster-cidrs: 100.64.0.0/16`,
		},
		{
			name: "no endpoints: REJECT for every address",
			objs: []any{pt.Service("ns", "web", "10.96.0.20", "http", 80, func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30001
				s.Spec.ExternalIPs = []string{"192.0.2.1"}
			})},
			names: []string{"per-port", noEndpointServicesMap, noEndpointNodePortsMap, serviceIPsMap},
			want: `
			no-endpoint-services: 10.96.0.20 . tcp . 80 : goto reject-chain
			no-endpoint-services: 192.0.2.1 . tcp . 80 : goto reject-chain
			no-endpoint-nodeports: tcp . 30001 : goto reject-chain`,
		},
		{
			name:  "nodeport-addresses: a set and fib",
			opts:  func(o *Options) { o.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")} },
			names: []string{servicesChain, nodePortAddressesSet},
			want: `
			services: ip daddr . meta l4proto . th dport vmap @service-ips
			services: ip daddr @nodeport-addresses fib daddr type local meta l4proto . th dport vmap @service-nodeports
			nodeport-addresses: 192.168.0.0/16`,
		},
		{
			name:  "no fully-random masquerade",
			opts:  func(o *Options) { o.RandomFully = false },
			names: []string{masqueradingChain},
			want: `
			masquerading: meta mark & 0x4000 != 0 meta mark set meta mark ^ 0x4000 masquerade
			masquerading: ct status dnat ip saddr . ip daddr @hairpin masquerade`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			got := rulesOf(Render(pt.Snapshot(t, tc.objs...), opts), tc.names...)
			if d := cmp.Diff(dedent(tc.want), got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// TestRenderIPv6: the ip6 table's forms: ip6 selectors, [addr]:port DNAT,
// node ports neither on ::1 nor on link-local addresses, hashed names of
// IPv6 endpoints.
func TestRenderIPv6(t *testing.T) {
	svc := pt.Service("ns", "web", "fd00:10:96::20", "http", 80, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	})
	sl := pt.Slice("ns", "web", "w1", "http", 8080, pt.Ready("fd00:10:244:2::2", "node2"))
	sl.AddressType = "IPv6"
	got := rulesOf(Render(pt.Snapshot(t, svc, sl), testOptions6()), "per-port", servicesChain)
	want := dedent(`
	services: ip6 daddr . meta l4proto . th dport vmap @service-ips
	services: fib daddr type local ip6 daddr != ::1 ip6 daddr != fe80::/10 meta l4proto . th dport vmap @service-nodeports
	svc-ns/web/http/tcp: ip6 daddr fd00:10:96::20 ip6 saddr != fd00:10:244::/56 meta mark set meta mark | 0x4000
	svc-ns/web/http/tcp: meta l4proto tcp dnat to [fd00:10:244:2::2]:8080
	ext-ns/web/http/tcp: meta mark set meta mark | 0x4000
	ext-ns/web/http/tcp: goto svc-ns/web/http/tcp`)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if p := Render(pt.Snapshot(t, svc, sl), testOptions()); len(p.ports) != 0 {
		t.Errorf("the ip table renders an IPv6 service port")
	}
}

// TestRendererEqualsRender: the caching Renderer's plans equal Render's
// and reuse the fragments of unchanged ports.
func TestRendererEqualsRender(t *testing.T) {
	c := newCluster(t, web(), webSlice(pt.Ready("10.244.1.2", "node1")), pt.Service("ns", "other", "10.96.0.30", "http", 80))
	r := NewRenderer(testOptions())
	p1 := r.Render(c.snapshot())
	c.set(webSlice(pt.Ready("10.244.1.3", "node1")))
	snap := c.snapshot()
	p2 := r.Render(snap)
	if d := cmp.Diff(dryRun(t, Render(snap, testOptions())), dryRun(t, p2)); d != "" {
		t.Errorf("Renderer and Render differ (-Render +Renderer):\n%s", d)
	}
	if p1.fixed != p2.fixed || p1.ports[0] != p2.ports[0] || p1.ports[1] == p2.ports[1] { // ns/other, then ns/web
		t.Errorf("fragments: the fixed part and the unchanged port must be reused, the changed one not")
	}
}
