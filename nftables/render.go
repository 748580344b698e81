package nftables

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxy"
)

// Options are the settings that shape the ruleset of one family.
type Options struct {
	// ClusterCIDRs are the pod networks of the family; traffic to a
	// ClusterIP from outside them is masqueraded. Empty (and
	// MasqueradeAll false) means no masquerading of ClusterIP traffic, as
	// in kube-proxy.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to ClusterIPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit (0-31) that asks for SNAT.
	MasqueradeBit int
	// NodePortAddresses restricts NodePorts to local addresses inside
	// these prefixes (of the family). Empty means every local address but
	// loopback (and, in IPv6, link-local ones).
	NodePortAddresses []netip.Prefix
	// RandomFully masquerades with fully-random port allocation.
	RandomFully bool
	// IPv6 renders the ip6 table from the Snapshot's IPv6 service ports;
	// otherwise the ip table from its IPv4 ones.
	IPv6 bool
}

// DefaultOptions returns kube-proxy's defaults.
func DefaultOptions() Options {
	return Options{MasqueradeBit: proxy.DefaultMasqueradeBit, RandomFully: true}
}

// Family returns the nftables family the options render.
func (o Options) Family() knftables.Family {
	if o.IPv6 {
		return knftables.IPv6Family
	}
	return knftables.IPv4Family
}

// Priorities of the base chains: each runs just before its counterpart in
// upstream kube-proxy's table and in iptables-nft's tables (dstnat,
// srcnat, filter, and kube-proxy's dstnat-10 for source ranges), so that
// during a takeover or a mode switch svcproxy's DNAT decides first (a
// connection's first nat chain to translate it wins).
const (
	natDNATPriority       = knftables.DNATPriority + "-1"
	natSNATPriority       = knftables.SNATPriority + "-1"
	filterPreDNATPriority = knftables.DNATPriority + "-11"
	filterPriority        = knftables.FilterPriority + "-1"
)

// common holds what Options give once per Render.
type common struct {
	opts   Options
	ip     string // "ip" or "ip6"
	addr   string // "ipv4_addr" or "ipv6_addr"
	mark   string // "meta mark set meta mark | 0x4000"
	fixed  *fragment
	reject string // "goto reject-chain"
}

func newCommon(opts Options) *common {
	c := &common{opts: opts, ip: "ip", addr: "ipv4_addr", reject: "goto " + rejectChain}
	if opts.IPv6 {
		c.ip, c.addr = "ip6", "ipv6_addr"
	}
	c.mark = "meta mark set meta mark | " + proxy.MasqueradeMark(opts.MasqueradeBit)
	c.fixed = c.renderFixed()
	return c
}

// Render turns a Snapshot into the desired table of one family. It is
// pure: no I/O, no state kept between calls, deterministic output.
func Render(snap *proxy.Snapshot, opts Options) *Plan {
	c := newCommon(opts)
	return c.assemble(snap, c.renderPort)
}

// Renderer renders like Render but reuses the fragment of every service
// port that is the same object as in the previous call (the tracker shares
// unchanged ports between Snapshots), and the fixed part: a sync after one
// endpoint change renders one port, and the Syncer sees at once which
// fragments changed. Its plans are equal to Render's.
type Renderer struct {
	c     *common
	cache map[*proxy.ServicePort]*fragment
}

// NewRenderer returns a Renderer for opts.
func NewRenderer(opts Options) *Renderer {
	return &Renderer{c: newCommon(opts), cache: map[*proxy.ServicePort]*fragment{}}
}

// Render renders snap like the package-level Render.
func (r *Renderer) Render(snap *proxy.Snapshot) *Plan {
	next := make(map[*proxy.ServicePort]*fragment, len(r.cache))
	plan := r.c.assemble(snap, func(sp *proxy.ServicePort) *fragment {
		f, ok := r.cache[sp]
		if !ok {
			f = r.c.renderPort(sp)
		}
		next[sp] = f
		return f
	})
	r.cache = next
	return plan
}

func (c *common) assemble(snap *proxy.Snapshot, fragmentOf func(*proxy.ServicePort) *fragment) *Plan {
	p := &Plan{Family: c.opts.Family(), fixed: c.fixed}
	for _, sp := range snap.ServicePorts() {
		if sp.ClusterIP.Is6() == c.opts.IPv6 {
			p.ports = append(p.ports, fragmentOf(sp))
		}
	}
	return p
}

// renderFixed renders what the table holds whatever the services: the
// base chains, the dispatch and check chains, and the sets and maps
// service ports put their elements in.
func (c *common) renderFixed() *fragment {
	ip, addr := c.ip, c.addr
	f := &fragment{}
	base := func(name string, typ knftables.BaseChainType, hook knftables.BaseChainHook, prio knftables.BaseChainPriority, rules ...string) {
		f.chains = append(f.chains, &Chain{Name: name, Base: &BaseChain{Type: typ, Hook: hook, Priority: prio}, Rules: rules})
	}
	regular := func(name string, rules ...string) {
		f.chains = append(f.chains, &Chain{Name: name, Rules: rules})
	}
	newConn := "ct state new "
	base(filterPreroutingChain, knftables.FilterType, knftables.PreroutingHook, filterPreDNATPriority, newConn+"jump "+firewallCheckChain)
	base(filterOutputPreDNATChain, knftables.FilterType, knftables.OutputHook, filterPreDNATPriority, newConn+"jump "+firewallCheckChain)
	base(filterInputChain, knftables.FilterType, knftables.InputHook, filterPriority,
		newConn+"jump "+nodePortEndpointsCheckChain, newConn+"jump "+endpointsCheckChain)
	base(filterForwardChain, knftables.FilterType, knftables.ForwardHook, filterPriority, newConn+"jump "+endpointsCheckChain)
	base(filterOutputChain, knftables.FilterType, knftables.OutputHook, filterPriority, newConn+"jump "+endpointsCheckChain)
	base(natPreroutingChain, knftables.NATType, knftables.PreroutingHook, natDNATPriority, "jump "+servicesChain)
	base(natOutputChain, knftables.NATType, knftables.OutputHook, natDNATPriority, "jump "+servicesChain)
	base(natPostroutingChain, knftables.NATType, knftables.PostroutingHook, natSNATPriority, "jump "+masqueradingChain)

	dst := ip + " daddr . meta l4proto . th dport"
	nodePorts := c.nodePortMatch() + " meta l4proto . th dport"
	regular(servicesChain, dst+" vmap @"+serviceIPsMap, nodePorts+" vmap @"+serviceNodePortsMap)
	masq := "masquerade"
	if c.opts.RandomFully {
		masq += " fully-random"
	}
	m := proxy.MasqueradeMark(c.opts.MasqueradeBit)
	regular(masqueradingChain,
		"meta mark & "+m+" != 0 meta mark set meta mark ^ "+m+" "+masq,
		"ct status dnat "+ip+" saddr . "+ip+" daddr @"+hairpinSet+" masquerade")
	regular(firewallCheckChain,
		dst+" . "+ip+" saddr @"+firewallAllowSet+" return",
		dst+" @"+firewallIPsSet+" drop")
	regular(endpointsCheckChain, dst+" vmap @"+noEndpointServicesMap)
	regular(nodePortEndpointsCheckChain, nodePorts+" vmap @"+noEndpointNodePortsMap)
	regular(rejectChain, "reject")

	service := addr + " . inet_proto . inet_service"
	f.sets = []*Set{
		{Name: serviceIPsMap, Map: true, Type: service},
		{Name: serviceNodePortsMap, Map: true, Type: "inet_proto . inet_service"},
		{Name: noEndpointServicesMap, Map: true, Type: service},
		{Name: noEndpointNodePortsMap, Map: true, Type: "inet_proto . inet_service"},
		{Name: firewallIPsSet, Type: service},
		{Name: firewallAllowSet, Type: service + " . " + addr, Flags: []knftables.SetFlag{knftables.IntervalFlag}},
		{Name: hairpinSet, Type: addr + " . " + addr},
	}
	prefixSet := func(name string, prefixes []netip.Prefix) {
		f.sets = append(f.sets, &Set{Name: name, Type: addr, Flags: []knftables.SetFlag{knftables.IntervalFlag}})
		for _, p := range minimalPrefixes(prefixes) {
			f.elems = append(f.elems, Element{Set: name, Key: p.String()})
		}
	}
	if len(c.opts.ClusterCIDRs) > 1 {
		prefixSet(clusterCIDRsSet, c.opts.ClusterCIDRs)
	}
	if len(c.opts.NodePortAddresses) > 0 {
		prefixSet(nodePortAddressesSet, c.opts.NodePortAddresses)
	}
	return f
}

// nodePortMatch matches the destinations node ports answer on: local
// addresses within --nodeport-addresses, or every local address but
// loopback (and IPv6 link-local ones).
func (c *common) nodePortMatch() string {
	switch {
	case len(c.opts.NodePortAddresses) > 0:
		return c.ip + " daddr @" + nodePortAddressesSet + " fib daddr type local"
	case c.opts.IPv6:
		return "fib daddr type local ip6 daddr != ::1 ip6 daddr != fe80::/10"
	default:
		return "fib daddr type local ip daddr != 127.0.0.0/8"
	}
}

// fromCluster returns the match for sources inside the cluster CIDRs, ""
// without any; negate matches sources outside all of them.
func (c *common) fromCluster(negate bool) string {
	op := " "
	if negate {
		op = " != "
	}
	switch len(c.opts.ClusterCIDRs) {
	case 0:
		return ""
	case 1:
		return c.ip + " saddr" + op + c.opts.ClusterCIDRs[0].Masked().String()
	default:
		return c.ip + " saddr" + op + "@" + clusterCIDRsSet
	}
}

// renderPort renders one service port: its chains, its affinity sets and
// its elements in the dispatch, check and hairpin sets and maps. The
// decisions follow iptables mode's (iptables/render.go), the endpoint
// lists are the Snapshot's.
func (c *common) renderPort(sp *proxy.ServicePort) *fragment {
	f := &fragment{name: sp.Name.String()}
	parts := portParts(sp)
	proto := strings.ToLower(string(sp.Protocol))
	portKey := " . " + proto + " . " + strconv.Itoa(int(sp.Port))
	addrKey := func(ip netip.Addr) string { return ip.String() + portKey }
	nodePortKey := proto + " . " + strconv.Itoa(int(sp.NodePort))
	seen := map[elemID]bool{}
	elem := func(set, key, value string) {
		if id := (elemID{set, key}); !seen[id] {
			seen[id] = true
			f.elems = append(f.elems, Element{Set: set, Key: key, Value: value})
		}
	}

	if !sp.HasEndpoints() {
		elem(noEndpointServicesMap, addrKey(sp.ClusterIP), c.reject)
		for _, ip := range sp.ExternalIPs {
			elem(noEndpointServicesMap, addrKey(ip), c.reject)
		}
		for _, ip := range sp.LoadBalancerIPs {
			elem(noEndpointServicesMap, addrKey(ip), c.reject)
		}
		c.firewall(sp, elem, addrKey)
		if sp.NodePort != 0 {
			elem(noEndpointNodePortsMap, nodePortKey, c.reject)
		}
		return f
	}

	// Endpoint chains.
	svc, svl := "", ""
	if sp.UsesClusterEndpoints && len(sp.ClusterEndpoints) > 0 {
		svc = objectName(svcChainPrefix, parts...)
	}
	if sp.UsesLocalEndpoints && len(sp.LocalEndpoints) > 0 {
		svl = objectName(svlChainPrefix, parts...)
	}
	internal := svc
	if sp.InternalPolicyLocal {
		internal = svl
	}
	eps := &endpointObjects{c: c, sp: sp, parts: parts, proto: proto, f: f, elem: elem, chains: map[string]bool{}}
	if svc != "" {
		f.chains = append(f.chains, eps.chain(svc, sp.ClusterEndpoints, internal == svc))
	}
	if svl != "" {
		f.chains = append(f.chains, eps.chain(svl, sp.LocalEndpoints, internal == svl))
	}
	f.chains = append(f.chains, eps.epChains...)

	// Cluster IP.
	if internal != "" {
		elem(serviceIPsMap, addrKey(sp.ClusterIP), "goto "+internal)
	} else {
		elem(noEndpointServicesMap, addrKey(sp.ClusterIP), "drop")
	}
	if !sp.HasExternal() {
		return f
	}

	// External traffic: NodePort, ExternalIPs, LoadBalancer IPs, all
	// through the port's external chain.
	ext := ""
	noExternalEndpoints := len(sp.ExternalEndpoints()) == 0
	switch {
	case sp.ExternalPolicyLocal:
		ext = objectName(extChainPrefix, parts...)
		var rules []string
		if svc != "" {
			// Pods and the node itself reach an external address through
			// the cluster endpoints (kube-proxy's short-circuit), the node
			// masqueraded.
			if m := c.fromCluster(false); m != "" {
				rules = append(rules, m+" goto "+svc)
			}
			rules = append(rules, "fib saddr type local "+c.mark, "fib saddr type local goto "+svc)
		}
		if svl != "" {
			rules = append(rules, "goto "+svl)
		}
		f.chains = append(f.chains, &Chain{Name: ext, Rules: rules})
	case svc != "":
		ext = objectName(extChainPrefix, parts...)
		f.chains = append(f.chains, &Chain{Name: ext, Rules: []string{c.mark, "goto " + svc}})
	default:
		noExternalEndpoints = true
	}
	for _, ip := range sp.ExternalIPs {
		if noExternalEndpoints {
			elem(noEndpointServicesMap, addrKey(ip), "drop")
		}
		if ext != "" {
			elem(serviceIPsMap, addrKey(ip), "goto "+ext)
		}
	}
	allowed := c.firewall(sp, elem, addrKey)
	for _, ip := range sp.LoadBalancerIPs {
		if noExternalEndpoints {
			elem(noEndpointServicesMap, addrKey(ip), "drop")
		}
		if ext != "" && allowed {
			elem(serviceIPsMap, addrKey(ip), "goto "+ext)
		}
	}
	if sp.NodePort != 0 {
		if noExternalEndpoints {
			elem(noEndpointNodePortsMap, nodePortKey, "drop")
		}
		if ext != "" {
			elem(serviceNodePortsMap, nodePortKey, "goto "+ext)
		}
	}
	return f
}

// firewall adds the elements that restrict the port's load-balancer
// addresses to its source ranges, and reports whether any source is
// allowed at all. Source ranges apply even when none is of this family
// (a dual-stack Service with ranges of the other family only) or none
// parsed: then every source is dropped (fail closed).
func (c *common) firewall(sp *proxy.ServicePort, elem func(set, key, value string), addrKey func(netip.Addr) string) bool {
	if !sp.LoadBalancerSourceRangesSet && len(sp.LoadBalancerSourceRanges) == 0 {
		return true
	}
	ranges := minimalPrefixes(sp.LoadBalancerSourceRanges)
	for _, ip := range sp.LoadBalancerIPs {
		elem(firewallIPsSet, addrKey(ip), "")
		for _, r := range ranges {
			elem(firewallAllowSet, addrKey(ip)+" . "+r.String(), "")
		}
	}
	return len(ranges) > 0
}

// minimalPrefixes returns the prefixes masked, sorted, without those
// inside another: an interval set refuses overlapping elements.
func minimalPrefixes(in []netip.Prefix) []netip.Prefix {
	ps := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if p.IsValid() {
			ps = append(ps, p.Masked())
		}
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := ps[:0]
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Bits() <= p.Bits() && out[n-1].Contains(p.Addr()) {
			continue // inside the previous one (or equal to it)
		}
		out = append(out, p)
	}
	return out
}

// endpointObjects renders the endpoint chains of one service port.
type endpointObjects struct {
	c      *common
	sp     *proxy.ServicePort
	parts  []string
	proto  string
	f      *fragment
	elem   func(set, key, value string)
	chains map[string]bool
	// epChains are the per-endpoint chains (ClientIP affinity only).
	epChains []*Chain
}

// chain returns the chain that picks one of eps: with masq, first the
// masquerade mark for cluster IP traffic from outside the cluster; with
// ClientIP affinity a lookup of the client in each endpoint's affinity
// set; then a random choice, rule by rule (rule i of n matches with
// probability 1/(n-i), like iptables' statistic), each rule DNATing, or
// with affinity going to the endpoint's chain, which records the client
// and DNATs. Every choice is rules in the port's own chains: no anonymous
// set or map, whose per-table list makes a full sync quadratic in the
// kernel (a numgen vmap per port measured 13.4 s for 10,000 services, these
// rules 1.5 s).
func (e *endpointObjects) chain(name string, eps []*proxy.Endpoint, masq bool) *Chain {
	c, sp := e.c, e.sp
	rules := make([]string, 0, 2*len(eps)+1)
	if masq {
		clusterIP := c.ip + " daddr " + sp.ClusterIP.String() + " "
		switch {
		case c.opts.MasqueradeAll:
			rules = append(rules, clusterIP+c.mark)
		case len(c.opts.ClusterCIDRs) > 0:
			rules = append(rules, clusterIP+c.fromCluster(true)+" "+c.mark)
		}
	}
	for _, ep := range eps {
		if ep.IsLocal {
			e.elem(hairpinSet, ep.IP.String()+" . "+ep.IP.String(), "")
		}
	}
	affinity := sp.AffinityTimeout > 0
	if affinity {
		for _, ep := range eps {
			set, chain := e.endpoint(ep)
			rules = append(rules, c.ip+" saddr @"+set+" goto "+chain)
		}
	}
	dnat := "meta l4proto " + e.proto + " dnat to "
	for i, ep := range eps {
		var b strings.Builder
		if i < len(eps)-1 {
			b.WriteString("numgen random mod ")
			b.WriteString(strconv.Itoa(len(eps) - i))
			b.WriteString(" == 0 ")
		}
		if affinity {
			_, chain := e.endpoint(ep)
			b.WriteString("goto ")
			b.WriteString(chain)
		} else {
			b.WriteString(dnat)
			b.WriteString(ep.String())
		}
		rules = append(rules, b.String())
	}
	return &Chain{Name: name, Rules: rules}
}

// endpoint returns the affinity set and chain of one endpoint, creating
// them the first time (an endpoint may be in both the cluster and the
// local list).
func (e *endpointObjects) endpoint(ep *proxy.Endpoint) (set, chain string) {
	port := strconv.Itoa(int(ep.Port))
	timeout := strconv.Itoa(int(e.sp.AffinityTimeout))
	ip := ep.IP.String()
	chain = objectName(epChainPrefix, append(slices.Clone(e.parts), ip, port)...)
	// The timeout is part of the set's name: a set's timeout cannot be
	// changed in place, and a new name makes the change a new set.
	set = objectName(affinityPrefix, append(slices.Clone(e.parts), ip, port, timeout)...)
	if !e.chains[chain] {
		e.chains[chain] = true
		e.f.sets = append(e.f.sets, &Set{Name: set, Type: e.c.addr, Dynamic: true,
			Flags:   []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
			Timeout: time.Duration(e.sp.AffinityTimeout) * time.Second})
		e.epChains = append(e.epChains, &Chain{Name: chain, Rules: []string{
			"update @" + set + " { " + e.c.ip + " saddr }",
			"meta l4proto " + e.proto + " dnat to " + ep.String(),
		}})
	}
	return set, chain
}
