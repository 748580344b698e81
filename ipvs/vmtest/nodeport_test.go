//go:build vm

package vmtest

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func nodePort(port int32, local bool) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = port
		if local {
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}
	}
}

// TestNodePort: an outside client reaches a NodePort on the node address;
// with externalTrafficPolicy Cluster it is masqueraded, with Local its
// address is kept; Local without a local endpoint drops.
func TestNodePort(t *testing.T) {
	tp := newTopology(t)
	srv := tp.addPod(t, "srv1", "10.244.1.10")
	startServer(t, srv, "srv1", 8080)
	p := newProxier(t, tp)
	p.sync(false,
		pt.Service("it", "web", "10.96.1.10", "http", 80, nodePort(30080, false)),
		pt.Slice("it", "web", "web-1", "http", 8080, pt.Ready("10.244.1.10", "node1")),
		pt.Service("it", "local", "10.96.1.14", "http", 80, nodePort(30081, true)),
		pt.Slice("it", "local", "local-1", "http", 8080, pt.Ready("10.244.1.10", "node1")),
		pt.Service("it", "remote", "10.96.1.15", "http", 80, nodePort(30082, true)),
		pt.Slice("it", "remote", "remote-1", "http", 8080, pt.Ready("10.244.2.50", "node2")),
	)
	for _, tc := range []struct {
		name, target string
		want         answer
	}{
		{"Cluster policy: masqueraded", addr(nodeIP, 30080), answer{"srv1", podGW}},
		{"Local policy: client address kept", addr(nodeIP, 30081), answer{"srv1", outsideIP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dial(tp.outside, "tcp", tc.target)
			if err != nil {
				t.Fatalf("dial %s: %v\nvirtual servers: %s", tc.target, err, p.dumpServices())
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	t.Run("node addresses", func(t *testing.T) {
		var all, within []netip.Addr
		must(t, inNS(tp.node, func() error {
			var err error
			if all, err = p.kernel.LocalAddresses(nil); err != nil {
				return err
			}
			within, err = p.kernel.LocalAddresses([]netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")})
			return err
		}))
		// Not loopback, not the service addresses on the dummy link.
		if got, want := fmt.Sprint(all), "[10.244.1.1 192.168.50.1]"; got != want {
			t.Errorf("LocalAddresses(nil) = %s, want %s", got, want)
		}
		if got, want := fmt.Sprint(within), "[192.168.50.1]"; got != want {
			t.Errorf("LocalAddresses(192.168.0.0/16) = %s, want %s", got, want)
		}
	})
	t.Run("Local policy without local endpoints: dropped", func(t *testing.T) {
		_, err := dial(tp.outside, "tcp", addr(nodeIP, 30082))
		if !isTimeout(err) {
			t.Errorf("got %v, want a timeout (dropped)", err)
		}
	})
}
