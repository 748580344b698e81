package app

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/iptables/trace"
	"github.com/svcproxy/svcproxy/ipvs"
)

// explain --live: the same connection walked through the rules in this
// node's kernel (iptables-save, ip6tables-save), compared with the rules
// svcproxy would program.

// explainDrift is the exit code when the kernel's rules and the intended
// ones differ.
const explainDrift = 3

// Kinds of drift.
const (
	driftNoIP6tables    = "no-ip6tables"        // svcproxy cannot program IPv6 here
	driftMissingJump    = "missing-jump"        // a built-in chain lacks svcproxy's jump
	driftMissingChain   = "missing-chain"       // a chain of svcproxy's is not in the kernel
	driftChainRules     = "chain-rules"         // a chain of svcproxy's holds another number of rules
	driftLeftover       = "kube-proxy-leftover" // kube-proxy's chain is jumped to before ours
	driftVerdict        = "verdict"             // the kernel decides otherwise
	driftMissingEP      = "missing-endpoint"    // an endpoint the kernel never DNATs to
	driftExtraEP        = "extra-endpoint"      // the kernel DNATs to what is no endpoint
	driftProbability    = "endpoint-probability"
	driftMasquerade     = "masquerade"
	driftForeign        = "foreign-rule"           // another program's rule decides
	driftForeignMay     = "foreign-rule-may-match" // …or may, the tracer cannot tell
	driftForeignPolicy  = "policy"                 // a built-in chain's DROP policy decides
	probabilityEpsilon  = 5e-5                     // below what -o text shows
	externalSource4     = "192.0.2.254"            // --all's outside client (TEST-NET-1)
	externalSource6     = "2001:db8::fe"
	kernelNotReadPrefix = "reading this node's rules"
)

// driftItem is one difference between the rules svcproxy would program and
// the kernel's.
type driftItem struct {
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
	Chain  string `json:"chain,omitempty"` // "table/CHAIN" the difference is in
	Rule   string `json:"rule,omitempty"`  // the rule concerned, as the kernel lists it
}

// kernelView is what the kernel's rules do with the connection.
type kernelView struct {
	Verdict string `json:"verdict"`
	// Verdicts are the probabilities of the verdicts, when there is more
	// than one.
	Verdicts   map[string]float64 `json:"verdicts,omitempty"`
	Endpoints  []endpoint         `json:"endpoints"`
	Masquerade bool               `json:"masquerade"`
	Path       []string           `json:"path"`
}

// explainDeps is what explain reads besides its arguments: the API server,
// and with --live the kernel's rules and this namespace's addresses.
type explainDeps struct {
	newClient  newKubeClient
	kernel     kernelRules
	localAddrs func() ([]netip.Addr, error)
	// ipvsKernel opens IPVS mode's kernel state (--live --mode ipvs),
	// which explain only lists.
	ipvsKernel func() ipvs.Interface
}

// kernelRules reads this node's iptables rules.
type kernelRules interface {
	// Save returns every table of iptables-save (ipv6: ip6tables-save);
	// errNoIP6tables when ip6tables does not work here.
	Save(ipv6 bool) (string, error)
}

// errNoIP6tables: ip6tables does not work on this node, so svcproxy
// programs no IPv6 rules (it runs IPv4 only, as the daemon logs).
var errNoIP6tables = errors.New("ip6tables does not work on this node")

// execKernel is the real kernelRules: iptables-save and ip6tables-save of
// the variant the host uses (iptables.DetectVariant), read only.
type execKernel struct {
	once       sync.Once
	v4, v6     *iptables.Exec
	err4, err6 error
}

func (k *execKernel) Save(ipv6 bool) (string, error) {
	k.once.Do(func() {
		v := iptables.DetectVariant()
		k.v4, k.err4 = iptables.NewExec(v)
		k.v6, k.err6 = iptables.NewExec6(v)
	})
	e, err := k.v4, k.err4
	if ipv6 {
		e, err = k.v6, k.err6
		if err != nil {
			return "", fmt.Errorf("%w: %v", errNoIP6tables, err)
		}
	}
	if err != nil {
		return "", err
	}
	out, err := e.Save()
	return string(out), err
}

// hostAddrs returns the addresses of this network namespace's interfaces.
func hostAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}

func defaultExplainDeps() explainDeps {
	return explainDeps{newClient: kubeClient, kernel: &execKernel{}, localAddrs: hostAddrs,
		ipvsKernel: func() ipvs.Interface { return ipvs.NewKernel() }}
}

// kernelError is a failure to read or parse the kernel's rules.
type kernelError struct{ err error }

func (e *kernelError) Error() string { return kernelNotReadPrefix + ": " + e.err.Error() }
func (e *kernelError) Unwrap() error { return e.err }

// liveRuleset returns the kernel's rules of a family, read once.
func (x *explainer) liveRuleset(ipv6 bool) (*trace.Ruleset, error) {
	if rs := x.live[ipv6]; rs != nil {
		return rs, nil
	}
	if err := x.liveErr[ipv6]; err != nil {
		return nil, err
	}
	rs, err := x.readLive(ipv6)
	if err != nil {
		x.liveErr[ipv6] = err
		return nil, err
	}
	x.live[ipv6] = rs
	return rs, nil
}

func (x *explainer) readLive(ipv6 bool) (*trace.Ruleset, error) {
	cmd := "iptables-save"
	if ipv6 {
		cmd = "ip6tables-save"
	}
	save, err := x.deps.kernel.Save(ipv6)
	if errors.Is(err, errNoIP6tables) {
		return nil, err
	}
	if err != nil {
		return nil, &kernelError{err}
	}
	rs, err := trace.ParseLive(save, ipv6)
	if err != nil {
		return nil, &kernelError{fmt.Errorf("%s output: %w", cmd, err)}
	}
	return rs, nil
}

// addHostAddrs adds this namespace's addresses to the node's: with --live
// explain runs on the node, and the kernel's "addrtype LOCAL" is these.
func (x *explainer) addHostAddrs() error {
	addrs, err := x.deps.localAddrs()
	if err != nil {
		return &kernelError{fmt.Errorf("this node's addresses: %w", err)}
	}
	for _, a := range addrs {
		if slices.Contains(x.ipvs.onDummy, a) {
			continue // a service address on IPVS mode's dummy link
		}
		if !slices.Contains(x.hostAddrs, a) {
			x.hostAddrs = append(x.hostAddrs, a)
		}
		if a.IsGlobalUnicast() && !slices.Contains(x.nodeIPs, a) {
			x.nodeIPs = append(x.nodeIPs, a)
		}
	}
	return nil
}

// compareLive walks the packet through the kernel's rules, fills r.Kernel
// and r.Drift. structural adds the checks of the chains and jumps on the
// intended path (explain TARGET); --all checks them for the whole node
// once instead.
func (x *explainer) compareLive(d dest, pkt trace.Packet, intended []trace.Path, r *portResult, structural bool) error {
	ipv6 := d.dst.Addr().Is6()
	live, err := x.liveRuleset(ipv6)
	if errors.Is(err, errNoIP6tables) {
		r.Drift = append(r.Drift, driftItem{Kind: driftNoIP6tables, Detail: err.Error() + ": svcproxy programs no IPv6 rules, and nothing proxies this IPv6 connection"})
		return nil
	}
	if err != nil {
		return err
	}
	paths, err := live.Explain(pkt, nil, time.Time{})
	if err == nil && len(paths) == 0 {
		err = errors.New("no path")
	}
	if err != nil {
		return &kernelError{fmt.Errorf("tracing %s -> %s through the kernel's rules: %w", pkt.SrcIP, d.dst, err)}
	}
	var certain, assumed []trace.Path
	for _, p := range paths {
		if p.Assumed == nil {
			certain = append(certain, p)
		} else {
			assumed = append(assumed, p)
		}
	}
	want, got := summarize(intended), summarize(certain)
	r.Kernel = x.kernelView(d, got)
	rs, _ := x.ruleset(ipv6)
	if structural {
		r.Drift = append(r.Drift, structuralDrift(iptables.IsOwnedChain, rs, live, intended)...)
	}
	r.Drift = append(r.Drift, outcomeDrift(want, got)...)
	r.Drift = append(r.Drift, foreignDrift(iptables.IsOwnedChain, live, want, certain, assumed)...)
	return nil
}

// summary is what a set of paths does, by kind of outcome.
type summary struct {
	verdicts map[string]float64         // verdict -> probability
	eps      map[netip.AddrPort]float64 // DNATed and accepted: endpoint -> probability
	masq     map[netip.AddrPort]bool    // …and whether a path to it masquerades
	keys     map[outcomeKey]bool
	verdict  string      // the likeliest
	rep      *trace.Path // its likeliest path
}

type outcomeKey struct {
	verdict string
	dnat    netip.AddrPort
	masq    bool
}

func keyOf(o trace.Outcome) outcomeKey {
	return outcomeKey{verdictOf(o), o.DNAT, o.Masquerade}
}

// verdictOrder is the order verdicts are listed in.
var verdictOrder = []string{verdictDNAT, verdictReject, verdictDrop, verdictNoMatch, verdictUnknown}

func summarize(paths []trace.Path) summary {
	s := summary{verdicts: map[string]float64{}, eps: map[netip.AddrPort]float64{}, masq: map[netip.AddrPort]bool{}, keys: map[outcomeKey]bool{}}
	for _, p := range paths {
		v := verdictOf(p.Outcome)
		s.verdicts[v] += p.Probability
		s.keys[keyOf(p.Outcome)] = true
		if v == verdictDNAT {
			s.eps[p.DNAT] += p.Probability
			s.masq[p.DNAT] = s.masq[p.DNAT] || p.Masquerade
		}
	}
	for _, v := range verdictOrder {
		if s.verdicts[v] > 0 && (s.verdict == "" || s.verdicts[v] > s.verdicts[s.verdict]) {
			s.verdict = v
		}
	}
	for i, p := range paths {
		if verdictOf(p.Outcome) == s.verdict && (s.rep == nil || p.Probability > s.rep.Probability) {
			s.rep = &paths[i]
		}
	}
	return s
}

// kernelView describes what the kernel's rules do.
func (x *explainer) kernelView(d dest, s summary) *kernelView {
	k := &kernelView{Verdict: s.verdict, Endpoints: []endpoint{}, Path: []string{}}
	if len(s.verdicts) > 1 {
		k.Verdicts = map[string]float64{}
		for v, p := range s.verdicts {
			k.Verdicts[v] = round4(p)
		}
	}
	for ap, p := range s.eps {
		e := x.endpointOf(d, ap)
		e.Probability, e.Masquerade = round4(p), s.masq[ap]
		k.Endpoints = append(k.Endpoints, e)
		k.Masquerade = k.Masquerade || s.masq[ap]
	}
	slices.SortFunc(k.Endpoints, func(a, b endpoint) int { return cmp.Compare(endpointAddr(a), endpointAddr(b)) })
	if s.rep != nil {
		k.Path = s.rep.Chains()
	}
	return k
}

// endpointOf returns the endpoint of d's port at ap, as far as the state
// knows it.
func (x *explainer) endpointOf(d dest, ap netip.AddrPort) endpoint {
	e := endpoint{IP: ap.Addr().String(), Port: int(ap.Port())}
	for _, ep := range d.sp.AllEndpoints {
		if ep.IP == ap.Addr() && int(ep.Port) == e.Port {
			e.Node, e.Local = ep.NodeName, ep.IsLocal
		}
	}
	return e
}

func round4(p float64) float64 { return math.Round(p*1e4) / 1e4 }

// verdictMix is "DNAT" for one verdict, else "DNAT p=0.5000, NO-MATCH
// p=0.5000".
func verdictMix(v map[string]float64) string {
	var parts []string
	for _, k := range verdictOrder {
		if p, ok := v[k]; ok && p > probabilityEpsilon {
			parts = append(parts, fmt.Sprintf("%s p=%.4f", strings.ToUpper(k), p))
		}
	}
	if len(parts) == 1 {
		return strings.Fields(parts[0])[0]
	}
	return strings.Join(parts, ", ")
}

// outcomeDrift compares what the intended rules and the kernel's do.
func outcomeDrift(want, got summary) []driftItem {
	var out []driftItem
	verdictsDiffer := false
	for _, v := range verdictOrder {
		if math.Abs(want.verdicts[v]-got.verdicts[v]) > probabilityEpsilon {
			verdictsDiffer = true
		}
	}
	if verdictsDiffer {
		out = append(out, driftItem{Kind: driftVerdict, Detail: fmt.Sprintf("intended %s; the kernel's rules give %s", verdictMix(want.verdicts), verdictMix(got.verdicts))})
	}
	if len(got.eps) == 0 && len(want.eps) > 0 {
		return out // the verdict says it: no endpoint is reached at all
	}
	var eps []netip.AddrPort
	for ap := range want.eps {
		eps = append(eps, ap)
	}
	for ap := range got.eps {
		if _, ok := want.eps[ap]; !ok {
			eps = append(eps, ap)
		}
	}
	slices.SortFunc(eps, func(a, b netip.AddrPort) int { return a.Compare(b) })
	for _, ap := range eps {
		w, inWant := want.eps[ap]
		g, inGot := got.eps[ap]
		switch {
		case !inGot:
			out = append(out, driftItem{Kind: driftMissingEP, Detail: fmt.Sprintf("%s (p=%.4f intended) is never reached: the kernel's rules do not DNAT to it", ap, w)})
		case !inWant:
			out = append(out, driftItem{Kind: driftExtraEP, Detail: fmt.Sprintf("the kernel's rules DNAT to %s (p=%.4f), which is no endpoint of this port now", ap, g)})
		case math.Abs(w-g) > probabilityEpsilon:
			out = append(out, driftItem{Kind: driftProbability, Detail: fmt.Sprintf("%s: p=%.4f in the kernel's rules, %.4f intended", ap, g, w)})
		}
		if inWant && inGot && want.masq[ap] != got.masq[ap] {
			out = append(out, driftItem{Kind: driftMasquerade, Detail: fmt.Sprintf("%s: %s intended; the kernel's rules %s", ap, masqWord(want.masq[ap], false), masqWord(got.masq[ap], true))})
		}
	}
	return out
}

func masqWord(masq, kernel bool) string {
	switch {
	case masq && kernel:
		return "masquerade the connection (the endpoint sees the node's address)"
	case masq:
		return "masquerade (the endpoint sees the node's address)"
	case kernel:
		return "keep the source address"
	}
	return "no masquerade (the endpoint sees the source address)"
}

// structuralDrift checks, for the chains and built-in chains the intended
// paths go through, that the kernel has svcproxy's jumps and chains (with
// as many rules) and no kube-proxy chain jumped to before them. owned
// tells the mode's chains (iptables.IsOwnedChain, ipvs.IsOwnedChain).
func structuralDrift(owned func(string) bool, rs, live *trace.Ruleset, intended []trace.Path) []driftItem {
	type ref struct{ table, chain string }
	seen := map[ref]bool{}
	var chains []ref
	jumps := map[ref][]string{} // built-in chain -> our targets it jumps to
	for _, p := range intended {
		for _, h := range p.Hops {
			c := ref{h.Table, h.Chain}
			if !seen[c] {
				seen[c] = true
				chains = append(chains, c)
			}
			if pol, _ := rs.Policy(h.Table, h.Chain); pol != "" && h.Rule != "" {
				if tgt := ruleTarget(h.Rule); owned(tgt) && !slices.Contains(jumps[c], tgt) {
					jumps[c] = append(jumps[c], tgt)
				}
			}
		}
	}
	var out []driftItem
	for _, c := range chains {
		if pol, _ := rs.Policy(c.table, c.chain); pol != "" {
			out = append(out, jumpDrift(owned, live, c.table, c.chain, jumps[c])...)
			continue
		}
		out = append(out, chainDrift(rs, live, c.table, c.chain)...)
	}
	return out
}

// jumpDrift checks a built-in chain of the kernel's for svcproxy's jumps
// to want, and for kube-proxy chains jumped to before them.
func jumpDrift(owned func(string) bool, live *trace.Ruleset, table, chain string, want []string) []driftItem {
	where := table + "/" + chain
	targets, _ := live.Targets(table, chain)
	var out []driftItem
	for _, w := range want {
		if !slices.Contains(targets, w) {
			out = append(out, driftItem{Kind: driftMissingJump, Chain: where, Detail: fmt.Sprintf("%s has no jump to %s: svcproxy's rules are not reached from it", where, w)})
		}
	}
	ours := slices.IndexFunc(targets, owned)
	rules, _ := live.Rules(table, chain)
	for i, tgt := range targets {
		if (ours < 0 || i < ours) && iptables.IsKubeProxyChain(tgt) {
			before := "before svcproxy's jump"
			if ours < 0 {
				before = "and svcproxy has no jump there"
			}
			out = append(out, driftItem{Kind: driftLeftover, Chain: where, Rule: rules[i],
				Detail: fmt.Sprintf("%s jumps to kube-proxy's %s %s: kube-proxy's leftover rules see the packet first", where, tgt, before)})
		}
	}
	return out
}

// chainDrift checks that a chain of svcproxy's is in the kernel with as
// many rules as intended (iptables-save writes rules in its own words, so
// the text cannot be compared).
func chainDrift(rs, live *trace.Ruleset, table, chain string) []driftItem {
	where := table + "/" + chain
	want, _ := rs.Rules(table, chain)
	got, ok := live.Rules(table, chain)
	switch {
	case !ok:
		return []driftItem{{Kind: driftMissingChain, Chain: where, Detail: fmt.Sprintf("svcproxy's chain %s is not in the kernel", where)}}
	case len(got) != len(want):
		return []driftItem{{Kind: driftChainRules, Chain: where, Detail: fmt.Sprintf("%s holds %s in the kernel, %d intended", where, count(len(got), "rule"), len(want))}}
	}
	return nil
}

// ruleTarget returns the chain or target a rule's text jumps or goes to.
func ruleTarget(rule string) string {
	f := strings.Fields(rule)
	for i := len(f) - 2; i >= 0; i-- {
		if f[i] == "-j" || f[i] == "-g" || f[i] == "--jump" || f[i] == "--goto" {
			return f[i+1]
		}
	}
	return ""
}

// ours reports whether a hop is svcproxy's: in a chain of ours, or a jump
// into one.
func ours(owned func(string) bool, h trace.Hop) bool {
	return owned(h.Chain) || (h.Rule != "" && owned(ruleTarget(h.Rule)))
}

// foreignDrift names the rules of other programs that decide the
// connection otherwise than intended: on the kernel's certain paths, the
// rule that decided; on the paths that assume a rule the tracer cannot
// evaluate, that rule.
func foreignDrift(owned func(string) bool, live *trace.Ruleset, want summary, certain, assumed []trace.Path) []driftItem {
	var out []driftItem
	seen := map[string]bool{}
	add := func(d driftItem) {
		if k := d.Kind + d.Chain + d.Rule; !seen[k] {
			seen[k] = true
			out = append(out, d)
		}
	}
	for _, p := range certain {
		if want.keys[keyOf(p.Outcome)] {
			continue
		}
		for _, h := range decidingHops(p) {
			if ours(owned, h) {
				continue
			}
			where := h.Table + "/" + h.Chain
			if h.Rule == "" {
				if h.Policy != "" && h.Policy != trace.Accept {
					add(driftItem{Kind: driftForeignPolicy, Chain: where, Detail: fmt.Sprintf("the policy of %s, %s, decides the packet: no rule before it accepts it", where, h.Policy)})
				}
				continue
			}
			add(driftItem{Kind: driftForeign, Chain: where, Rule: h.Rule, Detail: fmt.Sprintf("a foreign rule %s catches the packet%s: %s%s", place(owned, live, h), first(owned, live, h), h.Rule, opaque(p))})
		}
	}
	for _, p := range assumed {
		if want.keys[keyOf(p.Outcome)] {
			continue
		}
		h := *p.Assumed
		add(driftItem{Kind: driftForeignMay, Chain: h.Table + "/" + h.Chain, Rule: h.Rule,
			Detail: fmt.Sprintf("a foreign rule %s may catch the packet%s: %s (explain cannot tell whether it matches)", place(owned, live, h), first(owned, live, h), h.Rule)})
	}
	return out
}

// decidingHops returns the hops of a path that decided its outcome: the
// last one for a verdict of its own, the one that DNATed, and the
// masquerading one.
func decidingHops(p trace.Path) []trace.Hop {
	if len(p.Hops) == 0 {
		return nil
	}
	if p.Verdict != trace.Accept {
		return []trace.Hop{p.Hops[len(p.Hops)-1]}
	}
	var out []trace.Hop
	if p.DNAT.IsValid() {
		// The DNAT is the last rule of the first run of nat hops.
		i := slices.IndexFunc(p.Hops, func(h trace.Hop) bool { return h.Table == "nat" })
		for i >= 0 && i+1 < len(p.Hops) && p.Hops[i+1].Table == "nat" && p.Hops[i+1].Chain != "POSTROUTING" {
			i++
		}
		if i >= 0 && p.Hops[i].Rule != "" {
			out = append(out, p.Hops[i])
		}
	}
	if p.Masquerade {
		for _, h := range p.Hops {
			if t := ruleTarget(h.Rule); t == "MASQUERADE" || t == "SNAT" {
				out = append(out, h)
			}
		}
	}
	return out
}

// place says where a rule is: "earlier in nat/PREROUTING" for a built-in
// chain where it comes before svcproxy's jump (or svcproxy has none), "in
// table/CHAIN" otherwise.
func place(owned func(string) bool, live *trace.Ruleset, h trace.Hop) string {
	if before(owned, live, h) {
		return "earlier in " + h.Table + "/" + h.Chain
	}
	return "in " + h.Table + "/" + h.Chain
}

func first(owned func(string) bool, live *trace.Ruleset, h trace.Hop) string {
	if before(owned, live, h) {
		return " first"
	}
	return ""
}

func before(owned func(string) bool, live *trace.Ruleset, h trace.Hop) bool {
	if pol, _ := live.Policy(h.Table, h.Chain); pol == "" {
		return false
	}
	rules, _ := live.Rules(h.Table, h.Chain)
	targets, _ := live.Targets(h.Table, h.Chain)
	i := slices.Index(rules, h.Rule)
	ours := slices.IndexFunc(targets, owned)
	return i >= 0 && (ours < 0 || i < ours)
}

func opaque(p trace.Path) string {
	if p.Verdict == trace.Unknown {
		return " (its target is one explain does not follow)"
	}
	return ""
}

// writeLive writes what --live found for a result: what the kernel's rules
// do (when they differ) and each difference.
func writeLive(line func(key, format string, args ...any), r portResult) {
	if r.Kernel == nil && len(r.Drift) == 0 {
		return
	}
	switch {
	case r.Kernel == nil:
	case len(r.Drift) == 0:
		line("  kernel", "agrees: %s", strings.ToUpper(r.Kernel.Verdict))
	default:
		v := strings.ToUpper(r.Kernel.Verdict)
		if r.Kernel.Verdicts != nil {
			v = verdictMix(r.Kernel.Verdicts)
		}
		line("  kernel", "%s", v)
		for _, e := range r.Kernel.Endpoints {
			masq := ""
			if e.Masquerade {
				masq = "  masquerade"
			}
			line("", "%s  p=%.4f%s", endpointAddr(e), e.Probability, masq)
		}
		switch {
		case slices.Equal(r.Kernel.Path, r.Path) && slices.ContainsFunc(r.Path, func(s string) bool { return strings.Contains(s, " ") }):
			line("", "via the path above")
		case slices.ContainsFunc(r.Kernel.Path, func(s string) bool { return strings.Contains(s, " ") }):
			for i, s := range r.Kernel.Path { // IPVS mode: the objects met
				if i == 0 {
					s = "via " + s
				}
				line("", "%s", s)
			}
		case len(r.Kernel.Path) > 0:
			line("", "via %s", strings.Join(r.Kernel.Path, " "))
		}
	}
	for i, d := range r.Drift {
		key := ""
		if i == 0 {
			key = "  drift"
		}
		line(key, "%s: %s", d.Kind, d.Detail)
	}
}
