package ipvs_test

import (
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/ipvs"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// TestDriftItemKinds: each difference DriftItems names carries its kind,
// and Drift is the same differences in words.
func TestDriftItemKinds(t *testing.T) {
	e := newEnv6(t)
	objs := web46([]pt.EP{ep1, ep2}, []pt.EP{ep6a, ep6b})
	plan := e.plan(objs...)
	vip := netip.MustParseAddr("10.96.0.10")
	key := ipvs.ServiceKey{Address: vip, Protocol: v1.ProtocolTCP, Port: 80}
	pod := ipvs.Packet{Src: netip.MustParseAddr("10.244.1.20"), Dst: vip, Protocol: v1.ProtocolTCP, Port: 80}
	outside := ipvs.Packet{Src: netip.MustParseAddr("198.51.100.7"), Dst: netip.MustParseAddr("192.168.0.1"), Protocol: v1.ProtocolTCP, Port: 30080}
	for _, tc := range []struct {
		name   string
		pkt    ipvs.Packet
		tamper func() error
		kinds  []string
	}{
		{"intact", pod, func() error { return nil }, nil},
		{"a real server deleted, another added", pod, func() error {
			if err := e.k.DeleteDestination(key, &ipvs.RealServer{Address: netip.MustParseAddr(ep1.IP), Port: 8080}); err != nil {
				return err
			}
			return e.k.AddDestination(key, &ipvs.RealServer{Address: netip.MustParseAddr("10.244.9.9"), Port: 8080, Weight: 1})
		}, []string{ipvs.DriftMissingEndpoint, ipvs.DriftExtraEndpoint}},
		{"a weight and the scheduler changed", pod, func() error {
			if err := e.k.UpdateService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "lc", Timeout: 30}); err != nil {
				return err
			}
			return e.k.UpdateDestination(key, &ipvs.RealServer{Address: netip.MustParseAddr(ep1.IP), Port: 8080, Weight: 3})
		}, []string{ipvs.DriftScheduler, ipvs.DriftEndpointWeight}},
		{"the node port's masquerade entry removed", outside, func() error {
			return e.k.RestoreSets([]byte("del SVCP-IPVS-NODE-PORT 192.168.0.1,tcp:30080\n"))
		}, []string{ipvs.DriftMasquerade}},
		{"every real server deleted", pod, func() error {
			return e.k.DeleteService(key)
		}, []string{ipvs.DriftVerdict, ipvs.DriftMissingEndpoint, ipvs.DriftMissingEndpoint}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.sync(true, objs...)
			if err := tc.tamper(); err != nil {
				t.Fatal(err)
			}
			live, err := ipvs.ListedPlan(e.k, plan, e.opts)
			if err != nil {
				t.Fatal(err)
			}
			want, got := ipvs.Explain(plan, tc.pkt), ipvs.Explain(live, tc.pkt)
			items := ipvs.DriftItems(want, got)
			var kinds, details []string
			for _, d := range items {
				kinds = append(kinds, d.Kind)
				details = append(details, d.Detail)
			}
			if !slices.Equal(kinds, tc.kinds) {
				t.Errorf("kinds %q, want %q: %q", kinds, tc.kinds, details)
			}
			if d := ipvs.Drift(want, got); !slices.Equal(d, details) {
				t.Errorf("Drift %q, DriftItems' details %q", d, details)
			}
		})
	}
}
