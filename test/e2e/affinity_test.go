//go:build e2e

package e2e

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// TestSessionAffinity: with sessionAffinity ClientIP every connection of a
// client lands on the same backend, over TCP and UDP, from either node.
func TestSessionAffinity(t *testing.T) {
	const ns = "affinity"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	clients := []*framework.Pod{
		cluster.MustStartPod(t, ns, "client-1", node1),
		cluster.MustStartPod(t, ns, "client-2", node2),
	}
	backends := []*framework.Pod{
		cluster.MustStartPod(t, ns, "web-1", node1),
		cluster.MustStartPod(t, ns, "web-2", node2),
		cluster.MustStartPod(t, ns, "web-3", node2),
	}
	s := framework.NewService(ns, "sticky", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)
	s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc := cluster.MustCreateService(t, s)
	cluster.MustSetEndpoints(t, svc, backends...)
	cluster.MustWaitServing(t, svc)

	// The same backends without affinity, to show that they do spread.
	spread := cluster.MustCreateService(t, framework.NewService(ns, "spread", 80, corev1.ProtocolTCP))
	cluster.MustSetEndpoints(t, spread, backends...)
	cluster.MustWaitServing(t, spread)

	for _, c := range clients {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			t.Run(c.PodName+"/"+string(proto), func(t *testing.T) {
				addr := framework.ClusterAddrOf(svc, proto)
				waitAnswer(t, &c.Host, proto, addr, 10*time.Second)
				got, _ := tally(t, &c.Host, proto, addr, 30)
				if len(got) != 1 {
					t.Errorf("%s %s from %s: answers from %d backends %v, want all from one", proto, addr, c.Name, len(got), got)
				}
				t.Logf("%s %s from %s: %v", proto, addr, c.Name, got)
			})
		}
	}
	t.Run("without-affinity-spreads", func(t *testing.T) {
		addr := framework.ClusterAddr(spread)
		waitAnswer(t, &clients[0].Host, corev1.ProtocolTCP, addr, 10*time.Second)
		got, _ := tally(t, &clients[0].Host, corev1.ProtocolTCP, addr, 60)
		expectBackends(t, "TCP "+addr, got, backends...)
	})
}
