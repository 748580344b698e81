package iptables_test

import (
	"flag"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
	"github.com/svcproxy/svcproxy/proxy/source"
)

// The shared golden loop (TestGoldenScenarios) renders IPv4 only. This
// pins the IPv6 ruleset of every scenario that has IPv6 service ports in
// <scenario>.ip6tables.golden: what --dry-run prints after
// "# ip6tables-restore --noflush", for node1 with the cluster CIDR
// fd00:10:244::/56. Rewrite with go test ./iptables -run
// TestGoldenScenariosIPv6 -update, and read the diff.
func TestGoldenScenariosIPv6(t *testing.T) {
	update := flag.Lookup("update").Value.(flag.Getter).Get().(bool)
	opts := iptables.DefaultOptions()
	opts.IPv6 = true
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}
	n := 0
	for _, sc := range pt.Scenarios(t, "../testdata/scenarios", "ip6tables") {
		snap := sc.Snapshot(t)
		has6 := false
		for _, sp := range snap.ServicePorts() {
			has6 = has6 || sp.IPFamily == v1.IPv6Protocol
		}
		if !has6 {
			continue
		}
		n++
		t.Run(sc.Name, func(t *testing.T) {
			plan := iptables.Render(snap, opts)
			got := plan.String()
			pt.Golden(t, sc.Golden("ip6tables"), got, update)
			// What the golden file holds restores into ip6tables as is,
			// and the Syncer programs it.
			if err := iptablestest.NewFake6().Restore([]byte(got)); err != nil {
				t.Errorf("ip6tables-restore refuses the rendered text: %v", err)
			}
			if _, err := iptables.NewSyncer(iptablestest.NewFake6(), 0).Sync(plan, true); err != nil {
				t.Errorf("Sync into ip6tables: %v", err)
			}
		})
	}
	if n == 0 {
		t.Error("no scenario has IPv6 service ports")
	}
}

// TestDualStackScenarioIsTheExample: testdata/scenarios/dual-stack.yaml
// is examples/dual-stack.yaml with two Nodes added; the Services and
// EndpointSlices must stay the same, so that the goldens pin the example
// (which test/integration programs into a namespace).
func TestDualStackScenarioIsTheExample(t *testing.T) {
	ex, err := source.LoadFile("../examples/dual-stack.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := source.LoadFile("../testdata/scenarios/dual-stack.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(ex.Services, sc.Services); d != "" {
		t.Errorf("Services differ (-example +scenario):\n%s", d)
	}
	if d := cmp.Diff(ex.EndpointSlices, sc.EndpointSlices); d != "" {
		t.Errorf("EndpointSlices differ (-example +scenario):\n%s", d)
	}
	if len(ex.Nodes) != 0 || len(sc.Nodes) != 2 {
		t.Errorf("nodes: example %d, scenario %d; want 0 and 2", len(ex.Nodes), len(sc.Nodes))
	}
}
