//go:build e2e

package e2e

import (
	"net"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// TestNodePort: the outside client reaches a NodePort Service through each
// node's address, over TCP and UDP, and lands on backends of both nodes
// (externalTrafficPolicy Cluster), masqueraded so that replies return
// through the node it came in by.
func TestNodePort(t *testing.T) {
	const ns = "nodeport"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	b1 := cluster.MustStartPod(t, ns, "web-1", node1)
	b2 := cluster.MustStartPod(t, ns, "web-2", node2)
	s := framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := cluster.MustCreateService(t, s)
	cluster.MustSetEndpoints(t, svc, b1, b2)
	cluster.MustWaitServing(t, svc)

	for _, node := range []*framework.Node{node1, node2} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			t.Run(node.Name+"/"+string(proto), func(t *testing.T) {
				addr := net.JoinHostPort(node.IP.String(), strconv.Itoa(int(framework.NodePortOf(svc, proto))))
				waitAnswer(t, cluster.Client, proto, addr, 10*time.Second)
				got, sources := tally(t, cluster.Client, proto, addr, 40)
				expectBackends(t, string(proto)+" "+addr, got, b1, b2)
				if n := sources[cluster.Client.IP]; n > 0 {
					t.Errorf("%s %s: %d answers saw the client's own address %v; with externalTrafficPolicy Cluster it must be masqueraded", proto, addr, n, cluster.Client.IP)
				}
				t.Logf("%s %s from %s: %v, sources %v", proto, addr, cluster.Client.Name, got, sources)
			})
		}
	}
}

// TestExternalTrafficPolicyLocal: with externalTrafficPolicy Local a
// NodePort reaches only the endpoints on the node it was sent to, and the
// backend sees the outside client's own address. A node without a local
// endpoint does not answer.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	const ns = "local"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	a1 := cluster.MustStartPod(t, ns, "web-1a", node1)
	a2 := cluster.MustStartPod(t, ns, "web-1b", node1)
	b1 := cluster.MustStartPod(t, ns, "web-2a", node2)
	s := framework.NewService(ns, "web", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)
	s.Spec.Type = corev1.ServiceTypeNodePort
	s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc := cluster.MustCreateService(t, s)
	cluster.MustSetEndpoints(t, svc, a1, a2, b1)
	cluster.MustWaitServing(t, svc)

	// Only node1 has endpoints of this one.
	s1 := framework.NewService(ns, "only-node1", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)
	s1.Spec.Type = corev1.ServiceTypeNodePort
	s1.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	only1 := cluster.MustCreateService(t, s1)
	cluster.MustSetEndpoints(t, only1, a1)
	cluster.MustWaitServing(t, only1)

	for _, tc := range []struct {
		node  *framework.Node
		local []*framework.Pod
	}{
		{node1, []*framework.Pod{a1, a2}},
		{node2, []*framework.Pod{b1}},
	} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			t.Run(tc.node.Name+"/"+string(proto), func(t *testing.T) {
				addr := net.JoinHostPort(tc.node.IP.String(), strconv.Itoa(int(framework.NodePortOf(svc, proto))))
				waitAnswer(t, cluster.Client, proto, addr, 10*time.Second)
				got, sources := tally(t, cluster.Client, proto, addr, 40)
				expectBackends(t, string(proto)+" "+addr, got, tc.local...)
				expectSources(t, string(proto)+" "+addr, sources, cluster.Client.IP)
			})
		}
	}

	t.Run("node-without-local-endpoints", func(t *testing.T) {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			port := strconv.Itoa(int(framework.NodePortOf(only1, proto)))
			// node1 answers: the rules are in place...
			waitAnswer(t, cluster.Client, proto, net.JoinHostPort(node1.IP.String(), port), 10*time.Second)
			// ...and node2 does not, as it has no endpoint of its own.
			err := expectNoAnswer(t, cluster.Client, proto, net.JoinHostPort(node2.IP.String(), port))
			t.Logf("%s %s:%s: %v", proto, node2.IP, port, err)
		}
	})
}
