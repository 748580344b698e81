//go:build integration

package integration

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/svcproxy/svcproxy/iptables"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// savedRules returns the nat and filter rules of a namespace as the kernel
// holds them (iptables-save, counters and comments about the dump dropped).
func savedRules(t *testing.T, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"filter", "nat"} {
		for _, l := range strings.Split(nsRun(t, ns, "iptables-save", "-t", table), "\n") {
			if strings.HasPrefix(l, "#") || l == "" {
				continue
			}
			if strings.HasPrefix(l, ":") {
				l = strings.Fields(l)[0]
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func seedBytes(i int) []byte {
	b := make([]byte, 96)
	for j := range b {
		b[j] = byte((i+1)*131 + j*j*17 + i*j)
	}
	return b
}

// TestRealRestoreRandomRulesets drives the real Syncer and the real
// iptables-restore with random clusters (odd ports, many endpoints, weird
// names, conflicting IPs): a restarted svcproxy's full sync over the
// leftovers of the previous round, then a partial sync to another random
// cluster, must leave exactly what a fresh iptables-restore of that
// cluster's --dry-run output leaves.
func TestRealRestoreRandomRulesets(t *testing.T) {
	tp := newTopology(t)
	ref := addNS(t, tp.prefix+"-ref")
	opts := iptables.DefaultOptions()
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	for i := 0; i < 40; i++ {
		a, b := pt.RandomSnapshot(seedBytes(i)), pt.RandomSnapshot(seedBytes(i+1000))
		var res iptables.SyncResult
		err := inNS(tp.node, func() error {
			ipt, err := iptables.NewExec(iptables.VariantNFT)
			if err != nil {
				return err
			}
			s := iptables.NewSyncer(ipt, 5) // tiny batches: ordering matters
			r := iptables.NewRenderer(opts)
			if _, err := s.Sync(r.Render(a), true); err != nil {
				return fmt.Errorf("full sync: %w", err)
			}
			res, err = s.Sync(r.Render(b), false)
			if err != nil {
				return fmt.Errorf("partial sync: %w", err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		for _, tbl := range []string{"nat", "filter"} {
			nsRun(t, ref, "iptables", "-t", tbl, "-F")
			nsRun(t, ref, "iptables", "-t", tbl, "-X")
		}
		dump := iptables.Render(b, opts).String()
		cmd := exec.Command("ip", "netns", "exec", ref, "iptables-restore", "--noflush")
		cmd.Stdin = strings.NewReader(dump)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("round %d: iptables-restore of the --dry-run output: %v\n%s", i, err, out)
		}
		if d := cmp.Diff(savedRules(t, ref), savedRules(t, tp.node)); d != "" {
			t.Fatalf("round %d: after a partial sync (%+v) the kernel holds other rules than a fresh restore (-fresh +synced):\n%s", i, res, d)
		}
	}
}

// TestDetectVariant: a node whose rules live in the legacy tables is
// programmed with iptables-legacy; a node without any gets nft, and reading
// does not create legacy tables behind the operator's back.
func TestDetectVariant(t *testing.T) {
	tp := newTopology(t)
	var got iptables.Variant
	detect := func() {
		if err := inNS(tp.node, func() error { got = iptables.DetectVariant(); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	detect()
	if got != iptables.VariantNFT {
		t.Errorf("empty node: %s, want nft", got)
	}
	if out := nsRun(t, tp.node, "cat", "/proc/net/ip_tables_names"); strings.TrimSpace(out) != "" {
		t.Errorf("detection created legacy tables: %q", out)
	}
	// kubelet's hint chain, and a rule, in the legacy mangle table.
	nsRun(t, tp.node, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
	nsRun(t, tp.node, "iptables-legacy", "-t", "mangle", "-A", "PREROUTING", "-j", "RETURN")
	detect()
	if got != iptables.VariantLegacy {
		t.Errorf("node using legacy iptables: %s, want legacy", got)
	}
}
