//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// TestCrossNamespaceFQDN: a pod in namespace a on node1 reaches service web
// of namespace b, whose backends run on node2, by its full name and by the
// short name web.b, resolved by the real CoreDNS over UDP and over TCP
// through the kube-dns ClusterIP (so through svcproxy's rules too), across
// the VXLAN overlay. Over 100 connections every backend answers, and each
// sees the client pod's own address.
func TestCrossNamespaceFQDN(t *testing.T) {
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, "a", "client", node1)
	var backends []*framework.Pod
	for i := 1; i <= 3; i++ {
		backends = append(backends, cluster.MustStartPod(t, "b", fmt.Sprintf("web-%d", i), node2))
	}
	svc := cluster.MustCreateService(t, framework.NewService("b", "web", 80, corev1.ProtocolTCP))
	cluster.MustSetEndpoints(t, svc, backends...)
	cluster.MustWaitServing(t, svc)
	t.Logf("client %s; backends %s; b/web %s", names(client), names(backends...), svc.Spec.ClusterIP)

	for _, tc := range []struct {
		name  string
		proto corev1.Protocol
	}{
		{name: "web.b.svc.cluster.local", proto: corev1.ProtocolUDP},
		{name: "web.b.svc.cluster.local", proto: corev1.ProtocolTCP},
		{name: "web.b", proto: corev1.ProtocolUDP},
		{name: "web.b", proto: corev1.ProtocolTCP},
	} {
		t.Run(tc.name+"/dns-over-"+string(tc.proto), func(t *testing.T) {
			const wantFQDN = "web.b.svc.cluster.local."
			var addrs []string
			var answered string
			// CoreDNS may not have seen the Service yet, the proxies
			// may not have written the DNS Service's rules yet.
			err := framework.Eventually(context.Background(), 10*time.Second, func(ctx context.Context) error {
				ips, fqdn, err := client.Resolve(ctx, tc.proto, tc.name)
				if err != nil {
					return err
				}
				addrs, answered = nil, fqdn
				for _, ip := range ips {
					addrs = append(addrs, ip.String())
				}
				return nil
			})
			if err != nil {
				t.Fatalf("resolving %s from %s over %s: %v", tc.name, client.Name, tc.proto, err)
			}
			if answered != wantFQDN || len(addrs) != 1 || addrs[0] != svc.Spec.ClusterIP {
				t.Fatalf("%s resolved to %v as %s, want [%s] as %s", tc.name, addrs, answered, svc.Spec.ClusterIP, wantFQDN)
			}
			target := net.JoinHostPort(addrs[0], "80")
			waitAnswer(t, &client.Host, corev1.ProtocolTCP, target, 10*time.Second)
			backendsSeen, sources := tally(t, &client.Host, corev1.ProtocolTCP, target, 100)
			expectBackends(t, "100 connections to "+tc.name, backendsSeen, backends...)
			expectSources(t, "100 connections to "+tc.name, sources, client.IP)
			t.Logf("%s resolved over %s to %s; 100 connections: %v", tc.name, tc.proto, target, backendsSeen)
		})
	}
}
