package ipvstest

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/ipvs"
)

// setTypes are the ipset types the fake knows, with the number of
// comma-separated fields of an entry.
var setTypes = map[string][]string{
	"hash:ip":          {"ip"},
	"hash:net":         {"net"},
	"hash:ip,port":     {"ip", "port"},
	"hash:ip,port,ip":  {"ip", "port", "ip"},
	"hash:ip,port,net": {"ip", "port", "net"},
	"bitmap:port":      {"bareport"},
}

// ListSets implements ipvs.Interface.
func (f *Fake) ListSets() ([]*ipvs.Set, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("ListSets"); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(f.sets))
	for n := range f.sets {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]*ipvs.Set, 0, len(names))
	for _, n := range names {
		s := f.sets[n]
		es := make([]string, 0, len(s.entries))
		for e := range s.entries {
			es = append(es, e)
		}
		slices.Sort(es)
		out = append(out, &ipvs.Set{Name: n, Type: s.typ, Entries: es})
	}
	return out, nil
}

// SetEntries returns the entries of set name, sorted, and whether it exists.
func (f *Fake) SetEntries(name string) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[name]
	if !ok {
		return nil, false
	}
	var es []string
	for e := range s.entries {
		es = append(es, e)
	}
	slices.Sort(es)
	return es, true
}

// RestoreSets implements ipvs.Interface like `ipset restore -exist`. The
// call is logged as "RestoreSets line; line; …". It
// applies line by line and stops at the first bad one, whose number the
// error names; earlier lines stay applied, as with ipset. Entries are
// checked against the set's type and stored as `ipset save` prints them.
// Like the kernel, it refuses to destroy a set an iptables rule uses (see
// UseIPTables); like -exist, it takes destroying a missing set as done.
func (f *Fake) RestoreSets(data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	lines := strings.Split(string(data), "\n")
	var logged []string
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			logged = append(logged, l)
		}
	}
	if err := f.record("RestoreSets", strings.Join(logged, "; ")); err != nil {
		return err
	}
	for i, line := range lines {
		if err := f.restoreLine(strings.TrimSpace(line)); err != nil {
			return fmt.Errorf("ipset v7.17: Error in line %d: %w", i+1, err)
		}
	}
	return nil
}

func (f *Fake) restoreLine(line string) error {
	if line == "" || strings.HasPrefix(line, "#") || line == "COMMIT" {
		return nil
	}
	fs := strings.Fields(line)
	if len(fs) < 2 {
		return fmt.Errorf("missing set name in %q", line)
	}
	cmd, name := fs[0], fs[1]
	if len(name) > 31 {
		return fmt.Errorf("set name %q: longer than 31 characters", name)
	}
	s := f.sets[name]
	switch cmd {
	case "create", "-N":
		if len(fs) < 3 {
			return errors.New("missing set type")
		}
		typ := fs[2]
		if _, ok := setTypes[typ]; !ok {
			return fmt.Errorf("syntax error: unknown settype %s", typ)
		}
		if s != nil {
			if s.typ != typ {
				return fmt.Errorf("set %s: set with the same name already exists and its type differs", name)
			}
			return nil
		}
		f.sets[name] = &set{typ: typ, entries: map[string]bool{}}
		return nil
	case "add", "-A", "del", "-D":
		if s == nil {
			return fmt.Errorf("the set with the given name does not exist: %s", name)
		}
		if len(fs) < 3 {
			return errors.New("missing element")
		}
		e, err := canonicalEntry(s.typ, fs[2])
		if err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		if cmd == "add" || cmd == "-A" {
			s.entries[e] = true
		} else {
			delete(s.entries, e)
		}
		return nil
	case "flush", "-F":
		if s == nil {
			return fmt.Errorf("the set with the given name does not exist: %s", name)
		}
		s.entries = map[string]bool{}
		return nil
	case "destroy", "-X":
		if s == nil {
			// -exist makes destroying a missing set a no-op (checked
			// with ipset v7.17), unlike add, del and flush.
			return nil
		}
		if n := f.setRefs[name]; n > 0 {
			return fmt.Errorf("Set cannot be destroyed: it is in use by a kernel component (%s: %d iptables rules)", name, n)
		}
		delete(f.sets, name)
		return nil
	}
	return fmt.Errorf("syntax error: unknown command %s", cmd)
}

// HasSet implements iptablestest.Sets: whether set name exists.
func (f *Fake) HasSet(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.sets[name]
	return ok
}

// ReferenceSets implements iptablestest.Sets: the iptables fake wired to
// this one (iptablestest.Fake.UseSets) reports how many of its rules use
// each set after every change. A set in use cannot be destroyed, as the
// kernel keeps a reference for every rule matching it. It refuses, and
// changes nothing, when a set in refs does not exist.
func (f *Fake) ReferenceSets(refs map[string]int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var missing []string
	for name, n := range refs {
		if _, ok := f.sets[name]; !ok && n > 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("Set %s doesn't exist", strings.Join(missing, ", "))
	}
	f.setRefs = maps.Clone(refs)
	return nil
}

// SetReferences returns how many iptables rules use set name, as the
// wired iptables fake last reported.
func (f *Fake) SetReferences(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.setRefs[name]
}

// canonicalEntry checks an entry against a set type and returns it as
// `ipset save` prints it.
func canonicalEntry(typ, e string) (string, error) {
	kinds := setTypes[typ]
	parts := strings.Split(e, ",")
	if len(parts) != len(kinds) {
		return "", fmt.Errorf("element %q does not fit %s", e, typ)
	}
	for i, k := range kinds {
		p := parts[i]
		switch k {
		case "ip":
			a, err := netip.ParseAddr(p)
			if err != nil || !a.Is4() {
				return "", fmt.Errorf("element %q: %q is not an IPv4 address", e, p)
			}
			parts[i] = a.String()
		case "net":
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				a, aerr := netip.ParseAddr(p)
				if aerr != nil {
					return "", fmt.Errorf("element %q: %q is not a network", e, p)
				}
				pfx = netip.PrefixFrom(a, 32)
			}
			if !pfx.Addr().Is4() || pfx.Bits() == 0 {
				return "", fmt.Errorf("element %q: the value of the CIDR parameter of the IP address is invalid", e)
			}
			pfx = pfx.Masked()
			if pfx.Bits() == 32 {
				parts[i] = pfx.Addr().String()
			} else {
				parts[i] = pfx.String()
			}
		case "port":
			proto, num, ok := strings.Cut(p, ":")
			if !ok {
				proto, num = "tcp", p
			}
			if proto != "tcp" && proto != "udp" && proto != "sctp" {
				return "", fmt.Errorf("element %q: protocol %q", e, proto)
			}
			n, err := strconv.Atoi(num)
			if err != nil || n < 0 || n > 65535 {
				return "", fmt.Errorf("element %q: port %q", e, num)
			}
			parts[i] = proto + ":" + strconv.Itoa(n)
		case "bareport":
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n > 65535 {
				return "", fmt.Errorf("element %q: port %q", e, p)
			}
			parts[i] = strconv.Itoa(n)
		}
	}
	return strings.Join(parts, ","), nil
}
