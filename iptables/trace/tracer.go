package trace

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MaxDepth is the deepest nesting of chain transitions (jumps and gotos
// alike, counted from the built-in chain) a path may reach. nf_tables
// validates every chain graph against its jump stack of 16
// (NFT_JUMP_STACK_SIZE): the base chain is level 0 and a chain at level 16
// is refused ("RULE_APPEND failed (Too many links)"), gotos included, so
// 15 nested transitions is the most iptables-nft loads (checked with
// iptables 1.8.9 on Linux 6.x by iptables/testing/fake_real_test.go).
const MaxDepth = 15

// Verdicts of an Outcome.
const (
	Accept = "ACCEPT"
	Drop   = "DROP"
	Reject = "REJECT"
	// Unknown is the verdict of a path that ends in a target the tracer
	// does not follow (a Ruleset of ParseLive only): NFQUEUE, REDIRECT,
	// TPROXY, a jump to a chain the listing lacks…
	Unknown = "UNKNOWN"
)

// Packet is the first packet of a new connection, and where it comes from.
type Packet struct {
	SrcIP, DstIP netip.Addr
	Proto        string // "tcp", "udp" or "sctp"
	DstPort      int
	// SrcLocal says that the packet originates on the node itself: it
	// takes the OUTPUT path and matches "-m addrtype --src-type LOCAL".
	// It must agree with LocalAddrs (SrcIP is local exactly when SrcLocal).
	SrcLocal bool
	// LocalAddrs are the node's addresses: "--dst-type LOCAL" matches them
	// and 127.0.0.0/8, and a destination among them is delivered locally
	// (filter INPUT) rather than forwarded.
	LocalAddrs []netip.Addr
	// Mark is the packet's fwmark when it reaches the first hook, as
	// another component may have set it; usually 0.
	Mark uint32
}

// Outcome is one possible fate of a Packet.
type Outcome struct {
	Verdict string // Accept, Drop or Reject
	// DNAT is the destination the packet was rewritten to; zero if none.
	DNAT netip.AddrPort
	// Masquerade is true when the source was masqueraded.
	Masquerade bool
}

// String returns e.g. "ACCEPT 10.244.1.5:8080 masquerade", "ACCEPT" or
// "DROP".
func (o Outcome) String() string {
	s := o.Verdict
	if o.DNAT.IsValid() {
		s += " " + o.DNAT.String()
	}
	if o.Masquerade {
		s += " masquerade"
	}
	return s
}

func compareOutcomes(a, b Outcome) int {
	if c := cmp.Compare(a.Verdict, b.Verdict); c != 0 {
		return c
	}
	if c := a.DNAT.Compare(b.DNAT); c != 0 {
		return c
	}
	switch {
	case a.Masquerade == b.Masquerade:
		return 0
	case b.Masquerade:
		return -1
	}
	return 1
}

// Path is one way through the rules and its outcome.
type Path struct {
	Outcome
	// Probability is the chance that the packet takes this path, from the
	// probabilities of the random matches on it; the paths of one packet
	// add up to 1.
	Probability float64
	// Hops are, in order, every rule whose matches held, the chains
	// falling off their end and the built-in policies applied.
	Hops []Hop
	// Steps are the Hops as text, one each ("table/CHAIN rule").
	Steps []string
	// Assumed is, for a Ruleset of ParseLive, the rule the tracer could
	// not evaluate (ParseLive says which) and took as matching to find
	// this path; nil when every rule on the path was evaluated. A path
	// with Assumed comes in addition to the paths without: those add up
	// to 1, each assuming every rule it could not evaluate did not match.
	// A path assumes one rule at most.
	Assumed *Hop

	recent []recentOp // the path's recent matches, for Recent.Replay
}

// Hop is one step of a Path: a rule that matched, or the end of a chain,
// or the policy of a built-in chain.
type Hop struct {
	Table, Chain string
	// Rule is the text of the rule that matched ("" for the others).
	Rule string
	// Policy is the verdict of a built-in chain's policy, when the packet
	// reached the end of the built-in chain (or a RETURN in it).
	Policy string
}

// String returns "table/CHAIN rule", "table/CHAIN: end of chain" or
// "table/CHAIN: policy ACCEPT".
func (h Hop) String() string {
	switch {
	case h.Rule != "":
		return h.Table + "/" + h.Chain + " " + h.Rule
	case h.Policy != "":
		return h.Table + "/" + h.Chain + ": policy " + h.Policy
	}
	return h.Table + "/" + h.Chain + ": end of chain"
}

// Chains returns the chains the path went through, "table/CHAIN", in
// order, a chain listed again when the path comes back to it after
// another.
func (p Path) Chains() []string {
	var out []string
	for _, h := range p.Hops {
		c := h.Table + "/" + h.Chain
		if len(out) == 0 || out[len(out)-1] != c {
			out = append(out, c)
		}
	}
	return out
}

// String returns the outcome, the probability if below 1, and the steps,
// one per line.
func (p Path) String() string {
	s := p.Outcome.String()
	if p.Probability < 1 {
		s += fmt.Sprintf(" (p=%.4f)", p.Probability)
	}
	return s + "\n  " + strings.Join(p.Steps, "\n  ")
}

func newPath(o Outcome, st state) Path {
	steps := make([]string, len(st.hops))
	for i, h := range st.hops {
		steps[i] = h.String()
	}
	return Path{Outcome: o, Probability: st.prob, Hops: st.hops, Steps: steps, Assumed: st.assumed, recent: st.recent}
}

// Trace walks the rules for p the way the kernel handles the first packet
// of a connection, exploring every branch that "-m statistic --mode
// random" allows, and returns the set of possible outcomes, deduplicated
// and sorted. Traffic from the node goes through nat OUTPUT, filter OUTPUT
// and nat POSTROUTING (then filter INPUT and nat INPUT if its destination
// is local); other traffic through nat PREROUTING, then filter INPUT and
// nat INPUT if the destination after DNAT is local, else filter FORWARD
// and nat POSTROUTING. Recent matches see the lists in recent (nil: all
// empty) at time now, and what earlier rules on the same path did to them;
// Trace changes nothing.
//
// An error means the rules cannot be traced: an unsupported match or
// target, a target used from a hook the kernel does not allow it in, or a
// path nesting chains deeper than MaxDepth.
func (rs *Ruleset) Trace(p Packet, recent *Recent, now time.Time) ([]Outcome, error) {
	paths, err := rs.Explain(p, recent, now)
	if err != nil {
		return nil, err
	}
	out := make([]Outcome, 0, len(paths))
	for _, p := range paths {
		out = append(out, p.Outcome)
	}
	slices.SortFunc(out, compareOutcomes)
	return slices.Compact(out), nil
}

// Explain is Trace returning every path with the rules it went through,
// sorted by outcome.
func (rs *Ruleset) Explain(p Packet, recent *Recent, now time.Time) ([]Path, error) {
	tr, err := newTracer(p)
	if err != nil {
		return nil, err
	}
	if recent == nil {
		recent = &Recent{}
	}
	tr.tables, tr.recent, tr.now, tr.tolerant = rs.tables, recent, now, rs.tolerant
	var paths []Path
	st := state{src: p.SrcIP, dst: p.DstIP, proto: p.Proto, dport: p.DstPort, mark: p.Mark, prob: 1}
	if err := tr.traverse(0, st, &paths); err != nil {
		return nil, err
	}
	slices.SortStableFunc(paths, func(a, b Path) int { return compareOutcomes(a.Outcome, b.Outcome) })
	return paths, nil
}

type tracer struct {
	tables   map[string]*table
	recent   *Recent
	now      time.Time
	local    map[netip.Addr]bool
	srcLocal bool
	tolerant bool // a kernel's listing (ParseLive)
}

var (
	loopback  = netip.MustParsePrefix("127.0.0.0/8")
	loopback6 = netip.MustParsePrefix("::1/128")
)

func newTracer(p Packet) (*tracer, error) {
	tr := &tracer{local: map[netip.Addr]bool{}, srcLocal: p.SrcLocal}
	for _, a := range p.LocalAddrs {
		tr.local[a] = true
	}
	var errs []error
	if p.SrcIP.Is4() != p.DstIP.Is4() || p.SrcIP.Is4In6() || p.DstIP.Is4In6() {
		errs = append(errs, fmt.Errorf("packet %v -> %v: both addresses must be IPv4 or both IPv6", p.SrcIP, p.DstIP))
	}
	if p.Proto != "tcp" && p.Proto != "udp" && p.Proto != "sctp" {
		errs = append(errs, fmt.Errorf("packet protocol %q: want tcp, udp or sctp", p.Proto))
	}
	if p.DstPort < 1 || p.DstPort > 65535 {
		errs = append(errs, fmt.Errorf("packet destination port %d out of range", p.DstPort))
	}
	if p.SrcIP.IsValid() && tr.isLocal(p.SrcIP) != p.SrcLocal {
		errs = append(errs, fmt.Errorf("packet source %v: SrcLocal is %v but LocalAddrs say otherwise", p.SrcIP, p.SrcLocal))
	}
	return tr, errors.Join(errs...)
}

func (tr *tracer) isLocal(a netip.Addr) bool {
	return tr.local[a] || loopback.Contains(a) || loopback6.Contains(a)
}

// state is what a path knows about the packet.
type state struct {
	src, dst netip.Addr
	proto    string
	dport    int
	mark     uint32
	dnat     netip.AddrPort
	masq     bool
	prob     float64 // of this path, given the random matches on it
	hops     []Hop
	recent   []recentOp // recent matches evaluated on this path, in order
	assumed  *Hop       // the rule this path assumed to match (ParseLive)
}

// hop records a step. States that fork are clipped first (fork), so that
// they never share appends.
func (s *state) hop(h Hop) {
	s.hops = append(s.hops, h)
}

// fork makes s safe to go its own way: its next hop goes to a slice of its
// own.
func (s *state) fork() {
	s.hops = slices.Clip(s.hops)
}

type hookRef struct{ table, chain string }

var (
	natPrerouting  = hookRef{"nat", "PREROUTING"}
	natInput       = hookRef{"nat", "INPUT"}
	natOutput      = hookRef{"nat", "OUTPUT"}
	natPostrouting = hookRef{"nat", "POSTROUTING"}
	filterInput    = hookRef{"filter", "INPUT"}
	filterForward  = hookRef{"filter", "FORWARD"}
	filterOutput   = hookRef{"filter", "OUTPUT"}

	// The other tables, walked in a kernel's listing (ParseLive).
	rawPrerouting     = hookRef{"raw", "PREROUTING"}
	rawOutput         = hookRef{"raw", "OUTPUT"}
	manglePrerouting  = hookRef{"mangle", "PREROUTING"}
	mangleInput       = hookRef{"mangle", "INPUT"}
	mangleForward     = hookRef{"mangle", "FORWARD"}
	mangleOutput      = hookRef{"mangle", "OUTPUT"}
	manglePostrouting = hookRef{"mangle", "POSTROUTING"}
	securityInput     = hookRef{"security", "INPUT"}
	securityForward   = hookRef{"security", "FORWARD"}
	securityOutput    = hookRef{"security", "OUTPUT"}
)

// hookAt returns the i-th hook a packet in state st traverses. Only the
// first hook can DNAT, and locality is decided after it, so the sequences
// agree on what has been traversed already.
func (tr *tracer) hookAt(i int, st state) (hookRef, bool) {
	local := tr.isLocal(st.dst)
	var seq []hookRef
	switch {
	case tr.tolerant:
		// Every table, in the order of their hook priorities. A packet
		// from the node to itself leaves by OUTPUT and POSTROUTING and
		// comes back through INPUT (its PREROUTING on lo is not walked).
		// Only nat PREROUTING and nat OUTPUT DNAT, both third.
		switch {
		case tr.srcLocal && local:
			seq = []hookRef{rawOutput, mangleOutput, natOutput, filterOutput, securityOutput, manglePostrouting, natPostrouting, mangleInput, filterInput, securityInput, natInput}
		case tr.srcLocal:
			seq = []hookRef{rawOutput, mangleOutput, natOutput, filterOutput, securityOutput, manglePostrouting, natPostrouting}
		case local:
			seq = []hookRef{rawPrerouting, manglePrerouting, natPrerouting, mangleInput, filterInput, securityInput, natInput}
		default:
			seq = []hookRef{rawPrerouting, manglePrerouting, natPrerouting, mangleForward, filterForward, securityForward, manglePostrouting, natPostrouting}
		}
	case tr.srcLocal && local:
		seq = []hookRef{natOutput, filterOutput, natPostrouting, filterInput, natInput}
	case tr.srcLocal:
		seq = []hookRef{natOutput, filterOutput, natPostrouting}
	case local:
		seq = []hookRef{natPrerouting, filterInput, natInput}
	default:
		seq = []hookRef{natPrerouting, filterForward, natPostrouting}
	}
	if i >= len(seq) {
		return hookRef{}, false
	}
	return seq[i], true
}

func (tr *tracer) traverse(i int, st state, out *[]Path) error {
	h, ok := tr.hookAt(i, st)
	if !ok {
		*out = append(*out, newPath(Outcome{Accept, st.dnat, st.masq}, st))
		return nil
	}
	if tr.skip(h) {
		return tr.traverse(i+1, st, out)
	}
	var results []result
	if err := tr.walk(h, h.chain, 0, 0, nil, st, &results); err != nil {
		return err
	}
	for _, r := range results {
		if r.verdict != Accept {
			*out = append(*out, newPath(Outcome{r.verdict, r.st.dnat, r.st.masq}, r.st))
			continue
		}
		if err := tr.traverse(i+1, r.st, out); err != nil {
			return err
		}
	}
	return nil
}

// skip reports whether hook h does nothing a path should show: in a
// kernel's listing, a table other than nat and filter whose built-in chain
// is missing, or empty with the policy ACCEPT.
func (tr *tracer) skip(h hookRef) bool {
	if !tr.tolerant || h.table == "nat" || h.table == "filter" {
		return false
	}
	t := tr.tables[h.table]
	if t == nil || t.chains[h.chain] == nil {
		return true
	}
	c := t.chains[h.chain]
	return len(c.rules) == 0 && c.policy != Drop
}

// result is the end of a walk through one hook.
type result struct {
	st      state
	verdict string
}

// frame is where to continue after a chain returns.
type frame struct {
	chain       string
	next, depth int
}

// walk runs the rules of hook h from chain[idx], at depth, with the given
// return stack, appending every way out of the hook to out. Random matches
// fork the walk.
func (tr *tracer) walk(h hookRef, chain string, idx, depth int, stack []frame, st state, out *[]result) error {
	t := tr.tables[h.table]
	policy := t.chains[h.chain].policy
	maxDepth := MaxDepth
	if tr.tolerant {
		maxDepth = maxDepthLive
	}
	for {
		c := t.chains[chain]
		if idx >= len(c.rules) {
			if chain != h.chain {
				st.hop(Hop{Table: h.table, Chain: chain})
			}
			if len(stack) == 0 {
				st.hop(Hop{Table: h.table, Chain: h.chain, Policy: policy})
				*out = append(*out, result{st, policy})
				return nil
			}
			f := stack[len(stack)-1]
			chain, idx, depth, stack = f.chain, f.next, f.depth, stack[:len(stack)-1]
			continue
		}
		r := c.rules[idx]
		misses, hit, unsure, err := tr.matches(r, st)
		if err != nil {
			return fmt.Errorf("%s/%s rule %d %q: %w", h.table, chain, idx+1, r.text, err)
		}
		target := r.target
		if r.opaqueTarget {
			switch {
			case target == Accept || target == Drop || target == Reject || target == "RETURN":
			case continuing[target]:
				target = ""
			default:
				target = Unknown
			}
		}
		if hit != nil && unsure {
			// The rule may match: the path that assumes it does is
			// worth following when it assumes nothing else yet and the
			// rule does something.
			if hit.assumed != nil || target == "" || target == "LOG" {
				hit = nil
			} else {
				hit.assumed = &Hop{Table: h.table, Chain: chain, Rule: r.text}
			}
		}
		if hit == nil && len(misses) == 1 {
			st = misses[0]
			idx++
			continue
		}
		for _, miss := range misses {
			miss.fork()
			if err := tr.walk(h, chain, idx+1, depth, stack, miss, out); err != nil {
				return err
			}
		}
		if hit == nil {
			return nil
		}
		st = *hit
		st.fork()
		st.hop(Hop{Table: h.table, Chain: chain, Rule: r.text})
		where := func(err error) error {
			return fmt.Errorf("%s/%s rule %d %q (from %s): %w", h.table, chain, idx+1, r.text, h.chain, err)
		}
		// unknown ends the path where the tracer cannot follow it (a
		// kernel's listing), else fails with err.
		unknown := func(err error) error {
			if !tr.tolerant {
				return where(err)
			}
			*out = append(*out, result{st, Unknown})
			return nil
		}
		switch target {
		case "", "LOG":
			idx++
		case Unknown:
			*out = append(*out, result{st, Unknown})
			return nil
		case Accept, Drop, Reject:
			if target == Reject && h.table != "filter" && !tr.tolerant {
				return where(errors.New("REJECT is only valid in the filter table"))
			}
			*out = append(*out, result{st, target})
			return nil
		case "RETURN":
			if len(stack) == 0 {
				st.hop(Hop{Table: h.table, Chain: h.chain, Policy: policy})
				*out = append(*out, result{st, policy})
				return nil
			}
			f := stack[len(stack)-1]
			chain, idx, depth, stack = f.chain, f.next, f.depth, stack[:len(stack)-1]
		case "MARK":
			if err := applyMark(r, &st); err != nil && !tr.tolerant {
				return where(err)
			}
			idx++
		case "DNAT":
			if h.table != "nat" || (h.chain != "PREROUTING" && h.chain != "OUTPUT") {
				return where(errors.New("DNAT is only valid in nat PREROUTING and OUTPUT"))
			}
			if err := applyDNAT(r, &st); err != nil {
				return unknown(err)
			}
			*out = append(*out, result{st, Accept})
			return nil
		case "MASQUERADE":
			if h.table != "nat" || h.chain != "POSTROUTING" {
				return where(errors.New("MASQUERADE is only valid in nat POSTROUTING"))
			}
			st.masq = true
			*out = append(*out, result{st, Accept})
			return nil
		case "SNAT":
			if !tr.tolerant {
				return where(errors.New("target SNAT is not supported by the tracer"))
			}
			// Another program's source NAT: the endpoint sees another
			// source, as with MASQUERADE.
			st.masq = true
			*out = append(*out, result{st, Accept})
			return nil
		default:
			if _, ok := targets[target]; ok {
				return unknown(fmt.Errorf("target %s is not supported by the tracer", target))
			}
			if t.chains[target] == nil {
				return unknown(fmt.Errorf("jump to missing chain %q", target))
			}
			if depth+1 > maxDepth {
				return where(fmt.Errorf("chain nesting deeper than %d", maxDepth))
			}
			if !r.isGoto {
				stack = append(slices.Clip(stack), frame{chain, idx + 1, depth})
			}
			chain, idx, depth = target, 0, depth+1
		}
	}
}

// maxDepthLive bounds the nesting of a kernel's listing: iptables-legacy
// has no limit of its own, and the kernel refuses loops.
const maxDepthLive = 64

// holds is the probability of a deterministic condition: 1 or 0.
func holds(b, neg bool) float64 {
	if b != neg {
		return 1
	}
	return 0
}

// matches evaluates the matches of r in order for a packet in state st,
// as the kernel does: up to the first that fails, so that a recent match
// behind a failing one changes nothing. It returns the states in which the
// rule does not match (one per way of failing, each with its probability)
// and the state in which it does, nil if it cannot. Every match is
// checked, so that an unsupported one is an error even behind one that
// fails. In a kernel's listing, what the model cannot evaluate is no
// error: unsure then says that the rule may match (hit) or not (the last
// of misses), the tracer cannot tell.
func (tr *tracer) matches(r *rule, st state) (misses []state, hit *state, unsure bool, err error) {
	alive := true
	unsure = r.unknown != ""
	for i := range r.matches {
		m := &r.matches[i]
		if !alive {
			scratch := st
			if _, err := tr.match(m, &scratch); err != nil && !tr.tolerant {
				return nil, nil, false, err
			}
			continue
		}
		p, err := tr.match(m, &st)
		if err != nil {
			if !tr.tolerant {
				return nil, nil, false, err
			}
			unsure = true
			continue
		}
		switch {
		case p == 0:
			misses = append(misses, st)
			alive = false
		case p < 1:
			miss := st
			miss.prob *= 1 - p
			misses = append(misses, miss)
			st.prob *= p
		}
	}
	if alive {
		if unsure {
			misses = append(misses, st)
		}
		hit = &st
	}
	return misses, hit, unsure && alive, nil
}

// match evaluates one match and returns the probability that it holds: 0
// or 1 unless it is random.
func (tr *tracer) match(m *match, st *state) (float64, error) {
	if m.module == "recent" {
		p, err := tr.recentMatch(m, st)
		if err != nil {
			return 0, fmt.Errorf("-m recent: %w", err)
		}
		return p, nil
	}
	p := 1.0
	for _, o := range m.opts {
		v, err := tr.option(m.module, o, st)
		if err != nil {
			return 0, fmt.Errorf("-m %s %s: %w", cmp.Or(m.module, "(generic)"), o.name, err)
		}
		p *= v
	}
	return p, nil
}

// option evaluates one option of a match module against the packet.
func (tr *tracer) option(module string, o opt, st *state) (float64, error) {
	switch module + " " + o.name {
	case " -p":
		p := o.arg() // canonical: "tcp" also for "-p 6"
		return holds(p == "all" || p == st.proto, o.neg), nil
	case " -s", " -d":
		pfx, err := parsePrefix(o.arg())
		if err != nil {
			return 0, err
		}
		a := st.src
		if o.name == "-d" {
			a = st.dst
		}
		return holds(pfx.Contains(a), o.neg), nil
	case " -i":
		// Only lo is known: the way in of what the node sends itself.
		if o.arg() != "lo" {
			return 0, errors.New("not modelled by the tracer (of the interfaces, only lo is)")
		}
		return holds(tr.srcLocal, o.neg), nil
	case " -o":
		if o.arg() != "lo" {
			return 0, errors.New("not modelled by the tracer (of the interfaces, only lo is)")
		}
		return holds(tr.isLocal(st.dst), o.neg), nil
	case "tcp --dport", "udp --dport", "sctp --dport":
		lo, hi, err := parsePortRange(o.arg())
		if err != nil {
			return 0, err
		}
		return holds(module == st.proto && st.dport >= lo && st.dport <= hi, o.neg), nil
	case "multiport --dports":
		for _, p := range strings.Split(o.arg(), ",") {
			lo, hi, err := parsePortRange(p)
			if err != nil {
				return 0, err
			}
			if st.dport >= lo && st.dport <= hi {
				return holds(true, o.neg), nil
			}
		}
		return holds(false, o.neg), nil
	case "tcp --syn":
		// The first packet of a connection: SYN alone.
		return holds(true, o.neg), nil
	case "tcp --tcp-flags":
		mask, set := tcpFlagBits(o.args[0]), tcpFlagBits(o.args[1])
		return holds(mask&tcpSYN == set, o.neg), nil
	case "rpfilter --loose", "rpfilter --validmark", "rpfilter --accept-local":
		return 1, nil
	case "rpfilter --invert":
		// A packet from a routable source passes the reverse path
		// filter: "--invert" (firewalld's DROP of spoofed sources)
		// does not match it.
		return 0, nil
	case "nfacct --nfacct-name":
		return 1, nil
	case "comment --comment":
		return 1, nil
	case "addrtype --src-type", "addrtype --dst-type":
		a, local := st.dst, tr.isLocal(st.dst)
		if o.name == "--src-type" {
			a, local = st.src, tr.srcLocal
		}
		for _, typ := range strings.Split(strings.ToUpper(o.arg()), ",") {
			var is bool
			switch typ {
			case "LOCAL":
				is = local
			case "MULTICAST":
				is = a.IsMulticast()
			case "UNICAST":
				// What is neither the node's nor multicast routes as
				// unicast (the tracer knows no blackhole or
				// unreachable routes).
				is = !local && !a.IsMulticast()
			default:
				return 0, fmt.Errorf("address type %q not modelled (only LOCAL, UNICAST and MULTICAST)", typ)
			}
			if is {
				return holds(true, o.neg), nil
			}
		}
		return holds(false, o.neg), nil
	case "mark --mark":
		v, m, err := parseMark(o.arg())
		if err != nil {
			return 0, err
		}
		return holds(st.mark&m == v, o.neg), nil
	case "conntrack --ctstate", "state --state":
		// The traced packet opens a new connection; once DNATed, its
		// conntrack entry also has the DNAT status.
		match := false
		for _, s := range strings.Split(strings.ToUpper(o.arg()), ",") {
			match = match || s == "NEW" || (s == "DNAT" && st.dnat.IsValid())
		}
		return holds(match, o.neg), nil
	case "statistic --mode":
		if o.arg() != "random" {
			return 0, fmt.Errorf("mode %q not modelled (only random)", o.arg())
		}
		return 1, nil
	case "statistic --probability":
		p, err := parseProbability(o.arg())
		if err != nil {
			return 0, err
		}
		if o.neg {
			return 1 - p, nil
		}
		return p, nil
	}
	return 0, errors.New("not modelled by the tracer")
}

// TCP flags, as --tcp-flags names them.
const (
	tcpFIN = 1 << iota
	tcpSYN
	tcpRST
	tcpPSH
	tcpACK
	tcpURG
)

// tcpFlagBits returns the flags of a --tcp-flags list.
func tcpFlagBits(s string) int {
	bits := map[string]int{"FIN": tcpFIN, "SYN": tcpSYN, "RST": tcpRST, "PSH": tcpPSH, "ACK": tcpACK, "URG": tcpURG,
		"ALL": tcpFIN | tcpSYN | tcpRST | tcpPSH | tcpACK | tcpURG}
	n := 0
	for _, f := range strings.Split(strings.ToUpper(s), ",") {
		n |= bits[f]
	}
	return n
}

// parsePrefix parses the argument of -s or -d, refusing host bits.
func parsePrefix(s string) (netip.Prefix, error) {
	p, err := parseAddrMask(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p != p.Masked() {
		// iptables would silently mask it, which hides a bug in the caller.
		return netip.Prefix{}, fmt.Errorf("prefix %s has host bits set", s)
	}
	return p, nil
}

// parseMark parses "value[/mask]"; the mask defaults to all ones.
func parseMark(s string) (v, m uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v64, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("bad mark %q", s)
	}
	m64 := uint64(0xffffffff)
	if hasMask {
		if m64, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("bad mark mask %q", s)
		}
	}
	return uint32(v64), uint32(m64), nil
}

func applyMark(r *rule, st *state) error {
	if len(r.targetOpts) != 1 {
		return errors.New("MARK needs exactly one of --set-xmark, --set-mark, --or-mark, --and-mark, --xor-mark")
	}
	o := r.targetOpts[0]
	v, m, err := parseMark(o.arg())
	if err != nil {
		return err
	}
	switch o.name {
	case "--set-xmark":
		st.mark = st.mark&^m ^ v
	case "--set-mark":
		st.mark = st.mark&^m | v
	case "--or-mark":
		st.mark |= v
	case "--and-mark":
		st.mark &= v
	case "--xor-mark":
		st.mark ^= v
	default:
		return fmt.Errorf("MARK option %q not modelled", o.name)
	}
	return nil
}

func applyDNAT(r *rule, st *state) error {
	to, ok := r.targetOpt("--to-destination")
	if !ok || len(r.targetOpts) != 1 {
		return errors.New("DNAT needs exactly --to-destination")
	}
	port := st.dport
	var ip netip.Addr
	if ap, err := netip.ParseAddrPort(to); err == nil {
		ip, port = ap.Addr(), int(ap.Port())
		if port == 0 {
			return fmt.Errorf("DNAT to port 0 in %q", to)
		}
	} else if ip, err = netip.ParseAddr(to); err != nil {
		return fmt.Errorf("--to-destination %q not modelled (want ip or ip:port)", to)
	}
	if ip.Is4() != st.dst.Is4() {
		return fmt.Errorf("--to-destination %q is not of the packet's family", to)
	}
	st.dst, st.dport = ip, port
	st.dnat = netip.AddrPortFrom(ip, uint16(port))
	return nil
}
