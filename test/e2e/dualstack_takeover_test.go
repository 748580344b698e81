//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// TestDualStackTakeoverFromKubeProxy: TestTakeoverFromKubeProxy on a
// dual-stack Service. svcproxy --cleanup leaves node1 without a rule of
// svcproxy's in either family; upstream kube-proxy (v1.37.2, iptables
// mode, both cluster CIDRs) programs node1 in both families; under
// continuous streams of new connections — TCP and UDP from a pod on node1
// to the IPv4 and the IPv6 ClusterIP, TCP from the outside client to
// node1's IPv4 and IPv6 node port — kube-proxy is stopped (its rules stay)
// and svcproxy started. svcproxy programs both families and removes
// kube-proxy's chains of both: not one connection fails, and no chain or
// rule of kube-proxy's is left in iptables or ip6tables (kubelet's
// KUBE-FIREWALL excepted).
func TestDualStackTakeoverFromKubeProxy(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-takeover"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	backends := []*framework.Pod{
		cluster.MustStartPod(t, ns, "web-1", node1),
		cluster.MustStartPod(t, ns, "web-2", node2),
	}
	s := framework.DualStack(framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := cluster.MustCreateService(t, s)
	mustBeDualStack(t, svc)
	cluster.MustSetEndpoints(t, svc, backends...)
	cluster.MustWaitServing(t, svc)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if err := cluster.StopProxy(ctx, node1, true); err != nil {
		t.Fatal(err)
	}
	var kubeProxy *framework.Process
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if kubeProxy != nil {
			if err := kubeProxy.Stop(10 * time.Second); err != nil {
				t.Errorf("stopping kube-proxy: %v", err)
			}
		}
		if exited, _ := node1.Proxy.Exited(); exited {
			if err := cluster.StartProxy(ctx, node1); err != nil {
				t.Errorf("restarting svcproxy on node1: %v", err)
			}
		}
	})
	// svcproxy --cleanup removed its rules of both families.
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		save, err := node1.NetNS.Exec(ctx, cmd)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(save, "SVCP-") {
			t.Errorf("svcproxy --cleanup left rules in %s on node1:\n%s", cmd, grepLines(save, "SVCP-"))
		}
	}

	start := time.Now()
	kp, err := cluster.StartKubeProxy(node1)
	if err != nil {
		t.Fatal(err)
	}
	kubeProxy = kp
	if err := waitKubeProxy(ctx, node1, kp, svc.Spec.ClusterIPs[0]); err != nil {
		t.Fatal(err)
	}
	if err := waitKubeProxy6(ctx, node1, kp, svc.Spec.ClusterIPs[1]); err != nil {
		t.Fatal(err)
	}
	type target struct {
		what  string
		from  *framework.Host
		proto corev1.Protocol
		addr  string
	}
	var targets []target
	for _, family := range bothFamilies {
		for _, proto := range bothProtos {
			targets = append(targets, target{"ClusterIP " + string(family) + " " + string(proto) + " from a pod on node1", &client.Host, proto,
				framework.ClusterAddrFamily(svc, proto, family)})
		}
		targets = append(targets, target{"NodePort " + string(family) + " TCP from the client", cluster.Client, corev1.ProtocolTCP,
			nodePortAddr(node1, svc, corev1.ProtocolTCP, family)})
	}
	for _, tg := range targets {
		waitAnswer(t, tg.from, tg.proto, tg.addr, 10*time.Second)
	}
	t.Logf("kube-proxy programmed node1 (both families) in %v", time.Since(start).Round(time.Millisecond))

	stop := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(stop) })
	results := make([]<-chan []probe, len(targets))
	for i, tg := range targets {
		results[i] = prober(tg.from, tg.proto, tg.addr, 2*time.Second, 2*time.Millisecond, stop)
	}

	time.Sleep(time.Second)
	if err := kp.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	kubeProxy = nil
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		if !hasKubeProxyChainsIn(t, node1, cmd) {
			t.Fatalf("kube-proxy removed its %s rules on SIGTERM; the test wants them left in place", cmd)
		}
	}
	time.Sleep(500 * time.Millisecond)
	start = time.Now()
	if err := cluster.StartProxy(ctx, node1); err != nil {
		t.Fatal(err)
	}
	t.Logf("svcproxy ready on node1 %v after its start", time.Since(start).Round(time.Millisecond))
	deadline := time.Now().Add(10 * time.Second)
	for (hasKubeProxyChainsIn(t, node1, "iptables-save") || hasKubeProxyChainsIn(t, node1, "ip6tables-save")) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("kube-proxy's chains gone %v after svcproxy's start", time.Since(start).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	once.Do(func() { close(stop) })

	var total, failed int
	for i, tg := range targets {
		n, f := streamSummary(t, tg.what+" "+tg.addr+" during the takeover", <-results[i], 100)
		total, failed = total+n, failed+f
	}
	t.Logf("all streams: %d connections, %d failed", total, failed)

	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		save, err := node1.NetNS.Exec(context.Background(), cmd)
		if err != nil {
			t.Fatalf("%s on node1: %v", cmd, err)
		}
		bad := false
		for _, l := range strings.Split(save, "\n") {
			if name, ok := kubeProxyChainIn(l); ok {
				t.Errorf("%s: node1 still has kube-proxy's chain %s after the takeover", cmd, name)
				bad = true
			}
			if strings.HasPrefix(l, "-A ") && strings.Contains(l, "KUBE-") && !strings.Contains(l, "KUBE-FIREWALL") {
				t.Errorf("%s: node1 still has a rule of kube-proxy's after the takeover: %s", cmd, l)
				bad = true
			}
		}
		if bad {
			t.Logf("%s on node1:\n%s", cmd, save)
		}
	}
}

// hasKubeProxyChainsIn reports whether node n holds a chain of
// kube-proxy's in the tables cmd (iptables-save or ip6tables-save) lists.
func hasKubeProxyChainsIn(t *testing.T, n *framework.Node, cmd string) bool {
	t.Helper()
	save, err := n.NetNS.Exec(context.Background(), cmd)
	if err != nil {
		t.Fatalf("%s on %s: %v", cmd, n.Name, err)
	}
	for _, l := range strings.Split(save, "\n") {
		if _, ok := kubeProxyChainIn(l); ok {
			return true
		}
	}
	return false
}

// waitKubeProxy6 waits until kube-proxy on n has programmed the IPv6
// clusterIP in ip6tables' KUBE-SERVICES, or exits.
func waitKubeProxy6(ctx context.Context, n *framework.Node, kp *framework.Process, clusterIP string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		save, _ := n.NetNS.Exec(ctx, "ip6tables-save", "-t", "nat")
		for _, l := range strings.Split(save, "\n") {
			if strings.HasPrefix(l, "-A KUBE-SERVICES ") && strings.Contains(l, "-d "+clusterIP+"/128") {
				return nil
			}
		}
		if exited, err := kp.Exited(); exited {
			return fmt.Errorf("kube-proxy on %s exited (%v) before programming %s; log %s:\n%s", n.Name, err, clusterIP, kp.LogPath, kp.Tail(30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-proxy on %s did not program %s in ip6tables: %w; log %s:\n%s", n.Name, clusterIP, ctx.Err(), kp.LogPath, kp.Tail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
