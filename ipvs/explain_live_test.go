package ipvs_test

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/ipvs"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestExplainLiveDrift: Explain over what the kernel holds (ListedPlan)
// agrees with the plan after a sync, and Drift names what was changed
// behind svcproxy's back: a real server deleted, a weight changed, the
// service address unbound (IPVS never sees the packets then), a set entry
// removed.
func TestExplainLiveDrift(t *testing.T) {
	e := newEnv6(t)
	objs := web46([]pt.EP{ep1, ep2}, []pt.EP{ep6a, ep6b})
	plan := e.plan(objs...)
	e.sync(false, objs...)
	vip := netip.MustParseAddr("fd00:10:96::10")
	key := ipvs.ServiceKey{Address: vip, Protocol: v1.ProtocolTCP, Port: 80}
	pkt := ipvs.Packet{Src: netip.MustParseAddr("fd00:10:244:1::20"), Dst: vip, Protocol: v1.ProtocolTCP, Port: 80}
	drift := func() []string {
		t.Helper()
		live, err := ipvs.ListedPlan(e.k, plan, e.opts)
		if err != nil {
			t.Fatal(err)
		}
		return ipvs.Drift(ipvs.Explain(plan, pkt), ipvs.Explain(live, pkt))
	}
	if d := drift(); len(d) != 0 {
		t.Fatalf("drift right after a sync: %q", d)
	}
	want := ipvs.Explain(plan, pkt)
	if want.Verdict != ipvs.VerdictDNAT || len(want.Endpoints) != 2 {
		t.Fatalf("intended: %+v", want)
	}

	for _, tc := range []struct {
		name   string
		tamper func() error
		want   string
	}{
		{"real server deleted", func() error {
			return e.k.DeleteDestination(key, &ipvs.RealServer{Address: netip.MustParseAddr("fd00:10:244:2::10"), Port: 8080})
		}, "endpoint [fd00:10:244:2::10]:8080: missing in the kernel"},
		{"weight changed", func() error {
			return e.k.UpdateDestination(key, &ipvs.RealServer{Address: netip.MustParseAddr("fd00:10:244:1::10"), Port: 8080, Weight: 5})
		}, "weight 5 in the kernel, 1 intended"},
		{"address unbound", func() error { return e.k.DeleteAddress(ipvs.DummyInterface, vip) }, "is not bound to svcproxy-ipvs0"},
		{"cluster IP set entry removed: the filter rejects", func() error {
			return e.k.RestoreSets([]byte("del SVCP-IPVS-6-CLUSTER-IP fd00:10:96::10,tcp:80\n"))
		}, "verdict: intended dnat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.sync(true, objs...) // repaired
			if d := drift(); len(d) != 0 {
				t.Fatalf("drift after the repair: %q", d)
			}
			if err := tc.tamper(); err != nil {
				t.Fatal(err)
			}
			d := drift()
			if !strings.Contains(strings.Join(d, "\n"), tc.want) {
				t.Errorf("drift %q lacks %q", d, tc.want)
			}
		})
	}
}
