//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// TestTakeoverFromKubeProxy: upstream kube-proxy (v1.37.2, iptables mode)
// programs node1; under a continuous stream of new TCP connections from a
// pod on node1 to a ClusterIP and from the outside client to a NodePort
// on node1, kube-proxy is stopped (SIGTERM: its rules stay) and svcproxy
// started. svcproxy installs its rules, then removes kube-proxy's
// (--remove-kube-proxy-rules, on by default): not one connection fails and
// no chain of kube-proxy's is left. Only kubelet's KUBE-FIREWALL, which
// kube-proxy creates too, may stay.
func TestTakeoverFromKubeProxy(t *testing.T) {
	const ns = "takeover"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	backends := []*framework.Pod{
		cluster.MustStartPod(t, ns, "web-1", node1),
		cluster.MustStartPod(t, ns, "web-2", node2),
	}
	s := framework.NewService(ns, "web", 80, corev1.ProtocolTCP)
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := cluster.MustCreateService(t, s)
	cluster.MustSetEndpoints(t, svc, backends...)
	cluster.MustWaitServing(t, svc)
	clusterAddr := framework.ClusterAddrOf(svc, corev1.ProtocolTCP)
	nodePortAddr := net.JoinHostPort(node1.IP.String(), strconv.Itoa(int(framework.NodePortOf(svc, corev1.ProtocolTCP))))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// node1 goes to kube-proxy: svcproxy stops and removes its rules.
	if err := cluster.StopProxy(ctx, node1, true); err != nil {
		t.Fatal(err)
	}
	var kubeProxy *framework.Process
	// Whatever happens, node1 ends with svcproxy running and ready, and
	// kube-proxy stopped.
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
	start := time.Now()
	kp, err := cluster.StartKubeProxy(node1)
	if err != nil {
		t.Fatal(err)
	}
	kubeProxy = kp
	if err := waitKubeProxy(ctx, node1, kp, svc.Spec.ClusterIP); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, &client.Host, corev1.ProtocolTCP, clusterAddr, 10*time.Second)
	waitAnswer(t, cluster.Client, corev1.ProtocolTCP, nodePortAddr, 10*time.Second)
	t.Logf("kube-proxy programmed node1 in %v", time.Since(start).Round(time.Millisecond))

	stop := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(stop) })
	clusterResults := prober(&client.Host, corev1.ProtocolTCP, clusterAddr, 2*time.Second, 2*time.Millisecond, stop)
	nodePortResults := prober(cluster.Client, corev1.ProtocolTCP, nodePortAddr, 2*time.Second, 2*time.Millisecond, stop)

	time.Sleep(time.Second)
	if err := kp.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	kubeProxy = nil
	if !hasKubeProxyChains(t, node1) {
		t.Fatalf("kube-proxy removed its rules on SIGTERM; the test wants them left in place")
	}
	time.Sleep(500 * time.Millisecond)
	start = time.Now()
	if err := cluster.StartProxy(ctx, node1); err != nil {
		t.Fatal(err)
	}
	t.Logf("svcproxy ready on node1 %v after its start", time.Since(start).Round(time.Millisecond))
	// The takeover follows the first successful sync; readiness implies
	// that sync. Give it a moment all the same.
	deadline := time.Now().Add(10 * time.Second)
	for hasKubeProxyChains(t, node1) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("kube-proxy's chains gone %v after svcproxy's start", time.Since(start).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	once.Do(func() { close(stop) })

	for _, res := range []struct {
		what   string
		probes []probe
	}{{"ClusterIP " + clusterAddr + " from a pod on node1", <-clusterResults}, {"NodePort " + nodePortAddr + " from the client", <-nodePortResults}} {
		var failed []string
		seen := map[string]int{}
		for _, p := range res.probes {
			if p.err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", p.at.Format("15:04:05.000"), p.err))
				continue
			}
			seen[p.reply.Name]++
		}
		t.Logf("%s: %d connections, %d failed; backends %v", res.what, len(res.probes), len(failed), seen)
		if len(failed) > 0 {
			t.Errorf("%s: %d of %d connections failed during the takeover:\n%s", res.what, len(failed), len(res.probes), strings.Join(failed, "\n"))
		}
		if len(res.probes) < 100 {
			t.Errorf("%s: only %d connections were tried during the takeover", res.what, len(res.probes))
		}
	}

	// kube-proxy runs dual-stack whenever ip6tables works: its IPv6 chains
	// must go too.
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

// kubeProxyChainIn reports the chain an iptables-save line declares, if
// it is one of kube-proxy's.
func kubeProxyChainIn(line string) (string, bool) {
	if !strings.HasPrefix(line, ":") {
		return "", false
	}
	f := strings.Fields(line[1:])
	if len(f) == 0 || !iptables.IsKubeProxyChain(f[0]) {
		return "", false
	}
	return f[0], true
}

// hasKubeProxyChains reports whether node n holds a chain of kube-proxy's
// in any iptables (IPv4) table.
func hasKubeProxyChains(t *testing.T, n *framework.Node) bool {
	t.Helper()
	save, err := n.NetNS.Exec(context.Background(), "iptables-save")
	if err != nil {
		t.Fatalf("iptables-save on %s: %v", n.Name, err)
	}
	for _, l := range strings.Split(save, "\n") {
		if _, ok := kubeProxyChainIn(l); ok {
			return true
		}
	}
	return false
}

// waitKubeProxy waits until kube-proxy on n has programmed clusterIP in
// KUBE-SERVICES, or exits.
func waitKubeProxy(ctx context.Context, n *framework.Node, kp *framework.Process, clusterIP string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		save, _ := n.NetNS.Exec(ctx, "iptables-save", "-t", "nat")
		for _, l := range strings.Split(save, "\n") {
			if strings.HasPrefix(l, "-A KUBE-SERVICES ") && strings.Contains(l, "-d "+clusterIP+"/32") {
				return nil
			}
		}
		if exited, err := kp.Exited(); exited {
			return fmt.Errorf("kube-proxy on %s exited (%v) before programming %s; log %s:\n%s", n.Name, err, clusterIP, kp.LogPath, kp.Tail(30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-proxy on %s did not program %s: %w; log %s:\n%s", n.Name, clusterIP, ctx.Err(), kp.LogPath, kp.Tail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
