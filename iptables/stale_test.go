package iptables_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// A chain of another program that jumps to one of our chains keeps that
// chain from being deleted; it must not keep anything else from being
// applied, and the deletion goes through once the reference is gone.
func TestForeignReferenceToAStaleChainBlocksOnlyThatChain(t *testing.T) {
	gone := pt.Service("ns", "gone", "10.96.0.30", "http", 80)
	goneEPs := pt.Slice("ns", "gone", "gone-1", "http", 8080, pt.Ready("10.244.2.3", "node2"))
	web := pt.Service("ns", "web", "10.96.0.20", "http", 80)
	webEPs := pt.Slice("ns", "web", "web-1", "http", 8080, pt.Ready("10.244.2.2", "node2"))
	webMoved := pt.Slice("ns", "web", "web-1", "http", 8080, pt.Ready("10.244.2.9", "node2"))

	fake := iptablestest.NewFake()
	syncer := iptables.NewSyncer(fake, 0)
	opts := iptables.DefaultOptions()
	before := iptables.Render(pt.Snapshot(t, gone, goneEPs, web, webEPs), opts)
	if _, err := syncer.Sync(before, true); err != nil {
		t.Fatal(err)
	}
	after := iptables.Render(pt.Snapshot(t, web, webMoved), opts)
	var stale []string
	for _, c := range before.NAT {
		if !slices.ContainsFunc(after.NAT, func(a *iptables.Chain) bool { return a.Name == c.Name }) {
			stale = append(stale, c.Name)
		}
	}
	if len(stale) == 0 {
		t.Fatal("removing a service left no stale chain")
	}
	blocked := stale[0]
	if err := fake.Restore([]byte("*nat\n:FOREIGN - [0:0]\n-A FOREIGN -j " + blocked + "\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}

	res, err := syncer.Sync(after, false)
	if err != nil {
		t.Fatalf("the sync failed as a whole: %v", err)
	}
	if res.StaleErr == nil || !strings.Contains(res.StaleErr.Error(), blocked) {
		t.Errorf("StaleErr %v, want one naming %s", res.StaleErr, blocked)
	}
	if res.ChainsDeleted != len(stale)-1 {
		t.Errorf("deleted %d stale chains, want all but the blocked one (%d)", res.ChainsDeleted, len(stale)-1)
	}
	chains, _ := fake.ListChains(iptables.TableNAT)
	if !slices.Contains(chains, blocked) {
		t.Errorf("the referenced chain %s was deleted", blocked)
	}
	// web's change is in.
	found := false
	for _, c := range after.NAT {
		rules, err := fake.ListRules(iptables.TableNAT, c.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			found = found || strings.Contains(r, "10.244.2.9:8080")
		}
	}
	if !found {
		t.Error("the other service's endpoint change was not applied")
	}

	// The reference goes; the next sync deletes the chain.
	if err := fake.Restore([]byte("*nat\n:FOREIGN - [0:0]\n-X FOREIGN\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	res, err = syncer.Sync(after, false)
	if err != nil || res.StaleErr != nil || res.ChainsDeleted != 1 {
		t.Fatalf("retry: deleted %d, StaleErr %v, err %v; want 1 deleted", res.ChainsDeleted, res.StaleErr, err)
	}
	chains, _ = fake.ListChains(iptables.TableNAT)
	if slices.Contains(chains, blocked) {
		t.Errorf("%s is still there after the reference went", blocked)
	}
}
