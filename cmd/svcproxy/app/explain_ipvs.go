package app

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables/trace"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxy"
)

// explain --mode ipvs: the connection followed through the IPVS plan the
// daemon would program (ipvs.Explain: the filter sets, the virtual server,
// its real servers, the masquerade marks), and with --live through what
// the kernel holds (ipvs.ListedPlan) and the iptables rules before IPVS.

// Kinds of drift of IPVS mode, besides the ones ipvs.DriftItems names
// (verdict, scheduler, missing-endpoint, extra-endpoint, endpoint-weight,
// masquerade) and iptables mode's for the SVCP-IPVS-* chains and jumps.
const (
	driftNoIPVS          = "no-ipvs"           // the kernel has no ip_vs loaded
	driftNotBound        = "address-not-bound" // a service address missing from the dummy link
	driftExtraVirtServer = "extra-virtual-server"
	driftNoIPv6          = "no-ipv6" // the kernel cannot bind IPv6 addresses
)

// ipvsView is what explain works with in IPVS mode.
type ipvsView struct {
	opts  ipvs.Options
	plan  *ipvs.Plan
	rules map[bool]*trace.Ruleset // the plan's iptables rules, by IPv6

	// --live
	k        ipvs.Interface
	absent   bool         // the kernel has no IPVS: no virtual server to list
	onDummy  []netip.Addr // the addresses on svcproxy's (or kube-proxy's) dummy link
	listed   *ipvs.Plan
	listErr  error
	listDone bool
}

// noVirtualServers is a kernel without ip_vs loaded, as ListedPlan sees it:
// listing its virtual servers would load the module, and there are none.
type noVirtualServers struct{ ipvs.Interface }

func (noVirtualServers) ListServices() ([]*ipvs.VirtualServer, error) { return nil, nil }

// openIPVS opens the kernel's IPVS state for --live (read only) and lists
// the addresses of the dummy links: service addresses, not the node's.
func (x *explainer) openIPVS() error {
	k := x.deps.ipvsKernel()
	x.ipvs.k = k
	if !k.Available() {
		x.ipvs.absent = true
		x.ipvs.k = noVirtualServers{k}
	}
	for _, link := range []string{ipvs.DummyInterface, "kube-ipvs0"} {
		addrs, err := k.ListAddresses(link)
		if err != nil && !ipvs.IsNotFound(err) {
			return &kernelError{fmt.Errorf("the addresses of %s: %w", link, err)}
		}
		x.ipvs.onDummy = append(x.ipvs.onDummy, addrs...)
	}
	return nil
}

// ipvsOptions are the options the daemon would run IPVS mode with on this
// node: the configuration's, IPv6 where the state has IPv6 service ports,
// and the node's addresses (HostOptions on the node: every address but
// loopback, link-local and the dummy links'; node ports on those within
// --nodeport-addresses).
func (x *explainer) ipvsOptions() ipvs.Options {
	opts := x.o.IPVSOptions()
	opts.IPv6 = families(x.cl.snap)[v1.IPv6Protocol]
	for _, a := range slices.Concat(x.nodeIPs, x.hostAddrs) {
		if a.IsGlobalUnicast() && !slices.Contains(opts.LocalAddresses, a) && !slices.Contains(x.ipvs.onDummy, a) {
			opts.LocalAddresses = append(opts.LocalAddresses, a)
		}
	}
	slices.SortFunc(opts.LocalAddresses, netip.Addr.Compare)
	npa := x.o.NodePortAddressPrefixes()
	for _, a := range opts.LocalAddresses {
		if withinFamily(a, npa) {
			opts.NodeAddresses = append(opts.NodeAddresses, a)
		}
	}
	return opts
}

// withinFamily reports whether a is within one of the prefixes of its
// family; a family without prefixes takes every address
// (--nodeport-addresses per family, as HostOptions reads it).
func withinFamily(a netip.Addr, prefixes []netip.Prefix) bool {
	ofFamily := false
	for _, p := range prefixes {
		if p.Addr().Is6() == a.Is6() {
			ofFamily = true
			if p.Contains(a) {
				return true
			}
		}
	}
	return !ofFamily
}

// ipvsPlan returns the plan the daemon would program, rendered once.
func (x *explainer) ipvsPlan() *ipvs.Plan {
	if x.ipvs.plan == nil {
		x.ipvs.opts = x.ipvsOptions()
		x.ipvs.plan = ipvs.Render(x.cl.snap, x.ipvs.opts)
	}
	return x.ipvs.plan
}

// ipvsRules returns the plan's iptables rules of a family, nil when the
// family is not programmed. They match on ipsets, which the tracer cannot
// look into: read tolerantly, a set match may hold.
func (x *explainer) ipvsRules(ipv6 bool) (*trace.Ruleset, error) {
	if rs, ok := x.ipvs.rules[ipv6]; ok {
		return rs, nil
	}
	p := x.ipvsPlan().IPTables
	if ipv6 {
		p = x.ipvsPlan().IPTables6
	}
	var rs *trace.Ruleset
	if p != nil {
		var err error
		if rs, err = trace.ParseLive(p.String(), ipv6); err != nil {
			return nil, fmt.Errorf("IPVS mode's rendered rules do not load: %w", err)
		}
	}
	if x.ipvs.rules == nil {
		x.ipvs.rules = map[bool]*trace.Ruleset{}
	}
	x.ipvs.rules[ipv6] = rs
	return rs, nil
}

// ipvsListed returns what the kernel holds of IPVS mode, read once.
func (x *explainer) ipvsListed() (*ipvs.Plan, error) {
	if !x.ipvs.listDone {
		x.ipvs.listDone = true
		x.ipvs.listed, x.ipvs.listErr = ipvs.ListedPlan(x.ipvs.k, x.ipvsPlan(), x.ipvs.opts)
		if x.ipvs.listErr != nil {
			x.ipvs.listErr = &kernelError{fmt.Errorf("IPVS mode's state: %w", x.ipvs.listErr)}
		}
	}
	return x.ipvs.listed, x.ipvs.listErr
}

// assumeNodeAddrs takes the address of a node port target as the node's
// when no node address of its family is known (--node-ip, the Node's
// status, with --live this namespace's): IPVS has virtual servers for node
// ports on the node's addresses only.
func (x *explainer) assumeNodeAddrs(dests []dest) {
	for _, d := range dests {
		a := d.dst.Addr()
		if d.via != viaNodePort || !a.IsGlobalUnicast() || slices.ContainsFunc(x.nodeIPs, func(n netip.Addr) bool { return n.Is6() == a.Is6() }) {
			continue
		}
		x.note("%s is taken to be an address of %s (--node-ip names the node's addresses)", a, x.o.NodeName())
		x.nodeIPs = append(x.nodeIPs, a)
	}
}

// traceDestIPVS explains a connection to d in IPVS mode; nil when the
// source has no address of d's family.
func (x *explainer) traceDestIPVS(d dest) (*portResult, error) {
	src, desc, ok := x.source(d)
	if !ok {
		return nil, nil
	}
	plan := x.ipvsPlan()
	pkt := ipvs.Packet{Src: src, Dst: d.dst.Addr(), Protocol: d.sp.Protocol, Port: d.dst.Port(), FromNode: x.src.kind == fromNode}
	e := ipvs.Explain(plan, pkt)
	r := newResult()
	r.Service = d.sp.Name.Namespace + "/" + d.sp.Name.Name
	r.Port, r.Protocol, r.Family = d.sp.Name.Port, string(d.sp.Protocol), family(d.dst.Addr())
	r.From, r.Source, r.Destination, r.Via = desc, src.String(), d.dst.String(), d.via
	r.Verdict = e.Verdict
	r.Endpoints = x.ipvsEndpoints(d, e)
	r.Masquerade = slices.ContainsFunc(r.Endpoints, func(e endpoint) bool { return e.Masquerade })
	r.Path = append(r.Path, e.Path...)
	c := x.classify(src)
	r.Reason = x.ipvsReason(d, src, c, e)
	if r.Verdict == verdictDNAT {
		r.MasqueradeReason = x.ipvsMasqueradeReason(d, src, c, e)
	}
	if x.src.kind == fromRemotePod && d.via == viaClusterIP {
		x.note("a pod on another node reaches a cluster IP through its own node's rules: this is how %s's rules would treat it", x.o.NodeName())
	}
	if x.e.live {
		if err := x.compareLiveIPVS(d, src, pkt, e, &r, !x.e.all); err != nil {
			return nil, err
		}
	}
	return &r, nil
}

// ipvsEndpoints returns the real servers an Explanation may pick, as
// endpoints of d's service port.
func (x *explainer) ipvsEndpoints(d dest, e ipvs.Explanation) []endpoint {
	out := []endpoint{}
	for _, ep := range e.Endpoints {
		en := x.endpointOf(d, ep.AddrPort)
		en.Probability = round4(ep.Probability)
		en.Masquerade = e.Masquerade || ep.Hairpin
		out = append(out, en)
	}
	return out
}

// ipvsReason says why, from the Snapshot where it knows (the endpoints,
// the traffic policies, the source ranges, the node port's address) and
// from the Explanation for what is IPVS's own (the scheduler and
// persistence, IPVS refusing, the node's connections skipping the filter).
func (x *explainer) ipvsReason(d dest, src netip.Addr, c string, e ipvs.Explanation) string {
	switch e.Verdict {
	case ipvs.VerdictDNAT:
		return x.dnatReason(d, c) + "; " + e.Reason
	case ipvs.VerdictReject:
		node := ""
		if x.src.kind == fromNode {
			node = " (IPVS takes the node's own connections in LOCAL_OUT, before the filter's REJECT and DROP)"
		}
		switch {
		case !d.sp.HasEndpoints():
			if node != "" {
				return rejectReason(d.sp) + "; " + e.Reason + node
			}
			return rejectReason(d.sp)
		case x.localPolicyReason(d, c) != "":
			return x.localPolicyReason(d, c) + "; " + e.Reason + node
		}
		return e.Reason
	case ipvs.VerdictDrop:
		if why := x.dropReason(d, src, c); why != dropFallback {
			return why
		}
		return e.Reason
	}
	local := x.ipvsPlan().Addresses
	local = slices.Concat(local, x.ipvs.opts.LocalAddresses, x.hostAddrs)
	if why := x.noMatchReason(d, local); why != noMatchFallback {
		return why
	}
	return e.Reason
}

// localPolicyReason says why a Local traffic policy leaves d without an
// endpoint on this node, "" when it does not.
func (x *explainer) localPolicyReason(d dest, c string) string {
	sp := d.sp
	switch {
	case len(sp.LocalEndpoints) > 0:
		return ""
	case d.via == viaClusterIP && sp.InternalPolicyLocal:
		return fmt.Sprintf("internalTrafficPolicy Local and no endpoint on %s (%d on other nodes)", x.o.NodeName(), elsewhere(sp))
	case d.via != viaClusterIP && sp.ExternalPolicyLocal:
		return x.etpLocalReason(sp, elsewhere(sp), c)
	}
	return ""
}

// ipvsMasqueradeReason says why the endpoint sees the node's address or
// the client's: which mark rule decides (the Explanation's), hairpin, and
// for a source kept what the Snapshot and flags say as in iptables mode.
func (x *explainer) ipvsMasqueradeReason(d dest, src netip.Addr, c string, e ipvs.Explanation) string {
	switch {
	case e.Masquerade:
		return fmt.Sprintf("%s: the endpoint sees %s's address, not the client's", e.MasqueradeReason, x.o.NodeName())
	case slices.ContainsFunc(e.Endpoints, func(ep ipvs.ExplainedEndpoint) bool { return ep.Hairpin }):
		return fmt.Sprintf("only when the pod reaches itself (%s): hairpin traffic is masqueraded (%s) so that the reply comes back through the node", src, ipvs.SetName(ipvs.SetLoopback, src.Is6()))
	}
	if why := x.masqueradeReason(d, src, c, false, nil); why != "" {
		return why
	}
	return e.MasqueradeReason
}

// --- --live ---

// compareLiveIPVS follows the packet through what the kernel holds
// (ipvs.ListedPlan) and through the kernel's iptables rules up to IPVS,
// fills r.Kernel and r.Drift. structural adds the node's jumps and chains
// of the family (explain TARGET; --all checks them once).
func (x *explainer) compareLiveIPVS(d dest, src netip.Addr, pkt ipvs.Packet, want ipvs.Explanation, r *portResult, structural bool) error {
	ipv6 := d.dst.Addr().Is6()
	live, err := x.liveRuleset(ipv6)
	if errors.Is(err, errNoIP6tables) {
		r.Drift = append(r.Drift, driftItem{Kind: driftNoIP6tables, Detail: err.Error() + ": svcproxy programs no IPv6 in IPVS mode, and nothing proxies this IPv6 connection"})
		return nil
	}
	if err != nil {
		return err
	}
	if why := ipvs.IPv6Unusable(x.ipvs.k); ipv6 && why != "" {
		r.Drift = append(r.Drift, driftItem{Kind: driftNoIPv6, Detail: why + ": svcproxy programs no IPv6 in IPVS mode here, and nothing proxies this IPv6 connection"})
		return nil
	}
	listed, err := x.ipvsListed()
	if err != nil {
		return err
	}
	rules, err := x.ipvsRules(ipv6)
	if err != nil {
		return err
	}
	if x.ipvs.absent {
		r.Drift = append(r.Drift, driftItem{Kind: driftNoIPVS, Detail: "the kernel has no IPVS (ip_vs is not loaded): no virtual server exists on this node"})
	}
	if structural && rules != nil {
		r.Drift = append(r.Drift, nodeDrift(ipvs.IsOwnedChain, rules, live)...)
	}
	dst := d.dst.Addr()
	if slices.Contains(x.ipvsPlan().Addresses, dst) && !slices.Contains(listed.Addresses, dst) {
		r.Drift = append(r.Drift, driftItem{Kind: driftNotBound, Detail: fmt.Sprintf("%s is not bound to %s: the kernel routes packets to it away, IPVS never sees them", dst, ipvs.DummyInterface)})
	}
	got := ipvs.Explain(listed, pkt)
	k := &kernelView{Verdict: got.Verdict, Endpoints: x.ipvsEndpoints(d, got), Path: append([]string{}, got.Path...)}
	k.Masquerade = slices.ContainsFunc(k.Endpoints, func(e endpoint) bool { return e.Masquerade })
	firewall, decided, err := x.ipvsFirewallDrift(d, src, rules, live)
	if err != nil {
		return err
	}
	items := ipvs.DriftItems(want, got)
	if decided != nil {
		// Another program's rule decides before IPVS sees the packet:
		// that is the kernel's verdict, whatever IPVS would do.
		// What IPVS holds is still reported (the next sync repairs it),
		// but not the verdict IPVS would give; after a DNAT elsewhere
		// neither are IPVS's endpoints, which the DNAT's replace.
		v := verdictOf(decided.Outcome)
		items = slices.DeleteFunc(items, func(i ipvs.DriftItem) bool {
			return i.Kind == ipvs.DriftVerdict || (v == verdictDNAT && i.Kind != ipvs.DriftScheduler)
		})
		k.Verdict, k.Endpoints, k.Masquerade, k.Path = v, []endpoint{}, decided.Masquerade, append([]string{}, decided.Steps...)
		if v != want.Verdict {
			r.Drift = append(r.Drift, driftItem{Kind: driftVerdict, Detail: fmt.Sprintf("intended %s; the kernel's iptables rules give %s before IPVS sees the packet", strings.ToUpper(want.Verdict), strings.ToUpper(v))})
		}
		if to := decided.DNAT; to.IsValid() {
			e := x.endpointOf(d, to)
			e.Probability, e.Masquerade = round4(decided.Probability), decided.Masquerade
			k.Endpoints = append(k.Endpoints, e)
			intended := false
			for _, ep := range want.Endpoints {
				if ep.AddrPort == to {
					intended = true
					continue
				}
				r.Drift = append(r.Drift, driftItem{Kind: driftMissingEP, Detail: fmt.Sprintf("%s (p=%.4f intended) is never reached: the kernel's iptables rules DNAT the packet to %s before IPVS sees it", ep.AddrPort, ep.Probability, to)})
			}
			if !intended {
				r.Drift = append(r.Drift, driftItem{Kind: driftExtraEP, Detail: fmt.Sprintf("the kernel's iptables rules DNAT to %s before IPVS sees the packet, which is no endpoint of this port now", to)})
			}
		}
	}
	for _, i := range items {
		// "verdict: intended …": the kind is said once, as in iptables mode.
		r.Drift = append(r.Drift, driftItem{Kind: i.Kind, Detail: strings.TrimPrefix(i.Detail, i.Kind+": ")})
	}
	r.Drift = append(r.Drift, firewall...)
	r.Kernel = k
	return nil
}

// ipvsHooks are the built-in chains a packet goes through before IPVS
// takes it: PREROUTING and INPUT (IPVS comes in LOCAL_IN after the filter
// table), and for the node's own connections OUTPUT up to nat (IPVS comes
// in LOCAL_OUT right after nat OUTPUT; filter OUTPUT sees the real
// server's address).
var (
	ipvsHooks     = []string{"raw/PREROUTING", "mangle/PREROUTING", "nat/PREROUTING", "mangle/INPUT", "filter/INPUT", "security/INPUT"}
	ipvsHooksNode = []string{"raw/OUTPUT", "mangle/OUTPUT", "nat/OUTPUT"}
)

// ipvsFirewallDrift walks the packet through the kernel's iptables rules
// up to IPVS and names the rules of other programs that catch it there (or
// may: a match the tracer cannot evaluate); SVCP-IPVS-* chains match on
// ipsets, which ipvs.Explain reads instead. decided is the path of the
// likeliest foreign verdict, nil when the packet reaches IPVS.
func (x *explainer) ipvsFirewallDrift(d dest, src netip.Addr, rules, live *trace.Ruleset) (drift []driftItem, decided *trace.Path, err error) {
	fromNode := x.src.kind == fromNode
	local := []netip.Addr{d.dst.Addr()} // bound, or a node address: local either way
	for _, a := range slices.Concat(x.ipvs.opts.LocalAddresses, x.hostAddrs) {
		if a.Is6() == d.dst.Addr().Is6() && !slices.Contains(local, a) {
			local = append(local, a)
		}
	}
	if fromNode && !slices.Contains(local, src) {
		local = append(local, src)
	}
	pkt := trace.Packet{SrcIP: src, DstIP: d.dst.Addr(), Proto: strings.ToLower(string(d.sp.Protocol)), DstPort: int(d.dst.Port()), SrcLocal: fromNode, LocalAddrs: local}
	var intended []trace.Path
	if rules != nil {
		if intended, err = rules.Explain(pkt, nil, time.Time{}); err != nil {
			return nil, nil, fmt.Errorf("tracing %s -> %s through IPVS mode's rules: %w", src, d.dst, err)
		}
	}
	paths, err := live.Explain(pkt, nil, time.Time{})
	if err == nil && len(paths) == 0 {
		err = errors.New("no path")
	}
	if err != nil {
		return nil, nil, &kernelError{fmt.Errorf("tracing %s -> %s through the kernel's rules: %w", src, d.dst, err)}
	}
	hooks := ipvsHooks
	if fromNode {
		hooks = ipvsHooksNode
	}
	var wantPaths []trace.Path
	for _, p := range intended {
		if p.Assumed == nil {
			wantPaths = append(wantPaths, p)
		}
	}
	want := summarize(wantPaths)
	if len(wantPaths) == 0 {
		// No rules of the family: the packet goes on untouched.
		want.keys[outcomeKey{verdict: verdictNoMatch}] = true
	}
	var certain, assumed []trace.Path
	for i, p := range paths {
		switch {
		case p.Assumed != nil:
			if !ours(ipvs.IsOwnedChain, *p.Assumed) && slices.Contains(hooks, hookOf(live, p, *p.Assumed)) {
				assumed = append(assumed, p)
			}
		case !want.keys[keyOf(p.Outcome)]:
			hs := decidingHops(p)
			if len(hs) == 0 || !slices.Contains(hooks, hookOf(live, p, hs[0])) {
				continue // decided after IPVS took the packet: not what IPVS sees
			}
			certain = append(certain, p)
			if decided == nil || p.Probability > decided.Probability {
				decided = &paths[i]
			}
		}
	}
	return foreignDrift(ipvs.IsOwnedChain, live, want, certain, assumed), decided, nil
}

// hookOf returns the built-in chain ("table/CHAIN") a hop of a path was
// reached from.
func hookOf(live *trace.Ruleset, p trace.Path, h trace.Hop) string {
	hook := ""
	for _, o := range p.Hops {
		if pol, _ := live.Policy(o.Table, o.Chain); pol != "" {
			hook = o.Table + "/" + o.Chain
		}
		if o == h {
			return hook
		}
	}
	return ""
}

// ipvsNodeDrift checks, for --all, each family's SVCP-IPVS-* jumps and
// chains and the virtual servers the kernel has that svcproxy does not
// intend.
func (x *explainer) ipvsNodeDrift() ([]familyDrift, error) {
	var out []familyDrift
	listed, err := x.ipvsListed()
	if err != nil {
		return nil, err
	}
	if x.ipvs.absent {
		out = append(out, familyDrift{Family: familyName(false), driftItem: driftItem{Kind: driftNoIPVS, Detail: "the kernel has no IPVS (ip_vs is not loaded): no virtual server exists on this node"}})
	}
	for _, ipv6 := range []bool{false, true} {
		rules, err := x.ipvsRules(ipv6)
		if err != nil {
			return nil, err
		}
		if rules == nil || (ipv6 && ipvs.IPv6Unusable(x.ipvs.k) != "") {
			continue // not programmed; IPv6 ports say why
		}
		live, err := x.liveRuleset(ipv6)
		if ipv6 && errors.Is(err, errNoIP6tables) {
			continue // IPv6 ports say so
		}
		if err != nil {
			return nil, err
		}
		for _, d := range nodeDrift(ipvs.IsOwnedChain, rules, live) {
			out = append(out, familyDrift{Family: familyName(ipv6), driftItem: d})
		}
		for _, vs := range listed.Services {
			if vs.Address.Is6() != ipv6 {
				continue
			}
			if _, found := slices.BinarySearchFunc(x.ipvsPlan().Services, vs.ServiceKey, func(a *ipvs.VirtualServer, k ipvs.ServiceKey) int { return a.Compare(k) }); !found {
				out = append(out, familyDrift{Family: familyName(ipv6), driftItem: driftItem{Kind: driftExtraVirtServer,
					Detail: fmt.Sprintf("the kernel has the virtual server %s (%s) that svcproxy does not intend: a stale one, or another program's on svcproxy's addresses", vs.ServiceKey, count(len(vs.Destinations), "real server"))}})
			}
		}
	}
	return out, nil
}

// elsewhere counts the endpoints of sp on other nodes that could serve.
func elsewhere(sp *proxy.ServicePort) int {
	n := 0
	for _, ep := range sp.AllEndpoints {
		if !ep.IsLocal && (ep.Ready || (ep.Serving && ep.Terminating)) {
			n++
		}
	}
	return n
}
