package nftables

import (
	"context"
	"errors"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// dualStack returns a Backend over two strict fakes.
func dualStack(t *testing.T) (*Backend, *strictFake, *strictFake) {
	f4, f6 := newStrictFake(t, knftables.IPv4Family), newStrictFake(t, knftables.IPv6Family)
	b := NewBackend(FamilyConfig{NFT: f4, Lister: f4.lister(), Opts: testOptions()}, &FamilyConfig{NFT: f6, Lister: f6.lister(), Opts: testOptions6()})
	return b, f4, f6
}

func dualStackSnapshot(t *testing.T) []any {
	svc := pt.Service("ns", "web", "10.96.0.20", "http", 80, func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.0.20", "fd00:10:96::20"}
	})
	s6 := pt.Slice("ns", "web", "web-6", "http", 8080, pt.Ready("fd00:10:244:1::2", "node1"))
	s6.AddressType = "IPv6"
	return []any{svc, pt.Slice("ns", "web", "web-4", "http", 8080, pt.Ready("10.244.1.2", "node1")), s6}
}

// TestBackendDualStack: one Sync programs each family's table with that
// family's service ports; the result counts both.
func TestBackendDualStack(t *testing.T) {
	b, f4, f6 := dualStack(t)
	res, err := b.Sync(ctx, pt.Snapshot(t, dualStackSnapshot(t)...), true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full || res.Restores != 2 || len(res.ByFamily) != 2 || res.ByFamily[v1.IPv6Protocol].Chains == 0 {
		t.Errorf("result %+v, want a full sync of two families", res)
	}
	if f4.Table.Maps[serviceIPsMap].FindElement("10.96.0.20 . tcp . 80") == nil || f6.Table.Maps[serviceIPsMap].FindElement("fd00:10:96::20 . tcp . 80") == nil {
		t.Errorf("each family's cluster IP:\n%s\n%s", f4.Dump(), f6.Dump())
	}
	if strings.Contains(f4.Dump(), "fd00") || strings.Contains(f6.Dump(), "10.96.") {
		t.Errorf("a family's table has the other family's addresses")
	}
	if why, err := b.CheckDrift(ctx); why != "" || err != nil {
		t.Errorf("CheckDrift: %q %v", why, err)
	}
	if err := applyText(f6.Fake, "flush table ip6 svcproxy"); err != nil {
		t.Fatal(err)
	}
	if why, _ := b.CheckDrift(ctx); why != "IPv6: table ip6 svcproxy is flushed or gone" {
		t.Errorf("CheckDrift after flushing the ip6 table: %q", why)
	}
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if f4.Table != nil || f6.Table != nil {
		t.Errorf("Cleanup left a table")
	}
}

// TestBackendOneFamilyFails: a failure in one family fails the Sync (the
// retry is full) and leaves the other family's rules in place.
func TestBackendOneFamilyFails(t *testing.T) {
	b, f4, f6 := dualStack(t)
	f6.fail = func(*knftables.Transaction) error {
		return errors.New("Error: Could not process rule: No buffer space available")
	}
	res, err := b.Sync(ctx, pt.Snapshot(t, dualStackSnapshot(t)...), true)
	if err == nil || !strings.Contains(err.Error(), "IPv6: nft transaction") {
		t.Fatalf("Sync: %v, want the IPv6 failure", err)
	}
	if f4.Table == nil || res.ByFamily[v1.IPv4Protocol].ChainsWritten == 0 {
		t.Errorf("the IPv4 table was not programmed: %+v", res)
	}
	f6.fail = nil
	res, err = b.Sync(ctx, pt.Snapshot(t, dualStackSnapshot(t)...), false)
	if err != nil || !res.ByFamily[v1.IPv6Protocol].Full || res.ByFamily[v1.IPv4Protocol].Full {
		t.Errorf("retry: %+v %v, want IPv6 full and IPv4 partial", res, err)
	}
}

// TestBackendIPv4Only: without an ip6 family nothing of IPv6 is
// programmed.
func TestBackendIPv4Only(t *testing.T) {
	f4 := newStrictFake(t, knftables.IPv4Family)
	b := NewBackend(FamilyConfig{NFT: f4, Lister: f4.lister(), Opts: testOptions()}, nil)
	res, err := b.Sync(ctx, pt.Snapshot(t, dualStackSnapshot(t)...), true)
	if err != nil || len(res.ByFamily) != 1 {
		t.Fatalf("%+v %v", res, err)
	}
}

// failingNFT fails every transaction.
type failingNFT struct{ *knftables.Fake }

func (failingNFT) Run(context.Context, *knftables.Transaction) error {
	return errors.New("Error: Operation not permitted")
}

// TestModeLeftovers: our table of each family goes; none there is no
// error; no nft (or one that does not work for a family) removes nothing
// there; a deletion that fails is reported.
func TestModeLeftovers(t *testing.T) {
	fakes := map[knftables.Family]*knftables.Fake{}
	for _, f := range Families {
		fakes[f] = knftables.NewFake(f, TableName)
		tx := fakes[f].NewTransaction()
		tx.Add(&knftables.Table{})
		if err := fakes[f].Run(ctx, tx); err != nil {
			t.Fatal(err)
		}
	}
	l := modeLeftovers(func(f knftables.Family) (knftables.Interface, error) { return fakes[f], nil })
	if n, err := l.Remove(ctx); n != 2 || err != nil {
		t.Errorf("Remove: %d %v, want both tables", n, err)
	}
	if n, err := l.Remove(ctx); n != 0 || err != nil {
		t.Errorf("Remove again: %d %v, want nothing and no error", n, err)
	}
	none := modeLeftovers(func(knftables.Family) (knftables.Interface, error) { return nil, nil })
	if n, err := none.Remove(ctx); n != 0 || err != nil {
		t.Errorf("no nft: %d %v", n, err)
	}
	broken := modeLeftovers(func(f knftables.Family) (knftables.Interface, error) {
		if f == knftables.IPv6Family {
			return nil, errors.New("could not run nftables command: Protocol not supported")
		}
		return fakes[f], nil
	})
	if n, err := broken.Remove(ctx); n != 0 || err != nil {
		t.Errorf("nft not working for ip6: %d %v", n, err)
	}
	failing := modeLeftovers(func(f knftables.Family) (knftables.Interface, error) {
		return failingNFT{knftables.NewFake(f, TableName)}, nil
	})
	if _, err := failing.Remove(ctx); err == nil || !strings.Contains(err.Error(), "deleting table ip svcproxy: Error: Operation not permitted") {
		t.Errorf("failing deletion: %v", err)
	}
	if !strings.Contains(l.Name(), "nftables") {
		t.Errorf("name %q", l.Name())
	}
}

// TestDryRunIsTheFullSync: the dry-run text is the full sync's
// transaction into an empty table, and programs the Fake to what the
// Syncer programs.
func TestDryRunIsTheFullSync(t *testing.T) {
	snap := pt.Snapshot(t, dualStackSnapshot(t)...)
	text := dryRun(t, Render(snap, testOptions()), Render(snap, testOptions6()))
	f := newStrictFake(t, knftables.IPv4Family)
	if _, err := NewSyncer(f, f.lister()).Sync(ctx, Render(snap, testOptions()), true); err != nil {
		t.Fatal(err)
	}
	v4, v6, ok := strings.Cut(text, "add table ip6 ")
	if !ok || f.runs[0] != v4 || !strings.Contains(v6, "fd00:10:96::20 . tcp . 80") {
		t.Errorf("dry run:\n%s\nfull sync:\n%s", text, f.runs[0])
	}
}
