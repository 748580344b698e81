//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/demo"
	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// explained is the part of `svcproxy explain -o json` these tests read.
type explained struct {
	Results []struct {
		Service     string `json:"service"`
		Protocol    string `json:"protocol"`
		Family      string `json:"family"`
		Destination string `json:"destination"`
		Verdict     string `json:"verdict"`
		Reason      string `json:"reason"`
		Masquerade  bool   `json:"masquerade"`
		Endpoints   []struct {
			IP   string `json:"ip"`
			Port int    `json:"port"`
			Node string `json:"node"`
		} `json:"endpoints"`
	} `json:"results"`
}

// backend is an endpoint as "ip:port@node".
func backend(ip string, port int, node string) string {
	return net.JoinHostPort(ip, strconv.Itoa(port)) + "@" + node
}

// explainJSON runs `svcproxy explain -o json args...` on node n, as the
// demo prints it (inside n's network namespace, with n's svcproxy's
// kubeconfig and flags, against the live API server), and returns what it
// found for service, proto and family. It fails the test unless there is
// exactly one such result.
func explainJSON(t *testing.T, n *framework.Node, service string, proto corev1.Protocol, family corev1.IPFamily, args ...string) (verdict, reason string, masquerade bool, endpoints []string) {
	t.Helper()
	argv := append(demo.ExplainCommand(cluster, n), "-o", "json")
	if cluster.NFTablesMode() {
		// explain has iptables and IPVS mode only so far (--mode=nftables
		// exits 2): in nftables mode its iptables-mode answer, from the
		// same Snapshot, is held against connections through the nftables
		// rules (explain reads the API server here, not the kernel).
		argv = append(argv, "--mode=iptables")
	}
	argv = append(argv, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstderr: %s\nstdout: %s", strings.Join(argv, " "), err, stderr.String(), stdout.String())
	}
	var x explained
	if err := json.Unmarshal(stdout.Bytes(), &x); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, stdout.String())
	}
	var found []int
	for i, r := range x.Results {
		if r.Service == service && r.Protocol == string(proto) && r.Family == string(family) {
			found = append(found, i)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d results for %s %s %s, want 1:\n%s", strings.Join(argv, " "), len(found), service, proto, family, stdout.String())
	}
	r := x.Results[found[0]]
	for _, e := range r.Endpoints {
		endpoints = append(endpoints, backend(e.IP, e.Port, e.Node))
	}
	slices.Sort(endpoints)
	t.Logf("explain %s on %s (%v): %s %s %s to %s: %s (%s), masquerade %v, endpoints %v",
		strings.Join(args, " "), n.Name, time.Since(start).Round(time.Millisecond), service, proto, family, r.Destination, r.Verdict, r.Reason, r.Masquerade, endpoints)
	return r.Verdict, r.Reason, r.Masquerade, endpoints
}

// podBackends maps a podserver's name to its endpoint ("ip:8080@node") of
// family.
func podBackends(family corev1.IPFamily, pods ...*framework.Pod) map[string]string {
	out := map[string]string{}
	for _, p := range pods {
		out[p.Name] = backend(p.AddrOf(family).String(), framework.PodPort, p.Node.Name)
	}
	return out
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// expectReachedListed fails unless the backends real connections reached
// are exactly the endpoints explain listed.
func expectReachedListed(t *testing.T, what string, reached map[string]int, listed []string) {
	t.Helper()
	for _, b := range sortedKeys(reached) {
		if !slices.Contains(listed, b) {
			t.Errorf("%s: a connection reached %s, which explain does not list (it lists %v)", what, b, listed)
		}
	}
	if got := sortedKeys(reached); !slices.Equal(got, listed) {
		t.Errorf("%s: connections reached %v (%v), explain lists %v", what, got, reached, listed)
	}
}

// TestExplainMatchesConnections runs `svcproxy explain -o json` on node1
// against the live API server — the command `hack/e2e.sh --up` prints, on
// the same demo (test/e2e/demo) — and holds what it says against real
// connections, over IPv4 and IPv6:
//
//   - web.b.svc.cluster.local from a/client (a pod on node1): DNAT to
//     exactly the endpoints, with their nodes (b/web-1 on node1, b/web-2
//     and b/web-3 on node2), that 40 TCP connections and 40 UDP datagrams
//     reach when the pod resolves the name through CoreDNS each time; no
//     masquerade, and every backend sees the pod's own address;
//   - empty.b.svc.cluster.local (no endpoints): REJECT, and the
//     connection is refused;
//   - b/api's node port (externalTrafficPolicy Local, its endpoint on
//     node2) from the outside client: DROP on node1, where no answer
//     comes; DNAT to the local endpoint without masquerade on node2, where
//     the backend sees the client's address;
//   - b/web's node port from outside via node1: masquerade, and the
//     backends (exactly those listed) see another address than the
//     client's.
//
// It also runs the connection command --up prints (bash's /dev/tcp
// inside the pod's namespace, resolving through the resolv.conf the demo
// writes).
func TestExplainMatchesConnections(t *testing.T) {
	requireIPv6Proxy(t) // explain has iptables mode only so far, and the demo is dual-stack
	liftICMPRateLimit(t)
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	d, err := demo.Start(ctx, cluster)
	if err != nil {
		t.Fatalf("starting the demo: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(context.Background()); err != nil {
			t.Errorf("removing the demo: %v", err)
		}
	})
	t.Logf("demo up in %v: client %s (%s); web %s; api %s; b/web %v, b/api %v, b/empty %v", time.Since(start).Round(time.Millisecond),
		names(d.Client), d.Client.IP6, names(d.Web...), names(d.API), d.WebSvc.Spec.ClusterIPs, d.APISvc.Spec.ClusterIPs, d.EmptySvc.Spec.ClusterIPs)
	client := d.Client
	const tries = 40

	// resolve looks name up from the client pod through CoreDNS (kube-dns
	// ClusterIP, the pod's search path), as a process in it would.
	resolve := func(t *testing.T, name string, family corev1.IPFamily) netip.Addr {
		t.Helper()
		var addr netip.Addr
		// CoreDNS may not have seen the Service yet.
		err := framework.Eventually(context.Background(), 10*time.Second, func(ctx context.Context) error {
			addrs, _, err := client.ResolveFamily(ctx, corev1.ProtocolUDP, name, family)
			if err != nil {
				return err
			}
			if len(addrs) != 1 {
				return fmt.Errorf("%s (%s) resolved to %v, want one address", name, family, addrs)
			}
			addr = addrs[0]
			return nil
		})
		if err != nil {
			t.Fatalf("resolving %s from %s: %v", name, client.Name, err)
		}
		return addr
	}

	for _, family := range bothFamilies {
		from := "pod:" + client.AddrOf(family).String()
		web := podBackends(family, d.Web...)
		var want []string
		for _, b := range web {
			want = append(want, b)
		}
		slices.Sort(want)

		for _, proto := range bothProtos {
			t.Run("web.b.svc.cluster.local/"+string(family)+"/"+string(proto), func(t *testing.T) {
				const name = "web.b.svc.cluster.local"
				verdict, reason, masq, listed := explainJSON(t, node1, "b/web", proto, family, "--from", from, name)
				if verdict != "dnat" || masq {
					t.Errorf("explain: verdict %s (%s), masquerade %v; want dnat without masquerade", verdict, reason, masq)
				}
				if !slices.Equal(listed, want) {
					t.Errorf("explain lists %v, want the demo's endpoints %v", listed, want)
				}
				addr := resolve(t, name, family)
				target := net.JoinHostPort(addr.String(), strconv.Itoa(demo.ServicePort))
				waitAnswer(t, &client.Host, proto, target, 10*time.Second)
				reached := map[string]int{}
				for i := 0; i < tries; i++ {
					a := resolve(t, name, family)
					r, err := client.Request(context.Background(), proto, net.JoinHostPort(a.String(), strconv.Itoa(demo.ServicePort)))
					if err != nil {
						t.Fatalf("connection %d of %d to %s (%s): %v", i+1, tries, name, a, err)
					}
					b, ok := web[r.Name]
					if !ok {
						t.Fatalf("connection %d to %s answered by %s, not a web pod", i+1, name, r.Name)
					}
					reached[b]++
					if r.Src.Addr() != client.AddrOf(family) {
						t.Errorf("%s saw source %v; explain says no masquerade, want the pod's %v", r.Name, r.Src, client.AddrOf(family))
					}
				}
				expectReachedListed(t, fmt.Sprintf("%d %s connections to %s (%s)", tries, proto, name, target), reached, listed)
			})
		}

		t.Run("empty.b.svc.cluster.local/"+string(family), func(t *testing.T) {
			const name = "empty.b.svc.cluster.local"
			for _, proto := range bothProtos {
				verdict, reason, _, listed := explainJSON(t, node1, "b/empty", proto, family, "--from", from, name)
				if verdict != "reject" || len(listed) != 0 {
					t.Errorf("explain %s %s: verdict %s (%s), endpoints %v; want reject and none", name, proto, verdict, reason, listed)
				}
			}
			addr := resolve(t, name, family)
			target := net.JoinHostPort(addr.String(), strconv.Itoa(demo.ServicePort))
			for _, proto := range bothProtos {
				// An IPv6 TCP connect is failed at the SYN
				// retransmit, about 1 s in (test/e2e/README.md).
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				r, err := client.Request(ctx, proto, target)
				cancel()
				if !framework.IsRefused(err) {
					t.Errorf("%s %s (%s) from %s: %v (answered by %q); explain says reject, want connection refused", proto, name, target, client.Name, err, r.Name)
				}
			}
		})

		t.Run("node-ports-from-outside/"+string(family), func(t *testing.T) {
			outside := cluster.Client
			external := "external:" + outside.AddrOf(family).String()
			np := func(n *framework.Node, port int) string {
				return net.JoinHostPort(n.AddrOf(family).String(), strconv.Itoa(port))
			}
			tcp := corev1.ProtocolTCP

			// b/api, externalTrafficPolicy Local, endpoint on node2 only.
			verdict, reason, _, listed := explainJSON(t, node1, "b/api", tcp, family, "--from", external, np(node1, demo.APINodePort)+"/tcp")
			if verdict != "drop" || len(listed) != 0 {
				t.Errorf("explain b/api via node1: verdict %s (%s), endpoints %v; want drop", verdict, reason, listed)
			}
			if err := expectNoAnswer(t, outside, tcp, np(node1, demo.APINodePort)); err != nil && framework.IsRefused(err) {
				t.Errorf("b/api via node1: %v; explain says drop, want no answer", err)
			}
			verdict, reason, masq, listed := explainJSON(t, node2, "b/api", tcp, family, "--from", external, np(node2, demo.APINodePort)+"/tcp")
			api := podBackends(family, d.API)[d.API.Name]
			if verdict != "dnat" || masq || !slices.Equal(listed, []string{api}) {
				t.Errorf("explain b/api via node2: verdict %s (%s), masquerade %v, endpoints %v; want dnat to %s without masquerade", verdict, reason, masq, listed, api)
			}
			reached, sources := tally(t, outside, tcp, np(node2, demo.APINodePort), 5)
			expectBackends(t, "b/api via node2", reached, d.API)
			expectSources(t, "b/api via node2 (explain: no masquerade)", sources, outside.AddrOf(family))

			// b/web, externalTrafficPolicy Cluster: masqueraded.
			verdict, reason, masq, listed = explainJSON(t, node1, "b/web", tcp, family, "--from", external, np(node1, demo.WebNodePort)+"/tcp")
			if verdict != "dnat" || !masq {
				t.Errorf("explain b/web via node1: verdict %s (%s), masquerade %v; want dnat with masquerade", verdict, reason, masq)
			}
			web := podBackends(family, d.Web...)
			reachedWeb := map[string]int{}
			for i := 0; i < tries; i++ {
				r, err := outside.TCP(context.Background(), np(node1, demo.WebNodePort))
				if err != nil {
					t.Fatalf("connection %d of %d to b/web via node1: %v", i+1, tries, err)
				}
				reachedWeb[web[r.Name]]++
				if r.Src.Addr() == outside.AddrOf(family) {
					t.Errorf("%s saw the client's own address %v; explain says masquerade", r.Name, r.Src)
				}
			}
			expectReachedListed(t, fmt.Sprintf("%d connections from outside to b/web via node1", tries), reachedWeb, listed)
		})
	}

	t.Run("the-printed-connect-command", func(t *testing.T) {
		// What --up prints: bash's /dev/tcp inside the pod's namespace,
		// the name resolved by glibc through the demo's resolv.conf.
		argv := append([]string{"ip", "netns", "exec", client.NetNS.Name}, demo.ConnectCommand("web.b.svc.cluster.local", demo.ServicePort)...)
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
		var names []string
		for _, p := range d.Web {
			names = append(names, "name="+p.Name+" ")
		}
		if !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(string(out), n) }) {
			t.Errorf("%s printed %q, want the greeting of a web pod", strings.Join(argv, " "), out)
		}
		t.Logf("%s: %s", strings.Join(argv, " "), bytes.TrimSpace(out))
	})
}
