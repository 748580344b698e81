//go:build e2e

package e2e

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// nibbleAddrs returns addresses of base with one nibble, from first to
// last (0 = the most significant), set to 1 and to 2: sorted, each pair
// splits from the rest one nibble further down, the worst case for a
// prefix tree (one level per nibble).
func nibbleAddrs(base netip.Addr, first, last int) []string {
	var out []string
	for n := first; n <= last; n++ {
		for _, v := range []byte{1, 2} {
			b := base.As16()
			shift := 4 * (1 - n%2)
			b[n/2] |= v << shift
			out = append(out, netip.AddrFrom16(b).String())
		}
	}
	return out
}

// proxySyncFailures reads svcproxy_sync_proxy_rules_failures_total of node
// n, summed over its ip_family labels (absent until a sync fails: 0).
func proxySyncFailures(t *testing.T, n *framework.Node) float64 {
	t.Helper()
	body, err := fetchNodeMetrics(n)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, l := range strings.Split(body, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 || !(f[0] == "svcproxy_sync_proxy_rules_failures_total" || strings.HasPrefix(f[0], "svcproxy_sync_proxy_rules_failures_total{")) {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		sum += v
	}
	return sum
}

// TestIPv6DeepTrees: IPv6 keys that split one nibble at a time — 48
// external IPs of one Service (the dispatch tree) and 32 endpoints on node1
// of a selector-less Service (node1's hairpin tree) — would build trees
// deeper than the 16 jumps nf_tables allows; the IPv6 sync must still
// succeed on both nodes: no sync fails, the external IPs are programmed,
// and a dual-stack Service created afterwards serves over IPv6. (In
// nftables mode, which dispatches by verdict map, the same Services: the
// sync succeeds and every external IP is in the ip6 table.)
func TestIPv6DeepTrees(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "ipv6-deep"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	before := map[string]float64{}
	for _, n := range cluster.Nodes {
		before[n.Name] = proxySyncFailures(t, n)
	}

	ext := framework.NewService(ns, "deep-ext", 80, corev1.ProtocolTCP)
	ext.Spec.ExternalIPs = nibbleAddrs(netip.MustParseAddr("fd00:78::"), 8, 31)
	ext = cluster.MustCreateService(t, framework.DualStack(ext))
	cluster.MustSetEndpoints(t, ext, b1)

	hp := cluster.MustCreateService(t, framework.IPv6Only(framework.NewService(ns, "deep-hairpin", 80, corev1.ProtocolTCP)))
	slice := framework.EndpointSliceOfFamily(hp, framework.SliceName(hp, corev1.IPv6Protocol), corev1.IPv6Protocol)
	for _, a := range nibbleAddrs(node1.PodCIDR6.Addr(), 16, 31) {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(node1.Name),
		})
	}
	ctx := context.Background()
	if _, err := cluster.ApplyEndpointSlice(ctx, slice); err != nil {
		t.Fatal(err)
	}

	after := cluster.MustCreateService(t, framework.DualStack(framework.NewService(ns, "after", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)))
	cluster.MustSetEndpoints(t, after, b1)
	cluster.MustWaitServing(t, after)
	waitAnswer(t, &client.Host, corev1.ProtocolTCP, framework.ClusterAddrFamily(after, corev1.ProtocolTCP, corev1.IPv6Protocol), 10*time.Second)
	for _, n := range []*framework.Node{node1, node2} {
		if cluster.NFTablesMode() {
			// nftables mode has no trees (one verdict map lookup): every
			// external IP is an element of the ip6 table's service-ips.
			list, err := n.NetNS.NFTList(ctx, "ip6", framework.NFTablesTable)
			if err != nil {
				t.Fatal(err)
			}
			missing := 0
			for _, ip := range ext.Spec.ExternalIPs {
				if !strings.Contains(list, ip+" . tcp . 80 : ") {
					missing++
				}
			}
			if missing > 0 {
				t.Errorf("%s: %d of %d external IPs of %s/%s not in table ip6 %s", n.Name, missing, len(ext.Spec.ExternalIPs), ns, ext.Name, framework.NFTablesTable)
			}
			if got := proxySyncFailures(t, n); got != before[n.Name] {
				t.Errorf("%s: svcproxy_sync_proxy_rules_failures_total went from %v to %v", n.Name, before[n.Name], got)
			}
			continue
		}
		save, err := n.NetNS.Exec(ctx, "ip6tables-save", "-t", "nat")
		if err != nil {
			t.Fatal(err)
		}
		missing := 0
		for _, ip := range ext.Spec.ExternalIPs {
			if !strings.Contains(save, "-d "+ip+"/128") {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%s: %d of %d external IPs of %s/%s not in ip6tables", n.Name, missing, len(ext.Spec.ExternalIPs), ns, ext.Name)
		}
		if got := proxySyncFailures(t, n); got != before[n.Name] {
			t.Errorf("%s: svcproxy_sync_proxy_rules_failures_total went from %v to %v", n.Name, before[n.Name], got)
		}
		t.Logf("%s: %d tree chains in ip6tables nat", n.Name, strings.Count(save, "\n:SVCP-T"))
	}
}
