// Package iptablestest provides a stateful fake of iptables.Interface whose
// rules a packet tracer walks the way the kernel would (package
// iptables/trace), so that tests can assert what a connection does (which
// endpoints it may reach, whether it is masqueraded, rejected or dropped)
// rather than only what rule text was produced.
//
// The model covers the filter, nat and mangle tables, iptables-restore
// --noflush input and the matches and targets svcproxy renders. It is
// deliberately strict: whatever the real iptables-restore (legacy or nft)
// would refuse, it refuses too, so that a test passing against it says
// something. Where the real tool silently accepts something that is almost
// certainly a mistake (an unterminated quote, a comment it would truncate,
// "010.0.0.1" read as 8.0.0.1), the fake refuses it as well.
// fake_real_test.go (build tag integration) checks both against the real
// iptables-restore.
//
// The fake also keeps the kernel state rules depend on: the xt_recent lists
// (see Connect) and, through UseSets, the ipsets that "-m set" rules name.
package iptablestest

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/iptables/trace"
)

// The tracer's types, under their old names.
type (
	// Packet is trace.Packet.
	Packet = trace.Packet
	// Outcome is trace.Outcome.
	Outcome = trace.Outcome
	// Path is trace.Path.
	Path = trace.Path
)

// Verdicts of an Outcome, and the deepest chain nesting (trace.MaxDepth).
const (
	Accept   = trace.Accept
	Drop     = trace.Drop
	Reject   = trace.Reject
	MaxDepth = trace.MaxDepth
)

// Fake is a stateful, in-memory model of the filter and nat tables behind
// iptables.Interface. The zero value is not usable; call NewFake. It is safe
// for concurrent use.
type Fake struct {
	mu       sync.Mutex
	rules    *trace.Ruleset
	restores [][]byte
	failAt   int // 1-based Restore call that fails; 0: none
	sets     Sets
	recent   trace.Recent // xt_recent lists by name
	now      time.Time    // the clock xt_recent sees
}

// Sets is the kernel's ipset registry as iptables rules see it. The Fake
// asks it whether a set exists when a rule names one
// ("-m set --match-set NAME dst"), as iptables does, and after every change
// tells it which sets the rules use, as the kernel keeps a reference on a
// set for every rule using it: a set in use cannot be destroyed.
// ipvstest.Fake implements it.
type Sets interface {
	// HasSet reports whether set name exists.
	HasSet(name string) bool
	// ReferenceSets atomically checks that every set in refs exists and
	// makes refs (set name -> rules using it) the references held by these
	// rules, replacing the previous ones; on error nothing changes.
	ReferenceSets(refs map[string]int) error
}

var _ iptables.Interface = (*Fake)(nil)

// ErrInjected is returned by the Restore call chosen with FailRestoreAt.
var ErrInjected = errors.New("iptablestest: injected Restore failure")

// NewFake returns a Fake whose filter and nat tables hold only their empty
// built-in chains, with policy ACCEPT.
func NewFake() *Fake { return newFake(false) }

// NewFake6 returns a Fake that models ip6tables-restore: like NewFake, but
// every address in a rule must be IPv6 (and Trace takes IPv6 packets).
func NewFake6() *Fake { return newFake(true) }

func newFake(ipv6 bool) *Fake {
	return &Fake{rules: trace.NewRuleset(ipv6), now: time.Unix(1e9, 0)}
}

// UseSets connects the Fake to an ipset model: from now on a rule may name
// a set that s has, and s learns which sets the rules use. Without it no
// set exists and every "-m set" rule is refused. It fails if the current
// rules name a set s does not have.
func (f *Fake) UseSets(s Sets) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := s.ReferenceSets(f.rules.SetRefs()); err != nil {
		return err
	}
	f.sets = s
	return nil
}

// Restore implements iptables.Interface. It parses data as
// iptables-restore --noflush input and applies it atomically: on error the
// tables are left exactly as they were and the error names the line. What
// it takes and refuses is trace.Ruleset.Restore's.
//
// The whole call is atomic, as iptables.Interface promises. The real
// iptables-restore (nft and legacy alike, checked with 1.8.9) commits each
// table at its COMMIT: an error in a later table leaves the earlier ones
// applied. The Syncer sends one table per call, so it does not depend on the
// difference.
func (f *Fake) Restore(data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores = append(f.restores, slices.Clone(data))
	if f.failAt > 0 && len(f.restores) == f.failAt {
		return ErrInjected
	}
	work, err := f.rules.Restore(string(data), f.hasSet)
	if err != nil {
		return err
	}
	return f.commit(work)
}

// hasSet reports whether the set model has set name. f.mu is held.
func (f *Fake) hasSet(name string) bool { return f.sets != nil && f.sets.HasSet(name) }

// commit makes work the rules: the set model takes the new references
// (or refuses them), and xt_recent lists no rule uses any more go, as the
// kernel frees them with their last rule. f.mu is held.
func (f *Fake) commit(work *trace.Ruleset) error {
	if f.sets != nil {
		if err := f.sets.ReferenceSets(work.SetRefs()); err != nil {
			return fmt.Errorf("iptables-restore: %w", err)
		}
	}
	f.rules = work
	f.recent.Track(work.RecentLists())
	return nil
}

// EnsureJump implements iptables.Interface: it inserts j at the top of its
// built-in chain unless a rule with the same arguments exists in it.
func (f *Fake) EnsureJump(j iptables.Jump) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.rules.Chains(j.Table); !ok {
		return fmt.Errorf("EnsureJump: unknown table %q", j.Table)
	}
	if p, ok := f.rules.Policy(j.Table, j.Chain); !ok || p == "" {
		return fmt.Errorf("EnsureJump: %q is not a built-in chain of table %s", j.Chain, j.Table)
	}
	if f.rules.Has(j.Table, j.Chain, j.Args) {
		return nil
	}
	work, err := f.rules.Insert(j.Table, j.Chain, j.Args, f.hasSet)
	if err != nil {
		return fmt.Errorf("EnsureJump %s/%s: %w", j.Table, j.Chain, err)
	}
	return f.commit(work)
}

// DeleteJump implements iptables.Interface: every copy of j goes.
func (f *Fake) DeleteJump(j iptables.Jump) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.rules.Chains(j.Table); !ok {
		return fmt.Errorf("DeleteJump: unknown table %q", j.Table)
	}
	return f.commit(f.rules.Delete(j.Table, j.Chain, j.Args))
}

// ListChains implements iptables.Interface: the built-in chains of table in
// iptables-save order, then its user chains sorted by name.
func (f *Fake) ListChains(table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	names, ok := f.rules.Chains(table)
	if !ok {
		return nil, fmt.Errorf("ListChains: unknown table %q", table)
	}
	return names, nil
}

// ListRules implements iptables.Interface: "-A CHAIN " and the text of each
// rule of chain, as Rules returns it.
func (f *Fake) ListRules(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.rules.Chains(table); !ok {
		return nil, fmt.Errorf("ListRules: unknown table %q", table)
	}
	rules, ok := f.rules.Rules(table, chain)
	if !ok {
		return nil, fmt.Errorf("ListRules: no chain %q in table %s", chain, table)
	}
	out := make([]string, 0, len(rules))
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

// Chains returns the chains of table as ListChains does, nil for an unknown
// table.
func (f *Fake) Chains(table string) []string {
	names, _ := f.ListChains(table)
	return names
}

// Rules returns the rules of a chain, each as the text that followed
// "-A CHAIN " in the Restore input (for EnsureJump: the arguments joined,
// quoted where needed), or nil if the chain does not exist.
func (f *Fake) Rules(table, chain string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, _ := f.rules.Rules(table, chain)
	if len(rules) == 0 {
		return nil
	}
	return rules
}

// Ruleset returns the current rules, which later changes leave as they
// are.
func (f *Fake) Ruleset() *trace.Ruleset {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules
}

// Dump returns the tables in iptables-save format without counters,
// deterministically ordered (built-in chains first, then user chains by
// name). Fed to the Restore of a new Fake, it reproduces this one.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules.Dump()
}

// Restores returns a copy of the input of every Restore call so far, failed
// ones included, oldest first.
func (f *Fake) Restores() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]byte, len(f.restores))
	for i, r := range f.restores {
		out[i] = slices.Clone(r)
	}
	return out
}

// RestoreCount returns how many times Restore was called, failed calls
// included.
func (f *Fake) RestoreCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.restores)
}

// FailRestoreAt makes the n-th Restore call (counting from 1 since NewFake,
// all calls included) fail with ErrInjected without changing any state. n <=
// 0 cancels it.
func (f *Fake) FailRestoreAt(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt = n
}

// Trace walks the Fake's current rules for p (trace.Ruleset.Trace), its
// recent matches seeing the Fake's xt_recent lists (empty until a Connect
// fills them) at the Fake's clock. It changes nothing.
func (f *Fake) Trace(p Packet) ([]Outcome, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules.Trace(p, &f.recent, f.now)
}

// Explain is Trace returning every path with the rules it went through,
// sorted by outcome.
func (f *Fake) Explain(p Packet) ([]Path, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules.Explain(p, &f.recent, f.now)
}

// Connect sends the first packet of a connection that really happens: of
// the paths Explain returns for p, it takes the one pick (in [0, 1)) falls
// in, their probabilities laid end to end in Explain's order, and keeps
// its effects on the kernel's state, the xt_recent lists its recent
// matches changed. It returns the path taken. A later Trace, Explain or
// Connect sees the lists as this connection left them: with ClientIP
// affinity, the next connection from the same client finds it.
func (f *Fake) Connect(p Packet, pick float64) (Path, error) {
	if pick < 0 || pick >= 1 {
		return Path{}, fmt.Errorf("Connect: pick %v is not in [0, 1)", pick)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	paths, err := f.rules.Explain(p, &f.recent, f.now)
	if err != nil {
		return Path{}, err
	}
	chosen, err := trace.Pick(paths, pick)
	if err != nil {
		return Path{}, fmt.Errorf("Connect: %w", err)
	}
	if err := f.recent.Replay(chosen, f.now); err != nil {
		// Cannot happen: a rule using the list is in the tables.
		return Path{}, fmt.Errorf("Connect: %w", err)
	}
	return chosen, nil
}

// AdvanceClock moves the clock xt_recent sees forward by d: entries older
// than a rule's --seconds stop matching it.
func (f *Fake) AdvanceClock(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// RecentLists returns the names of the xt_recent lists, sorted: one for
// every name a rule uses.
func (f *Fake) RecentLists() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.recent.Names()
}

// RecentEntries returns the addresses in xt_recent list name, least
// recently seen first, and whether the list exists.
func (f *Fake) RecentEntries(name string) ([]netip.Addr, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.recent.Entries(name)
}
