package nftables

import (
	"context"
	"flag"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

var update = flag.Bool("update", false, "rewrite the golden files (testdata/*.golden, ../testdata/scenarios/*.nftables.golden) instead of comparing: never in CI")

// scenarioDir holds the scenarios every mode renders (proxytest.Scenario).
const scenarioDir = "../testdata/scenarios"

func testOptions() Options {
	o := DefaultOptions()
	o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	return o
}

func testOptions6() Options {
	o := DefaultOptions()
	o.IPv6 = true
	o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}
	return o
}

// plans renders snap for IPv4 and, when it has IPv6 service ports, IPv6:
// what --dry-run --mode nftables prints.
func plans(snap *proxy.Snapshot) []*Plan {
	out := []*Plan{Render(snap, testOptions())}
	for _, sp := range snap.ServicePorts() {
		if sp.IPFamily == v1.IPv6Protocol {
			return append(out, Render(snap, testOptions6()))
		}
	}
	return out
}

func dryRun(t testing.TB, ps ...*Plan) string {
	t.Helper()
	text, err := DryRun(context.Background(), ps...)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// TestGoldenScenarios renders every shared scenario as --dry-run prints it
// (both families' tables where the scenario has IPv6 service ports) and
// compares the nft -f input with <scenario>.nftables.golden. The text is
// also run as a transaction on the knftables Fake: what the golden file
// holds is a valid transaction. test/integration feeds every golden file
// to the real nft.
func TestGoldenScenarios(t *testing.T) {
	for _, sc := range pt.Scenarios(t, scenarioDir, "nftables") {
		t.Run(sc.Name, func(t *testing.T) {
			ps := plans(sc.Snapshot(t))
			got := dryRun(t, ps...)
			pt.Golden(t, sc.Golden("nftables"), got, *update)
			for _, p := range ps {
				fake := knftables.NewFake(p.Family, TableName)
				if _, err := NewSyncer(fake, FakeLister(fake)).Sync(context.Background(), p, true); err != nil {
					t.Errorf("%s: the Fake refuses the full sync: %v", p.Family, err)
				}
			}
		})
	}
}

// TestGoldenExample renders the bundled example cluster for node1: what
// the README's dry-run command prints with --mode nftables.
func TestGoldenExample(t *testing.T) {
	got := dryRun(t, plans(pt.LoadStateSnapshot(t, "../examples/cluster.yaml", "node1"))...)
	pt.Golden(t, filepath.Join("testdata", "example.golden"), got, *update)
}

// rulesOf returns the rules of the named chains of p as "chain: rule"
// lines, and the elements of the named sets as "set: key : value".
func rulesOf(p *Plan, names ...string) string {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var b strings.Builder
	p.Chains(func(c *Chain) {
		if want[c.Name] || (want["per-port"] && c.Base == nil && strings.Contains(c.Name, "/")) {
			for _, r := range c.Rules {
				b.WriteString(c.Name + ": " + r + "\n")
			}
		}
	})
	p.Elements(func(e Element) {
		if want[e.Set] {
			b.WriteString(e.Set + ": " + e.Key)
			if e.Value != "" {
				b.WriteString(" : " + e.Value)
			}
			b.WriteString("\n")
		}
	})
	return b.String()
}

func dedent(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n") + "\n"
}
