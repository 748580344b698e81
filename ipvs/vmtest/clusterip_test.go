//go:build vm

package vmtest

import (
	"errors"
	"syscall"
	"testing"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func webObjects(eps ...pt.EP) []any {
	return []any{
		pt.Service("it", "web", "10.96.1.10", "http", 80),
		pt.Slice("it", "web", "web-1", "http", 8080, eps...),
	}
}

// TestClusterIPTCP: a pod reaches a ClusterIP through a real IPVS virtual
// server, keeping its own address (no masquerade inside the cluster); a
// client outside the cluster and the node itself are masqueraded.
func TestClusterIPTCP(t *testing.T) {
	tp := newTopology(t)
	srv := tp.addPod(t, "srv1", "10.244.1.10")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv, "srv1", 8080)
	p := newProxier(t, tp)
	p.sync(false, webObjects(pt.Ready("10.244.1.10", "node1"))...)

	for _, tc := range []struct {
		name   string
		from   string
		source string
	}{
		{"pod", "cli", "10.244.1.20"},
		{"outside client", "outside", podGW},
		{"node", "node", podGW},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := map[string]nsHandle{"cli": cli, "outside": tp.outside, "node": tp.node}[tc.from]
			got, err := dial(ns, "tcp", "10.96.1.10:80")
			if err != nil {
				t.Fatalf("dial ClusterIP: %v\nvirtual servers: %v", err, p.dumpServices())
			}
			if want := (answer{"srv1", tc.source}); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

// TestNoEndpoints: a service port without endpoints refuses connections at
// once (REJECT), from a pod, from outside and from the node; so does a
// port of a service address that no service uses, even where a process of
// the node listens on every address.
func TestNoEndpoints(t *testing.T) {
	tp := newTopology(t)
	cli := tp.addPod(t, "cli", "10.244.1.20")
	srv := tp.addPod(t, "srv1", "10.244.1.10")
	startServer(t, srv, "srv1", 8080)
	startServer(t, tp.node, "node-daemon", 81) // listens on 0.0.0.0:81
	p := newProxier(t, tp)
	p.sync(false, append(webObjects(pt.Ready("10.244.1.10", "node1")),
		pt.Service("it", "empty", "10.96.1.13", "http", 80))...)
	for _, from := range []struct {
		name string
		ns   nsHandle
	}{{"pod", cli}, {"outside", tp.outside}, {"node", tp.node}} {
		for _, target := range []string{"10.96.1.13:80", "10.96.1.10:81"} {
			a, err := dial(from.ns, "tcp", target)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("from %s to %s: got %+v, %v; want connection refused", from.name, target, a, err)
			}
		}
	}
	// The node's daemon still answers on the node's own address.
	if a, err := dial(tp.outside, "tcp", addr(nodeIP, 81)); err != nil || a.Server != "node-daemon" {
		t.Errorf("node address, port 81: %+v, %v; want the node's daemon", a, err)
	}
	// The service with endpoints still works.
	if _, err := dial(cli, "tcp", "10.96.1.10:80"); err != nil {
		t.Errorf("ClusterIP with endpoints: %v", err)
	}
}
