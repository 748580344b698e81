//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// withProxyArgs restarts node n's svcproxy with extra flags; when the test
// ends it is restarted with the framework's flags again.
func withProxyArgs(t *testing.T, n *framework.Node, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n.ProxyArgs = args
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		n.ProxyArgs = nil
		if err := cluster.RestartProxy(ctx, n, false); err != nil {
			t.Errorf("restarting svcproxy on %s with the framework's flags: %v", n.Name, err)
		}
	})
	if err := cluster.RestartProxy(ctx, n, false); err != nil {
		t.Fatalf("restarting svcproxy on %s with %v: %v", n.Name, args, err)
	}
}

// TestDualStackNodePortAddresses: --nodeport-addresses with prefixes of
// either family. node2's svcproxy is restarted with
//
//   - 192.168.77.0/24,fd00:77::/64: node ports and health-check node ports
//     answer on node2's underlay address of each family, node ports not on
//     its pod-bridge addresses (10.244.2.1, fd00:10:244:2::1);
//   - 192.168.77.0/24 only: IPv4 as above; IPv6, for which no prefix is
//     given, answers on every address, as kube-proxy does (its IPv6 proxier
//     matches all when no IPv6 CIDR is given), health-check node port
//     included.
func TestDualStackNodePortAddresses(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-npa"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	pod := cluster.MustStartPod(t, ns, "client", node2)
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	s := framework.DualStack(framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	s.Spec.Type = corev1.ServiceTypeNodePort
	np := cluster.MustCreateService(t, s)
	mustBeDualStack(t, np)
	cluster.MustSetEndpoints(t, np, b1)
	l := framework.DualStack(framework.NewService(ns, "lb", 80, corev1.ProtocolTCP))
	l.Spec.Type = corev1.ServiceTypeLoadBalancer
	l.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	lb := cluster.MustCreateService(t, l)
	mustBeDualStack(t, lb)
	cluster.MustSetEndpoints(t, lb, b1)
	cluster.MustWaitServing(t, np)
	cluster.MustWaitServing(t, lb)

	type target struct {
		from *framework.Host
		addr string // node2's address
		want bool   // node ports answer there
	}
	underlay4 := target{cluster.Client, node2.IP.String(), true}
	underlay6 := target{cluster.Client, node2.IP6.String(), true}
	bridge4 := target{&pod.Host, node2.Gateway.String(), false}
	bridge6 := target{&pod.Host, node2.Gateway6.String(), false}
	for _, tc := range []struct {
		name    string
		flag    string
		targets []target
		hc      []string // addresses the health-check node port answers on
	}{
		{"both-families", "--nodeport-addresses=192.168.77.0/24,fd00:77::/64",
			[]target{underlay4, underlay6, bridge4, bridge6},
			[]string{node2.IP.String(), node2.IP6.String()}},
		{"ipv4-prefix-only", "--nodeport-addresses=192.168.77.0/24",
			[]target{underlay4, underlay6, bridge4, {&pod.Host, node2.Gateway6.String(), true}},
			[]string{node2.IP.String(), node2.IP6.String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withProxyArgs(t, node2, tc.flag)
			cluster.MustWaitServing(t, np)
			for _, tg := range tc.targets {
				for _, proto := range bothProtos {
					addr := net.JoinHostPort(tg.addr, strconv.Itoa(int(framework.NodePortOf(np, proto))))
					if tg.want {
						r := waitAnswer(t, tg.from, proto, addr, 10*time.Second)
						t.Logf("%s %s from %s: answered by %s", proto, addr, tg.from.Name, r.Name)
						continue
					}
					err := expectNoAnswer(t, tg.from, proto, addr)
					t.Logf("%s %s from %s: %v (outside %s)", proto, addr, tg.from.Name, err, tc.flag)
				}
			}
			hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: cluster.Client.NetNS.DialContext}}
			defer hc.CloseIdleConnections()
			for _, a := range tc.hc {
				url := "http://" + net.JoinHostPort(a, strconv.Itoa(int(lb.Spec.HealthCheckNodePort))) + "/"
				err := framework.Eventually(context.Background(), 5*time.Second, func(context.Context) error {
					resp, err := hc.Get(url)
					if err != nil {
						return err
					}
					defer resp.Body.Close()
					_, _ = io.Copy(io.Discard, resp.Body)
					if resp.StatusCode != http.StatusServiceUnavailable {
						return fmt.Errorf("status %d", resp.StatusCode)
					}
					return nil
				})
				if err != nil {
					t.Errorf("health-check node port %s (node2 has no local endpoint) with %s: %v, want 503", url, tc.flag, err)
				}
			}
		})
	}
}
