//go:build vm

package vmtest

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestCleanup: Cleanup removes every object of IPVS mode (virtual servers,
// the dummy link, ipsets, chains and the jumps to them) and nothing of
// anyone else's: a virtual server on a node address outside the node-port
// range, one on another address, another set, iptables mode's chains.
func TestCleanup(t *testing.T) {
	tp := newTopology(t)
	p := newProxier(t, tp)
	p.sync(false,
		pt.Service("it", "web", "10.96.1.10", "http", 80, nodePort(30080, false)),
		pt.Slice("it", "web", "web-1", "http", 8080, pt.Ready("10.244.1.10", "node1")),
	)
	foreign := []ipvs.ServiceKey{
		{Address: netip.MustParseAddr("10.1.2.3"), Protocol: "UDP", Port: 30080},
		{Address: netip.MustParseAddr(nodeIP), Protocol: "TCP", Port: 80},
	}
	must(t, inNS(tp.node, func() error {
		for _, k := range foreign {
			if err := p.kernel.AddService(&ipvs.VirtualServer{ServiceKey: k, Scheduler: "rr"}); err != nil {
				return err
			}
		}
		if err := p.kernel.RestoreSets([]byte("create OTHER-SET hash:ip\nadd OTHER-SET 10.1.2.3\n")); err != nil {
			return err
		}
		return p.ipt.Restore([]byte("*filter\n:SVCP-FILTER - [0:0]\n-A SVCP-FILTER -j RETURN\nCOMMIT\n"))
	}))

	var left []*ipvs.VirtualServer
	var sets []*ipvs.Set
	var filterChains, natChains []string
	var link string
	must(t, inNS(tp.node, func() error {
		if err := ipvs.Cleanup(p.kernel, p.ipt, nil, p.opts); err != nil {
			return err
		}
		var err error
		if left, err = p.kernel.ListServices(); err != nil {
			return err
		}
		if sets, err = p.kernel.ListSets(); err != nil {
			return err
		}
		if filterChains, err = p.ipt.ListChains(iptables.TableFilter); err != nil {
			return err
		}
		if natChains, err = p.ipt.ListChains(iptables.TableNAT); err != nil {
			return err
		}
		if _, err := p.kernel.ListAddresses(ipvs.DummyInterface); !ipvs.IsNotFound(err) {
			link = "still there"
		}
		out, err := exec.Command("iptables-" + string(iptables.DetectVariant()) + "-save").CombinedOutput()
		if err != nil {
			return err
		}
		if strings.Contains(string(out), "svcproxy-ipvs") {
			link += "; jumps left:\n" + string(out)
		}
		return nil
	}))
	var keys []ipvs.ServiceKey
	for _, vs := range left {
		keys = append(keys, vs.ServiceKey)
	}
	slices.SortFunc(keys, ipvs.ServiceKey.Compare)
	if !slices.Equal(keys, foreign) {
		t.Errorf("virtual servers left: %v, want only the foreign %v", keys, foreign)
	}
	var names []string
	for _, s := range sets {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"OTHER-SET"}) {
		t.Errorf("sets left: %v, want only OTHER-SET", names)
	}
	for _, c := range append(filterChains, natChains...) {
		if ipvs.IsOwnedChain(c) {
			t.Errorf("chain %s left", c)
		}
	}
	if !slices.Contains(filterChains, "SVCP-FILTER") {
		t.Errorf("iptables mode's chain SVCP-FILTER was removed")
	}
	if link != "" {
		t.Errorf("dummy link / jumps: %s", link)
	}
}
