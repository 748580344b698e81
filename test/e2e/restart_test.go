//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// TestProxyRestart: svcproxy is restarted — SIGTERM and a new process on
// each node, then SIGKILL (a crash) and a new process — under a continuous
// stream of new TCP and UDP connections through a ClusterIP, and not one of
// them fails: the rules stay in place and the new process takes them over
// without a flush. A TCP connection opened before the restarts still
// carries data after them.
func TestProxyRestart(t *testing.T) {
	const ns = "restart"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	backends := []*framework.Pod{
		cluster.MustStartPod(t, ns, "web-1", node1),
		cluster.MustStartPod(t, ns, "web-2", node2),
	}
	svc := cluster.MustCreateService(t, framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	cluster.MustSetEndpoints(t, svc, backends...)
	cluster.MustWaitServing(t, svc)
	tcpAddr := framework.ClusterAddrOf(svc, corev1.ProtocolTCP)
	udpAddr := framework.ClusterAddrOf(svc, corev1.ProtocolUDP)
	waitAnswer(t, &client.Host, corev1.ProtocolTCP, tcpAddr, 10*time.Second)
	waitAnswer(t, &client.Host, corev1.ProtocolUDP, udpAddr, 10*time.Second)

	// A long-lived connection, opened before the restarts.
	long, err := client.NetNS.DialContext(context.Background(), "tcp", tcpAddr)
	if err != nil {
		t.Fatalf("opening the long-lived connection: %v", err)
	}
	defer long.Close()
	longReader := bufio.NewReader(long)
	_ = long.SetDeadline(time.Now().Add(2 * time.Second))
	greeting, err := longReader.ReadString('\n')
	if err != nil {
		t.Fatalf("long-lived connection: reading the greeting: %v", err)
	}

	stop := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(stop) })
	tcpResults := prober(&client.Host, corev1.ProtocolTCP, tcpAddr, 2*time.Second, 2*time.Millisecond, stop)
	udpResults := prober(&client.Host, corev1.ProtocolUDP, udpAddr, 2*time.Second, 2*time.Millisecond, stop)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	steps := []struct {
		node  *framework.Node
		crash bool
	}{{node1, false}, {node2, false}, {node1, true}, {node2, true}}
	for _, s := range steps {
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		if err := cluster.RestartProxy(ctx, s.node, s.crash); err != nil {
			t.Fatalf("restarting svcproxy on %s (crash %v): %v", s.node.Name, s.crash, err)
		}
		how := "SIGTERM"
		if s.crash {
			how = "SIGKILL"
		}
		t.Logf("svcproxy on %s restarted after %s; ready again in %v", s.node.Name, how, time.Since(start).Round(time.Millisecond))
	}
	time.Sleep(500 * time.Millisecond)
	once.Do(func() { close(stop) })

	for _, res := range []struct {
		proto  string
		probes []probe
	}{{"TCP", <-tcpResults}, {"UDP", <-udpResults}} {
		var failed []string
		seen := map[string]int{}
		for _, p := range res.probes {
			if p.err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", p.at.Format("15:04:05.000"), p.err))
				continue
			}
			seen[p.reply.Name]++
		}
		t.Logf("%s: %d connections during the restarts, %d failed; backends %v", res.proto, len(res.probes), len(failed), seen)
		if len(failed) > 0 {
			t.Errorf("%s: %d of %d connections failed during the restarts:\n%s", res.proto, len(failed), len(res.probes), strings.Join(failed, "\n"))
			for _, n := range cluster.Nodes {
				out, err := n.NetNS.Exec(context.Background(), "conntrack", "-L", "-p", strings.ToLower(res.proto), "--orig-dst", svc.Spec.ClusterIP)
				var unreplied []string
				for _, l := range strings.Split(out, "\n") {
					if strings.Contains(l, "UNREPLIED") {
						unreplied = append(unreplied, l)
					}
				}
				t.Logf("unreplied conntrack entries to %s on %s (%v):\n%s", svc.Spec.ClusterIP, n.Name, err, strings.Join(unreplied, "\n"))
			}
		}
		if len(res.probes) < 20 {
			t.Errorf("%s: only %d connections were tried during the restarts", res.proto, len(res.probes))
		}
	}

	_ = long.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(long, "still-there"); err != nil {
		t.Fatalf("long-lived connection (%s): writing after the restarts: %v", strings.TrimSpace(greeting), err)
	}
	echo, err := longReader.ReadString('\n')
	if err != nil || echo != "still-there\n" {
		t.Fatalf("long-lived connection (%s): echo after the restarts = %q, %v; want \"still-there\"", strings.TrimSpace(greeting), echo, err)
	}
}
