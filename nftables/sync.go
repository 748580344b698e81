package nftables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/knftables"
)

// StaleChainDelay is how long a chain the plan no longer has waits, flushed
// and unreferenced, before it is deleted in a transaction of its own:
// kernels before 6.2 release a chain that a deleted map element pointed to
// only a moment after the transaction (upstream kube-proxy waits the same).
const StaleChainDelay = time.Second

// tableComment is the comment of our table, for whoever lists the ruleset.
const tableComment = "svcproxy: Service rules (nftables mode), managed by svcproxy; do not edit"

// SyncResult says what one Sync did.
type SyncResult struct {
	Full bool
	// Transactions counts the nft transactions run (the sync's own, and
	// the deletion of stale chains).
	Transactions int
	// Operations counts the operations of the sync's transaction.
	Operations int
	// ChainsWritten counts chains created or rewritten, ChainsDeleted
	// stale chains deleted, ElementsWritten set and map elements added or
	// deleted.
	ChainsWritten, ChainsDeleted, ElementsWritten int
	// StaleErr is a failure to delete stale chains: the sync itself is in
	// place, and the deletion is tried again at the next one.
	StaleErr error
}

// Syncer programs one family's table. It keeps what its last successful
// sync programmed and, on a partial sync, sends only the difference: the
// chains of the service ports whose fragment changed and the set and map
// elements they add or remove, in one transaction, without reading
// anything back. A full sync is one transaction too: it flushes every
// rule of the table, recreates the base chains and the sets and maps
// (keeping the affinity sets and their clients) and writes everything;
// it lists the names of the table's objects first (netlink, no rules), so
// that what the plan no longer has goes. A failed transaction changes
// nothing in the kernel, and the next sync is full.
type Syncer struct {
	nft    knftables.Interface
	lister Lister
	now    func() time.Time

	// What the kernel holds after the last successful sync; valid is
	// false before the first one and after a failure.
	valid  bool
	family knftables.Family
	fixed  *fragment
	frags  map[*fragment]struct{}
	chains map[string]*Chain
	sets   map[string]*Set
	elems  map[elemID]*claims
	// stale chains: flushed and unreferenced since the time given,
	// deleted once StaleChainDelay has passed.
	stale map[string]time.Time
}

// claims are the fragments that put one element (set and key) in the
// table; the first one's value is the kernel's.
type claims struct{ list []claim }

type claim struct {
	frag  *fragment
	value string
}

// NewSyncer returns a Syncer of the table nft manages, reading it back
// through lister.
func NewSyncer(nft knftables.Interface, lister Lister) *Syncer {
	return &Syncer{nft: nft, lister: lister, now: time.Now, stale: map[string]time.Time{}}
}

// SetClock replaces the clock that times stale chains (tests).
func (s *Syncer) SetClock(now func() time.Time) { s.now = now }

// Sync programs plan: everything with full (and when the Syncer does not
// know what the kernel holds), otherwise the difference from the last
// successful sync.
func (s *Syncer) Sync(ctx context.Context, plan *Plan, full bool) (SyncResult, error) {
	res := SyncResult{Full: full || !s.valid}
	var tx *knftables.Transaction
	var commit func()
	if !res.Full {
		tx, commit = s.partialTx(plan, &res)
		res.Full = tx == nil // the fixed part changed: rewrite all
	}
	if res.Full {
		var err error
		if tx, commit, err = s.fullTx(ctx, plan, &res); err != nil {
			s.valid = false
			return res, err
		}
	}
	res.Operations = tx.NumOperations()
	if res.Operations > 0 {
		res.Transactions++
		if err := s.nft.Run(ctx, tx); err != nil {
			s.valid = false
			return res, fmt.Errorf("nft transaction of %d operations (table %s %s): %w", res.Operations, plan.Family, TableName, err)
		}
	}
	commit()
	s.valid, s.family = true, plan.Family
	s.deleteStale(ctx, &res)
	return res, nil
}

// fullTx builds the transaction of a full sync and the function that
// records it as applied.
func (s *Syncer) fullTx(ctx context.Context, plan *Plan, res *SyncResult) (*knftables.Transaction, func(), error) {
	objs, err := s.lister.Objects(ctx)
	if err != nil {
		return nil, nil, err
	}
	listedChains := setOf(objs.Chains)
	listedSets, listedMaps := setOf(objs.Sets), setOf(objs.Maps)
	tx := s.nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo(tableComment)})
	// Every rule goes; chains, sets and maps stay. (Chain by chain rather
	// than "flush table": the same in the kernel, 5% slower at 10,000
	// services, and what knftables' Fake implements too, which empties
	// the whole table on "flush table".)
	for _, name := range objs.Chains {
		tx.Flush(&knftables.Chain{Name: name})
	}

	// Sets and maps: recreated empty (a new version may have changed a
	// definition, which cannot be changed in place); affinity sets are
	// kept with the clients they hold, unless their definition changed.
	isMap := map[string]bool{}
	sets := map[string]*Set{}
	plan.Sets(func(set *Set) {
		sets[set.Name] = set
		isMap[set.Name] = set.Map
		if old := s.sets[set.Name]; !set.Dynamic || (old != nil && !sameSet(old, set)) {
			deleteSet(tx, set.Name, listedSets, listedMaps)
		}
		tx.Add(set.object())
	})
	// Chains: base chains recreated (their hook or priority may have
	// changed), the others added where missing; all are empty now.
	chains := map[string]*Chain{}
	plan.Chains(func(c *Chain) {
		chains[c.Name] = c
		if c.Base != nil && listedChains[c.Name] {
			tx.Delete(&knftables.Chain{Name: c.Name})
		}
		tx.Add(c.object())
	})
	plan.Chains(func(c *Chain) {
		for _, r := range c.Rules {
			tx.Add(&knftables.Rule{Chain: c.Name, Rule: r})
		}
	})
	res.ChainsWritten = len(chains)
	plan.Elements(func(e Element) {
		tx.Add(e.object(isMap[e.Set], true))
		res.ElementsWritten++
	})
	// What the table holds and the plan does not: sets and maps go now
	// (no rule refers to them any more), chains once unreferenced for
	// StaleChainDelay.
	for _, name := range append(append([]string(nil), objs.Sets...), objs.Maps...) {
		if sets[name] == nil {
			deleteSet(tx, name, listedSets, listedMaps)
		}
	}
	commit := func() {
		now := s.now()
		stale := map[string]time.Time{}
		for _, name := range objs.Chains {
			if chains[name] == nil {
				if t, ok := s.stale[name]; ok {
					stale[name] = t
				} else {
					stale[name] = now
				}
			}
		}
		s.stale = stale
		s.fixed, s.chains, s.sets = plan.fixed, chains, sets
		s.frags = make(map[*fragment]struct{}, len(plan.ports))
		s.elems = make(map[elemID]*claims, len(s.elems))
		for _, f := range plan.fragments() {
			if f != plan.fixed {
				s.frags[f] = struct{}{}
			}
			for _, e := range f.elems {
				id := elemID{e.Set, e.Key}
				c := s.elems[id]
				if c == nil {
					c = &claims{}
					s.elems[id] = c
				}
				c.list = append(c.list, claim{f, e.Value})
			}
		}
	}
	return tx, commit, nil
}

// deleteSet deletes a set or map of that name if the listing has it.
func deleteSet(tx *knftables.Transaction, name string, sets, maps map[string]bool) {
	switch {
	case sets[name]:
		tx.Delete(&knftables.Set{Name: name})
	case maps[name]:
		tx.Delete(&knftables.Map{Name: name})
	}
}

// partialTx builds the transaction of a partial sync from the fragments
// that differ from the applied ones, and the function that records it as
// applied; a nil transaction asks for a full sync (the fixed part, which
// depends on the options only, changed).
func (s *Syncer) partialTx(plan *Plan, res *SyncResult) (*knftables.Transaction, func()) {
	if plan.fixed != s.fixed && !sameFragment(plan.fixed, s.fixed) {
		return nil, nil
	}
	next := make(map[*fragment]struct{}, len(plan.ports))
	var added, removed []*fragment
	for _, f := range plan.ports {
		next[f] = struct{}{}
		if _, ok := s.frags[f]; !ok {
			added = append(added, f)
		}
	}
	for f := range s.frags {
		if _, ok := next[f]; !ok {
			removed = append(removed, f)
		}
	}
	slices.SortFunc(removed, func(a, b *fragment) int { return strings.Compare(a.name, b.name) })

	// Sets: affinity sets come and go with their endpoints. A definition
	// never changes under one name (the timeout is part of it).
	oldSets := map[string]*Set{}
	for _, f := range removed {
		for _, set := range f.sets {
			oldSets[set.Name] = set
		}
	}
	var newSets, goneSets []*Set
	for _, f := range added {
		for _, set := range f.sets {
			old := oldSets[set.Name]
			if old == nil {
				old = s.sets[set.Name]
			}
			delete(oldSets, set.Name)
			switch {
			case old == nil:
				newSets = append(newSets, set)
			case !sameSet(old, set):
				return nil, nil
			}
		}
	}
	for _, f := range removed {
		for _, set := range f.sets {
			if oldSets[set.Name] != nil {
				goneSets = append(goneSets, set)
			}
		}
	}

	// Chains: created, rewritten when their rules differ, or flushed
	// (stale) when no fragment has them any more.
	oldChains := map[string]*Chain{}
	for _, f := range removed {
		for _, c := range f.chains {
			oldChains[c.Name] = c
		}
	}
	var created, rewritten, kept, stale []*Chain
	for _, f := range added {
		for _, c := range f.chains {
			old := oldChains[c.Name]
			if old == nil {
				old = s.chains[c.Name]
			}
			delete(oldChains, c.Name)
			switch {
			case old == nil:
				created = append(created, c)
			case !sameRules(old, c):
				rewritten = append(rewritten, c)
			default:
				kept = append(kept, c)
			}
		}
	}
	for _, f := range removed {
		for _, c := range f.chains {
			if oldChains[c.Name] != nil {
				stale = append(stale, c)
			}
		}
	}

	// Elements: each fragment's claims go or come; what the kernel sees
	// changes where the first claim's value does.
	type change struct {
		id        elemID
		before    string
		hadBefore bool
		set       string
	}
	touched := map[elemID]*change{}
	var order []*change
	touch := func(id elemID) *claims {
		c := s.elems[id]
		if touched[id] == nil {
			ch := &change{id: id, set: id.set}
			if c != nil && len(c.list) > 0 {
				ch.before, ch.hadBefore = c.list[0].value, true
			}
			touched[id] = ch
			order = append(order, ch)
		}
		if c == nil {
			c = &claims{}
			s.elems[id] = c
		}
		return c
	}
	for _, f := range removed {
		for _, e := range f.elems {
			c := touch(elemID{e.Set, e.Key})
			c.list = slices.DeleteFunc(c.list, func(cl claim) bool { return cl.frag == f })
		}
	}
	for _, f := range added {
		for _, e := range f.elems {
			c := touch(elemID{e.Set, e.Key})
			c.list = append(c.list, claim{f, e.Value})
		}
	}
	isMap := func(set string) bool { return s.sets[set] != nil && s.sets[set].Map }
	var delElems, addElems []Element
	for _, ch := range order {
		c := s.elems[ch.id]
		has := len(c.list) > 0
		var after string
		if has {
			after = c.list[0].value
		} else {
			delete(s.elems, ch.id)
		}
		if ch.hadBefore && (!has || after != ch.before) {
			delElems = append(delElems, Element{Set: ch.set, Key: ch.id.key})
		}
		if has && (!ch.hadBefore || after != ch.before) {
			addElems = append(addElems, Element{Set: ch.set, Key: ch.id.key, Value: after})
		}
	}

	// The transaction, in an order the kernel takes: new sets and chains
	// first, then rules, then elements (which may point to new chains),
	// then the sets no rule refers to any more.
	tx := s.nft.NewTransaction()
	for _, set := range newSets {
		tx.Add(set.object())
	}
	for _, c := range created {
		tx.Add(c.object())
	}
	for _, c := range rewritten {
		tx.Flush(&knftables.Chain{Name: c.Name})
	}
	for _, c := range stale {
		tx.Flush(&knftables.Chain{Name: c.Name})
	}
	for _, list := range [][]*Chain{created, rewritten} {
		for _, c := range list {
			for _, r := range c.Rules {
				tx.Add(&knftables.Rule{Chain: c.Name, Rule: r})
			}
		}
	}
	for _, e := range delElems {
		tx.Delete(e.object(isMap(e.Set), false))
	}
	for _, e := range addElems {
		tx.Add(e.object(isMap(e.Set), true))
	}
	for _, set := range goneSets {
		if set.Map {
			tx.Delete(&knftables.Map{Name: set.Name})
		} else {
			tx.Delete(&knftables.Set{Name: set.Name})
		}
	}
	res.ChainsWritten = len(created) + len(rewritten)
	res.ElementsWritten = len(delElems) + len(addElems)

	commit := func() {
		now := s.now()
		for _, f := range removed {
			delete(s.frags, f)
		}
		for _, f := range added {
			s.frags[f] = struct{}{}
		}
		for _, c := range stale {
			delete(s.chains, c.Name)
			s.stale[c.Name] = now
		}
		for _, list := range [][]*Chain{created, rewritten, kept} {
			for _, c := range list {
				s.chains[c.Name] = c
				delete(s.stale, c.Name)
			}
		}
		for _, set := range goneSets {
			delete(s.sets, set.Name)
		}
		for _, set := range newSets {
			s.sets[set.Name] = set
		}
	}
	return tx, commit
}

// deleteStale deletes, in a transaction of its own, the stale chains
// flushed at least StaleChainDelay ago. Each is added before it is
// deleted, so that one already gone (a table deleted from outside) fails
// nothing. A failure is reported in res.StaleErr and the chains are
// tried again at the next sync.
func (s *Syncer) deleteStale(ctx context.Context, res *SyncResult) {
	now := s.now()
	var due []string
	for name, t := range s.stale {
		if now.Sub(t) >= StaleChainDelay {
			due = append(due, name)
		}
	}
	if len(due) == 0 {
		return
	}
	slices.Sort(due)
	tx := s.nft.NewTransaction()
	for _, name := range due {
		tx.Add(&knftables.Chain{Name: name})
		tx.Delete(&knftables.Chain{Name: name})
	}
	res.Transactions++
	if err := s.nft.Run(ctx, tx); err != nil {
		res.StaleErr = fmt.Errorf("deleting %d stale chains (%s): %w", len(due), strings.Join(due, " "), err)
		return
	}
	for _, name := range due {
		delete(s.stale, name)
	}
	res.ChainsDeleted = len(due)
}

// CheckDrift reports whether the fixed chains still hold the rules the
// last successful sync gave them: a flushed or deleted table (or one
// flushed chain) is found with a netlink dump of each fixed chain's rules,
// a few milliseconds whatever the number of services. Damage elsewhere
// waits for the periodic full sync.
func (s *Syncer) CheckDrift(ctx context.Context) (string, error) {
	if !s.valid || s.fixed == nil {
		return "", nil
	}
	var why []string
	empty := 0
	for _, c := range s.fixed.chains {
		n, err := s.lister.CountRules(ctx, c.Name)
		if err != nil {
			return "", err
		}
		if n == 0 {
			empty++
		}
		if n != len(c.Rules) {
			why = append(why, fmt.Sprintf("chain %s has %d rules, want %d", c.Name, n, len(c.Rules)))
		}
	}
	if empty == len(s.fixed.chains) {
		return fmt.Sprintf("table %s %s is flushed or gone", s.family, TableName), nil
	}
	return strings.Join(why, "; "), nil
}

// Known reports whether the Syncer knows what the kernel holds (a sync
// succeeded and none failed since).
func (s *Syncer) Known() bool { return s.valid }

func setOf(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// sameFragment reports whether two fixed parts are equal.
func sameFragment(a, b *fragment) bool {
	if a == nil || b == nil {
		return a == b
	}
	if len(a.chains) != len(b.chains) || len(a.sets) != len(b.sets) || len(a.elems) != len(b.elems) {
		return false
	}
	for i := range a.chains {
		if a.chains[i].Name != b.chains[i].Name || !sameRules(a.chains[i], b.chains[i]) {
			return false
		}
	}
	for i := range a.sets {
		if !sameSet(a.sets[i], b.sets[i]) {
			return false
		}
	}
	return slices.Equal(a.elems, b.elems)
}
