//go:build vm

package vmtest

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestModeSwitch switches the data plane iptables → ipvs → iptables under
// a stream of new connections to a ClusterIP, make before break: the new
// mode is programmed first, then the old one removed. No connection may
// fail, and nothing of the previous mode may be left.
func TestModeSwitch(t *testing.T) {
	tp := newTopology(t)
	for _, n := range []struct{ name, ip string }{{"srv1", "10.244.1.10"}, {"srv2", "10.244.1.11"}} {
		startServer(t, tp.addPod(t, n.name, n.ip), n.name, 8080)
	}
	cli := tp.addPod(t, "cli", "10.244.1.20")
	p := newProxier(t, tp)
	objs := webObjects(pt.Ready("10.244.1.10", "node1"), pt.Ready("10.244.1.11", "node1"))
	snap := snapshot(t, objs...)
	iopts := iptables.DefaultOptions()
	iopts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	ipt := p.ipt
	inNode := func(what string, fn func() error) {
		t.Helper()
		if err := inNS(tp.node, fn); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	iptablesUp := func() {
		inNode("iptables mode sync", func() error {
			_, err := iptables.NewSyncer(ipt, 0).Sync(iptables.Render(snap, iopts), true)
			return err
		})
	}
	iptablesUp()

	// The stream: one new connection every 5 ms until stopped.
	var (
		mu               sync.Mutex
		attempts, failed int
		firstErr         error
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			_, err := dial(cli, "tcp", "10.96.1.10:80")
			mu.Lock()
			attempts++
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
			}
			mu.Unlock()
		}
	}()
	pause := func() { time.Sleep(300 * time.Millisecond) }
	chains := func() (out []string) {
		inNode("listing chains", func() error {
			for _, tbl := range []string{iptables.TableFilter, iptables.TableNAT} {
				cs, err := p.ipt.ListChains(tbl)
				if err != nil {
					return err
				}
				for _, c := range cs {
					if strings.HasPrefix(c, iptables.ChainPrefix) {
						out = append(out, c)
					}
				}
			}
			return nil
		})
		return out
	}

	pause()
	// iptables → ipvs.
	inNode("ipvs mode sync", func() error {
		_, err := p.applier.Sync(context.Background(), ipvs.Render(snap, p.opts), true)
		return err
	})
	pause()
	inNode("iptables mode cleanup", func() error { return iptables.Cleanup(ipt) })
	pause()
	for _, c := range chains() {
		if !ipvs.IsOwnedChain(c) {
			t.Errorf("in ipvs mode: chain %s of iptables mode left", c)
		}
	}

	// ipvs → iptables.
	iptablesUp()
	pause()
	inNode("ipvs mode cleanup", func() error { return ipvs.Cleanup(p.kernel, p.ipt, nil, p.opts) })
	pause()
	close(stop)
	<-done

	for _, c := range chains() {
		if ipvs.IsOwnedChain(c) {
			t.Errorf("back in iptables mode: chain %s of ipvs mode left", c)
		}
	}
	if svcs := p.services(); len(svcs) != 0 {
		t.Errorf("back in iptables mode: virtual servers left:%s", p.dumpServices())
	}
	inNode("listing", func() error {
		if _, err := p.kernel.ListAddresses(ipvs.DummyInterface); !ipvs.IsNotFound(err) {
			t.Errorf("back in iptables mode: %s left", ipvs.DummyInterface)
		}
		sets, err := p.kernel.ListSets()
		for _, s := range sets {
			t.Errorf("back in iptables mode: ipset %s left", s.Name)
		}
		return err
	})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d connections, %d failed", attempts, failed)
	if attempts < 50 || failed != 0 {
		t.Errorf("%d of %d connections failed (first: %v), want none of at least 50", failed, attempts, firstErr)
	}
}
