//go:build e2e

package e2e

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// Addresses outside the test bed's networks that the client routes to
// node1, as a router in front of a cluster would: external IPs and load
// balancer IPs of each family.
const (
	externalIP4 = "192.168.78.10"
	externalIP6 = "fd00:78::10"
	lbIP4       = "192.168.79.10"
	lbIP6       = "fd00:79::10"
)

// routeViaNode1 routes prefixes (of either family) from the outside client
// to node1 until the test ends.
func routeViaNode1(t *testing.T, prefixes ...string) {
	t.Helper()
	ctx := context.Background()
	node1 := cluster.Nodes[0]
	for _, p := range prefixes {
		via, family := node1.IP.String(), "-4"
		if strings.Contains(p, ":") {
			via, family = node1.IP6.String(), "-6"
		}
		if err := cluster.Client.NetNS.IP(ctx, family, "route", "add", p, "via", via); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := cluster.Client.NetNS.IP(ctx, family, "route", "del", p, "via", via); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestDualStackExternalAddresses: a dual-stack Service's external IPs and
// load balancer IPs of each family serve the outside client (routed to
// node1) and pods; loadBalancerSourceRanges apply per family: a range list
// that admits the client's IPv4 address but not its IPv6 one lets IPv4
// through and drops IPv6.
func TestDualStackExternalAddresses(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-ext"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	pod := cluster.MustStartPod(t, ns, "client", node2)
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	b2 := cluster.MustStartPod(t, ns, "web-2", node2)
	routeViaNode1(t, externalIP4+"/32", externalIP6+"/128", lbIP4+"/32", lbIP6+"/128")

	s := framework.DualStack(framework.NewService(ns, "ext", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	s.Spec.ExternalIPs = []string{externalIP4, externalIP6}
	ext := cluster.MustCreateService(t, s)
	mustBeDualStack(t, ext)
	cluster.MustSetEndpoints(t, ext, b1, b2)
	cluster.MustWaitServing(t, ext)

	l := framework.DualStack(framework.NewService(ns, "lb", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	l.Spec.Type = corev1.ServiceTypeLoadBalancer
	l.Spec.LoadBalancerSourceRanges = []string{cluster.Client.IP.String() + "/32", cluster.Client.IP6.String() + "/128", "10.244.0.0/16", "fd00:10:244::/56"}
	lb := cluster.MustCreateService(t, l)
	mustBeDualStack(t, lb)
	ctx := context.Background()
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP4, IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}, {IP: lbIP6, IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}}
	lb, err := cluster.Kube.CoreV1().Services(ns).UpdateStatus(ctx, lb, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cluster.MustSetEndpoints(t, lb, b1, b2)
	cluster.MustWaitServing(t, lb)

	for _, tc := range []struct {
		what string
		ip   string
	}{{"external IP", externalIP4}, {"external IP", externalIP6}, {"load balancer IP", lbIP4}, {"load balancer IP", lbIP6}} {
		for _, proto := range bothProtos {
			addr := net.JoinHostPort(tc.ip, "80")
			t.Run(tc.what+"/"+addr+"/"+string(proto), func(t *testing.T) {
				for _, from := range []*framework.Host{cluster.Client, &pod.Host} {
					waitAnswer(t, from, proto, addr, 10*time.Second)
					got, _ := tally(t, from, proto, addr, 30)
					expectBackends(t, string(proto)+" "+addr+" from "+from.Name, got, b1, b2)
				}
			})
		}
	}

	t.Run("source-ranges-per-family", func(t *testing.T) {
		// The client's IPv6 address leaves the list; its IPv4 one stays.
		cur, err := cluster.Kube.CoreV1().Services(ns).Get(ctx, lb.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Spec.LoadBalancerSourceRanges = []string{cluster.Client.IP.String() + "/32", "fd00:77::200/128"}
		if _, err := cluster.Kube.CoreV1().Services(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		addr6 := net.JoinHostPort(lbIP6, "80")
		// Wait until IPv6 stops answering (the rules changed), with a fresh
		// connection each time.
		err = framework.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			if _, err := cluster.Client.UDP(ctx, addr6); err == nil {
				return errString("still answered")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("UDP %s from %s: %v after its address left loadBalancerSourceRanges", addr6, cluster.Client.Name, err)
		}
		for _, proto := range bothProtos {
			err := expectNoAnswer(t, cluster.Client, proto, addr6)
			t.Logf("%s %s from %s (not in the source ranges): %v", proto, addr6, cluster.Client.IP6, err)
			addr4 := net.JoinHostPort(lbIP4, "80")
			waitAnswer(t, cluster.Client, proto, addr4, 10*time.Second)
			tally(t, cluster.Client, proto, addr4, 10)
		}
	})
}

type errString string

func (e errString) Error() string { return string(e) }

// TestDualStackInternalTrafficPolicyLocal: with internalTrafficPolicy
// Local a pod reaches only its own node's endpoints through the IPv6
// ClusterIP as through the IPv4 one, and a pod on a node without any gets
// no answer.
func TestDualStackInternalTrafficPolicyLocal(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-itp"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	c1 := cluster.MustStartPod(t, ns, "client-1", node1)
	c2 := cluster.MustStartPod(t, ns, "client-2", node2)
	a1 := cluster.MustStartPod(t, ns, "web-1a", node1)
	a2 := cluster.MustStartPod(t, ns, "web-1b", node1)
	s := framework.DualStack(framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	svc := cluster.MustCreateService(t, s)
	mustBeDualStack(t, svc)
	cluster.MustSetEndpoints(t, svc, a1, a2)
	// node2 has no local endpoint: WaitServiceProgrammed from node2 would
	// fail, so wait from node1's pod only.
	for _, family := range bothFamilies {
		for _, proto := range bothProtos {
			addr := framework.ClusterAddrFamily(svc, proto, family)
			waitAnswer(t, &c1.Host, proto, addr, 10*time.Second)
			got, sources := tally(t, &c1.Host, proto, addr, 30)
			expectBackends(t, string(proto)+" "+addr+" from node1", got, a1, a2)
			expectSources(t, string(proto)+" "+addr+" from node1", sources, c1.AddrOf(family))
		}
		// No local endpoint on node2: dropped, as kube-proxy does.
		for _, proto := range bothProtos {
			addr := framework.ClusterAddrFamily(svc, proto, family)
			err := expectNoAnswer(t, &c2.Host, proto, addr)
			t.Logf("%s %s from %s (no local endpoint): %v", proto, addr, c2.Name, err)
		}
	}
}
