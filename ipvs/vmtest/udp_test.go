//go:build vm

package vmtest

import (
	"testing"

	v1 "k8s.io/api/core/v1"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
	"k8s.io/utils/ptr"
)

func udp(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolUDP }

// TestUDP: a UDP ClusterIP works; a removed UDP endpoint is deleted at once
// (no draining), and the same client socket then reaches the other one
// (expire_nodest_conn drops the IPVS connection at its next packet).
func TestUDP(t *testing.T) {
	tp := newTopology(t)
	for _, n := range []struct{ name, ip string }{{"srv1", "10.244.1.10"}, {"srv2", "10.244.1.11"}} {
		startServer(t, tp.addPod(t, n.name, n.ip), n.name, 8080)
	}
	cli := tp.addPod(t, "cli", "10.244.1.20")
	p := newProxier(t, tp)
	objs := func(ips ...string) []any {
		var eps []pt.EP
		for _, ip := range ips {
			eps = append(eps, pt.Ready(ip, "node1"))
		}
		s := pt.Slice("it", "dns", "dns-1", "dns", 8080, eps...)
		s.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
		return []any{pt.Service("it", "dns", "10.96.1.53", "dns", 53, udp), s}
	}
	p.sync(false, objs("10.244.1.10", "10.244.1.11")...)

	c, err := connect(cli, "udp", "10.96.1.53:53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first, err := c.ask()
	if err != nil {
		t.Fatalf("UDP ClusterIP: %v\n%s", err, p.dumpServices())
	}
	if first.Source != "10.244.1.20" {
		t.Errorf("source %s, want the pod's own address", first.Source)
	}
	other := map[string]string{"srv1": "10.244.1.11", "srv2": "10.244.1.10"}[first.Server]
	res := p.sync(false, objs(other)...)
	if res.Draining != 0 {
		t.Errorf("UDP real servers draining: %d, want 0", res.Draining)
	}
	a, err := c.ask()
	if err != nil {
		// The first packet after the removal may be dropped while IPVS
		// expires the connection; a client retries.
		a, err = c.ask()
	}
	if err != nil || a.Server == first.Server {
		t.Errorf("after removing %s: %+v, %v; want the other server", first.Server, a, err)
	}
}
