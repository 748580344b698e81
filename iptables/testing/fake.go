// Package iptablestest provides a stateful fake of iptables.Interface and a
// packet tracer that walks the fake's rules the way the kernel would, so
// that tests can assert what a connection does (which endpoints it may
// reach, whether it is masqueraded, rejected or dropped) rather than only
// what rule text was produced.
//
// The model covers the filter and nat tables, iptables-restore --noflush
// input and the matches and targets svcproxy renders. It is deliberately
// strict: whatever the real iptables-restore (legacy or nft) would refuse, it
// refuses too, so that a test passing against it says something.
package iptablestest

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

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
func NewFake() *Fake {
	f := &Fake{tables: map[string]*table{}}
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
// chain, an unknown table, a table left without COMMIT and unbalanced quotes.
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
	work := cloneTables(f.tables)
	if err := restore(work, string(data)); err != nil {
		return err
	}
	f.tables = work
	return nil
}

func restore(tables map[string]*table, data string) error {
	var t *table
	tname := ""
	lines := strings.Split(data, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for i, line := range lines {
		if err := restoreLine(tables, &t, &tname, line); err != nil {
			return fmt.Errorf("iptables-restore: line %d failed: %q: %w", i+1, line, err)
		}
	}
	if t != nil {
		return fmt.Errorf("iptables-restore: line %d failed: table %q not committed: missing COMMIT", len(lines), tname)
	}
	return nil
}

func restoreLine(tables map[string]*table, tp **table, tname *string, line string) error {
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
		r, err := newRule(t, *tname, ruleText(line, skip), rest)
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
	if _, ok := standardTargets[name]; ok {
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
func newRule(t *table, tname, text string, args []string) (*rule, error) {
	r, err := parseArgs(text, args)
	if err != nil {
		return nil, err
	}
	if r.target == "" {
		return r, nil
	}
	if only, ok := standardTargets[r.target]; ok {
		if r.isGoto {
			return nil, fmt.Errorf("goto %q: not a chain", r.target)
		}
		if only != "" && only != tname {
			return nil, fmt.Errorf("target %s is not valid in table %s", r.target, tname)
		}
		if r.target == "DNAT" {
			to, _ := r.targetOpt("--to-destination")
			if strings.Contains(to, ":") && r.proto() != "tcp" && r.proto() != "udp" && r.proto() != "sctp" {
				return nil, errors.New("DNAT with a port needs -p tcp, udp or sctp")
			}
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
	r, err := newRule(t, j.Table, quoteArgs(j.Args), slices.Clone(j.Args))
	if err != nil {
		return fmt.Errorf("EnsureJump %s/%s: %w", j.Table, j.Chain, err)
	}
	c.rules = slices.Insert(c.rules, 0, r)
	return nil
}

// DeleteJump implements iptables.Interface: every copy of j goes.
func (f *Fake) DeleteJump(j iptables.Jump) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[j.Table]
	if t == nil {
		return fmt.Errorf("DeleteJump: unknown table %q", j.Table)
	}
	c := t.chains[j.Chain]
	if c == nil {
		return nil
	}
	c.rules = slices.DeleteFunc(c.rules, func(r *rule) bool { return slices.Equal(r.args, j.Args) })
	return nil
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
