package trace

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// The xt_recent model. Each list (named by --name, "DEFAULT" without one)
// holds entries by address, each with the times it was seen; like the
// kernel's, a list exists while a rule uses it and goes with its last rule,
// holds at most recentMaxEntries addresses (the least recently seen goes
// first) and remembers the last recentMaxStamps times per address.
const (
	recentMaxEntries = 100 // xt_recent ip_list_tot default
	recentMaxStamps  = 20  // xt_recent ip_pkt_list_tot default
)

type recentEntry struct {
	addr   netip.Addr
	stamps []time.Time // oldest first
}

// recentTable is one list, its entries least recently updated first (the
// kernel's LRU list).
type recentTable struct {
	entries []*recentEntry
}

func (t *recentTable) clone() *recentTable {
	c := &recentTable{entries: make([]*recentEntry, len(t.entries))}
	for i, e := range t.entries {
		c.entries[i] = &recentEntry{addr: e.addr, stamps: slices.Clone(e.stamps)}
	}
	return c
}

// recentInfo is a parsed "-m recent" match.
type recentInfo struct {
	name     string
	cmd      string // "--set", "--rcheck", "--update" or "--remove"
	inv      bool
	seconds  int
	hitcount int
	reap     bool
	rdest    bool
	mask     netip.Addr
}

func recentListName(m *match) string {
	if o, ok := m.get("--name"); ok {
		return o.arg()
	}
	return "DEFAULT"
}

func parseRecent(m *match) (recentInfo, error) {
	ri := recentInfo{name: recentListName(m), mask: netip.AddrFrom4([4]byte{255, 255, 255, 255})}
	for _, o := range m.opts {
		switch o.name {
		case "--set", "--rcheck", "--update", "--remove":
			ri.cmd, ri.inv = o.name, o.neg
		case "--seconds":
			ri.seconds, _ = strconv.Atoi(o.arg())
		case "--hitcount":
			ri.hitcount, _ = strconv.Atoi(o.arg())
		case "--reap":
			ri.reap = true
		case "--rdest":
			ri.rdest = true
		case "--rsource", "--name":
		case "--mask":
			ri.mask = netip.MustParseAddr(o.arg())
		default:
			return ri, fmt.Errorf("recent %s: not modelled by the tracer", o.name)
		}
	}
	if ri.cmd == "" {
		return ri, errors.New("recent without --set, --rcheck, --update or --remove")
	}
	return ri, nil
}

// address returns the address the match looks up: the source (or with
// --rdest the destination), masked.
func (ri recentInfo) address(src, dst netip.Addr) netip.Addr {
	a := src
	if ri.rdest {
		a = dst
	}
	if a.Is6() {
		if ri.mask.Is4() && ri.mask == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return a // the default mask: the whole address
		}
		ab, mb := a.As16(), ri.mask.As16()
		for i := range ab {
			ab[i] &= mb[i]
		}
		return netip.AddrFrom16(ab)
	}
	ab, mb := a.As4(), ri.mask.As4()
	for i := range ab {
		ab[i] &= mb[i]
	}
	return netip.AddrFrom4(ab)
}

// eval runs the match on t for addr at now, changing t as the kernel's
// recent_mt does, and reports whether it matched.
func (t *recentTable) eval(ri recentInfo, addr netip.Addr, now time.Time) bool {
	ret := ri.inv
	i := slices.IndexFunc(t.entries, func(e *recentEntry) bool { return e.addr == addr })
	if i < 0 {
		if ri.cmd != "--set" {
			return ret
		}
		if len(t.entries) >= recentMaxEntries {
			t.entries = t.entries[1:]
		}
		t.entries = append(t.entries, &recentEntry{addr: addr, stamps: []time.Time{now}})
		return !ret
	}
	e := t.entries[i]
	switch ri.cmd {
	case "--set":
		ret = !ret
	case "--remove":
		t.entries = slices.Delete(t.entries, i, i+1)
		return !ret
	case "--rcheck", "--update":
		cutoff := now.Add(-time.Duration(ri.seconds) * time.Second)
		hits := 0
		for _, s := range e.stamps {
			if ri.seconds > 0 && s.Before(cutoff) {
				continue
			}
			hits++
			if ri.hitcount == 0 || hits >= ri.hitcount {
				ret = !ret
				break
			}
		}
		if ri.reap {
			// The kernel looks at the least recently seen entry only.
			if old := t.entries[0]; old != e && old.stamps[len(old.stamps)-1].Before(cutoff) {
				t.entries = t.entries[1:]
			}
		}
	}
	if ri.cmd == "--set" || (ri.cmd == "--update" && ret) {
		e.stamps = append(e.stamps, now)
		if len(e.stamps) > recentMaxStamps {
			e.stamps = e.stamps[1:]
		}
		j := slices.Index(t.entries, e)
		t.entries = append(slices.Delete(t.entries, j, j+1), e)
	}
	return ret
}

// recentOp is one evaluation of a recent match on a path: replayed, in
// order, it reproduces what the path did to the lists.
type recentOp struct {
	info recentInfo
	addr netip.Addr
}

// recentView returns list name as the path of st sees it: the Fake's list
// with the path's own earlier evaluations replayed on a copy.
func (tr *tracer) recentView(name string, st *state) *recentTable {
	t := &recentTable{}
	if c := tr.recent.lists[name]; c != nil {
		t = c.clone()
	}
	for _, op := range st.recent {
		if op.info.name == name {
			t.eval(op.info, op.addr, tr.now)
		}
	}
	return t
}

// recentMatch evaluates a "-m recent" match for the path of st and records
// it on the path.
func (tr *tracer) recentMatch(m *match, st *state) (float64, error) {
	ri, err := parseRecent(m)
	if err != nil {
		return 0, err
	}
	addr := ri.address(st.src, st.dst)
	ok := tr.recentView(ri.name, st).eval(ri, addr, tr.now)
	st.recent = append(slices.Clip(st.recent), recentOp{ri, addr})
	return holds(ok, false), nil
}

// Recent is the kernel's xt_recent lists, by name. The zero value holds
// no list. It is not safe for concurrent use.
type Recent struct {
	lists map[string]*recentTable
}

// Track makes the lists exactly names: a list no rule uses any more goes,
// as the kernel frees it with its last rule, and a new name gets an empty
// list.
func (r *Recent) Track(names []string) {
	if r.lists == nil {
		r.lists = map[string]*recentTable{}
	}
	for name := range r.lists {
		if !slices.Contains(names, name) {
			delete(r.lists, name)
		}
	}
	for _, name := range names {
		if r.lists[name] == nil {
			r.lists[name] = &recentTable{}
		}
	}
}

// Names returns the names of the lists, sorted.
func (r *Recent) Names() []string {
	out := make([]string, 0, len(r.lists))
	for n := range r.lists {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Entries returns the addresses in list name, least recently seen first,
// and whether the list exists.
func (r *Recent) Entries(name string) ([]netip.Addr, bool) {
	t, ok := r.lists[name]
	if !ok {
		return nil, false
	}
	out := make([]netip.Addr, 0, len(t.entries))
	for _, e := range t.entries {
		out = append(out, e.addr)
	}
	return out, true
}

// Replay applies what path p did to the lists, at now: the connection
// that took p really happened.
func (r *Recent) Replay(p Path, now time.Time) error {
	for _, op := range p.recent {
		t := r.lists[op.info.name]
		if t == nil {
			return fmt.Errorf("xt_recent list %q does not exist", op.info.name)
		}
		t.eval(op.info, op.addr, now)
	}
	return nil
}

// Pick returns the path that pick (in [0, 1)) falls in, the probabilities
// of paths laid end to end in their order: how a random draw chooses among
// the outcomes Explain returned.
func Pick(paths []Path, pick float64) (Path, error) {
	if pick < 0 || pick >= 1 {
		return Path{}, fmt.Errorf("pick %v is not in [0, 1)", pick)
	}
	if len(paths) == 0 {
		return Path{}, errors.New("no path")
	}
	chosen, sum := paths[len(paths)-1], 0.0
	for _, path := range paths {
		if sum += path.Probability; pick < sum {
			return path, nil
		}
	}
	return chosen, nil
}
