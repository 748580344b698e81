package nftables

// A packet tracer over what the Syncer programmed into knftables' Fake:
// it walks the first packet of a connection through our base chains,
// hook by hook and in priority order, and evaluates the rule forms
// svcproxy writes (verdict maps, set lookups with concatenations and
// intervals, fib, numgen, marks, dnat, masquerade, affinity updates). A
// random choice (numgen) splits the walk into branches with their
// probability. It refuses any rule form it does not know, so a new form
// in render.go needs its meaning here.

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// tracePacket is the first packet of a connection.
type tracePacket struct {
	src, dst netip.Addr
	proto    string // tcp, udp, sctp
	dport    int
	fromNode bool // sent by the node itself: the output path
}

// outcome is what becomes of a connection: accepted (possibly DNATed and
// masqueraded), dropped or rejected.
type outcome struct {
	verdict string // accept, drop, reject
	dnat    netip.AddrPort
	masq    bool
}

func (o outcome) String() string {
	s := strings.ToUpper(o.verdict)
	if o.dnat.IsValid() {
		s += " DNAT " + o.dnat.String()
	}
	if o.masq {
		s += " MASQUERADE"
	}
	return s
}

// tracer walks packets through one family's table of a Fake.
type tracer struct {
	table *knftables.FakeTable
	ip    string // "ip" or "ip6"
	local []netip.Addr
	// clients holds what the affinity sets recorded from connections made
	// with connect, by set.
	clients map[string]map[netip.Addr]bool
}

func newTracer(f *knftables.Fake, family knftables.Family, local []netip.Addr) *tracer {
	ip := "ip"
	if family == knftables.IPv6Family {
		ip = "ip6"
	}
	return &tracer{table: f.Tables[family][TableName], ip: ip, local: local, clients: map[string]map[netip.Addr]bool{}}
}

// state is a packet on one branch of the walk.
type state struct {
	src, dst netip.Addr
	dport    int
	proto    string
	fromNode bool
	mark     uint32
	dnat     netip.AddrPort
	masq     bool
	updates  []setUpdate
}

type setUpdate struct {
	set  string
	addr netip.Addr
}

// branch is one way a walk can go, with its probability and, when the
// chain ended, how: "" falls through (to the caller, or the base chain's
// policy accept), "accept", "drop", "reject".
type branch struct {
	prob    float64
	s       state
	verdict string
}

// path is one complete walk.
type path struct {
	prob    float64
	outcome outcome
	updates []setUpdate
}

func (tr *tracer) isLocal(a netip.Addr) bool {
	return a.IsLoopback() || slices.Contains(tr.local, a)
}

// trace returns every path the packet can take.
func (tr *tracer) trace(p tracePacket) ([]path, error) {
	if tr.table == nil {
		return nil, fmt.Errorf("no table")
	}
	branches := []branch{{prob: 1, s: state{src: p.src, dst: p.dst, dport: p.dport, proto: p.proto, fromNode: p.fromNode}}}
	run := func(hook knftables.BaseChainHook) error {
		var chains []*knftables.FakeChain
		for _, c := range tr.table.Chains {
			if c.Hook != nil && *c.Hook == hook {
				chains = append(chains, c)
			}
		}
		slices.SortFunc(chains, func(a, b *knftables.FakeChain) int {
			pa, _ := knftables.ParsePriority(knftables.IPv4Family, string(*a.Priority))
			pb, _ := knftables.ParsePriority(knftables.IPv4Family, string(*b.Priority))
			return pa - pb
		})
		for _, c := range chains {
			var next []branch
			for _, b := range branches {
				if b.verdict == "drop" || b.verdict == "reject" {
					next = append(next, b)
					continue
				}
				out, err := tr.chain(c.Name, b.s, b.prob, 0)
				if err != nil {
					return err
				}
				for _, o := range out {
					if o.verdict == "" {
						o.verdict = "accept"
					}
					next = append(next, o)
				}
			}
			branches = next
		}
		return nil
	}
	if p.fromNode {
		if err := run(knftables.OutputHook); err != nil {
			return nil, err
		}
	} else if err := run(knftables.PreroutingHook); err != nil {
		return nil, err
	}
	// Routing on the destination after DNAT: every branch goes its way.
	var local, forward []branch
	for _, b := range branches {
		if tr.isLocal(b.s.dst) {
			local = append(local, b)
		} else {
			forward = append(forward, b)
		}
	}
	var out []branch
	branches = local
	if err := run(knftables.InputHook); err != nil {
		return nil, err
	}
	out = append(out, branches...)
	branches = forward
	if !p.fromNode {
		if err := run(knftables.ForwardHook); err != nil {
			return nil, err
		}
	}
	if err := run(knftables.PostroutingHook); err != nil {
		return nil, err
	}
	out = append(out, branches...)

	var paths []path
	for _, b := range out {
		o := outcome{verdict: "accept", dnat: b.s.dnat, masq: b.s.masq}
		if b.verdict == "drop" || b.verdict == "reject" {
			o = outcome{verdict: b.verdict}
		}
		paths = append(paths, path{prob: b.prob, outcome: o, updates: b.s.updates})
	}
	return paths, nil
}

// outcomes returns the distinct outcomes of the packet, sorted.
func (tr *tracer) outcomes(p tracePacket) ([]string, error) {
	paths, err := tr.trace(p)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, pa := range paths {
		if s := pa.outcome.String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out, nil
}

// connect makes one connection happen: pick in [0, 1) chooses among the
// paths by their probabilities, and what it records in affinity sets
// stays for the next connections.
func (tr *tracer) connect(p tracePacket, pick float64) (outcome, error) {
	paths, err := tr.trace(p)
	if err != nil {
		return outcome{}, err
	}
	sum := 0.0
	for i, pa := range paths {
		sum += pa.prob
		if pick < sum || i == len(paths)-1 {
			for _, u := range pa.updates {
				if tr.clients[u.set] == nil {
					tr.clients[u.set] = map[netip.Addr]bool{}
				}
				tr.clients[u.set][u.addr] = true
			}
			return pa.outcome, nil
		}
	}
	return outcome{}, fmt.Errorf("no path")
}

// chain evaluates a chain from its first rule.
func (tr *tracer) chain(name string, s state, prob float64, depth int) ([]branch, error) {
	if depth > 16 {
		return nil, fmt.Errorf("chain %s: too deep", name)
	}
	c := tr.table.Chains[name]
	if c == nil {
		return nil, fmt.Errorf("no chain %s", name)
	}
	return tr.rules(c, 0, s, prob, depth)
}

// rules evaluates c's rules from index i.
func (tr *tracer) rules(c *knftables.FakeChain, i int, s state, prob float64, depth int) ([]branch, error) {
	if i == len(c.Rules) {
		return []branch{{prob: prob, s: s}}, nil
	}
	toks := strings.Fields(c.Rules[i].Rule)
	outs, err := tr.rule(toks, 0, s, prob, depth)
	if err != nil {
		return nil, fmt.Errorf("chain %s rule %q: %w", c.Name, c.Rules[i].Rule, err)
	}
	var res []branch
	for _, o := range outs {
		switch o.verdict {
		case "next": // no match, or a jump that returned: the next rule
			more, err := tr.rules(c, i+1, o.s, o.prob, depth)
			if err != nil {
				return nil, err
			}
			res = append(res, more...)
		case "return":
			res = append(res, branch{prob: o.prob, s: o.s})
		default:
			res = append(res, o)
		}
	}
	return res, nil
}

// selector returns the value of a selector ("ip daddr", "meta l4proto",
// "th dport") and how many tokens it took.
func (tr *tracer) selector(toks []string, i int, s state) (string, int, bool) {
	if i+1 >= len(toks) {
		return "", 0, false
	}
	switch toks[i] + " " + toks[i+1] {
	case tr.ip + " daddr":
		return s.dst.String(), 2, true
	case tr.ip + " saddr":
		return s.src.String(), 2, true
	case "meta l4proto":
		return s.proto, 2, true
	case "th dport":
		return strconv.Itoa(s.dport), 2, true
	}
	return "", 0, false
}

// matchValue reports whether v (an address, protocol or port) is value
// (an address, a prefix, a protocol or a port).
func matchValue(v, value string) bool {
	if strings.Contains(value, "/") {
		p, err := netip.ParsePrefix(value)
		a, err2 := netip.ParseAddr(v)
		return err == nil && err2 == nil && p.Contains(a)
	}
	return v == value
}

// lookup finds the element of a set or map whose key matches the values.
func (tr *tracer) lookup(name string, vals []string) (value string, found bool, err error) {
	var elems []*knftables.Element
	if m := tr.table.Maps[name]; m != nil {
		elems = m.Elements
	} else if st := tr.table.Sets[name]; st != nil {
		elems = st.Elements
		if len(vals) == 1 && tr.clients[name] != nil {
			a, _ := netip.ParseAddr(vals[0])
			if tr.clients[name][a] {
				return "", true, nil
			}
		}
	} else {
		return "", false, fmt.Errorf("no set %s", name)
	}
	for _, e := range elems {
		parts := strings.Split(strings.Join(e.Key, " . "), " . ")
		if len(parts) != len(vals) {
			return "", false, fmt.Errorf("set %s: key %q has %d parts, lookup has %d", name, e.Key, len(parts), len(vals))
		}
		ok := true
		for j := range parts {
			ok = ok && matchValue(vals[j], parts[j])
		}
		if ok {
			return strings.Join(e.Value, " "), true, nil
		}
	}
	return "", false, nil
}

// verdict applies a verdict ("goto x", "jump x", "drop", ...) at token
// position after the rule's matches.
func (tr *tracer) verdict(v []string, s state, prob float64, depth int) ([]branch, error) {
	switch v[0] {
	case "jump", "goto":
		out, err := tr.chain(v[1], s, prob, depth+1)
		if err != nil {
			return nil, err
		}
		for i := range out {
			if out[i].verdict == "" {
				if v[0] == "jump" {
					out[i].verdict = "next"
				} else {
					out[i].verdict = "return"
				}
			}
		}
		return out, nil
	case "return":
		return []branch{{prob: prob, s: s, verdict: "return"}}, nil
	case "drop", "reject", "accept":
		return []branch{{prob: prob, s: s, verdict: v[0]}}, nil
	}
	return nil, fmt.Errorf("unknown verdict %q", strings.Join(v, " "))
}

// rule evaluates the tokens of a rule from position i; a branch whose
// verdict is "next" continues with the chain's next rule.
func (tr *tracer) rule(toks []string, i int, s state, prob float64, depth int) ([]branch, error) {
	no := []branch{{prob: prob, s: s, verdict: "next"}}
	if i == len(toks) {
		return no, nil
	}
	at := func(words ...string) bool {
		if i+len(words) > len(toks) {
			return false
		}
		for j, w := range words {
			if w != "*" && toks[i+j] != w {
				return false
			}
		}
		return true
	}
	cont := func(match bool, n int) ([]branch, error) {
		if !match {
			return no, nil
		}
		return tr.rule(toks, i+n, s, prob, depth)
	}
	switch {
	case at("ct", "state", "new"):
		return cont(true, 3)
	case at("ct", "status", "dnat"):
		return cont(s.dnat.IsValid(), 3)
	case at("numgen", "random", "mod", "*", "==", "0"):
		n, err := strconv.Atoi(toks[i+3])
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad numgen modulus %q", toks[i+3])
		}
		hit, err := tr.rule(toks, i+6, s, prob/float64(n), depth)
		if err != nil {
			return nil, err
		}
		if n == 1 {
			return hit, nil
		}
		return append(hit, branch{prob: prob * float64(n-1) / float64(n), s: s, verdict: "next"}), nil
	case at("fib", "daddr", "type", "local"):
		return cont(tr.isLocal(s.dst), 4)
	case at("fib", "saddr", "type", "local"):
		return cont(tr.isLocal(s.src), 4)
	case at("meta", "mark", "&", "*", "!=", "0"):
		m, err := strconv.ParseUint(strings.TrimPrefix(toks[i+3], "0x"), 16, 32)
		if err != nil {
			return nil, err
		}
		return cont(s.mark&uint32(m) != 0, 6)
	case at("meta", "mark", "set", "meta", "mark", "*", "*"):
		m, err := strconv.ParseUint(strings.TrimPrefix(toks[i+6], "0x"), 16, 32)
		if err != nil {
			return nil, err
		}
		switch toks[i+5] {
		case "|":
			s.mark |= uint32(m)
		case "^":
			s.mark ^= uint32(m)
		default:
			return nil, fmt.Errorf("unknown mark operation %q", toks[i+5])
		}
		return tr.rule(toks, i+7, s, prob, depth)
	case at("meta", "l4proto", "*") && toks[i+2] != ".":
		return cont(s.proto == toks[i+2], 3)
	case at("masquerade"):
		s.masq = true
		return []branch{{prob: prob, s: s, verdict: "accept"}}, nil
	case at("dnat", "to", "*"):
		ap, err := netip.ParseAddrPort(toks[i+2])
		if err != nil {
			return nil, err
		}
		s.dnat, s.dst, s.dport = ap, ap.Addr(), int(ap.Port())
		return []branch{{prob: prob, s: s, verdict: "accept"}}, nil
	case at("update", "*", "{", tr.ip, "saddr", "}"):
		s.updates = append(append([]setUpdate(nil), s.updates...), setUpdate{strings.TrimPrefix(toks[i+1], "@"), s.src})
		return tr.rule(toks, i+6, s, prob, depth)
	case at("jump", "*"), at("goto", "*"), at("return"), at("drop"), at("reject"), at("accept"):
		return tr.verdict(toks[i:], s, prob, depth)
	}
	// A selector, or a concatenation of them, then what is done with it.
	var vals []string
	j := i
	for {
		v, n, ok := tr.selector(toks, j, s)
		if !ok {
			return nil, fmt.Errorf("unknown expression at %q", strings.Join(toks[j:], " "))
		}
		vals = append(vals, v)
		j += n
		if j < len(toks) && toks[j] == "." {
			j++
			continue
		}
		break
	}
	if j >= len(toks) {
		return nil, fmt.Errorf("selector without a match")
	}
	negate := false
	if toks[j] == "!=" {
		negate = true
		j++
	}
	switch {
	case toks[j] == "vmap":
		v, found, err := tr.lookup(strings.TrimPrefix(toks[j+1], "@"), vals)
		if err != nil || !found {
			return no, err
		}
		return tr.verdict(strings.Fields(v), s, prob, depth)
	case strings.HasPrefix(toks[j], "@"):
		_, found, err := tr.lookup(toks[j][1:], vals)
		if err != nil {
			return nil, err
		}
		i = j + 1
		return cont(found != negate, 0)
	case len(vals) == 1:
		i = j + 1
		return cont(matchValue(vals[0], toks[j]) != negate, 0)
	}
	return nil, fmt.Errorf("unknown match at %q", strings.Join(toks[j:], " "))
}
