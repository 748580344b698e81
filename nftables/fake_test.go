package nftables

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"
)

// strictFake is the knftables Fake with what the kernel refuses and the
// Fake takes, checked on every transaction the Syncer runs:
//   - a rule or map element that refers to a chain, set or map that is
//     not there after the transaction (a referenced chain or set deleted);
//   - "delete chain" of a chain that still has rules at that point;
//   - "add element" of a map key that is there with another value (the
//     kernel says "File exists").
//
// A violation fails the transaction, as the kernel would, and is recorded
// for the test to report. fail, when set, is asked first and may fail a
// transaction (an nft error).
type strictFake struct {
	*knftables.Fake
	family     knftables.Family
	t          testing.TB
	fail       func(tx *knftables.Transaction) error
	violations []string
	runs       []string // every transaction run, as nft -f text
}

func newStrictFake(t testing.TB, family knftables.Family) *strictFake {
	return &strictFake{Fake: knftables.NewFake(family, TableName), family: family, t: t}
}

func (f *strictFake) Run(ctx context.Context, tx *knftables.Transaction) error {
	text := tx.String()
	if f.fail != nil {
		if err := f.fail(tx); err != nil {
			return err
		}
	}
	if err := f.checkOps(text); err != nil {
		f.violations = append(f.violations, err.Error())
		return err
	}
	before := f.Dump()
	if err := f.Fake.Run(ctx, tx); err != nil {
		return err
	}
	f.runs = append(f.runs, text)
	if err := f.checkRefs(); err != nil {
		f.violations = append(f.violations, err.Error())
		// Undo, as the kernel would have refused the transaction.
		f.Fake = reparse(f.t, before, f.family)
		return err
	}
	return nil
}

// reparse returns a Fake of the same family and table holding dump.
func reparse(t testing.TB, dump string, family knftables.Family) *knftables.Fake {
	t.Helper()
	nf := knftables.NewFake(family, TableName)
	if strings.TrimSpace(dump) != "" {
		if err := nf.ParseDump(dump); err != nil {
			t.Fatalf("restoring the fake: %v", err)
		}
	}
	return nf
}

var (
	opRegexp   = regexp.MustCompile(`^(add|delete|flush|create) (table|chain|rule|set|map|element) (ip6?) ([^ ]+)(?: ([^ ]+))?(?: (.*))?$`)
	elemRegexp = regexp.MustCompile(`^\{ (.*?)(?: : (.*))? \}$`)
)

// checkOps walks the transaction's operations over the table's current
// rule counts and map contents.
func (f *strictFake) checkOps(text string) error {
	f.RLock()
	rules := map[string]int{}
	values := map[string]string{} // map/key -> value
	if f.Table != nil {
		for name, c := range f.Table.Chains {
			rules[name] = len(c.Rules)
		}
		for name, m := range f.Table.Maps {
			for _, e := range m.Elements {
				values[name+" "+strings.Join(e.Key, " . ")] = strings.Join(e.Value, " . ")
			}
		}
	}
	f.RUnlock()
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		m := opRegexp.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		verb, kind, name, rest := m[1], m[2], m[5], m[6]
		switch {
		case verb == "flush" && kind == "table":
			for c := range rules {
				rules[c] = 0
			}
		case verb == "flush" && kind == "chain":
			rules[name] = 0
		case verb == "add" && kind == "rule":
			rules[name]++
		case verb == "delete" && kind == "chain":
			if rules[name] > 0 {
				return fmt.Errorf("kernel refuses %q: the chain has %d rules", line, rules[name])
			}
			delete(rules, name)
		case kind == "map" && (verb == "delete" || verb == "flush"):
			for k := range values {
				if strings.HasPrefix(k, name+" ") {
					delete(values, k)
				}
			}
		case kind == "element":
			em := elemRegexp.FindStringSubmatch(rest)
			if em == nil {
				return fmt.Errorf("cannot parse element of %q", line)
			}
			key := name + " " + em[1]
			switch verb {
			case "add":
				if old, ok := values[key]; ok && em[2] != "" && old != em[2] {
					return fmt.Errorf("kernel refuses %q: the key maps to %q (File exists)", line, old)
				}
				if em[2] != "" {
					values[key] = em[2]
				}
			case "delete":
				delete(values, key)
			}
		}
	}
	return nil
}

var refRegexp = regexp.MustCompile(`(?:goto|jump) ([^ ,}]+)|@([^ ,}]+)`)

// checkRefs checks that everything a rule or map element refers to exists.
func (f *strictFake) checkRefs() error {
	f.RLock()
	defer f.RUnlock()
	t := f.Table
	if t == nil {
		return nil
	}
	check := func(where, text string) error {
		for _, m := range refRegexp.FindAllStringSubmatch(text, -1) {
			if m[1] != "" && t.Chains[m[1]] == nil {
				return fmt.Errorf("%s refers to chain %s, which is gone", where, m[1])
			}
			if m[2] != "" && t.Sets[m[2]] == nil && t.Maps[m[2]] == nil {
				return fmt.Errorf("%s refers to set %s, which is gone", where, m[2])
			}
		}
		return nil
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			if err := check("rule in "+c.Name, r.Rule); err != nil {
				return err
			}
		}
	}
	for _, m := range t.Maps {
		for _, e := range m.Elements {
			if err := check("element of "+m.Name, strings.Join(e.Value, " ")); err != nil {
				return err
			}
		}
	}
	return nil
}

// lister returns a Lister of the strict fake's current table.
func (f *strictFake) lister() Lister { return strictLister{f} }

type strictLister struct{ f *strictFake }

func (l strictLister) Objects(ctx context.Context) (Objects, error) {
	return FakeLister(l.f.Fake).Objects(ctx)
}

func (l strictLister) CountRules(ctx context.Context, chain string) (int, error) {
	return FakeLister(l.f.Fake).CountRules(ctx, chain)
}

// canonical returns the fake's table as sorted lines (the Fake dumps
// elements in the order they came).
func (f *strictFake) canonical() string {
	lines := strings.Split(strings.TrimSpace(f.Dump()), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n") + "\n"
}

// clock is a fake clock for stale chains.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)} }

// noViolations reports every transaction the kernel would have refused.
func (f *strictFake) noViolations(t *testing.T) {
	t.Helper()
	for _, v := range f.violations {
		t.Errorf("transaction the kernel would refuse: %s", v)
	}
}

// runText runs nft commands of the forms the Syncer writes, for tests of
// the fake itself.
func (f *strictFake) runText(text string) error {
	tx := f.NewTransaction()
	for _, line := range strings.Split(text, "\n") {
		m := opRegexp.FindStringSubmatch(line)
		if m == nil {
			return fmt.Errorf("cannot parse %q", line)
		}
		verb, kind, name, rest := m[1], m[2], m[5], m[6]
		var obj knftables.Object
		switch kind {
		case "chain":
			obj = &knftables.Chain{Name: name}
		case "rule":
			obj = &knftables.Rule{Chain: name, Rule: rest}
		case "set":
			typ := strings.TrimSuffix(strings.TrimPrefix(rest, "{ type "), " ; }")
			obj = &knftables.Set{Name: name, Type: typ}
		case "map":
			typ := strings.TrimSuffix(strings.TrimPrefix(rest, "{ type "), " ; }")
			obj = &knftables.Map{Name: name, Type: typ}
		case "element":
			em := elemRegexp.FindStringSubmatch(rest)
			e := &knftables.Element{Key: []string{em[1]}}
			if em[2] != "" {
				e.Map, e.Value = name, []string{em[2]}
			} else {
				e.Set = name
			}
			obj = e
		}
		switch verb {
		case "add":
			tx.Add(obj)
		case "delete":
			tx.Delete(obj)
		case "flush":
			tx.Flush(obj)
		}
	}
	return f.Run(ctx, tx)
}
