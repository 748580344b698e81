package nftables

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxy"
)

// Backend is nftables mode as a proxy.Backend: for each IP family, a
// Renderer and a Syncer programming that family's table. Both families
// are synced in one Sync; a failure in one leaves the other's rules in
// place and fails the Sync, so that the retry (a full sync) repairs it.
type Backend struct {
	families []*familyBackend
}

// FamilyConfig is what the Backend needs of one IP family: the table's
// knftables Interface, its Lister and the options of the family.
type FamilyConfig struct {
	NFT    knftables.Interface
	Lister Lister
	Opts   Options
}

type familyBackend struct {
	family   v1.IPFamily
	nft      knftables.Interface
	renderer *Renderer
	syncer   *Syncer
}

var (
	_ proxy.Backend      = (*Backend)(nil)
	_ proxy.DriftChecker = (*Backend)(nil)
)

// NewBackend returns nftables mode programming IPv4 through v4 and, when
// v6 is not nil (a node where nft works for ip6), IPv6 through v6. The
// families' Opts.IPv6 are set here.
func NewBackend(v4 FamilyConfig, v6 *FamilyConfig) *Backend {
	v4.Opts.IPv6 = false
	b := &Backend{families: []*familyBackend{newFamily(v1.IPv4Protocol, v4)}}
	if v6 != nil {
		f := *v6
		f.Opts.IPv6 = true
		b.families = append(b.families, newFamily(v1.IPv6Protocol, f))
	}
	return b
}

func newFamily(family v1.IPFamily, f FamilyConfig) *familyBackend {
	return &familyBackend{family: family, nft: f.NFT, renderer: NewRenderer(f.Opts), syncer: NewSyncer(f.NFT, f.Lister)}
}

// Sync implements proxy.Backend.
func (b *Backend) Sync(ctx context.Context, snap *proxy.Snapshot, full bool) (proxy.SyncResult, error) {
	var out proxy.SyncResult
	var errs []error
	for _, f := range b.families {
		plan := f.renderer.Render(snap)
		res, err := f.syncer.Sync(ctx, plan, full)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.family, err))
		}
		chains, _, _ := plan.Stats()
		out.Add(f.family, proxy.SyncResult{Full: res.Full, ChainsWritten: res.ChainsWritten, ChainsDeleted: res.ChainsDeleted,
			Restores: res.Transactions, Chains: chains, StaleErr: res.StaleErr})
	}
	return out, errors.Join(errs...)
}

// CheckDrift implements proxy.DriftChecker (see Syncer.CheckDrift), for
// every family.
func (b *Backend) CheckDrift(ctx context.Context) (string, error) {
	for _, f := range b.families {
		why, err := f.syncer.CheckDrift(ctx)
		if why != "" || err != nil {
			if why != "" {
				why = string(f.family) + ": " + why
			}
			return why, err
		}
	}
	return "", nil
}

// Cleanup implements proxy.Backend: our table of every family goes,
// nothing else.
func (b *Backend) Cleanup(ctx context.Context) error {
	var errs []error
	for _, f := range b.families {
		if _, err := DeleteTable(ctx, f.nft); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.family, err))
		}
	}
	return errors.Join(errs...)
}

// DeleteTable deletes the table nft manages; deleted is false when there
// was none.
func DeleteTable(ctx context.Context, nft knftables.Interface) (deleted bool, err error) {
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	err = nft.Run(ctx, tx)
	if isNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// New returns the knftables Interface of our table in family ("ip" or
// "ip6"). It fails where nft does not work for that family (no binary,
// no permission, a kernel without nf_tables).
func New(family knftables.Family) (knftables.Interface, error) {
	return knftables.New(family, TableName)
}

// Families are the nftables families of both IP families, IPv4 first.
var Families = []knftables.Family{knftables.IPv4Family, knftables.IPv6Family}

// ModeLeftovers removes what nftables mode left on a node now run in
// another mode (a mode switch), and is what --cleanup runs: our table of
// each family, nothing else. Without an nft binary there is nothing it
// could remove (nor anything svcproxy could have programmed), and it does
// nothing.
func ModeLeftovers() proxy.Leftovers {
	return modeLeftovers(func(f knftables.Family) (knftables.Interface, error) {
		if _, err := exec.LookPath("nft"); err != nil {
			return nil, nil
		}
		return New(f)
	})
}

// modeLeftovers is ModeLeftovers with the Interfaces from newNFT (nil, nil:
// no nft).
func modeLeftovers(newNFT func(knftables.Family) (knftables.Interface, error)) proxy.Leftovers {
	return proxy.LeftoversFunc{What: "svcproxy nftables-mode tables", Func: func(ctx context.Context) (int, error) {
		removed := 0
		var errs []error
		for _, family := range Families {
			nft, err := newNFT(family)
			if err != nil {
				// nft does not work for this family (an old kernel, no
				// nf_tables): no table of ours can be there either.
				klog.FromContext(ctx).V(2).Info("nft does not work; no svcproxy table to remove", "family", family, "err", err)
				continue
			}
			if nft == nil {
				continue
			}
			deleted, err := DeleteTable(ctx, nft)
			if err != nil {
				errs = append(errs, fmt.Errorf("deleting table %s %s: %w", family, TableName, err))
			}
			if deleted {
				removed++
			}
		}
		return removed, errors.Join(errs...)
	}}
}

// DryRun returns the nft -f input of the full sync that programs plans
// into an empty namespace, exactly what the Syncer runs on a node without
// our tables: every family's table in one input.
func DryRun(ctx context.Context, plans ...*Plan) (string, error) {
	var b strings.Builder
	for _, p := range plans {
		fake := knftables.NewFake(p.Family, TableName)
		s := NewSyncer(fake, FakeLister(fake))
		tx, _, err := s.fullTx(ctx, p, &SyncResult{})
		if err != nil {
			return "", err
		}
		b.WriteString(tx.String())
	}
	return b.String(), nil
}
