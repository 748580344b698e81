//go:build vm

package vmtest

import (
	"net/netip"
	"testing"
	"time"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestGracefulTermination: an endpoint removed while a connection to it is
// open keeps serving that connection (its real server gets weight 0) while
// new connections go to the other endpoint; once the connection is closed
// the next sync deletes the real server.
func TestGracefulTermination(t *testing.T) {
	tp := newTopology(t)
	for _, n := range []struct{ name, ip string }{{"srv1", "10.244.1.10"}, {"srv2", "10.244.1.11"}} {
		startServer(t, tp.addPod(t, n.name, n.ip), n.name, 8080)
	}
	cli := tp.addPod(t, "cli", "10.244.1.20")
	p := newProxier(t, tp)
	both := webObjects(pt.Ready("10.244.1.10", "node1"), pt.Ready("10.244.1.11", "node1"))
	p.sync(false, both...)

	// A live connection to srv1 (round robin: one of the first two).
	live := connectedTo(t, cli, "10.96.1.10:80", "srv1")
	defer live.Close()

	res := p.sync(false, webObjects(pt.Ready("10.244.1.11", "node1"))...)
	if res.Draining != 1 {
		t.Errorf("draining %d real servers, want 1", res.Draining)
	}
	rs := p.realServer("10.96.1.10:80", "10.244.1.10:8080")
	if rs == nil || rs.Weight != 0 || rs.ActiveConns != 1 {
		t.Fatalf("removed real server: %+v, want weight 0 and 1 active connection\n%s", rs, p.dumpServices())
	}
	if a, err := live.ask(); err != nil || a.Server != "srv1" {
		t.Errorf("live connection after removal: %+v, %v; want an answer from srv1", a, err)
	}
	for range 4 {
		a, err := dial(cli, "tcp", "10.96.1.10:80")
		if err != nil || a.Server != "srv2" {
			t.Errorf("new connection: %+v, %v; want srv2", a, err)
		}
	}
	// Still draining while the connection is open.
	p.sync(false, webObjects(pt.Ready("10.244.1.11", "node1"))...)
	if p.realServer("10.96.1.10:80", "10.244.1.10:8080") == nil {
		t.Fatal("real server deleted while a connection was still active")
	}

	live.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		res = p.sync(false, webObjects(pt.Ready("10.244.1.11", "node1"))...)
		if p.realServer("10.96.1.10:80", "10.244.1.10:8080") == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("real server not deleted after its connection closed\n%s", p.dumpServices())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if res.Drained != 1 || res.Draining != 0 {
		t.Errorf("sync result %+v, want 1 drained, 0 draining", res)
	}
}

// connectedTo opens TCP connections from ns to target until one is
// answered by server (a few tries: the scheduler spreads them), and returns
// that one, open.
func connectedTo(t testing.TB, ns nsHandle, target, server string) *conn {
	t.Helper()
	for range 4 {
		c, err := connect(ns, "tcp", target)
		if err != nil {
			t.Fatalf("connect %s: %v", target, err)
		}
		a, err := c.ask()
		if err != nil {
			t.Fatal(err)
		}
		if a.Server == server {
			return c
		}
		c.Close()
	}
	t.Fatalf("no connection to %s reached %s", target, server)
	return nil
}

// realServer returns the real server ep of virtual server vs (TCP), or nil.
func (p *proxier) realServer(vs, ep string) *ipvsRealServer {
	p.t.Helper()
	v, e := netip.MustParseAddrPort(vs), netip.MustParseAddrPort(ep)
	for _, s := range p.services() {
		if s.Address != v.Addr() || s.Port != v.Port() || s.Protocol != "TCP" {
			continue
		}
		for _, rs := range s.Destinations {
			if rs.AddrPort() == e {
				return rs
			}
		}
	}
	return nil
}
