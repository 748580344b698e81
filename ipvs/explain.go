package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// Packet is the first packet of a new connection that Explain follows.
type Packet struct {
	Src, Dst netip.Addr
	Protocol v1.Protocol
	Port     uint16
	// FromNode says that the node itself opens the connection: filter
	// OUTPUT instead of INPUT, nat OUTPUT instead of PREROUTING.
	FromNode bool
}

// Verdicts of an Explanation.
const (
	VerdictDNAT    = "dnat"     // IPVS picks a real server
	VerdictReject  = "reject"   // refused (ICMP or ICMPv6 port unreachable)
	VerdictDrop    = "drop"     // dropped: the connection times out
	VerdictNoMatch = "no-match" // no virtual server: the packet is not IPVS mode's
)

// Explanation is what IPVS mode does with a Packet, from a Plan (or from
// what the kernel holds: see ListedPlan).
type Explanation struct {
	Verdict string
	// Reason says why, in words; for VerdictDNAT how the real server is
	// chosen.
	Reason string
	// VirtualServer is the virtual server of the packet's destination,
	// nil when there is none.
	VirtualServer *VirtualServer
	// Endpoints are the real servers that may get the connection, with
	// the probability of each (weight over the sum of weights; the
	// schedulers that count connections or hash the source pick by other
	// rules, which Reason names). Weight-0 (draining) ones get none.
	Endpoints []ExplainedEndpoint
	// Masquerade is true when the endpoint sees the node's address
	// instead of the client's; MasqueradeReason says which rule decides.
	Masquerade       bool
	MasqueradeReason string
	// Path lists the objects the packet meets, in order: the filter rules
	// and the ipsets they look up, the virtual server, the nat rules.
	Path []string
}

// ExplainedEndpoint is one real server a connection may reach.
type ExplainedEndpoint struct {
	netip.AddrPort
	Weight      int
	Probability float64
	// Hairpin is true when this endpoint is the client itself: the
	// connection is masqueraded so that the replies come back through
	// the node.
	Hairpin bool
}

// Explain follows p through plan: the SVCP-IPVS-FILTER rules (REJECT for
// no endpoints, DROP for no local endpoint or a source outside
// loadBalancerSourceRanges, REJECT for a service address's other ports),
// the virtual server and its real servers, and the masquerade rules. It
// reads the plan's sets as the kernel's ipset lookups would. The node's
// own connections skip the filter (IPVS takes them in LOCAL_OUT, before
// filter OUTPUT): an empty virtual server refuses them itself, and
// loadBalancerSourceRanges do not apply to them. Pure.
func Explain(plan *Plan, p Packet) Explanation {
	x := explainer{plan: plan, sets: map[string]*Set{}, v6: p.Dst.Is6()}
	for _, s := range plan.Sets {
		x.sets[s.Name] = s
	}
	return x.explain(p)
}

type explainer struct {
	plan *Plan
	sets map[string]*Set
	v6   bool
}

func (x *explainer) set(base string) *Set { return x.sets[SetName(base, x.v6)] }

// in reports whether the set named base (of the packet's family) holds the
// entry made of fields, as `ipset test` would, and records the lookup.
func (x *explainer) in(path *[]string, base string, fields ...string) bool {
	name := SetName(base, x.v6)
	ok := setHas(x.sets[name], fields...)
	verb := "has"
	if !ok {
		verb = "does not have"
	}
	*path = append(*path, fmt.Sprintf("ipset %s %s %s", name, verb, strings.Join(fields, ",")))
	return ok
}

func (x *explainer) explain(p Packet) Explanation {
	var e Explanation
	key := ServiceKey{Address: p.Dst, Protocol: p.Protocol, Port: p.Port}
	dstPort := portEntry(p.Protocol, p.Port)
	dst, src := p.Dst.String(), p.Src.String()
	hook := "filter/INPUT"
	if p.FromNode {
		hook = "filter/OUTPUT"
	}
	e.Path = append(e.Path, hook+" (new connections) -> "+FilterChain)
	i, found := slices.BinarySearchFunc(x.plan.Services, key, func(vs *VirtualServer, k ServiceKey) int { return vs.Compare(k) })
	if found {
		e.VirtualServer = x.plan.Services[i]
	}

	if p.FromNode {
		// IPVS schedules the node's own connections in LOCAL_OUT, before
		// filter OUTPUT, which then sees the real server's address: the
		// filter sets never match them (so loadBalancerSourceRanges do
		// not apply to the node either). Only a service address's port
		// without a virtual server reaches the filter as such.
		if e.VirtualServer == nil {
			if x.in(&e.Path, SetIPs, dst) {
				e.Verdict, e.Reason = VerdictReject, fmt.Sprintf("%s is a service address but %s is not one of its service ports: REJECT", dst, dstPort)
				return e
			}
			e.Verdict = VerdictNoMatch
			e.Reason = fmt.Sprintf("no virtual server %s: the packet is not a service's", key)
			return e
		}
		e.Path[len(e.Path)-1] = "nat/OUTPUT, then IPVS (LOCAL_OUT, before " + hook + ")"
	} else {
		switch {
		case x.in(&e.Path, SetReject, dst, dstPort):
			e.Verdict, e.Reason = VerdictReject, "the service port has no endpoints (no ready, serving or terminating endpoint): REJECT"
			return e
		case x.in(&e.Path, SetDrop, dst, dstPort):
			e.Verdict, e.Reason = VerdictDrop, "the traffic policy is Local and this node has no endpoint of the service port: DROP"
			return e
		case x.in(&e.Path, SetLBFirewall, dst, dstPort) && !x.in(&e.Path, SetLBSource, dst, dstPort, src):
			e.Verdict, e.Reason = VerdictDrop, fmt.Sprintf("source %s is not in the service's loadBalancerSourceRanges: DROP", src)
			return e
		case x.in(&e.Path, SetIPs, dst) && !x.in(&e.Path, SetClusterIP, dst, dstPort) &&
			!x.in(&e.Path, SetExternal, dst, dstPort) && !x.in(&e.Path, SetExternalLocal, dst, dstPort):
			e.Verdict, e.Reason = VerdictReject, fmt.Sprintf("%s is a service address but %s is not one of its service ports: REJECT", dst, dstPort)
			return e
		}
		if e.VirtualServer == nil {
			e.Verdict = VerdictNoMatch
			e.Reason = fmt.Sprintf("no virtual server %s: the packet is not a service's", key)
			return e
		}
		if setHas(x.set(SetIPs), dst) && !slices.Contains(x.plan.Addresses, p.Dst) {
			// IPVS sees only packets to local addresses.
			e.Verdict = VerdictNoMatch
			e.Reason = fmt.Sprintf("%s is not bound to %s: the packet is routed away, IPVS never sees it", dst, x.plan.Interface)
			return e
		}
	}
	vs := e.VirtualServer
	e.Path = append(e.Path, "IPVS virtual server "+vs.ServiceKey.String()+" -s "+vs.Scheduler+persistence(vs))
	total := 0
	for _, rs := range vs.Destinations {
		total += rs.Weight
	}
	for _, rs := range vs.Destinations {
		if rs.Weight <= 0 {
			continue
		}
		ep := ExplainedEndpoint{AddrPort: rs.AddrPort(), Weight: rs.Weight, Probability: float64(rs.Weight) / float64(total)}
		e.Endpoints = append(e.Endpoints, ep)
	}
	if len(e.Endpoints) == 0 {
		// No REJECT entry (or the node's own connection, which the filter
		// does not see), yet no real server with a weight: IPVS answers
		// ICMP port unreachable itself.
		e.Verdict, e.Reason = VerdictReject, "the virtual server has no real server with a weight: IPVS refuses"
		if len(vs.Destinations) > 0 {
			e.Reason = "every real server of the virtual server is draining (weight 0): IPVS refuses"
		}
		return e
	}
	e.Verdict = VerdictDNAT
	e.Reason = schedulerReason(vs, len(e.Endpoints))

	chain := "nat/PREROUTING"
	if p.FromNode {
		chain = "nat/OUTPUT (before IPVS)"
	}
	e.Path = append(e.Path, chain+" -> "+ServicesChain)
	switch {
	case x.plan.IPTables6 == nil && x.v6, x.plan.IPTables == nil && !x.v6:
		// No rules of this family: nothing marks the packet.
	case x.masqueradeAll() && x.in(&e.Path, SetClusterIP, dst, dstPort):
		e.Masquerade, e.MasqueradeReason = true, "--masquerade-all"
	case x.set(SetClusterCIDR) != nil && len(x.set(SetClusterCIDR).Entries) > 0 && !x.in(&e.Path, SetClusterCIDR, src) && x.in(&e.Path, SetClusterIP, dst, dstPort):
		e.Masquerade, e.MasqueradeReason = true, fmt.Sprintf("source %s is outside the pod networks (--cluster-cidr)", src)
	case x.in(&e.Path, SetIPs, src) && x.in(&e.Path, SetClusterIP, dst, dstPort):
		e.Masquerade, e.MasqueradeReason = true, "the source is a service address of this node"
	case x.in(&e.Path, SetExternal, dst, dstPort):
		e.Masquerade, e.MasqueradeReason = true, "external traffic with externalTrafficPolicy Cluster"
	case x.in(&e.Path, SetNodePort, dst, dstPort):
		e.Masquerade, e.MasqueradeReason = true, "a node port with externalTrafficPolicy Cluster"
	}
	for i := range e.Endpoints {
		ep := &e.Endpoints[i]
		if ep.Addr() == p.Src && setHas(x.set(SetLoopback), ep.Addr().String(), portEntry(p.Protocol, ep.Port()), src) {
			ep.Hairpin = true
		}
	}
	e.Path = append(e.Path, "nat/POSTROUTING -> "+PostroutingChain)
	if !e.Masquerade {
		e.MasqueradeReason = "no rule marks it: the endpoint sees the client's address"
		if x.set(SetExternalLocal) != nil && setHas(x.set(SetExternalLocal), dst, dstPort) {
			e.MasqueradeReason = "externalTrafficPolicy Local: the endpoint sees the client's address"
		}
	}
	return e
}

// masqueradeAll reports whether the plan's rules masquerade all traffic to
// cluster IPs (--masquerade-all).
func (x *explainer) masqueradeAll() bool {
	rules := x.plan.IPTables
	if x.v6 {
		rules = x.plan.IPTables6
	}
	if rules == nil {
		return false
	}
	for _, c := range rules.NAT {
		for _, r := range c.Rules {
			if strings.Contains(r, "masquerade all traffic to cluster IPs") {
				return true
			}
		}
	}
	return false
}

func persistence(vs *VirtualServer) string {
	if vs.Timeout == 0 {
		return ""
	}
	return fmt.Sprintf(" -p %d", vs.Timeout)
}

// schedulerReason says how the virtual server picks among n real servers.
func schedulerReason(vs *VirtualServer, n int) string {
	how := map[string]string{
		"rr": "round robin", "wrr": "weighted round robin", "lc": "least connections", "wlc": "weighted least connections",
		"sh": "a hash of the source address", "dh": "a hash of the destination address", "mh": "Maglev hashing",
		"sed": "shortest expected delay", "nq": "never queue", "lblc": "locality-based least connections",
		"lblcr": "locality-based least connections with replication", "fo": "weighted failover", "ovf": "weighted overflow",
		"twos": "weighted random twos choice",
	}[vs.Scheduler]
	if how == "" {
		how = vs.Scheduler
	}
	s := fmt.Sprintf("%d real server(s), chosen by %s (scheduler %s)", n, how, vs.Scheduler)
	if vs.Timeout > 0 {
		s += fmt.Sprintf("; ClientIP affinity: a client keeps its real server for %d s after its last connection", vs.Timeout)
	}
	return s
}

// setHas reports whether s holds the entry made of fields as the kernel's
// lookup would: addresses and ports exactly, nets (hash:net, the last field
// of hash:ip,port,net) by containment.
func setHas(s *Set, fields ...string) bool {
	if s == nil {
		return false
	}
	netField := -1
	switch s.Type {
	case "hash:net":
		netField = 0
	case "hash:ip,port,net":
		netField = 2
	}
	for _, e := range s.Entries {
		fs := strings.Split(e, ",")
		if len(fs) != len(fields) {
			continue
		}
		match := true
		for i := range fs {
			if i == netField {
				if !netContains(fs[i], fields[i]) {
					match = false
					break
				}
				continue
			}
			if !sameField(fs[i], fields[i]) {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// sameField compares entry fields, addresses by value.
func sameField(a, b string) bool {
	if a == b {
		return true
	}
	x, errx := netip.ParseAddr(a)
	y, erry := netip.ParseAddr(b)
	return errx == nil && erry == nil && x == y
}

// netContains reports whether the net entry n ("10.0.0.0/8", or a host
// without its prefix length) holds the address a.
func netContains(n, a string) bool {
	addr, err := netip.ParseAddr(a)
	if err != nil {
		return false
	}
	if p, err := netip.ParsePrefix(n); err == nil {
		return p.Contains(addr)
	}
	h, err := netip.ParseAddr(n)
	return err == nil && h == addr
}

// ListedPlan returns what the kernel holds of IPVS mode as a Plan that
// Explain can follow: the link's addresses, the virtual servers and the
// sets as ListState reads them (plan says which are ours), with plan's
// iptables rules (check those with iptables.CheckDrift).
func ListedPlan(k Interface, plan *Plan, opts Options) (*Plan, error) {
	st, err := ListState(k, plan, opts)
	if err != nil {
		return nil, err
	}
	live := &Plan{Interface: plan.Interface, IPTables: plan.IPTables, IPTables6: plan.IPTables6, Sets: st.Sets}
	if st.LinkExists {
		live.Addresses = slices.Clone(st.Addresses)
		slices.SortFunc(live.Addresses, netip.Addr.Compare)
	}
	live.Services = slices.Clone(st.Services)
	for i, vs := range live.Services {
		c := *vs
		c.Destinations = slices.Clone(vs.Destinations)
		slices.SortFunc(c.Destinations, func(a, b *RealServer) int { return a.AddrPort().Compare(b.AddrPort()) })
		live.Services[i] = &c
	}
	slices.SortFunc(live.Services, func(a, b *VirtualServer) int { return a.Compare(b.ServiceKey) })
	return live, nil
}

// Kinds of DriftItem.
const (
	DriftVerdict         = "verdict"          // the kernel decides otherwise
	DriftScheduler       = "scheduler"        // another scheduler or persistence
	DriftMissingEndpoint = "missing-endpoint" // a real server intended, not in the kernel
	DriftExtraEndpoint   = "extra-endpoint"   // a real server in the kernel, not intended
	DriftEndpointWeight  = "endpoint-weight"  // a real server with another weight
	DriftMasquerade      = "masquerade"       // masqueraded in one, not the other
)

// DriftItem is one difference Drift names: its kind (one of the Drift…
// constants) and the difference in words.
type DriftItem struct {
	Kind, Detail string
}

// Drift lists how what the kernel does with a packet (live, Explain over
// ListedPlan) differs from what svcproxy intends (want): the verdict,
// endpoints missing or extra, weights, the scheduler and persistence, and
// masquerading. Empty when they agree. DriftItems says the same with the
// kind of each difference.
func Drift(want, live Explanation) []string {
	var out []string
	for _, d := range DriftItems(want, live) {
		out = append(out, d.Detail)
	}
	return out
}

// DriftItems is Drift with the kind of each difference.
func DriftItems(want, live Explanation) []DriftItem {
	var out []DriftItem
	add := func(kind, format string, args ...any) {
		out = append(out, DriftItem{Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	if want.Verdict != live.Verdict {
		add(DriftVerdict, "verdict: intended %s (%s), the kernel's %s (%s)", want.Verdict, want.Reason, live.Verdict, live.Reason)
	}
	if want.VirtualServer != nil && live.VirtualServer != nil {
		if w, l := want.VirtualServer, live.VirtualServer; w.Scheduler != l.Scheduler || w.Timeout != l.Timeout {
			add(DriftScheduler, "virtual server %s: intended -s %s%s, the kernel's -s %s%s", w.ServiceKey, w.Scheduler, persistence(w), l.Scheduler, persistence(l))
		}
	}
	weights := func(eps []ExplainedEndpoint) map[netip.AddrPort]int {
		m := map[netip.AddrPort]int{}
		for _, ep := range eps {
			m[ep.AddrPort] = ep.Weight
		}
		return m
	}
	w, l := weights(want.Endpoints), weights(live.Endpoints)
	var keys []netip.AddrPort
	for k := range w {
		keys = append(keys, k)
	}
	for k := range l {
		if _, ok := w[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, netip.AddrPort.Compare)
	for _, k := range keys {
		wv, inW := w[k]
		lv, inL := l[k]
		switch {
		case !inL:
			add(DriftMissingEndpoint, "endpoint %s: missing in the kernel", k)
		case !inW:
			add(DriftExtraEndpoint, "endpoint %s: in the kernel (weight %d), not intended", k, lv)
		case wv != lv:
			add(DriftEndpointWeight, "endpoint %s: weight %d in the kernel, %d intended", k, lv, wv)
		}
	}
	if want.Verdict == VerdictDNAT && live.Verdict == VerdictDNAT && want.Masquerade != live.Masquerade {
		add(DriftMasquerade, "masquerade: intended %v (%s), the kernel's %v (%s)", want.Masquerade, want.MasqueradeReason, live.Masquerade, live.MasqueradeReason)
	}
	return out
}
