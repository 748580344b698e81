//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// The dual-stack cases (repository issue 8). The test bed is dual-stack
// (framework/network.go): every node and pod has an address of each
// family, the API server allocates ClusterIPs from 10.96.0.0/12 and
// fd00:10:96::/112, and svcproxy runs with both cluster CIDRs. A Service
// asks for IPv6 with framework.DualStack or framework.IPv6Only; the tests
// write one EndpointSlice per family (framework.SetEndpoints).

var (
	bothFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	bothProtos   = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}
)

// requireIPv6Proxy fails the test in IPVS mode (E2E_SVCPROXY_ARGS=
// --mode=ipvs): the dual-stack cases read iptables mode's rules and were
// never run against IPVS mode (this bed's kernel has no ip_vs); IPVS
// mode's IPv6 is tested under qemu (ipvs/vmtest).
func requireIPv6Proxy(t *testing.T) {
	t.Helper()
	if cluster.IPVSMode() {
		t.Fatal("svcproxy runs in IPVS mode: the dual-stack cases are written for iptables mode (IPVS mode's IPv6 is tested in ipvs/vmtest)")
	}
}

// mustBeDualStack fails unless the API server gave svc a ClusterIP of each
// family, IPv4 first.
func mustBeDualStack(t *testing.T, svc *corev1.Service) {
	t.Helper()
	if len(svc.Spec.ClusterIPs) != 2 || len(svc.Spec.IPFamilies) != 2 ||
		svc.Spec.IPFamilies[0] != corev1.IPv4Protocol || svc.Spec.IPFamilies[1] != corev1.IPv6Protocol ||
		!netip.MustParseAddr(svc.Spec.ClusterIPs[1]).Is6() {
		t.Fatalf("%s/%s: clusterIPs %v, families %v; want one IPv4 and one IPv6 address", svc.Namespace, svc.Name, svc.Spec.ClusterIPs, svc.Spec.IPFamilies)
	}
}

// nodePortAddr is "[addr]:nodePort" of svc's port for proto on node n's
// address of family.
func nodePortAddr(n *framework.Node, svc *corev1.Service, proto corev1.Protocol, family corev1.IPFamily) string {
	return net.JoinHostPort(n.AddrOf(family).String(), strconv.Itoa(int(framework.NodePortOf(svc, proto))))
}

// streamSummary logs a prober's tries and fails the test for every failed
// one, or when fewer than min were made.
func streamSummary(t *testing.T, what string, probes []probe, min int) (tries, failures int) {
	t.Helper()
	var failed []string
	seen := map[string]int{}
	for _, p := range probes {
		if p.err != nil {
			failed = append(failed, fmt.Sprintf("%s (+%v): %v", p.at.Format("15:04:05.000"), p.took.Round(time.Millisecond), p.err))
			continue
		}
		seen[p.reply.Name]++
	}
	t.Logf("%s: %d connections, %d failed; backends %v", what, len(probes), len(failed), seen)
	if len(failed) > 0 {
		const show = 30
		more := ""
		if len(failed) > show {
			more = fmt.Sprintf("\n... and %d more", len(failed)-show)
			failed = failed[:show]
		}
		t.Errorf("%s: %d of %d connections failed:\n%s%s", what, len(failed), len(probes), strings.Join(failed, "\n"), more)
	}
	if len(probes) < min {
		t.Errorf("%s: only %d connections were tried, want at least %d", what, len(probes), min)
	}
	return len(probes), len(failed)
}

// TestDualStackCrossNamespaceFQDN: a pod in namespace a on node1 resolves
// web.b.svc.cluster.local (and web.b) through CoreDNS — over UDP and TCP,
// through the kube-dns ClusterIP — and gets the dual-stack Service's IPv6
// ClusterIP as its AAAA record (its IPv4 one as its A record); 100 TCP
// connections and 100 UDP datagrams to the IPv6 ClusterIP reach all 3
// backends of b on node2 across the VXLAN overlay, each backend seeing the
// pod's own IPv6 address. IPv4 keeps working on the same Service.
func TestDualStackCrossNamespaceFQDN(t *testing.T) {
	requireIPv6Proxy(t)
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, "a", "client", node1)
	var backends []*framework.Pod
	for i := 1; i <= 3; i++ {
		backends = append(backends, cluster.MustStartPod(t, "b", fmt.Sprintf("web-%d", i), node2))
	}
	svc := cluster.MustCreateService(t, framework.DualStack(framework.NewService("b", "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)))
	mustBeDualStack(t, svc)
	cluster.MustSetEndpoints(t, svc, backends...)
	cluster.MustWaitServing(t, svc)
	v4, v6 := svc.Spec.ClusterIPs[0], svc.Spec.ClusterIPs[1]
	t.Logf("client %s (%s); backends %s; b/web %s and %s", names(client), client.IP6, names(backends...), v4, v6)

	for _, tc := range []struct {
		name  string
		proto corev1.Protocol
	}{
		{name: "web.b.svc.cluster.local", proto: corev1.ProtocolUDP},
		{name: "web.b.svc.cluster.local", proto: corev1.ProtocolTCP},
		{name: "web.b", proto: corev1.ProtocolUDP},
		{name: "web.b", proto: corev1.ProtocolTCP},
	} {
		t.Run(tc.name+"/dns-over-"+string(tc.proto), func(t *testing.T) {
			const wantFQDN = "web.b.svc.cluster.local."
			for _, want := range []struct {
				family corev1.IPFamily
				addr   string
			}{{corev1.IPv6Protocol, v6}, {corev1.IPv4Protocol, v4}} {
				var addrs []string
				var answered string
				err := framework.Eventually(context.Background(), 10*time.Second, func(ctx context.Context) error {
					ips, fqdn, err := client.ResolveFamily(ctx, tc.proto, tc.name, want.family)
					if err != nil {
						return err
					}
					addrs, answered = nil, fqdn
					for _, ip := range ips {
						addrs = append(addrs, ip.String())
					}
					return nil
				})
				if err != nil {
					t.Fatalf("resolving %s (%s) from %s over %s: %v", tc.name, want.family, client.Name, tc.proto, err)
				}
				if answered != wantFQDN || len(addrs) != 1 || addrs[0] != want.addr {
					t.Fatalf("%s (%s) resolved to %v as %s, want [%s] as %s", tc.name, want.family, addrs, answered, want.addr, wantFQDN)
				}
			}
			target := net.JoinHostPort(v6, "80")
			waitAnswer(t, &client.Host, corev1.ProtocolTCP, target, 10*time.Second)
			backendsSeen, sources := tally(t, &client.Host, corev1.ProtocolTCP, target, 100)
			expectBackends(t, "100 connections to "+target, backendsSeen, backends...)
			expectSources(t, "100 connections to "+target, sources, client.IP6)
			t.Logf("%s resolved over %s to %s (AAAA) and %s (A); 100 TCP connections to %s: %v", tc.name, tc.proto, v6, v4, target, backendsSeen)
		})
	}
	t.Run("udp-over-ipv6", func(t *testing.T) {
		target := framework.ClusterAddrFamily(svc, corev1.ProtocolUDP, corev1.IPv6Protocol)
		waitAnswer(t, &client.Host, corev1.ProtocolUDP, target, 10*time.Second)
		got, sources := tally(t, &client.Host, corev1.ProtocolUDP, target, 100)
		expectBackends(t, "100 datagrams to "+target, got, backends...)
		expectSources(t, "100 datagrams to "+target, sources, client.IP6)
		t.Logf("UDP %s: %v", target, got)
	})
	t.Run("ipv4-too", func(t *testing.T) {
		for _, proto := range bothProtos {
			target := framework.ClusterAddrFamily(svc, proto, corev1.IPv4Protocol)
			waitAnswer(t, &client.Host, proto, target, 10*time.Second)
			got, sources := tally(t, &client.Host, proto, target, 30)
			expectBackends(t, string(proto)+" "+target, got, backends...)
			expectSources(t, string(proto)+" "+target, sources, client.IP)
		}
	})
}

// TestDualStackClusterIP: TestClusterIP over IPv6 on dual-stack Services: a
// pod on node1 reaches a backend on its own node and one on node2, TCP and
// UDP, without masquerade; a backend reaches itself (hairpin, masqueraded);
// the node itself reaches an IPv6 ClusterIP; ClientIP affinity sticks
// over IPv6; svcproxy's metrics count IPv6 rules.
func TestDualStackClusterIP(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	local := cluster.MustStartPod(t, ns, "local", node1)
	remote := cluster.MustStartPod(t, ns, "remote", node2)
	newSvc := func(name string, pods ...*framework.Pod) *corev1.Service {
		svc := cluster.MustCreateService(t, framework.DualStack(framework.NewService(ns, name, 80, corev1.ProtocolTCP, corev1.ProtocolUDP)))
		mustBeDualStack(t, svc)
		cluster.MustSetEndpoints(t, svc, pods...)
		return svc
	}
	same := newSvc("same-node", local)
	cross := newSvc("cross-node", remote)
	cluster.MustWaitServing(t, same)
	cluster.MustWaitServing(t, cross)
	t.Logf("client %s %s; same-node %v -> %s; cross-node %v -> %s", names(client), client.IP6, same.Spec.ClusterIPs, names(local), cross.Spec.ClusterIPs, names(remote))

	for _, tc := range []struct {
		name    string
		svc     *corev1.Service
		backend *framework.Pod
	}{
		{"same-node", same, local},
		{"cross-node", cross, remote},
	} {
		for _, family := range bothFamilies {
			for _, proto := range bothProtos {
				t.Run(tc.name+"/"+string(family)+"/"+string(proto), func(t *testing.T) {
					addr := framework.ClusterAddrFamily(tc.svc, proto, family)
					waitAnswer(t, &client.Host, proto, addr, 10*time.Second)
					got, sources := tally(t, &client.Host, proto, addr, 20)
					expectBackends(t, string(proto)+" "+addr, got, tc.backend)
					expectSources(t, string(proto)+" "+addr, sources, client.AddrOf(family))
				})
			}
		}
	}

	t.Run("hairpin-ipv6", func(t *testing.T) {
		for _, proto := range bothProtos {
			addr := framework.ClusterAddrFamily(same, proto, corev1.IPv6Protocol)
			r := waitAnswer(t, &local.Host, proto, addr, 10*time.Second)
			if r.Name != local.Name {
				t.Errorf("%s %s from %s answered by %s, want itself", proto, addr, local.Name, r.Name)
			}
			if r.Src.Addr() == local.IP6 {
				t.Errorf("%s %s from %s to itself saw its own address as source: hairpin not masqueraded", proto, addr, local.Name)
			}
			t.Logf("hairpin %s %s: source %v", proto, addr, r.Src)
		}
	})

	t.Run("from-node-ipv6", func(t *testing.T) {
		for _, n := range cluster.Nodes {
			for _, proto := range bothProtos {
				addr := framework.ClusterAddrFamily(cross, proto, corev1.IPv6Protocol)
				r := waitAnswer(t, &n.Host, proto, addr, 10*time.Second)
				if r.Name != remote.Name {
					t.Errorf("%s %s from %s answered by %s, want %s", proto, addr, n.Name, r.Name, remote.Name)
				}
			}
		}
	})

	t.Run("affinity-ipv6", func(t *testing.T) {
		backends := []*framework.Pod{local, remote, cluster.MustStartPod(t, ns, "third", node2)}
		s := framework.DualStack(framework.NewService(ns, "sticky", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		sticky := cluster.MustCreateService(t, s)
		cluster.MustSetEndpoints(t, sticky, backends...)
		cluster.MustWaitServing(t, sticky)
		spread := newSvc("spread", backends...)
		cluster.MustWaitServing(t, spread)
		for _, proto := range bothProtos {
			addr := framework.ClusterAddrFamily(sticky, proto, corev1.IPv6Protocol)
			waitAnswer(t, &client.Host, proto, addr, 10*time.Second)
			got, _ := tally(t, &client.Host, proto, addr, 30)
			if len(got) != 1 {
				t.Errorf("%s %s with ClientIP affinity: answers from %d backends %v, want all from one", proto, addr, len(got), got)
			}
			t.Logf("%s %s (affinity): %v", proto, addr, got)
		}
		addr := framework.ClusterAddrFamily(spread, corev1.ProtocolTCP, corev1.IPv6Protocol)
		waitAnswer(t, &client.Host, corev1.ProtocolTCP, addr, 10*time.Second)
		got, _ := tally(t, &client.Host, corev1.ProtocolTCP, addr, 60)
		expectBackends(t, "TCP "+addr+" without affinity", got, backends...)
	})

	t.Run("metrics-per-family", func(t *testing.T) {
		body, err := fetchNodeMetrics(node1)
		if err != nil {
			t.Fatal(err)
		}
		if cluster.NFTablesMode() {
			nftSyncsPerFamily(t, node1, body)
			return
		}
		var lines []string
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "kubeproxy_sync_proxy_rules_iptables_total{") {
				lines = append(lines, l)
			}
		}
		found := map[string]bool{}
		for _, l := range lines {
			for _, fam := range []string{"IPv4", "IPv6"} {
				if strings.Contains(l, `ip_family="`+fam+`"`) && strings.Contains(l, `table="nat"`) && !strings.HasSuffix(l, " 0") {
					found[fam] = true
				}
			}
		}
		if !found["IPv4"] || !found["IPv6"] {
			t.Errorf("kubeproxy_sync_proxy_rules_iptables_total on node1 does not count nat rules of both families:\n%s", strings.Join(lines, "\n"))
		}
	})
}

// fetchNodeMetrics reads svcproxy's /metrics on node n (127.0.0.1:10249
// inside the node).
func fetchNodeMetrics(n *framework.Node) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.NetNS.DialContext}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return "", fmt.Errorf("scraping %s's metrics: %w", n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestIPv6OnlyService: a single-stack IPv6 Service of type NodePort (one
// ClusterIP, an IPv6 one; one EndpointSlice, of addressType IPv6) serves
// TCP and UDP from a pod (same node and across the overlay, no masquerade),
// from the node, to itself (hairpin), from the outside client through each
// node's IPv6 address (masqueraded), and resolves as AAAA only. Its node
// port is not opened on the nodes' IPv4 addresses, and no IPv4 rule names
// it. Without endpoints it is refused at once, over UDP from a pod and from
// outside; an IPv6 TCP connect is refused too (at the SYN retransmit).
func TestIPv6OnlyService(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "ipv6only"
	liftICMPRateLimit(t)
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	b2 := cluster.MustStartPod(t, ns, "web-2", node2)
	s := framework.IPv6Only(framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := cluster.MustCreateService(t, s)
	if len(svc.Spec.ClusterIPs) != 1 || !netip.MustParseAddr(svc.Spec.ClusterIP).Is6() {
		t.Fatalf("clusterIPs %v, want one IPv6 address", svc.Spec.ClusterIPs)
	}
	cluster.MustSetEndpoints(t, svc, b1, b2)
	ctx := context.Background()
	if _, err := cluster.Kube.DiscoveryV1().EndpointSlices(ns).Get(ctx, framework.SliceName(svc, corev1.IPv4Protocol), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("an IPv4 EndpointSlice was written for an IPv6-only Service (err %v)", err)
	}
	cluster.MustWaitServing(t, svc)
	t.Logf("%s/%s %s; backends %s %s and %s %s", ns, svc.Name, svc.Spec.ClusterIP, b1.Name, b1.IP6, b2.Name, b2.IP6)

	for _, proto := range bothProtos {
		t.Run("pod/"+string(proto), func(t *testing.T) {
			addr := framework.ClusterAddrOf(svc, proto)
			waitAnswer(t, &client.Host, proto, addr, 10*time.Second)
			got, sources := tally(t, &client.Host, proto, addr, 40)
			expectBackends(t, string(proto)+" "+addr, got, b1, b2)
			expectSources(t, string(proto)+" "+addr, sources, client.IP6)
		})
		t.Run("node/"+string(proto), func(t *testing.T) {
			for _, n := range cluster.Nodes {
				waitAnswer(t, &n.Host, proto, framework.ClusterAddrOf(svc, proto), 10*time.Second)
			}
		})
		t.Run("hairpin/"+string(proto), func(t *testing.T) {
			// Two backends: try until the backend lands on itself.
			addr := framework.ClusterAddrOf(svc, proto)
			for i := 0; ; i++ {
				r := waitAnswer(t, &b2.Host, proto, addr, 10*time.Second)
				if r.Name != b2.Name {
					if i == 50 {
						t.Fatalf("%s %s from %s: 50 answers, none from itself", proto, addr, b2.Name)
					}
					continue
				}
				if r.Src.Addr() == b2.IP6 {
					t.Errorf("%s %s from %s to itself saw its own address: hairpin not masqueraded", proto, addr, b2.Name)
				}
				break
			}
		})
		for _, n := range cluster.Nodes {
			t.Run("nodeport/"+n.Name+"/"+string(proto), func(t *testing.T) {
				addr := nodePortAddr(n, svc, proto, corev1.IPv6Protocol)
				waitAnswer(t, cluster.Client, proto, addr, 10*time.Second)
				got, sources := tally(t, cluster.Client, proto, addr, 40)
				expectBackends(t, string(proto)+" "+addr, got, b1, b2)
				if k := sources[cluster.Client.IP6]; k > 0 {
					t.Errorf("%s %s: %d answers saw the client's own address: not masqueraded", proto, addr, k)
				}
				// The Service has no IPv4 side: the node port is not open
				// on the node's IPv4 address.
				addr4 := nodePortAddr(n, svc, proto, corev1.IPv4Protocol)
				err := expectNoAnswer(t, cluster.Client, proto, addr4)
				t.Logf("%s %s: %v; %s (IPv4): %v", proto, addr, got, addr4, err)
			})
		}
	}

	t.Run("dns", func(t *testing.T) {
		name := "web." + ns
		var got []netip.Addr
		err := framework.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			var err error
			got, _, err = client.ResolveFamily(ctx, corev1.ProtocolUDP, name, corev1.IPv6Protocol)
			return err
		})
		if err != nil || len(got) != 1 || got[0].String() != svc.Spec.ClusterIP {
			t.Fatalf("%s AAAA: %v %v, want [%s]", name, got, err, svc.Spec.ClusterIP)
		}
		if a, _, err := client.ResolveFamily(ctx, corev1.ProtocolUDP, name, corev1.IPv4Protocol); err == nil {
			t.Errorf("%s has A records %v; an IPv6-only Service has none", name, a)
		}
	})

	t.Run("no-ipv4-rules", func(t *testing.T) {
		if cluster.NFTablesMode() {
			nftNoIPv4Rules(t, ns+"/"+svc.Name+"/", svc.Spec.ClusterIP)
			return
		}
		for _, n := range cluster.Nodes {
			v4, err := n.NetNS.Exec(ctx, "iptables-save")
			if err != nil {
				t.Fatal(err)
			}
			v6, err := n.NetNS.Exec(ctx, "ip6tables-save")
			if err != nil {
				t.Fatal(err)
			}
			ref := ns + "/" + svc.Name
			if strings.Contains(v4, ref) {
				t.Errorf("iptables-save (IPv4) on %s mentions %s:\n%s", n.Name, ref, grepLines(v4, ref))
			}
			if !strings.Contains(v6, svc.Spec.ClusterIP+"/128") {
				t.Errorf("ip6tables-save on %s has no rule for %s/128", n.Name, svc.Spec.ClusterIP)
			}
		}
	})

	t.Run("no-endpoints-refused", func(t *testing.T) {
		cluster.MustSetEndpoints(t, svc)
		cluster.MustWaitRefusing(t, svc)
		targets := []struct {
			from  *framework.Host
			proto corev1.Protocol
			addr  string
			// within: IPv6 TCP is refused at the SYN retransmit.
			within time.Duration
		}{
			{&client.Host, corev1.ProtocolUDP, framework.ClusterAddrOf(svc, corev1.ProtocolUDP), refusedWithin},
			{cluster.Client, corev1.ProtocolUDP, nodePortAddr(node1, svc, corev1.ProtocolUDP, corev1.IPv6Protocol), refusedWithin},
			{cluster.Client, corev1.ProtocolUDP, nodePortAddr(node2, svc, corev1.ProtocolUDP, corev1.IPv6Protocol), refusedWithin},
			{&client.Host, corev1.ProtocolTCP, framework.ClusterAddrOf(svc, corev1.ProtocolTCP), 2500 * time.Millisecond},
			{cluster.Client, corev1.ProtocolTCP, nodePortAddr(node1, svc, corev1.ProtocolTCP, corev1.IPv6Protocol), 2500 * time.Millisecond},
		}
		for _, tg := range targets {
			tries := 10
			if tg.proto == corev1.ProtocolTCP {
				tries = 2
			}
			for i := 0; i < tries; i++ {
				ctx, cancel := context.WithTimeout(ctx, 4*time.Second)
				start := time.Now()
				r, err := tg.from.Request(ctx, tg.proto, tg.addr)
				took := time.Since(start)
				cancel()
				switch {
				case err == nil:
					t.Fatalf("%s %s from %s: answered by %s, want refused", tg.proto, tg.addr, tg.from.Name, r.Name)
				case !framework.IsRefused(err):
					t.Fatalf("%s %s from %s: %v after %v, want connection refused", tg.proto, tg.addr, tg.from.Name, err, took)
				case took > tg.within:
					t.Fatalf("%s %s from %s: refused after %v, want within %v", tg.proto, tg.addr, tg.from.Name, took, tg.within)
				}
				if i == 0 {
					t.Logf("%s %s from %s: refused after %v", tg.proto, tg.addr, tg.from.Name, took.Round(time.Millisecond))
				}
			}
		}
	})
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestDualStackNodePort: the outside client reaches a dual-stack NodePort
// Service through each node's IPv4 and IPv6 address, over TCP and UDP,
// landing on backends of both nodes, masqueraded (externalTrafficPolicy
// Cluster). With externalTrafficPolicy Local, over IPv6 too, only the
// node's own endpoints answer and they see the client's own address; a
// node without one does not answer.
func TestDualStackNodePort(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-nodeport"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	b2 := cluster.MustStartPod(t, ns, "web-2", node2)
	s := framework.DualStack(framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := cluster.MustCreateService(t, s)
	mustBeDualStack(t, svc)
	cluster.MustSetEndpoints(t, svc, b1, b2)
	cluster.MustWaitServing(t, svc)

	for _, node := range cluster.Nodes {
		for _, family := range bothFamilies {
			for _, proto := range bothProtos {
				t.Run(node.Name+"/"+string(family)+"/"+string(proto), func(t *testing.T) {
					addr := nodePortAddr(node, svc, proto, family)
					waitAnswer(t, cluster.Client, proto, addr, 10*time.Second)
					got, sources := tally(t, cluster.Client, proto, addr, 40)
					expectBackends(t, string(proto)+" "+addr, got, b1, b2)
					if n := sources[cluster.Client.AddrOf(family)]; n > 0 {
						t.Errorf("%s %s: %d answers saw the client's own address %v; with externalTrafficPolicy Cluster it must be masqueraded", proto, addr, n, cluster.Client.AddrOf(family))
					}
					t.Logf("%s %s from %s: %v, sources %v", proto, addr, cluster.Client.Name, got, sources)
				})
			}
		}
	}

	t.Run("externalTrafficPolicy-Local", func(t *testing.T) {
		a1 := cluster.MustStartPod(t, ns, "local-1a", node1)
		a2 := cluster.MustStartPod(t, ns, "local-1b", node1)
		c1 := cluster.MustStartPod(t, ns, "local-2a", node2)
		ls := framework.DualStack(framework.NewService(ns, "local", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
		ls.Spec.Type = corev1.ServiceTypeNodePort
		ls.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		local := cluster.MustCreateService(t, ls)
		cluster.MustSetEndpoints(t, local, a1, a2, c1)
		cluster.MustWaitServing(t, local)
		s1 := framework.DualStack(framework.NewService(ns, "only-node1", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
		s1.Spec.Type = corev1.ServiceTypeNodePort
		s1.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		only1 := cluster.MustCreateService(t, s1)
		cluster.MustSetEndpoints(t, only1, a1)
		cluster.MustWaitServing(t, only1)
		for _, tc := range []struct {
			node  *framework.Node
			local []*framework.Pod
		}{{node1, []*framework.Pod{a1, a2}}, {node2, []*framework.Pod{c1}}} {
			for _, proto := range bothProtos {
				addr := nodePortAddr(tc.node, local, proto, corev1.IPv6Protocol)
				waitAnswer(t, cluster.Client, proto, addr, 10*time.Second)
				got, sources := tally(t, cluster.Client, proto, addr, 40)
				expectBackends(t, string(proto)+" "+addr, got, tc.local...)
				expectSources(t, string(proto)+" "+addr, sources, cluster.Client.IP6)
			}
		}
		for _, proto := range bothProtos {
			waitAnswer(t, cluster.Client, proto, nodePortAddr(node1, only1, proto, corev1.IPv6Protocol), 10*time.Second)
			addr := nodePortAddr(node2, only1, proto, corev1.IPv6Protocol)
			err := expectNoAnswer(t, cluster.Client, proto, addr)
			t.Logf("%s %s (no local endpoint): %v", proto, addr, err)
		}
	})
}

// TestDualStackHealthCheckNodePort: a dual-stack LoadBalancer Service with
// externalTrafficPolicy Local gets a health-check node port; a load
// balancer checking the nodes over IPv4 or over IPv6 gets 200 from the
// node with a local endpoint and 503 from the other.
func TestDualStackHealthCheckNodePort(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-hc"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	s := framework.DualStack(framework.NewService(ns, "lb", 80, corev1.ProtocolTCP))
	s.Spec.Type = corev1.ServiceTypeLoadBalancer
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc := cluster.MustCreateService(t, s)
	mustBeDualStack(t, svc)
	if svc.Spec.HealthCheckNodePort == 0 {
		t.Fatal("no healthCheckNodePort allocated")
	}
	cluster.MustSetEndpoints(t, svc, b1)
	cluster.MustWaitServing(t, svc)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: cluster.Client.NetNS.DialContext}}
	defer hc.CloseIdleConnections()
	for _, tc := range []struct {
		node *framework.Node
		want int
	}{{node1, http.StatusOK}, {node2, http.StatusServiceUnavailable}} {
		for _, family := range bothFamilies {
			url := "http://" + net.JoinHostPort(tc.node.AddrOf(family).String(), strconv.Itoa(int(svc.Spec.HealthCheckNodePort))) + "/"
			var code int
			err := framework.Eventually(context.Background(), 10*time.Second, func(context.Context) error {
				resp, err := hc.Get(url)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				_, _ = io.Copy(io.Discard, resp.Body)
				if code = resp.StatusCode; code != tc.want {
					return fmt.Errorf("status %d", code)
				}
				return nil
			})
			if err != nil {
				t.Errorf("health check %s from the client (%s): %v, want %d", url, family, err, tc.want)
			} else {
				t.Logf("health check %s: %d", url, code)
			}
		}
	}
}

// TestDualStackProxyRestart: TestProxyRestart with both families: svcproxy
// is restarted on both nodes (SIGTERM, then SIGKILL) under continuous
// streams of new TCP and UDP connections to a dual-stack Service's IPv4 and
// IPv6 ClusterIPs; none fails, and a long-lived IPv6 TCP connection still
// carries data afterwards.
func TestDualStackProxyRestart(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-restart"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	backends := []*framework.Pod{
		cluster.MustStartPod(t, ns, "web-1", node1),
		cluster.MustStartPod(t, ns, "web-2", node2),
	}
	svc := cluster.MustCreateService(t, framework.DualStack(framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)))
	mustBeDualStack(t, svc)
	cluster.MustSetEndpoints(t, svc, backends...)
	cluster.MustWaitServing(t, svc)

	tcp6 := framework.ClusterAddrFamily(svc, corev1.ProtocolTCP, corev1.IPv6Protocol)
	long, err := client.NetNS.DialContext(context.Background(), "tcp", tcp6)
	if err != nil {
		t.Fatalf("opening the long-lived IPv6 connection: %v", err)
	}
	defer long.Close()
	_ = long.SetDeadline(time.Now().Add(2 * time.Second))
	longBuf := make([]byte, 256)
	n, err := long.Read(longBuf)
	if err != nil {
		t.Fatalf("long-lived connection: reading the greeting: %v", err)
	}
	greeting := strings.TrimSpace(string(longBuf[:n]))

	stop := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(stop) })
	type stream struct {
		what    string
		results <-chan []probe
	}
	var streams []stream
	for _, family := range bothFamilies {
		for _, proto := range bothProtos {
			addr := framework.ClusterAddrFamily(svc, proto, family)
			waitAnswer(t, &client.Host, proto, addr, 10*time.Second)
			streams = append(streams, stream{string(family) + " " + string(proto) + " " + addr,
				prober(&client.Host, proto, addr, 2*time.Second, 2*time.Millisecond, stop)})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, s := range []struct {
		node  *framework.Node
		crash bool
	}{{node1, false}, {node2, false}, {node1, true}, {node2, true}} {
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		if err := cluster.RestartProxy(ctx, s.node, s.crash); err != nil {
			t.Fatalf("restarting svcproxy on %s (crash %v): %v", s.node.Name, s.crash, err)
		}
		t.Logf("svcproxy on %s restarted (crash %v); ready again in %v", s.node.Name, s.crash, time.Since(start).Round(time.Millisecond))
	}
	time.Sleep(500 * time.Millisecond)
	once.Do(func() { close(stop) })
	for _, s := range streams {
		streamSummary(t, s.what+" during the restarts", <-s.results, 20)
	}
	_ = long.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(long, "still-there"); err != nil {
		t.Fatalf("long-lived IPv6 connection (%s): writing after the restarts: %v", greeting, err)
	}
	n, err = long.Read(longBuf)
	if err != nil || string(longBuf[:n]) != "still-there\n" {
		t.Fatalf("long-lived IPv6 connection (%s): echo after the restarts = %q, %v", greeting, longBuf[:n], err)
	}
}
