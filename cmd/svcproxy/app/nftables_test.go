package app

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/nftables"
	"github.com/svcproxy/svcproxy/proxy/config"
)

// dryRunNFT runs --dry-run --mode nftables on a state file.
func dryRunNFT(t *testing.T, state string, extra ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	args := append([]string{"--mode", "nftables", "--dry-run", "--state", state, "--hostname-override", "node1",
		"--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--logtostderr=false"}, extra...)
	if code := Main(args, &out, &errOut); code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", code, errOut.String())
	}
	return out.String()
}

// TestMainDryRunNFTablesPrintsTheGoldenRuleset: --dry-run --mode nftables
// prints nftables/testdata/example.golden for the example.
func TestMainDryRunNFTablesPrintsTheGoldenRuleset(t *testing.T) {
	got := dryRunNFT(t, "../../../examples/cluster.yaml")
	want, err := os.ReadFile("../../../nftables/testdata/example.golden")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("--dry-run --mode nftables differs from nftables/testdata/example.golden:\n%s", got)
	}
	if strings.Contains(got, "ip6") {
		t.Errorf("an IPv4-only state printed the ip6 table")
	}
}

// TestMainDryRunNFTablesDualStack: with IPv6 services both families'
// tables are in the one nft -f input, each with its family's addresses;
// --nodeport-addresses and --masquerade-all shape them.
func TestMainDryRunNFTablesDualStack(t *testing.T) {
	got := dryRunNFT(t, "../../../examples/dual-stack.yaml", "--nodeport-addresses", "192.168.50.0/24,fd00:50::/64", "--masquerade-all")
	i4 := strings.Index(got, "add table ip svcproxy")
	i6 := strings.Index(got, "add table ip6 svcproxy")
	if i4 != 0 || i6 < 0 {
		t.Fatalf("want the ip table first, then the ip6 one: at %d and %d", i4, i6)
	}
	v4, v6 := got[:i6], got[i6:]
	for _, want := range []string{
		"add element ip svcproxy service-ips { 10.96.10.10 . tcp . 80 : goto svc-demo/web/http/tcp }",
		"add element ip svcproxy nodeport-addresses { 192.168.50.0/24 }",
		"add rule ip svcproxy svc-demo/web/http/tcp ip daddr 10.96.10.10 meta mark set meta mark | 0x4000",
	} {
		if !strings.Contains(v4, want+"\n") {
			t.Errorf("the ip table lacks %q", want)
		}
	}
	for _, want := range []string{
		"add element ip6 svcproxy service-ips { fd00:10:96::a . tcp . 80 : goto svc-demo/web/http/tcp }",
		"add element ip6 svcproxy nodeport-addresses { fd00:50::/64 }",
		"add rule ip6 svcproxy services ip6 daddr @nodeport-addresses fib daddr type local meta l4proto . th dport vmap @service-nodeports",
	} {
		if !strings.Contains(v6, want+"\n") {
			t.Errorf("the ip6 table lacks %q", want)
		}
	}
	if strings.Contains(v4, "fd00:") || strings.Contains(v6, "10.96.") {
		t.Errorf("a family's table has the other family's addresses")
	}
}

// TestMainNFTablesModeFromConfigFile: mode: nftables in a
// KubeProxyConfiguration selects nftables mode, with the nftables
// section's masquerade bit.
func TestMainNFTablesModeFromConfigFile(t *testing.T) {
	cfg := t.TempDir() + "/config.conf"
	if err := os.WriteFile(cfg, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\nclusterCIDR: 10.244.0.0/16\nnftables: {masqueradeBit: 13}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := Main([]string{"--config", cfg, "--dry-run", "--state", "../../../examples/cluster.yaml", "--hostname-override", "node1", "--logtostderr=false"}, &out, &errOut); code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "meta mark set meta mark | 0x2000\n") || !strings.HasPrefix(out.String(), "add table ip svcproxy") {
		t.Errorf("not nftables mode with mark 0x2000:\n%s", out.String())
	}
}

// TestNFTablesBackendFamilies: nftables mode needs nft for ip, and
// programs ip6 only where nft works for it.
func TestNFTablesBackendFamilies(t *testing.T) {
	defer func(orig func(knftables.Family) (knftables.Interface, error)) { newNFT = orig }(newNFT)
	o := config.Defaults()
	o.HostnameOverride = "node1"
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	fakeNFT := func(f knftables.Family) (knftables.Interface, error) {
		return knftables.NewFake(f, nftables.TableName), nil
	}
	for _, tc := range []struct {
		name     string
		broken   knftables.Family
		wantErr  string
		wantIPv6 bool
	}{
		{name: "both families", wantIPv6: true},
		{name: "no ip6", broken: knftables.IPv6Family},
		{name: "no nft at all", broken: knftables.IPv4Family, wantErr: "--mode=nftables: could not find nftables binary"},
	} {
		newNFT = func(f knftables.Family) (knftables.Interface, error) {
			if f == tc.broken || tc.broken == knftables.IPv4Family {
				return nil, errors.New("could not find nftables binary")
			}
			return fakeNFT(f)
		}
		be, ipv6, err := nftablesBackend(context.Background(), o)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %v, want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || be == nil || ipv6 != tc.wantIPv6 {
			t.Errorf("%s: %v %v %v, want IPv6 %v", tc.name, be, ipv6, err, tc.wantIPv6)
		}
	}
}
