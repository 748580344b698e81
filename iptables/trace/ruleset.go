package trace

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Ruleset is the filter, nat and mangle tables of one IP family. It is
// immutable: Restore, Insert and Delete return a new Ruleset and leave the
// receiver as it was, so a failed change costs nothing and a Ruleset may be
// shared and traced concurrently.
type Ruleset struct {
	tables map[string]*table
	ipv6   bool // ip6tables: every address is IPv6
	// tolerant: read from a real kernel (ParseLive), where anything may
	// sit next to the rules the model knows.
	tolerant bool
}

type table struct {
	chains map[string]*chain
}

type chain struct {
	policy string // "ACCEPT" or "DROP" for built-in chains, "" for user chains
	rules  []*rule
}

// NewRuleset returns the tables of a new network namespace: only their
// empty built-in chains, with policy ACCEPT. ipv6 makes it ip6tables': every
// address in a rule must be IPv6, and it traces IPv6 packets.
func NewRuleset(ipv6 bool) *Ruleset {
	rs := &Ruleset{tables: map[string]*table{}, ipv6: ipv6}
	for _, name := range tableOrder {
		t := &table{chains: map[string]*chain{}}
		for _, c := range builtinChains[name] {
			t.chains[c] = &chain{policy: "ACCEPT"}
		}
		rs.tables[name] = t
	}
	return rs
}

// Parse reads iptables-save (or iptables-restore) text into a new Ruleset,
// with the checks Restore makes. No ipset exists: a "-m set" rule is an
// error.
func Parse(data string, ipv6 bool) (*Ruleset, error) {
	return NewRuleset(ipv6).Restore(data, nil)
}

// IPv6 reports whether the Ruleset is ip6tables'.
func (rs *Ruleset) IPv6() bool { return rs.ipv6 }

// clone copies the tables; rules are immutable and shared.
func (rs *Ruleset) clone() *Ruleset {
	out := &Ruleset{tables: make(map[string]*table, len(rs.tables)), ipv6: rs.ipv6, tolerant: rs.tolerant}
	for name, t := range rs.tables {
		nt := &table{chains: make(map[string]*chain, len(t.chains))}
		for cn, c := range t.chains {
			nt.chains[cn] = &chain{policy: c.policy, rules: slices.Clone(c.rules)}
		}
		out.tables[name] = nt
	}
	return out
}

// Restore applies data as iptables-restore --noflush input and returns the
// result; on error the error names the line. hasSet says whether an ipset
// exists (nil: none does).
//
// Supported lines: "*table", ":CHAIN POLICY [p:b]" (a user chain is created,
// or flushed if it exists; a built-in chain gets its policy), "-N CHAIN",
// "-A CHAIN rule", "-I CHAIN [n] rule", "-F CHAIN", "-X CHAIN", "COMMIT",
// comments and blank lines. Like iptables, it refuses an address of the
// other family, a jump or goto to a chain that does not exist (or a goto to
// a non-chain target), a rule in a missing chain, deleting a built-in,
// missing, non-empty or still referenced chain, an unknown table, a table
// left without COMMIT, unknown modules, options and targets, malformed or
// out-of-range arguments, missing required options (parseArgs), a set that
// does not exist, and at COMMIT what the kernel refuses of a table as a
// whole (validateTable): a loop of chains, nesting deeper than MaxDepth and
// a target reachable from a built-in chain it is not valid in (DNAT from
// POSTROUTING, say).
func (rs *Ruleset) Restore(data string, hasSet func(string) bool) (*Ruleset, error) {
	switch {
	case rs.tolerant:
		// The kernel holds these rules: the sets they name exist.
		hasSet = func(string) bool { return true }
	case hasSet == nil:
		hasSet = func(string) bool { return false }
	}
	if !rs.tolerant {
		if err := checkFamily(data, rs.ipv6); err != nil {
			return nil, err
		}
	}
	work := rs.clone()
	if err := restore(work.tables, data, hasSet, rs.tolerant); err != nil {
		return nil, err
	}
	return work, nil
}

// checkFamily refuses, like iptables-restore and ip6tables-restore do, an
// address of the other family after -s, -d, --to-destination or
// --to-source.
func checkFamily(data string, ipv6 bool) error {
	for i, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		for j := 0; j+1 < len(f); j++ {
			switch f[j] {
			case "-s", "-d", "--source", "--destination", "--to-destination", "--to-source", "--mask":
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

// SetRefs counts the rules using each ipset.
func (rs *Ruleset) SetRefs() map[string]int {
	refs := map[string]int{}
	for _, t := range rs.tables {
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

// RecentLists returns the names of the xt_recent lists rules use, sorted.
func (rs *Ruleset) RecentLists() []string {
	used := map[string]bool{}
	for _, t := range rs.tables {
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
	out := make([]string, 0, len(used))
	for n := range used {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func restore(tables map[string]*table, data string, hasSet func(string) bool, tolerant bool) error {
	var t *table
	tname := ""
	lines := strings.Split(data, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for i, line := range lines {
		if err := restoreLine(tables, &t, &tname, line, hasSet, tolerant); err != nil {
			return fmt.Errorf("iptables-restore: line %d failed: %q: %w", i+1, line, err)
		}
	}
	if t != nil {
		return fmt.Errorf("iptables-restore: line %d failed: table %q not committed: missing COMMIT", len(lines), tname)
	}
	return nil
}

func restoreLine(tables map[string]*table, tp **table, tname *string, line string, hasSet func(string) bool, tolerant bool) error {
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
		if !ok && tolerant {
			// raw, security…: its built-in chains come declared with
			// their policies.
			nt = &table{chains: map[string]*chain{}}
			tables[name] = nt
		} else if !ok {
			return fmt.Errorf("unknown table %q", name)
		}
		*tp, *tname = nt, name
		return nil
	case line == "COMMIT":
		if t == nil {
			return errors.New("COMMIT outside a table")
		}
		if !tolerant {
			// A kernel's listing has passed the kernel's checks (and
			// iptables-legacy nests deeper than nf_tables).
			if err := validateTable(*tname, t); err != nil {
				return err
			}
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
		if tolerant && !isBuiltin(*tname, name) && policy != "-" {
			// A built-in chain of a table the model does not know.
			if c := t.chains[name]; c != nil && c.policy != "" {
				c.policy = policy
			} else {
				t.chains[name] = &chain{policy: policy}
			}
			return nil
		}
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
		if err := validChainName(name); err != nil && !tolerant {
			return err
		}
		t.chains[name] = &chain{} // creates, or flushes (--noflush)
		return nil
	}
	args, tokErr := tokenize(line)
	if tokErr != nil && tolerant {
		// Words, and the rule is not known for sure.
		args = strings.Fields(line)
	} else if tokErr != nil {
		return tokErr
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
		r, err := newRule(t, *tname, ruleText(line, skip), rest, hasSet, tolerant)
		if err != nil {
			return err
		}
		if tokErr != nil {
			r.unknown = tokErr.Error()
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
func newRule(t *table, tname, text string, args []string, hasSet func(string) bool, tolerant bool) (*rule, error) {
	if tolerant {
		return lenientRule(t, text, args), nil
	}
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

// Has reports whether chain of table holds a rule with exactly args.
func (rs *Ruleset) Has(table, chain string, args []string) bool {
	t := rs.tables[table]
	if t == nil || t.chains[chain] == nil {
		return false
	}
	return slices.ContainsFunc(t.chains[chain].rules, func(r *rule) bool { return slices.Equal(r.args, args) })
}

// Insert returns the Ruleset with a rule of args inserted at the top of
// chain of table, checked as Restore checks a rule and its table.
func (rs *Ruleset) Insert(table, chain string, args []string, hasSet func(string) bool) (*Ruleset, error) {
	if hasSet == nil {
		hasSet = func(string) bool { return false }
	}
	t := rs.tables[table]
	if t == nil {
		return nil, fmt.Errorf("unknown table %q", table)
	}
	if t.chains[chain] == nil {
		return nil, fmt.Errorf("chain %q does not exist", chain)
	}
	r, err := newRule(t, table, quoteArgs(args), slices.Clone(args), hasSet, rs.tolerant)
	if err != nil {
		return nil, err
	}
	work := rs.clone()
	wc := work.tables[table].chains[chain]
	wc.rules = slices.Insert(wc.rules, 0, r)
	if err := validateTable(table, work.tables[table]); err != nil {
		return nil, err
	}
	return work, nil
}

// Delete returns the Ruleset without the rules of chain of table whose
// arguments are exactly args.
func (rs *Ruleset) Delete(table, chain string, args []string) *Ruleset {
	if !rs.Has(table, chain, args) {
		return rs
	}
	work := rs.clone()
	c := work.tables[table].chains[chain]
	c.rules = slices.DeleteFunc(c.rules, func(r *rule) bool { return slices.Equal(r.args, args) })
	return work
}

// Chains returns the chains of table: the built-in ones in iptables-save
// order, then the user chains sorted by name; false for an unknown table.
func (rs *Ruleset) Chains(table string) ([]string, bool) {
	t := rs.tables[table]
	if t == nil {
		return nil, false
	}
	return chainNames(table, t), true
}

// Policy returns the policy of a chain ("" for a user chain) and whether
// the chain exists.
func (rs *Ruleset) Policy(table, chain string) (string, bool) {
	t := rs.tables[table]
	if t == nil || t.chains[chain] == nil {
		return "", false
	}
	return t.chains[chain].policy, true
}

// Rules returns the rules of a chain, each as the text that followed
// "-A CHAIN " in the input (for Insert: the arguments joined, quoted where
// needed), and whether the chain exists.
func (rs *Ruleset) Rules(table, chain string) ([]string, bool) {
	t := rs.tables[table]
	if t == nil || t.chains[chain] == nil {
		return nil, false
	}
	out := make([]string, 0, len(t.chains[chain].rules))
	for _, r := range t.chains[chain].rules {
		out = append(out, r.text)
	}
	return out, true
}

func chainNames(tname string, t *table) []string {
	out := slices.Clone(builtinChains[tname])
	var user, other []string
	for n, c := range t.chains {
		switch {
		case c.policy == "":
			user = append(user, n)
		case !slices.Contains(out, n):
			other = append(other, n) // a built-in chain of a table read from a kernel
		}
	}
	slices.SortFunc(other, func(a, b string) int {
		return cmp.Or(cmp.Compare(hookRank(a), hookRank(b)), cmp.Compare(a, b))
	})
	slices.Sort(user)
	return append(append(out, other...), user...)
}

// hookRank orders built-in chains as iptables-save prints them.
func hookRank(chain string) int {
	if i := slices.Index([]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}, chain); i >= 0 {
		return i
	}
	return 5
}

// tableNames returns the tables in Dump's order: the modelled ones, then
// any other a kernel's listing held, by name.
func (rs *Ruleset) tableNames() []string {
	out := slices.Clone(tableOrder)
	var other []string
	for name := range rs.tables {
		if !slices.Contains(out, name) {
			other = append(other, name)
		}
	}
	slices.Sort(other)
	return append(out, other...)
}

// Dump returns the tables in iptables-save format without counters,
// deterministically ordered (built-in chains first, then user chains by
// name); mangle only if it holds anything. Parse or Restore on a new
// Ruleset reproduces this one.
func (rs *Ruleset) Dump() string {
	var b strings.Builder
	for _, tname := range rs.tableNames() {
		t := rs.tables[tname]
		names := chainNames(tname, t)
		if tname != "filter" && tname != "nat" && unused(t) {
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
