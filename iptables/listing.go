package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"sync"
)

// Saver is an Interface that can list every table in one call
// (iptables-save). Exec is one.
type Saver interface {
	Save() ([]byte, error)
}

// Save runs iptables-save (every table) and returns its output.
func (e *Exec) Save() ([]byte, error) {
	out, err := exec.Command(e.binary("-save")).Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", e.binary("-save"), err)
	}
	return out, nil
}

// CachedLister is an Interface whose ListChains and ListRules answer from
// one listing of every table, read at the first call and kept until
// Forget. At start svcproxy needs the chains of several tables several
// times (its Syncer's start, the removal of the other mode's chains and of
// kube-proxy's): listing a table of 10,000 services takes a second or more
// each time. Restore, EnsureJump and DeleteJump go to the wrapped Interface
// and do not update the listing: use a CachedLister only for one round of
// work that lists before it changes anything (and Forget after), never for
// checks that must see the kernel as it is now (CheckDrift unwraps it).
type CachedLister struct {
	Interface
	mu     sync.Mutex
	tables map[string]*listedTable // nil until listed
}

type listedTable struct {
	chains []string
	rules  map[string][]string // "-A CHAIN args" per chain
}

// NewCachedLister wraps ipt. Without a Saver underneath it lists nothing
// itself and passes every call through.
func NewCachedLister(ipt Interface) *CachedLister { return &CachedLister{Interface: ipt} }

// Raw returns the wrapped Interface.
func (c *CachedLister) Raw() Interface { return c.Interface }

// Forget drops the listing: the next list call reads the kernel again.
func (c *CachedLister) Forget() {
	c.mu.Lock()
	c.tables = nil
	c.mu.Unlock()
}

func (c *CachedLister) load() (map[string]*listedTable, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.Interface.(Saver)
	if !ok {
		return nil, false, nil
	}
	if c.tables == nil {
		out, err := s.Save()
		if err != nil {
			return nil, true, err
		}
		c.tables = parseSave(out)
	}
	return c.tables, true, nil
}

// ListChains implements Interface from the listing.
func (c *CachedLister) ListChains(table string) ([]string, error) {
	tables, ok, err := c.load()
	if !ok {
		return c.Interface.ListChains(table)
	}
	if err != nil {
		return nil, err
	}
	t := tables[table]
	if t == nil {
		// Like iptables-save -t of a table that does not exist yet.
		return builtinChains[table], nil
	}
	return t.chains, nil
}

// ListRules implements Interface from the listing.
func (c *CachedLister) ListRules(table, chain string) ([]string, error) {
	tables, ok, err := c.load()
	if !ok {
		return c.Interface.ListRules(table, chain)
	}
	if err != nil {
		return nil, err
	}
	t := tables[table]
	if t == nil {
		return nil, fmt.Errorf("listing %s/%s: no such table", table, chain)
	}
	rules, found := t.rules[chain]
	if !found {
		return nil, fmt.Errorf("listing %s/%s: no such chain", table, chain)
	}
	return rules, nil
}

// parseSave reads iptables-save output: the chains of each table, in the
// order listed, and the rules of each.
func parseSave(out []byte) map[string]*listedTable {
	tables := map[string]*listedTable{}
	var t *listedTable
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "*"):
			t = &listedTable{rules: map[string][]string{}}
			tables[l[1:]] = t
		case t == nil:
		case strings.HasPrefix(l, ":"):
			if f := strings.Fields(l[1:]); len(f) > 0 {
				t.chains = append(t.chains, f[0])
				t.rules[f[0]] = nil
			}
		case strings.HasPrefix(l, "-A "):
			if f := strings.Fields(l); len(f) > 1 {
				t.rules[f[1]] = append(t.rules[f[1]], l)
			}
		}
	}
	return tables
}
