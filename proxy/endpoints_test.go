package proxy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Test address plan: this node is "node1" in zone "z1"; node2 is in z1 too,
// node3 in z2. Endpoint 10.0.0.N runs on node N.

type epSpec struct {
	ip                          string
	node                        string
	ready, serving, terminating bool
	zoneHints, nodeHints        []string
}

func mkEndpoints(specs []epSpec) []*Endpoint {
	var out []*Endpoint
	for _, s := range specs {
		ep := &Endpoint{IP: netip.MustParseAddr(s.ip), Port: 80, Ready: s.ready, Serving: s.serving,
			Terminating: s.terminating, NodeName: s.node, IsLocal: s.node == "node1"}
		for _, z := range s.zoneHints {
			if ep.ZoneHints == nil {
				ep.ZoneHints = map[string]bool{}
			}
			ep.ZoneHints[z] = true
		}
		for _, n := range s.nodeHints {
			if ep.NodeHints == nil {
				ep.NodeHints = map[string]bool{}
			}
			ep.NodeHints[n] = true
		}
		out = append(out, ep)
	}
	return out
}

func ips(eps []*Endpoint) string {
	var s []string
	for _, e := range eps {
		s = append(s, e.IP.String())
	}
	return strings.Join(s, ",")
}

var (
	readyLocal   = epSpec{ip: "10.0.0.1", node: "node1", ready: true, serving: true}
	readyRemote  = epSpec{ip: "10.0.0.2", node: "node2", ready: true, serving: true}
	readyRemote3 = epSpec{ip: "10.0.0.3", node: "node3", ready: true, serving: true}
	termLocal    = epSpec{ip: "10.0.0.1", node: "node1", serving: true, terminating: true}
	termRemote   = epSpec{ip: "10.0.0.2", node: "node2", serving: true, terminating: true}
	// terminating and no longer serving: never used
	deadLocal  = epSpec{ip: "10.0.0.1", node: "node1", terminating: true}
	deadRemote = epSpec{ip: "10.0.0.2", node: "node2", terminating: true}
	notReady   = epSpec{ip: "10.0.0.2", node: "node2"}
)

func withZones(e epSpec, zones ...string) epSpec { e.zoneHints = zones; return e }
func withNodes(e epSpec, nodes ...string) epSpec { e.nodeHints = nodes; return e }

func TestSelectEndpoints(t *testing.T) {
	tests := []struct {
		name         string
		itpLocal     bool
		etpLocal     bool
		external     bool
		eps          []epSpec
		wantCluster  string
		wantLocal    string
		usesCluster  bool
		usesLocal    bool
		hasEndpoints bool
	}{
		{name: "cluster policy, ready local and remote", eps: []epSpec{readyLocal, readyRemote},
			wantCluster: "10.0.0.1,10.0.0.2", usesCluster: true, hasEndpoints: true},
		{name: "cluster policy, not-ready endpoint ignored", eps: []epSpec{readyLocal, notReady},
			wantCluster: "10.0.0.1", usesCluster: true, hasEndpoints: true},
		{name: "cluster policy, terminating ignored while any is ready", eps: []epSpec{readyRemote, termLocal},
			wantCluster: "10.0.0.2", usesCluster: true, hasEndpoints: true},
		{name: "cluster policy, falls back to serving-terminating", eps: []epSpec{termLocal, termRemote},
			wantCluster: "10.0.0.1,10.0.0.2", usesCluster: true, hasEndpoints: true},
		{name: "cluster policy, terminating and not serving is never used", eps: []epSpec{deadLocal, deadRemote},
			wantCluster: "", usesCluster: true, hasEndpoints: false},
		{name: "cluster policy, no endpoints", eps: nil, usesCluster: true, hasEndpoints: false},

		{name: "internal Local, ready local", itpLocal: true, eps: []epSpec{readyLocal, readyRemote},
			wantLocal: "10.0.0.1", usesLocal: true, hasEndpoints: true},
		{name: "internal Local, only remote endpoints", itpLocal: true, eps: []epSpec{readyRemote},
			wantLocal: "", usesLocal: true, hasEndpoints: true},
		{name: "internal Local, local terminating fallback", itpLocal: true, eps: []epSpec{termLocal, readyRemote},
			wantLocal: "10.0.0.1", usesLocal: true, hasEndpoints: true},
		{name: "internal Local with external access still needs cluster endpoints", itpLocal: true, external: true,
			eps: []epSpec{readyLocal, readyRemote}, wantCluster: "10.0.0.1,10.0.0.2", wantLocal: "10.0.0.1",
			usesCluster: true, usesLocal: true, hasEndpoints: true},

		{name: "external Local, ready local and remote", etpLocal: true, external: true, eps: []epSpec{readyLocal, readyRemote},
			wantCluster: "10.0.0.1,10.0.0.2", wantLocal: "10.0.0.1", usesCluster: true, usesLocal: true, hasEndpoints: true},
		{name: "external Local, no local endpoint", etpLocal: true, external: true, eps: []epSpec{readyRemote},
			wantCluster: "10.0.0.2", wantLocal: "", usesCluster: true, usesLocal: true, hasEndpoints: true},
		{name: "external Local, local serving-terminating used while remote ready exists", etpLocal: true, external: true,
			eps: []epSpec{termLocal, readyRemote}, wantCluster: "10.0.0.2", wantLocal: "10.0.0.1",
			usesCluster: true, usesLocal: true, hasEndpoints: true},
		{name: "external Local without external access is cluster policy", etpLocal: true, external: false,
			eps: []epSpec{readyLocal, readyRemote}, wantCluster: "10.0.0.1,10.0.0.2", usesCluster: true, hasEndpoints: true},

		{name: "zone hints for this zone", eps: []epSpec{withZones(readyLocal, "z1"), withZones(readyRemote, "z1"), withZones(readyRemote3, "z2")},
			wantCluster: "10.0.0.1,10.0.0.2", usesCluster: true, hasEndpoints: true},
		{name: "zone hints ignored when one endpoint lacks them", eps: []epSpec{withZones(readyLocal, "z1"), readyRemote, withZones(readyRemote3, "z2")},
			wantCluster: "10.0.0.1,10.0.0.2,10.0.0.3", usesCluster: true, hasEndpoints: true},
		{name: "zone hints ignored when none is for this zone", eps: []epSpec{withZones(readyRemote3, "z2")},
			wantCluster: "10.0.0.3", usesCluster: true, hasEndpoints: true},
		{name: "node hints (PreferSameNode) for this node", eps: []epSpec{withNodes(withZones(readyLocal, "z1"), "node1"), withNodes(withZones(readyRemote, "z1"), "node2")},
			wantCluster: "10.0.0.1", usesCluster: true, hasEndpoints: true},
		{name: "node hints for other nodes only fall back to zone hints", eps: []epSpec{withNodes(withZones(readyRemote, "z1"), "node2"), withNodes(withZones(readyRemote3, "z2"), "node3")},
			wantCluster: "10.0.0.2", usesCluster: true, hasEndpoints: true},
		{name: "topology does not apply to local policy", itpLocal: true, eps: []epSpec{withZones(readyLocal, "z2"), withZones(readyRemote, "z1")},
			wantLocal: "10.0.0.1", usesLocal: true, hasEndpoints: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sp := &ServicePort{InternalPolicyLocal: tc.itpLocal, ExternalPolicyLocal: tc.etpLocal, AllEndpoints: mkEndpoints(tc.eps)}
			if tc.external {
				sp.NodePort = 30000
			}
			SelectEndpoints(sp, "node1", "z1")
			got := []any{ips(sp.ClusterEndpoints), ips(sp.LocalEndpoints), sp.UsesClusterEndpoints, sp.UsesLocalEndpoints, sp.HasEndpoints()}
			want := []any{tc.wantCluster, tc.wantLocal, tc.usesCluster, tc.usesLocal, tc.hasEndpoints}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("(cluster, local, usesCluster, usesLocal, hasEndpoints) mismatch (-want +got):\n%s", d)
			}
		})
	}
}
