// Package iptablestest provides a stateful fake of iptables.Interface and a
// packet tracer that walks the fake's rules the way the kernel would, so
// that tests can assert what a connection does (which endpoints it may
// reach, whether it is masqueraded, rejected or dropped) rather than only
// what rule text was produced.
//
// The model covers the filter and nat tables, iptables-restore --noflush
// input and the matches and targets svcproxy renders. It is deliberately
// strict: whatever the real iptables-restore (legacy or nft) would refuse, it
// refuses too, so that a test passing against it says something. Where the
// real tool silently accepts something that is almost certainly a mistake
// (an unterminated quote, a comment it would truncate, "010.0.0.1" read as
// 8.0.0.1), the fake refuses it as well. fake_real_test.go (build tag
// integration) checks both against the real iptables-restore.
//
// The fake also keeps the kernel state rules depend on: the xt_recent lists
// (see Connect) and, through UseSets, the ipsets that "-m set" rules name.
package iptablestest

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/iptables"
)

// Fake is a stateful, in-memory model of the filter and nat tables behind
// iptables.Interface. The zero value is not usable; call NewFake. It is safe
// for concurrent use.
type Fake struct {
	mu       sync.Mutex
	tables   map[string]*table
	restores [][]byte
	failAt   int // 1-based Restore call that fails; 0: none
	sets     Sets
	recent   map[string]*recentTable // xt_recent lists by name
	now      time.Time               // the clock xt_recent sees
	ipv6     bool                    // ip6tables: every address is IPv6
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

type table struct {
	chains map[string]*chain
}

type chain struct {
	policy string // "ACCEPT" or "DROP" for built-in chains, "" for user chains
	rules  []*rule
}

// ErrInjected is returned by the Restore call chosen with FailRestoreAt.
var ErrInjected = errors.New("iptablestest: injected Restore failure")

// NewFake returns a Fake whose filter and nat tables hold only their empty
// built-in chains, with policy ACCEPT.
func NewFake() *Fake { return newFake(false) }

// NewFake6 returns a Fake that models ip6tables-restore: like NewFake, but
// every address in a rule must be IPv6 (and Trace takes IPv6 packets).
func NewFake6() *Fake { return newFake(true) }

func newFake(ipv6 bool) *Fake {
	f := &Fake{tables: map[string]*table{}, recent: map[string]*recentTable{}, now: time.Unix(1e9, 0), ipv6: ipv6}
	for _, name := range tableOrder {
		t := &table{chains: map[string]*chain{}}
		for _, c := range builtinChains[name] {
			t.chains[c] = &chain{policy: "ACCEPT"}
		}
		f.tables[name] = t
	}
	return f
}

// clone copies the tables; rules are immutable and shared.
func cloneTables(in map[string]*table) map[string]*table {
	out := make(map[string]*table, len(in))
	for name, t := range in {
		nt := &table{chains: make(map[string]*chain, len(t.chains))}
		for cn, c := range t.chains {
			nt.chains[cn] = &chain{policy: c.policy, rules: slices.Clone(c.rules)}
		}
		out[name] = nt
	}
	return out
}

// UseSets connects the Fake to an ipset model: from now on a rule may name
// a set that s has, and s learns which sets the rules use. Without it no
// set exists and every "-m set" rule is refused. It fails if the current
// rules name a set s does not have.
func (f *Fake) UseSets(s Sets) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := s.ReferenceSets(setRefs(f.tables)); err != nil {
		return err
	}
	f.sets = s
	return nil
}

// Restore implements iptables.Interface. It parses data as
// iptables-restore --noflush input and applies it atomically: on error the
// tables are left exactly as they were and the error names the line.
//
// Supported lines: "*table", ":CHAIN POLICY [p:b]" (a user chain is created,
// or flushed if it exists; a built-in chain gets its policy), "-N CHAIN",
// "-A CHAIN rule", "-I CHAIN [n] rule", "-F CHAIN", "-X CHAIN", "COMMIT",
// comments and blank lines. Like iptables, it refuses a jump or goto to a
// chain that does not exist (or a goto to a non-chain target), a rule in a
// missing chain, deleting a built-in, missing, non-empty or still referenced
// chain, an unknown table, a table left without COMMIT, unknown modules,
// options and targets, malformed or out-of-range arguments, missing
// required options (parseArgs), a set that does not exist, and at COMMIT
// what the kernel refuses of a table as a whole (validateTable): a loop of
// chains, nesting deeper than MaxDepth and a target reachable from a
// built-in chain it is not valid in (DNAT from POSTROUTING, say).
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
	if err := checkFamily(string(data), f.ipv6); err != nil {
		return err
	}
	work := cloneTables(f.tables)
	if err := restore(work, string(data), f.hasSet); err != nil {
		return err
	}
	return f.commit(work)
}

// checkFamily refuses, like iptables-restore and ip6tables-restore do, an
// address of the other family after -s, -d, --to-destination or
// --to-source.
func checkFamily(data string, ipv6 bool) error {
	for i, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		for j := 0; j+1 < len(f); j++ {
			switch f[j] {
			case "-s", "-d", "--source", "--destination", "--to-destination", "--to-source":
			default:
				continue
			}
			arg := f[j+1]
			var a netip.Addr
			var err error
			switch {
			case strings.HasPrefix(arg, "["):
				a, err = netip.ParseAddr(strings.SplitN(arg[1:], "]", 2)[0])
			case strings.Count(arg, ":") > 1:
				a, err = netip.ParseAddr(strings.SplitN(arg, "/", 2)[0])
			default:
				a, err = netip.ParseAddr(strings.FieldsFunc(arg, func(r rune) bool { return r == '/' || r == ':' || r == '-' })[0])
			}
			if err != nil {
				continue // the rule parser says what is wrong with it
			}
			if a.Is6() != ipv6 {
				want := "IPv4"
				if ipv6 {
					want = "IPv6"
				}
				return fmt.Errorf("iptables-restore: line %d failed: %q: host/network %q not found (%s only)", i+1, line, arg, want)
			}
		}
	}
	return nil
}

// hasSet reports whether the set model has set name. f.mu is held.
func (f *Fake) hasSet(name string) bool { return f.sets != nil && f.sets.HasSet(name) }

// commit makes work the tables: the set model takes the new references
// (or refuses them), and xt_recent lists no rule uses any more go, as the
// kernel frees them with their last rule. f.mu is held.
func (f *Fake) commit(work map[string]*table) error {
	if f.sets != nil {
		if err := f.sets.ReferenceSets(setRefs(work)); err != nil {
			return fmt.Errorf("iptables-restore: %w", err)
		}
	}
	f.tables = work
	used := recentRefs(work)
	for name := range f.recent {
		if !used[name] {
			delete(f.recent, name)
		}
	}
	for name := range used {
		if f.recent[name] == nil {
			f.recent[name] = &recentTable{}
		}
	}
	return nil
}

// setRefs counts the rules using each set.
func setRefs(tables map[string]*table) map[string]int {
	refs := map[string]int{}
	for _, t := range tables {
		for _, c := range t.chains {
			for _, r := range c.rules {
				for _, m := range r.matches {
					if o, ok := m.get("--match-set"); ok && m.module == "set" {
						refs[o.arg()]++
					}
				}
			}
		}
	}
	return refs
}

// recentRefs returns the names of the xt_recent lists rules use.
func recentRefs(tables map[string]*table) map[string]bool {
	used := map[string]bool{}
	for _, t := range tables {
		for _, c := range t.chains {
			for _, r := range c.rules {
				for _, m := range r.matches {
					if m.module == "recent" {
						used[recentListName(&m)] = true
					}
				}
			}
		}
	}
	return used
}

func restore(tables map[string]*table, data string, hasSet func(string) bool) error {
	var t *table
	tname := ""
	lines := strings.Split(data, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for i, line := range lines {
		if err := restoreLine(tables, &t, &tname, line, hasSet); err != nil {
			return fmt.Errorf("iptables-restore: line %d failed: %q: %w", i+1, line, err)
		}
	}
	if t != nil {
		return fmt.Errorf("iptables-restore: line %d failed: table %q not committed: missing COMMIT", len(lines), tname)
	}
	return nil
}

func restoreLine(tables map[string]*table, tp **table, tname *string, line string, hasSet func(string) bool) error {
	line = strings.TrimSpace(line)
	t := *tp
	switch {
	case line == "" || strings.HasPrefix(line, "#"):
		return nil
	case strings.HasPrefix(line, "*"):
		if t != nil {
			return fmt.Errorf("table %q not committed before the next table", *tname)
		}
		name := line[1:]
		nt, ok := tables[name]
		if !ok {
			return fmt.Errorf("unknown table %q", name)
		}
		*tp, *tname = nt, name
		return nil
	case line == "COMMIT":
		if t == nil {
			return errors.New("COMMIT outside a table")
		}
		if err := validateTable(*tname, t); err != nil {
			return err
		}
		*tp = nil
		return nil
	case t == nil:
		return errors.New("not in a table")
	case strings.HasPrefix(line, ":"):
		f := strings.Fields(line[1:])
		if len(f) < 2 {
			return errors.New("bad chain declaration")
		}
		name, policy := f[0], f[1]
		if isBuiltin(*tname, name) {
			if policy != "ACCEPT" && policy != "DROP" {
				return fmt.Errorf("bad policy %q for built-in chain", policy)
			}
			t.chains[name].policy = policy
			return nil
		}
		if policy != "-" {
			return fmt.Errorf("user chain %q cannot have a policy", name)
		}
		if err := validChainName(name); err != nil {
			return err
		}
		t.chains[name] = &chain{} // creates, or flushes (--noflush)
		return nil
	}
	args, err := tokenize(line)
	if err != nil {
		return err
	}
	if len(args) < 2 {
		return errors.New("missing chain name")
	}
	cmd, name, rest := args[0], args[1], args[2:]
	c := t.chains[name]
	if cmd == "-N" || cmd == "--new-chain" {
		if c != nil {
			return fmt.Errorf("chain %q already exists", name)
		}
		if len(rest) > 0 {
			return errors.New("unexpected arguments")
		}
		if err := validChainName(name); err != nil {
			return err
		}
		t.chains[name] = &chain{}
		return nil
	}
	if c == nil {
		return fmt.Errorf("chain %q does not exist", name)
	}
	switch cmd {
	case "-A", "--append", "-I", "--insert":
		pos, skip := len(c.rules), 2
		if cmd == "-I" || cmd == "--insert" {
			pos = 0
			if len(rest) > 0 {
				if n, err := strconv.Atoi(rest[0]); err == nil {
					if n < 1 || n > len(c.rules)+1 {
						return fmt.Errorf("index %d out of range", n)
					}
					pos, rest, skip = n-1, rest[1:], 3
				}
			}
		}
		r, err := newRule(t, *tname, ruleText(line, skip), rest, hasSet)
		if err != nil {
			return err
		}
		c.rules = slices.Insert(c.rules, pos, r)
		return nil
	case "-F", "--flush":
		if len(rest) > 0 {
			return errors.New("unexpected arguments")
		}
		c.rules = nil
		return nil
	case "-X", "--delete-chain":
		if len(rest) > 0 {
			return errors.New("unexpected arguments")
		}
		if c.policy != "" {
			return fmt.Errorf("cannot delete built-in chain %q", name)
		}
		if len(c.rules) > 0 {
			return fmt.Errorf("chain %q is not empty", name)
		}
		if from := referrers(t, name); len(from) > 0 {
			return fmt.Errorf("chain %q is still referenced by %s", name, strings.Join(from, ", "))
		}
		delete(t.chains, name)
		return nil
	}
	return fmt.Errorf("unsupported command %q", cmd)
}

func validChainName(name string) error {
	switch {
	case name == "" || len(name) > 28:
		return fmt.Errorf("invalid chain name %q (1 to 28 characters)", name)
	case strings.HasPrefix(name, "-") || strings.HasPrefix(name, "!"):
		return fmt.Errorf("invalid chain name %q", name)
	}
	if _, ok := targets[name]; ok {
		return fmt.Errorf("chain name %q is a target", name)
	}
	return nil
}

// ruleText returns line without its first n words (command, chain and
// maybe a position): the rule as written.
func ruleText(line string, n int) string {
	for range n {
		line = strings.TrimLeft(line, " \t")
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			line = line[i:]
		} else {
			line = ""
		}
	}
	return strings.TrimSpace(line)
}

// newRule parses and validates a rule for table tname.
func newRule(t *table, tname, text string, args []string, hasSet func(string) bool) (*rule, error) {
	r, err := parseArgs(text, args)
	if err != nil {
		return nil, err
	}
	for _, m := range r.matches {
		if o, ok := m.get("--match-set"); ok && m.module == "set" && !hasSet(o.arg()) {
			return nil, fmt.Errorf("Set %s doesn't exist.", o.arg())
		}
	}
	if r.target == "" {
		return r, nil
	}
	if spec, ok := targets[r.target]; ok {
		if r.isGoto {
			return nil, fmt.Errorf("goto %q: not a chain", r.target)
		}
		if spec.table != "" && spec.table != tname {
			return nil, fmt.Errorf("target %s is not valid in table %s", r.target, tname)
		}
		return r, nil
	}
	c := t.chains[r.target]
	if c == nil {
		return nil, fmt.Errorf("jump to chain %q that does not exist", r.target)
	}
	if c.policy != "" {
		return nil, fmt.Errorf("jump to built-in chain %q", r.target)
	}
	return r, nil
}

// validateTable checks what the kernel checks of a table as a whole when
// it is committed, for the chains a built-in chain reaches (both nft and
// legacy take a loop between chains nothing reaches): no loop, nesting at
// most MaxDepth (nf_tables' jump stack; legacy has no such limit), and
// every target valid in every built-in chain it is reachable from.
func validateTable(tname string, t *table) error {
	const (
		unseen = iota
		visiting
		done
	)
	state := map[string]int{}
	height := map[string]int{}
	var visit func(name string) error
	visit = func(name string) error {
		switch state[name] {
		case visiting:
			return fmt.Errorf("chain %q reaches itself: a loop (Too many levels of symbolic links)", name)
		case done:
			return nil
		}
		state[name] = visiting
		h := 0
		for _, r := range t.chains[name].rules {
			if c := t.chains[r.target]; c != nil && c.policy == "" {
				if err := visit(r.target); err != nil {
					return err
				}
				h = max(h, height[r.target]+1)
			}
		}
		state[name], height[name] = done, h
		return nil
	}
	for _, name := range builtinChains[tname] {
		if err := visit(name); err != nil {
			return err
		}
	}
	for _, b := range builtinChains[tname] {
		if height[b] > MaxDepth {
			return fmt.Errorf("chains nested %d deep from %s: deeper than %d (nf_tables refuses it)", height[b], b, MaxDepth)
		}
		seen := map[string]bool{}
		var walk func(name string) error
		walk = func(name string) error {
			if seen[name] {
				return nil
			}
			seen[name] = true
			for i, r := range t.chains[name].rules {
				if spec, ok := targets[r.target]; ok && spec.hooks != nil && !slices.Contains(spec.hooks, b) {
					return fmt.Errorf("%s#%d: target %s is reachable from %s; it is only valid from %s", name, i+1, r.target, b, strings.Join(spec.hooks, ", "))
				}
				if c := t.chains[r.target]; c != nil && c.policy == "" {
					if err := walk(r.target); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if err := walk(b); err != nil {
			return err
		}
	}
	return nil
}

// referrers returns "CHAIN rule-number" of every rule of t jumping to name.
func referrers(t *table, name string) []string {
	var out []string
	for cn, c := range t.chains {
		for i, r := range c.rules {
			if r.target == name {
				out = append(out, fmt.Sprintf("%s#%d", cn, i+1))
			}
		}
	}
	slices.Sort(out)
	return out
}

// EnsureJump implements iptables.Interface: it inserts j at the top of its
// built-in chain unless a rule with the same arguments exists in it.
func (f *Fake) EnsureJump(j iptables.Jump) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[j.Table]
	if t == nil {
		return fmt.Errorf("EnsureJump: unknown table %q", j.Table)
	}
	c := t.chains[j.Chain]
	if c == nil || c.policy == "" {
		return fmt.Errorf("EnsureJump: %q is not a built-in chain of table %s", j.Chain, j.Table)
	}
	for _, r := range c.rules {
		if slices.Equal(r.args, j.Args) {
			return nil
		}
	}
	r, err := newRule(t, j.Table, quoteArgs(j.Args), slices.Clone(j.Args), f.hasSet)
	if err != nil {
		return fmt.Errorf("EnsureJump %s/%s: %w", j.Table, j.Chain, err)
	}
	work := cloneTables(f.tables)
	wc := work[j.Table].chains[j.Chain]
	wc.rules = slices.Insert(wc.rules, 0, r)
	if err := validateTable(j.Table, work[j.Table]); err != nil {
		return fmt.Errorf("EnsureJump %s/%s: %w", j.Table, j.Chain, err)
	}
	return f.commit(work)
}

// DeleteJump implements iptables.Interface: every copy of j goes.
func (f *Fake) DeleteJump(j iptables.Jump) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[j.Table]
	if t == nil {
		return fmt.Errorf("DeleteJump: unknown table %q", j.Table)
	}
	if t.chains[j.Chain] == nil {
		return nil
	}
	work := cloneTables(f.tables)
	c := work[j.Table].chains[j.Chain]
	c.rules = slices.DeleteFunc(c.rules, func(r *rule) bool { return slices.Equal(r.args, j.Args) })
	return f.commit(work)
}

// ListChains implements iptables.Interface: the built-in chains of table in
// iptables-save order, then its user chains sorted by name.
func (f *Fake) ListChains(table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[table]
	if t == nil {
		return nil, fmt.Errorf("ListChains: unknown table %q", table)
	}
	return chainNames(table, t), nil
}

// ListRules implements iptables.Interface: "-A CHAIN " and the text of each
// rule of chain, as Rules returns it.
func (f *Fake) ListRules(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[table]
	if t == nil {
		return nil, fmt.Errorf("ListRules: unknown table %q", table)
	}
	c := t.chains[chain]
	if c == nil {
		return nil, fmt.Errorf("ListRules: no chain %q in table %s", chain, table)
	}
	out := make([]string, 0, len(c.rules))
	for _, r := range c.rules {
		out = append(out, "-A "+chain+" "+r.text)
	}
	return out, nil
}

func chainNames(tname string, t *table) []string {
	out := slices.Clone(builtinChains[tname])
	var user []string
	for n, c := range t.chains {
		if c.policy == "" {
			user = append(user, n)
		}
	}
	slices.Sort(user)
	return append(out, user...)
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
	t := f.tables[table]
	if t == nil || t.chains[chain] == nil {
		return nil
	}
	var out []string
	for _, r := range t.chains[chain].rules {
		out = append(out, r.text)
	}
	return out
}

// Dump returns both tables in iptables-save format without counters,
// deterministically ordered (built-in chains first, then user chains by
// name). Fed to the Restore of a new Fake, it reproduces this one.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, tname := range tableOrder {
		t := f.tables[tname]
		names := chainNames(tname, t)
		if tname == "mangle" && unused(t) {
			continue // like a table iptables-nft never created
		}
		fmt.Fprintf(&b, "*%s\n", tname)
		for _, n := range names {
			p := t.chains[n].policy
			if p == "" {
				p = "-"
			}
			fmt.Fprintf(&b, ":%s %s [0:0]\n", n, p)
		}
		for _, n := range names {
			for _, r := range t.chains[n].rules {
				fmt.Fprintf(&b, "-A %s %s\n", n, r.text)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// unused reports whether t holds only built-in chains without rules.
func unused(t *table) bool {
	for _, c := range t.chains {
		if c.policy == "" || len(c.rules) > 0 {
			return false
		}
	}
	return true
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
