package iptables_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func TestCleanupRemovesOnlyOurs(t *testing.T) {
	fake := iptablestest.NewFake()
	// Another program's chain and jump must survive.
	other := "*nat\n:OTHER-CHAIN - [0:0]\n-A OTHER-CHAIN -j RETURN\n-A PREROUTING -j OTHER-CHAIN\nCOMMIT\n"
	if err := fake.Restore([]byte(other)); err != nil {
		t.Fatal(err)
	}
	snap := pt.RandomSnapshot([]byte("a cluster with a few services in it, and then some"))
	if _, err := iptables.NewSyncer(fake, 0).Sync(iptables.Render(snap, iptables.DefaultOptions()), true); err != nil {
		t.Fatal(err)
	}
	if err := iptables.Cleanup(fake); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	if strings.Contains(dump, iptables.ChainPrefix) {
		t.Errorf("chains or jumps of ours left after Cleanup:\n%s", dump)
	}
	if !slices.Contains(fake.Chains("nat"), "OTHER-CHAIN") || !strings.Contains(dump, "-A PREROUTING -j OTHER-CHAIN") {
		t.Errorf("Cleanup removed another program's rules:\n%s", dump)
	}
	// Idempotent.
	if err := iptables.Cleanup(fake); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}
