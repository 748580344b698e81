//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// svcpRules is the part of an iptables-save listing that svcproxy owns,
// per table: each SVCP- chain with its rules in order, and the rules of
// the built-in chains that jump to one.
type svcpRules map[string]map[string][]string

func parseSVCP(save string) svcpRules {
	out := svcpRules{}
	table := ""
	for _, l := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
			out[table] = map[string][]string{}
		case strings.HasPrefix(l, ":SVCP-"):
			name := strings.Fields(l[1:])[0]
			if _, ok := out[table][name]; !ok {
				out[table][name] = []string{}
			}
		case strings.HasPrefix(l, "-A "):
			chain := strings.Fields(l)[1]
			if strings.HasPrefix(chain, "SVCP-") || strings.Contains(l, " SVCP-") {
				out[table][chain] = append(out[table][chain], l)
			}
		}
	}
	return out
}

// diffSVCP describes how got differs from want, "" if it does not.
func diffSVCP(got, want svcpRules) string {
	var out []string
	tables := map[string]bool{}
	for t := range got {
		tables[t] = true
	}
	for t := range want {
		tables[t] = true
	}
	for t := range tables {
		chains := map[string]bool{}
		for c := range got[t] {
			chains[c] = true
		}
		for c := range want[t] {
			chains[c] = true
		}
		var names []string
		for c := range chains {
			names = append(names, c)
		}
		slices.Sort(names)
		for _, c := range names {
			g, gok := got[t][c]
			w, wok := want[t][c]
			switch {
			case !gok && len(w) > 0 || !gok && strings.HasPrefix(c, "SVCP-"):
				out = append(out, fmt.Sprintf("%s: chain %s missing (rendered: %d rules)", t, c, len(w)))
			case !wok && (len(g) > 0 || strings.HasPrefix(c, "SVCP-")):
				out = append(out, fmt.Sprintf("%s: chain %s not rendered, on the node with %d rules:\n  %s", t, c, len(g), strings.Join(g, "\n  ")))
			case !slices.Equal(g, w):
				out = append(out, fmt.Sprintf("%s: chain %s differs:\n node:\n  %s\n rendered:\n  %s", t, c, strings.Join(g, "\n  "), strings.Join(w, "\n  ")))
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestDualStackDryRunMatchesNodes: after a round of changes to dual-stack
// and IPv6-only Services of every kind (ClusterIP, NodePort with
// externalTrafficPolicy Local, ClientIP affinity, no endpoints, external
// IPs, a LoadBalancer with source ranges and ingress IPs of both
// families) — endpoints moved, Services deleted, ports changed, each a
// partial sync — each node's svcproxy chains in iptables and in ip6tables
// are exactly what svcproxy --dry-run renders for that node, section by
// section (canonicalised through iptables-restore and ip6tables-restore in
// a scratch namespace). In nftables mode: each node's ip and ip6
// svcproxy tables are exactly what --dry-run --mode nftables renders
// (loaded by the real nft into a scratch namespace and listed again).
func TestDualStackDryRunMatchesNodes(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-dryrun"
	ctx := context.Background()
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	pods := []*framework.Pod{
		cluster.MustStartPod(t, ns, "web-1", node1),
		cluster.MustStartPod(t, ns, "web-2", node2),
		cluster.MustStartPod(t, ns, "web-3", node2),
	}
	var svcs []*corev1.Service
	add := func(s *corev1.Service, eps ...*framework.Pod) *corev1.Service {
		svc := cluster.MustCreateService(t, s)
		cluster.MustSetEndpoints(t, svc, eps...)
		svcs = append(svcs, svc)
		return svc
	}
	for i := range 8 {
		add(framework.DualStack(framework.NewService(ns, "plain-"+strconv.Itoa(i), 80, corev1.ProtocolTCP, corev1.ProtocolUDP)), pods[i%3], pods[(i+1)%3])
	}
	np := framework.DualStack(framework.NewService(ns, "local", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	np.Spec.Type = corev1.ServiceTypeNodePort
	np.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	add(np, pods...)
	aff := framework.DualStack(framework.NewService(ns, "sticky", 80, corev1.ProtocolTCP))
	aff.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	add(aff, pods...)
	add(framework.DualStack(framework.NewService(ns, "empty", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)))
	ext := framework.DualStack(framework.NewService(ns, "ext", 80, corev1.ProtocolTCP))
	ext.Spec.ExternalIPs = []string{externalIP4, externalIP6}
	add(ext, pods[0])
	v6only := framework.IPv6Only(framework.NewService(ns, "v6only", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	v6only.Spec.Type = corev1.ServiceTypeNodePort
	add(v6only, pods[1], pods[2])
	l := framework.DualStack(framework.NewService(ns, "lb", 80, corev1.ProtocolTCP))
	l.Spec.Type = corev1.ServiceTypeLoadBalancer
	l.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	l.Spec.LoadBalancerSourceRanges = []string{"192.168.77.0/24", "fd00:77::/64"}
	lb := add(l, pods[0], pods[1])
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP4, IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}, {IP: lbIP6, IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}}
	if _, err := cluster.Kube.CoreV1().Services(ns).UpdateStatus(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, svc := range svcs {
		if svc.Name == "empty" {
			cluster.MustWaitRefusing(t, svc)
		} else {
			cluster.MustWaitServing(t, svc)
		}
	}

	// A round of changes, each applied by a partial sync.
	for i := 0; i < 8; i += 2 {
		cluster.MustSetEndpoints(t, svcs[i], pods[(i+2)%3])
	}
	svcAPI := cluster.Kube.CoreV1().Services(ns)
	for _, name := range []string{"plain-1", "plain-5"} {
		if err := svcAPI.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cur, err := svcAPI.Get(ctx, "plain-3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Ports[0].Port = 8081
	if _, err := svcAPI.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cluster.MustSetEndpoints(t, svcs[len(svcs)-2]) // v6only: no endpoints now

	for _, n := range []*framework.Node{node1, node2} {
		var last string
		start := time.Now()
		err := framework.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
			if cluster.NFTablesMode() {
				return nftMatchesDryRun(ctx, t, n, start, &last)
			}
			text, err := cluster.DryRun(ctx, n)
			if err != nil {
				return err
			}
			r4, r6, err := framework.SplitDryRun(text)
			if err != nil {
				return err
			}
			if r4 == "" || r6 == "" {
				return fmt.Errorf("dry run for %s: IPv4 section %d bytes, IPv6 section %d bytes; want both", n.Name, len(r4), len(r6))
			}
			want4, err := cluster.CanonicalRules(ctx, r4)
			if err != nil {
				return err
			}
			want6, err := cluster.CanonicalRules6(ctx, r6)
			if err != nil {
				return err
			}
			got4, err := n.NetNS.IPTablesSave(ctx)
			if err != nil {
				return err
			}
			got6, err := n.NetNS.IP6TablesSave(ctx)
			if err != nil {
				return err
			}
			var diffs []string
			if d := diffSVCP(parseSVCP(got4), parseSVCP(want4)); d != "" {
				diffs = append(diffs, "IPv4:\n"+d)
			}
			if d := diffSVCP(parseSVCP(got6), parseSVCP(want6)); d != "" {
				diffs = append(diffs, "IPv6:\n"+d)
			}
			if len(diffs) > 0 {
				last = strings.Join(diffs, "\n")
				return errString("differs")
			}
			t.Logf("%s: iptables and ip6tables match the dry run (%d and %d svcproxy chains) after %v", n.Name,
				len(parseSVCP(got4)["nat"])+len(parseSVCP(got4)["filter"]), len(parseSVCP(got6)["nat"])+len(parseSVCP(got6)["filter"]),
				time.Since(start).Round(time.Millisecond))
			return nil
		})
		if err != nil {
			t.Errorf("%s: svcproxy's rules do not match its dry run: %v\n%s", n.Name, err, last)
		}
	}
}

// nftMatchesDryRun is the check of TestDualStackDryRunMatchesNodes in
// nftables mode: node n's ip and ip6 svcproxy tables equal --dry-run's,
// both listed by nft (the render loaded into a scratch namespace). last
// gets the difference.
func nftMatchesDryRun(ctx context.Context, t *testing.T, n *framework.Node, start time.Time, last *string) error {
	want, err := nftRenderedRules(ctx, n)
	if err != nil {
		return err
	}
	v6 := 0
	for k := range want.chains {
		if strings.HasPrefix(k, "IPv6 ") {
			v6++
		}
	}
	if v6 == 0 {
		return fmt.Errorf("dry run for %s: no ip6 table; want both", n.Name)
	}
	got, err := nftLiveRules(ctx, n)
	if err != nil {
		return err
	}
	if d := diffRulesets(got, want); d != "" {
		*last = d
		return errString("differs")
	}
	t.Logf("%s: the ip and ip6 svcproxy tables match the dry run (%s) after %v", n.Name, got.summary(), time.Since(start).Round(time.Millisecond))
	return nil
}
