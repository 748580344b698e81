//go:build vm

package vmtest

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func clientIPAffinity(seconds int32) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(seconds)}}
	}
}

// TestAffinity: with ClientIP affinity every connection of a client goes to
// the same endpoint (IPVS persistence); without, round robin reaches both.
func TestAffinity(t *testing.T) {
	tp := newTopology(t)
	for _, n := range []struct{ name, ip string }{{"srv1", "10.244.1.10"}, {"srv2", "10.244.1.11"}} {
		startServer(t, tp.addPod(t, n.name, n.ip), n.name, 8080)
	}
	cli := tp.addPod(t, "cli", "10.244.1.20")
	p := newProxier(t, tp)
	eps := []pt.EP{pt.Ready("10.244.1.10", "node1"), pt.Ready("10.244.1.11", "node1")}
	p.sync(false,
		pt.Service("it", "sticky", "10.96.1.12", "http", 80, clientIPAffinity(300)),
		pt.Slice("it", "sticky", "sticky-1", "http", 8080, eps...),
		pt.Service("it", "web", "10.96.1.10", "http", 80),
		pt.Slice("it", "web", "web-1", "http", 8080, eps...),
	)
	for _, tc := range []struct {
		name, target string
		servers      int
	}{
		{"affinity", "10.96.1.12:80", 1},
		{"none", "10.96.1.10:80", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			for range 10 {
				got, err := dial(cli, "tcp", tc.target)
				if err != nil {
					t.Fatal(err)
				}
				seen[got.Server] = true
			}
			if len(seen) != tc.servers {
				t.Errorf("10 connections reached %v, want %d server(s)\n%s", seen, tc.servers, p.dumpServices())
			}
		})
	}
	for _, vs := range p.services() {
		if vs.Address.String() == "10.96.1.12" && vs.Timeout != 300 {
			t.Errorf("virtual server %s: persistence timeout %d, want 300", vs.ServiceKey, vs.Timeout)
		}
	}
}
