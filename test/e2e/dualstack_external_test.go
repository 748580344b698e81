//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
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

// TestDualStackManyServices: 60 dual-stack NodePort Services, each with one
// endpoint among 12 pods on node1, so that the IPv6 dispatch tree (on
// ClusterIPs), the node-port tree and the hairpin tree (on node1's 12
// local endpoints) have more than one level in both families. Every
// Service's IPv6 and IPv4 ClusterIP, from a pod on node2, and its node
// port on node1's IPv6 and IPv4 address, from the outside client, lead to
// exactly its own endpoint; every pod reaches itself through its Service
// over IPv6, masqueraded.
func TestDualStackManyServices(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-many"
	const nPods, nSvcs = 12, 60
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node2)
	var pods []*framework.Pod
	for i := range nPods {
		pods = append(pods, cluster.MustStartPod(t, ns, "web-"+strconv.Itoa(i), node1))
	}
	var svcs []*corev1.Service
	for i := range nSvcs {
		s := framework.DualStack(framework.NewService(ns, "svc-"+strconv.Itoa(i), 80, corev1.ProtocolTCP))
		s.Spec.Type = corev1.ServiceTypeNodePort
		svc := cluster.MustCreateService(t, s)
		mustBeDualStack(t, svc)
		cluster.MustSetEndpoints(t, svc, pods[i%nPods])
		svcs = append(svcs, svc)
	}
	start := time.Now()
	for _, svc := range svcs {
		cluster.MustWaitServing(t, svc)
	}
	t.Logf("%d dual-stack Services programmed on both nodes within %v", nSvcs, time.Since(start).Round(time.Millisecond))
	for _, n := range cluster.Nodes {
		for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
			save, err := n.NetNS.Exec(context.Background(), cmd, "-t", "nat")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s %s: %d tree chains (SVCP-T*)", n.Name, cmd, strings.Count(save, "\n:SVCP-T"))
		}
	}

	var wrong []string
	for i, svc := range svcs {
		want := pods[i%nPods]
		for _, family := range bothFamilies {
			for _, tc := range []struct {
				from *framework.Host
				addr string
			}{
				{&client.Host, framework.ClusterAddrFamily(svc, corev1.ProtocolTCP, family)},
				{cluster.Client, nodePortAddr(node1, svc, corev1.ProtocolTCP, family)},
			} {
				r, err := tc.from.TCP(context.Background(), tc.addr)
				switch {
				case err != nil:
					wrong = append(wrong, fmt.Sprintf("%s -> %s (%s): %v", tc.from.Name, tc.addr, svc.Name, err))
				case r.Name != want.Name:
					wrong = append(wrong, fmt.Sprintf("%s -> %s (%s): answered by %s, want %s", tc.from.Name, tc.addr, svc.Name, r.Name, want.Name))
				}
			}
		}
	}
	for i, p := range pods {
		for _, family := range bothFamilies {
			addr := framework.ClusterAddrFamily(svcs[i], corev1.ProtocolTCP, family)
			r, err := p.TCP(context.Background(), addr)
			switch {
			case err != nil:
				wrong = append(wrong, fmt.Sprintf("hairpin %s -> %s: %v", p.Name, addr, err))
			case r.Name != p.Name:
				wrong = append(wrong, fmt.Sprintf("hairpin %s -> %s: answered by %s", p.Name, addr, r.Name))
			case r.Src.Addr() == p.AddrOf(family):
				wrong = append(wrong, fmt.Sprintf("hairpin %s -> %s: not masqueraded (source %v)", p.Name, addr, r.Src))
			}
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d of %d requests went wrong:\n%s", len(wrong), nSvcs*4+nPods*2, strings.Join(wrong, "\n"))
	}
}

// TestDualStackFamilyChanges: a Service's families change under svcproxy.
// A single-stack IPv4 Service is upgraded to dual-stack (its IPv6
// ClusterIP serves once its IPv6 slice is written); its IPv6 slice is
// deleted (IPv6 refused, IPv4 still served: no endpoint crosses families);
// it is downgraded back to IPv4 only (no rule of node1's or node2's names
// the old IPv6 ClusterIP any more, though the IPv6 slice is still there).
// Then, while node1's svcproxy is stopped, a dual-stack Service is deleted
// and another created: once svcproxy is back, the first one's IPv6 rules
// are gone and the second one's IPv6 ClusterIP serves.
func TestDualStackFamilyChanges(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-change"
	liftICMPRateLimit(t)
	ctx := context.Background()
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	b2 := cluster.MustStartPod(t, ns, "web-2", node2)
	svcs := cluster.Kube.CoreV1().Services(ns)
	svc := cluster.MustCreateService(t, framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	if len(svc.Spec.ClusterIPs) != 1 {
		t.Fatalf("a Service asking for no family got clusterIPs %v; want one IPv4 address", svc.Spec.ClusterIPs)
	}
	cluster.MustSetEndpoints(t, svc, b1, b2)
	cluster.MustWaitServing(t, svc)
	v4 := svc.Spec.ClusterIP

	// Upgrade.
	svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	svc, err := svcs.Update(ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustBeDualStack(t, svc)
	v6 := svc.Spec.ClusterIPs[1]
	cluster.MustSetEndpoints(t, svc, b1, b2)
	cluster.MustWaitServing(t, svc)
	for _, proto := range bothProtos {
		addr := framework.ClusterAddrFamily(svc, proto, corev1.IPv6Protocol)
		waitAnswer(t, &client.Host, proto, addr, 10*time.Second)
		got, _ := tally(t, &client.Host, proto, addr, 20)
		expectBackends(t, "after the upgrade: "+string(proto)+" "+addr, got, b1, b2)
	}
	t.Logf("upgraded to dual-stack: %s and %s", v4, v6)

	// The IPv6 slice goes; the IPv4 one stays.
	if err := cluster.Kube.DiscoveryV1().EndpointSlices(ns).Delete(ctx, framework.SliceName(svc, corev1.IPv6Protocol), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	udp6 := framework.ClusterAddrFamily(svc, corev1.ProtocolUDP, corev1.IPv6Protocol)
	if err := waitRefused(&client.Host, udp6); err != nil {
		t.Errorf("UDP %s without an IPv6 slice (the IPv4 slice has endpoints): %v, want refused", udp6, err)
	}
	for _, proto := range bothProtos {
		addr := framework.ClusterAddrFamily(svc, proto, corev1.IPv4Protocol)
		got, _ := tally(t, &client.Host, proto, addr, 10)
		expectBackends(t, "without an IPv6 slice: "+string(proto)+" "+addr, got, b1, b2)
	}

	// Back, then downgrade: the IPv6 slice stays, as if no controller
	// had cleaned it up yet.
	cluster.MustSetEndpoints(t, svc, b1, b2)
	cluster.MustWaitServing(t, svc)
	svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicySingleStack)
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
	svc.Spec.ClusterIPs = []string{v4}
	if svc, err = svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.ClusterIPs) != 1 {
		t.Fatalf("after the downgrade: clusterIPs %v", svc.Spec.ClusterIPs)
	}
	err = framework.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		for _, n := range cluster.Nodes {
			save, err := n.NetNS.Exec(ctx, "ip6tables-save")
			if err != nil {
				return err
			}
			if strings.Contains(save, v6+"/128") {
				return fmt.Errorf("%s still has rules for %s:\n%s", n.Name, v6, grepLines(save, v6+"/128"))
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("after the downgrade to IPv4: %v", err)
	}
	for _, proto := range bothProtos {
		addr := framework.ClusterAddrOf(svc, proto)
		got, _ := tally(t, &client.Host, proto, addr, 10)
		expectBackends(t, "after the downgrade: "+string(proto)+" "+addr, got, b1, b2)
	}

	// Changes while node1's svcproxy is down.
	gone := cluster.MustCreateService(t, framework.DualStack(framework.NewService(ns, "gone", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)))
	cluster.MustSetEndpoints(t, gone, b1, b2)
	cluster.MustWaitServing(t, gone)
	goneV6 := gone.Spec.ClusterIPs[1]
	if err := cluster.StopProxy(ctx, node1, false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if exited, _ := node1.Proxy.Exited(); exited {
			if err := cluster.StartProxy(context.Background(), node1); err != nil {
				t.Errorf("restarting svcproxy on node1: %v", err)
			}
		}
	})
	if err := svcs.Delete(ctx, gone.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	born := cluster.MustCreateService(t, framework.DualStack(framework.NewService(ns, "born", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)))
	cluster.MustSetEndpoints(t, born, b2)
	if err := cluster.StartProxy(ctx, node1); err != nil {
		t.Fatal(err)
	}
	cluster.MustWaitServing(t, born)
	for _, family := range bothFamilies {
		for _, proto := range bothProtos {
			addr := framework.ClusterAddrFamily(born, proto, family)
			got, _ := tally(t, &client.Host, proto, addr, 10)
			expectBackends(t, "created while svcproxy was down: "+string(proto)+" "+addr, got, b2)
		}
	}
	save, err := node1.NetNS.Exec(ctx, "ip6tables-save")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(save, goneV6+"/128") || strings.Contains(save, ns+"/gone") {
		t.Errorf("node1 still has IPv6 rules of %s/gone (%s), deleted while svcproxy was down:\n%s", ns, goneV6, grepLines(save, "gone"))
	}
}

// waitRefused waits until a UDP datagram from h to addr is refused.
func waitRefused(h *framework.Host, addr string) error {
	return framework.Eventually(context.Background(), 10*time.Second, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, err := h.UDP(ctx, addr)
		switch {
		case framework.IsRefused(err):
			return nil
		case err == nil:
			return errString("answered")
		}
		return err
	})
}

// TestDualStackLocalPolicyFromInside: an externalTrafficPolicy Local
// LoadBalancer whose only endpoint runs on node1 is still served, over
// both families, to a pod on node2 and to node2 itself through its load
// balancer IPs and external IPs (traffic from the cluster CIDR of its
// family, or from the node, goes to every endpoint, as in kube-proxy), and
// through node2's node port from a pod of node2 to a pod on node1 —
// while the outside client gets no answer from node2's node port. A
// pod reaches its own node's node port over IPv6 and lands on itself
// (hairpin, masqueraded).
func TestDualStackLocalPolicyFromInside(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-local-in"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	pod2 := cluster.MustStartPod(t, ns, "client", node2)
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	l := framework.DualStack(framework.NewService(ns, "lb", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	l.Spec.Type = corev1.ServiceTypeLoadBalancer
	l.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	l.Spec.ExternalIPs = []string{externalIP4, externalIP6}
	lb := cluster.MustCreateService(t, l)
	mustBeDualStack(t, lb)
	ctx := context.Background()
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP4, IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}, {IP: lbIP6, IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}}
	lb, err := cluster.Kube.CoreV1().Services(ns).UpdateStatus(ctx, lb, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cluster.MustSetEndpoints(t, lb, b1)
	cluster.MustWaitServing(t, lb)
	for _, ip := range []string{lbIP4, lbIP6, externalIP4, externalIP6} {
		for _, proto := range bothProtos {
			addr := net.JoinHostPort(ip, "80")
			for _, from := range []*framework.Host{&pod2.Host, &node2.Host} {
				r := waitAnswer(t, from, proto, addr, 10*time.Second)
				if r.Name != b1.Name {
					t.Errorf("%s %s from %s: answered by %s, want %s", proto, addr, from.Name, r.Name, b1.Name)
				}
			}
		}
	}
	for _, family := range bothFamilies {
		for _, proto := range bothProtos {
			addr := nodePortAddr(node2, lb, proto, family)
			r := waitAnswer(t, &pod2.Host, proto, addr, 10*time.Second)
			t.Logf("%s %s (node2's node port) from %s: answered by %s", proto, addr, pod2.Name, r.Name)
			err := expectNoAnswer(t, cluster.Client, proto, addr)
			t.Logf("%s %s from %s (outside, no local endpoint): %v", proto, addr, cluster.Client.Name, err)
		}
	}
	t.Run("nodeport-hairpin-ipv6", func(t *testing.T) {
		for _, proto := range bothProtos {
			addr := nodePortAddr(node1, lb, proto, corev1.IPv6Protocol)
			r := waitAnswer(t, &b1.Host, proto, addr, 10*time.Second)
			if r.Name != b1.Name || r.Src.Addr() == b1.IP6 {
				t.Errorf("%s %s from %s (its own node's node port): answered by %s seeing source %v; want itself, masqueraded", proto, addr, b1.Name, r.Name, r.Src)
			}
		}
	})
}
