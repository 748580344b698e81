//go:build e2e

package e2e

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// TestClusterIP: a pod on node1 reaches a ClusterIP whose only backend is
// on the same node and one whose only backend is on node2, over TCP and
// UDP; backends see the client pod's own address (no masquerade inside the
// pod network). A backend reaches itself through its Service (hairpin), and
// the node itself (host network) reaches a ClusterIP.
func TestClusterIP(t *testing.T) {
	const ns = "clusterip"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	local := cluster.MustStartPod(t, ns, "local", node1)
	remote := cluster.MustStartPod(t, ns, "remote", node2)
	same := cluster.MustCreateService(t, framework.NewService(ns, "same-node", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	cross := cluster.MustCreateService(t, framework.NewService(ns, "cross-node", 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	cluster.MustSetEndpoints(t, same, local)
	cluster.MustSetEndpoints(t, cross, remote)
	cluster.MustWaitServing(t, same)
	cluster.MustWaitServing(t, cross)
	t.Logf("client %s; same-node %s -> %s; cross-node %s -> %s", names(client), same.Spec.ClusterIP, names(local), cross.Spec.ClusterIP, names(remote))

	for _, tc := range []struct {
		name    string
		svc     *corev1.Service
		backend *framework.Pod
	}{
		{"same-node", same, local},
		{"cross-node", cross, remote},
	} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			t.Run(tc.name+"/"+string(proto), func(t *testing.T) {
				addr := framework.ClusterAddrOf(tc.svc, proto)
				waitAnswer(t, &client.Host, proto, addr, 10*time.Second)
				got, sources := tally(t, &client.Host, proto, addr, 20)
				expectBackends(t, string(proto)+" "+addr, got, tc.backend)
				expectSources(t, string(proto)+" "+addr, sources, client.IP)
			})
		}
	}

	t.Run("hairpin", func(t *testing.T) {
		// The backend connects to its own Service and lands on itself:
		// only works if the proxy masquerades the hairpin flow.
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			addr := framework.ClusterAddrOf(same, proto)
			r := waitAnswer(t, &local.Host, proto, addr, 10*time.Second)
			if r.Name != local.Name {
				t.Errorf("%s %s from %s answered by %s, want itself", proto, addr, local.Name, r.Name)
			}
			if r.Src.Addr() == local.IP {
				t.Errorf("%s %s from %s to itself saw its own address as source: hairpin not masqueraded", proto, addr, local.Name)
			}
		}
	})

	t.Run("from-node", func(t *testing.T) {
		// Host-network clients (OUTPUT chain) reach ClusterIPs too.
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			addr := framework.ClusterAddrOf(cross, proto)
			r := waitAnswer(t, &node1.Host, proto, addr, 10*time.Second)
			if r.Name != remote.Name {
				t.Errorf("%s %s from %s answered by %s, want %s", proto, addr, node1.Name, r.Name, remote.Name)
			}
		}
	})
}
