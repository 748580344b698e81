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

// RestoreSets implements ipvs.Interface like `ipset restore -exist` (v7,
// checked against ipset v7.17 by fake_real_test.go). The call is logged as
// "RestoreSets line; line; …".
//
// Like ipset it is not atomic, and not quite line by line either: ipset
// parses each line (syntax, set type, options, that an add or del names an
// existing set, the element's form), runs create, flush and destroy at
// once, and gathers consecutive add (or del) lines of one set into one
// message, sent when a line of another kind or set has parsed, or at the
// end. So a line that does not parse stops the restore and loses the
// gathered adds before it, while an element the kernel refuses (0.0.0.0/0
// in a hash:net, a port outside a bitmap's range) stops it after the
// elements before it went in. The error names the line. Entries are
// stored as `ipset save` prints them. Like the kernel, it refuses to
// destroy a set an iptables rule uses (see UseIPTables); like -exist, it
// takes creating a set that exists with the same type and maxelem, adding
// an element present, deleting one absent and destroying a missing set as
// done. Creation options, element options and forms the fake does not
// model (timeouts, counters, IP ranges, ICMP types…) are refused.
//
// Sets are of family inet or inet6. The kernel takes creating a set that
// exists with another family as done and keeps the old family, but ipset
// parses the elements of the rest of the restore with the family of the
// first create line of the set (until it is destroyed), or else with the
// set's: an element of the other family is a syntax error, and one of the
// family ipset believes while the set has the other is refused by the
// kernel ("ipset protocol error").
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
	var batch []*setCmd             // consecutive adds or dels of one set, not yet sent
	families := map[string]string{} // what ipset believes, by set name
	send := func() error {
		defer func() { batch = nil }()
		for _, c := range batch {
			if err := f.execSetCmd(c); err != nil {
				return fmt.Errorf("ipset v7.17: Error in line %d: %w", c.line, err)
			}
		}
		return nil
	}
	for i, line := range lines {
		c, err := f.parseSetLine(i+1, strings.TrimSpace(line), families)
		if err != nil {
			return fmt.Errorf("ipset v7.17: Error in line %d: %w", i+1, err)
		}
		if c == nil {
			continue
		}
		if len(batch) > 0 && c.entry != "" && batch[0].cmd == c.cmd && batch[0].name == c.name {
			batch = append(batch, c)
			continue
		}
		if err := send(); err != nil {
			return err
		}
		if c.entry != "" {
			batch = append(batch, c)
			continue
		}
		if err := f.execSetCmd(c); err != nil {
			return fmt.Errorf("ipset v7.17: Error in line %d: %w", c.line, err)
		}
	}
	return send()
}

// setCmd is one parsed ipset restore line.
type setCmd struct {
	line   int
	cmd    string // "create", "add", "del", "flush" or "destroy"
	name   string
	typ    string // create
	max    int    // create: maxelem
	lo, hi int    // create, bitmap:port: the range
	family string // create: the set's; add, del: the element's ("" for bitmap:port)
	entry  string // add, del: canonical
}

const defaultMaxElem = 65536

var setCommands = map[string]string{
	"create": "create", "-N": "create", "add": "add", "-A": "add", "del": "del", "-D": "del",
	"flush": "flush", "-F": "flush", "destroy": "destroy", "-X": "destroy",
}

// parseSetLine does what ipset does with a line before the kernel sees it;
// nil for a blank line, a comment or COMMIT. families holds the family
// ipset believes each set created in this restore has. f.mu is held.
func (f *Fake) parseSetLine(n int, line string, families map[string]string) (*setCmd, error) {
	if line == "" || strings.HasPrefix(line, "#") || line == "COMMIT" {
		return nil, nil
	}
	fs := strings.Fields(line)
	cmd, ok := setCommands[fs[0]]
	if !ok {
		return nil, fmt.Errorf("syntax error: unknown command %s", fs[0])
	}
	if len(fs) < 2 {
		return nil, fmt.Errorf("missing set name in %q", line)
	}
	c := &setCmd{line: n, cmd: cmd, name: fs[1]}
	if len(c.name) > 31 {
		return nil, fmt.Errorf("set name %q: longer than 31 characters", c.name)
	}
	switch cmd {
	case "create":
		if len(fs) < 3 {
			return nil, errors.New("missing set type")
		}
		c.typ = fs[2]
		if _, ok := setTypes[c.typ]; !ok {
			return nil, fmt.Errorf("syntax error: unknown settype %s", c.typ)
		}
		if err := parseCreateOptions(c, fs[3:]); err != nil {
			return nil, err
		}
		if _, ok := families[c.name]; !ok {
			families[c.name] = c.family
		}
		return c, nil
	case "add", "del":
		s := f.sets[c.name]
		if s == nil {
			return nil, fmt.Errorf("the set with the given name does not exist: %s", c.name)
		}
		if len(fs) < 3 {
			return nil, errors.New("missing element")
		}
		if len(fs) > 3 {
			return nil, fmt.Errorf("element options %q: not modelled by the fake", strings.Join(fs[3:], " "))
		}
		c.family = s.family
		if fam, ok := families[c.name]; ok {
			c.family = fam
		}
		e, err := canonicalEntry(s.typ, c.family, fs[2])
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", c.name, err)
		}
		c.entry = e
		return c, nil
	case "destroy":
		delete(families, c.name)
	}
	if len(fs) > 2 {
		return nil, fmt.Errorf("unknown argument %q", fs[2])
	}
	return c, nil
}

// parseCreateOptions parses the options after the type: those svcproxy
// and kube-proxy use. Anything else is refused.
func parseCreateOptions(c *setCmd, opts []string) error {
	c.max = defaultMaxElem
	bitmap := c.typ == "bitmap:port"
	if !bitmap {
		c.family = "inet"
	}
	hasRange := false
	for i := 0; i < len(opts); i += 2 {
		if i+1 >= len(opts) {
			return fmt.Errorf("option %q needs an argument (or is not modelled by the fake)", opts[i])
		}
		k, v := opts[i], opts[i+1]
		n, nerr := strconv.Atoi(v)
		switch {
		case k == "family" && !bitmap:
			switch v {
			case "inet", "ipv4":
				c.family = "inet"
			case "inet6", "ipv6":
				c.family = "inet6"
			default:
				return fmt.Errorf("Syntax error: unknown inet family %s", v)
			}
		case k == "hashsize" && !bitmap, k == "bucketsize" && !bitmap:
			if nerr != nil || n < 1 {
				return fmt.Errorf("%s %q: not a number", k, v)
			}
		case k == "maxelem" && !bitmap:
			if nerr != nil || n < 1 {
				return fmt.Errorf("maxelem %q: not a number", v)
			}
			c.max = n
		case k == "range" && bitmap:
			a, b, ok := strings.Cut(v, "-")
			lo, err1 := strconv.Atoi(a)
			hi, err2 := strconv.Atoi(b)
			if !ok || err1 != nil || err2 != nil || lo < 0 || hi > 65535 || lo > hi {
				return fmt.Errorf("range %q: want from-to within 0-65535", v)
			}
			c.lo, c.hi, hasRange = lo, hi, true
		default:
			return fmt.Errorf("Unknown argument: `%s' (or not modelled by the fake)", k)
		}
	}
	if bitmap && !hasRange {
		return errors.New("Mandatory option `range' is missing")
	}
	return nil
}

// execSetCmd does what the kernel does with a parsed line. f.mu is held.
func (f *Fake) execSetCmd(c *setCmd) error {
	s := f.sets[c.name]
	switch c.cmd {
	case "create":
		if s != nil {
			// The family is not compared: the set keeps its own.
			if s.typ != c.typ || s.max != c.max || s.lo != c.lo || s.hi != c.hi {
				return fmt.Errorf("Set cannot be created: set with the same name already exists (%s %s maxelem %d)", c.name, s.typ, s.max)
			}
			return nil
		}
		f.sets[c.name] = &set{typ: c.typ, family: c.family, max: c.max, lo: c.lo, hi: c.hi, entries: map[string]bool{}}
	case "add", "del":
		if s == nil {
			return fmt.Errorf("the set with the given name does not exist: %s", c.name)
		}
		if c.family != s.family {
			return fmt.Errorf("set %s (family %s): element %s: Kernel error received: ipset protocol error", c.name, s.family, c.entry)
		}
		if c.cmd == "del" {
			delete(s.entries, c.entry)
			return nil
		}
		if err := s.kernelCheck(c.entry); err != nil {
			return fmt.Errorf("set %s: %w", c.name, err)
		}
		if !s.entries[c.entry] && len(s.entries) >= s.max {
			return fmt.Errorf("set %s: Hash is full, cannot add more elements", c.name)
		}
		s.entries[c.entry] = true
	case "flush":
		if s == nil {
			return fmt.Errorf("the set with the given name does not exist: %s", c.name)
		}
		s.entries = map[string]bool{}
	case "destroy":
		if s == nil {
			// -exist makes destroying a missing set a no-op (checked
			// with ipset v7.17), unlike add, del and flush.
			return nil
		}
		if n := f.setRefs[c.name]; n > 0 {
			return fmt.Errorf("Set cannot be destroyed: it is in use by a kernel component (%s: %d iptables rules)", c.name, n)
		}
		delete(f.sets, c.name)
	}
	return nil
}

// kernelCheck refuses what the kernel refuses of a well-formed element of
// the set's family.
func (s *set) kernelCheck(e string) error {
	parts := strings.Split(e, ",")
	for i, k := range setTypes[s.typ] {
		switch p := parts[i]; {
		case k == "net" && strings.HasSuffix(p, "/0"):
			return errors.New("The value of the CIDR parameter of the IP address is invalid")
		case i == 0 && (p == "0.0.0.0" || p == "::") && s.typ == "hash:ip":
			return errors.New("Null-valued element, cannot be stored in a hash type of set")
		case i == 0 && (p == "0.0.0.0" || p == "::") && s.typ == "hash:ip,port":
			// hash:ip,port,ip and hash:ip,port,net take it.
			return errors.New("Kernel error received: Invalid argument")
		case k == "bareport":
			if n, _ := strconv.Atoi(p); n < s.lo || n > s.hi {
				return errors.New("Element is out of the range of the set")
			}
		}
	}
	return nil
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
func (f *Fake) ReferenceSets(refs map[string]int) error { return f.referenceSets(0, refs) }

// referenceSets sets the references of one user and sums them up.
func (f *Fake) referenceSets(user int, refs map[string]int) error {
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
	if f.refsBy == nil {
		f.refsBy = map[int]map[string]int{}
	}
	f.refsBy[user] = maps.Clone(refs)
	f.setRefs = map[string]int{}
	for _, rs := range f.refsBy {
		for name, n := range rs {
			f.setRefs[name] += n
		}
	}
	return nil
}

// SetReferences returns how many iptables rules use set name, as the
// wired iptables fake last reported.
func (f *Fake) SetReferences(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.setRefs[name]
}

// canonicalEntry checks an entry against a set type and family ("inet",
// "inet6"; "" for bitmap:port) as ipset parses it, and returns it as
// `ipset save` prints it.
func canonicalEntry(typ, family, e string) (string, error) {
	kinds := setTypes[typ]
	parts := strings.Split(e, ",")
	if len(parts) != len(kinds) {
		return "", fmt.Errorf("element %q does not fit %s", e, typ)
	}
	for i, k := range kinds {
		p := parts[i]
		switch k {
		case "ip":
			// ipset takes a /128 on the first address of an inet6 set,
			// a plain address on the third (and IPv4 ranges, which the
			// fake does not model).
			if a, ok := strings.CutSuffix(p, "/128"); ok && i == 0 && family == "inet6" {
				p = a
			}
			a, err := parseAddr(family, p)
			if err != nil {
				return "", fmt.Errorf("element %q: %w", e, err)
			}
			parts[i] = ntop(a)
		case "net":
			addr, bits, hasBits := strings.Cut(p, "/")
			a, err := parseAddr(family, addr)
			if err != nil {
				return "", fmt.Errorf("element %q: %w", e, err)
			}
			n := a.BitLen()
			if hasBits {
				if n, err = strconv.Atoi(bits); err != nil || strings.Trim(bits, "0123456789") != "" || n > a.BitLen() {
					return "", fmt.Errorf("element %q: Syntax error: '%s' is out of range 0-%d", e, bits, a.BitLen())
				}
			}
			pfx := netip.PrefixFrom(a, n).Masked()
			parts[i] = ntop(pfx.Addr())
			if n < a.BitLen() {
				parts[i] += "/" + strconv.Itoa(n)
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
			if proto, num, ok := strings.Cut(p, ":"); ok && (proto == "tcp" || proto == "udp") {
				p = num // bitmap:port ignores the protocol
			}
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n > 65535 {
				return "", fmt.Errorf("element %q: port %q", e, p)
			}
			parts[i] = strconv.Itoa(n)
		}
	}
	return strings.Join(parts, ","), nil
}

// parseAddr parses one address of an element of a set of family, as
// ipset does: an IPv4 address in an inet6 set (or the other way round,
// IPv4-mapped included) does not parse.
func parseAddr(family, s string) (netip.Addr, error) {
	want := "IPv4"
	if family == "inet6" {
		want = "IPv6"
	}
	if strings.Contains(s, "/") {
		return netip.Addr{}, fmt.Errorf("Syntax error: plain IP address must be supplied: %s", s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4() != (want == "IPv4") {
		return netip.Addr{}, fmt.Errorf("Syntax error: cannot parse %s: resolving to %s address failed", s, want)
	}
	return a, nil
}

// ntop prints a as ipset does, with glibc's inet_ntop: like netip but
// for IPv4-compatible addresses, which it prints dotted ("::10.0.0.1",
// where netip prints "::a00:1").
func ntop(a netip.Addr) string {
	b := a.As16()
	if a.Is6() && [12]byte(b[:12]) == [12]byte{} && b[12]|b[13] != 0 {
		return "::" + netip.AddrFrom4([4]byte(b[12:])).String()
	}
	return a.String()
}
