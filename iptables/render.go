package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/proxy"
)

// Options are the settings that shape the rules.
type Options struct {
	// ClusterCIDRs are the pod networks; traffic to a ClusterIP from outside
	// them is masqueraded. Empty (and MasqueradeAll false) means no
	// masquerading of ClusterIP traffic, as in kube-proxy.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to ClusterIPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit (0-31) that asks for SNAT; 14 like
	// kube-proxy.
	MasqueradeBit int
	// NodePortAddresses restricts NodePorts to local addresses inside these
	// prefixes. Empty means every local address but loopback.
	NodePortAddresses []netip.Prefix
	// RandomFully adds --random-fully to MASQUERADE.
	RandomFully bool
	// IPv6 renders for ip6tables: the Snapshot's IPv6 service ports only
	// (ClusterCIDRs and NodePortAddresses of that family), IPv6 trees,
	// node ports on local addresses but ::1 and link-local ones.
	IPv6 bool
}

// DefaultOptions returns kube-proxy's defaults.
func DefaultOptions() Options {
	return Options{MasqueradeBit: proxy.DefaultMasqueradeBit, RandomFully: true}
}

func (o Options) markValue() string { return proxy.MasqueradeMark(o.MasqueradeBit) }

// LargeClusterEndpoints is kube-proxy's threshold: above this many
// endpoints in all, the per-endpoint DNAT rules carry no comment. Every rule
// of a chain, comments included, is revisited by the kernel on each commit
// (nf_tables validates the whole graph reachable from the base chains), so
// this makes every partial sync of a big cluster cheaper; the first rule of
// each chain still names the service.
const LargeClusterEndpoints = 1000

// common holds values derived from Options once per Render.
type common struct {
	opts             Options
	mark             string // e.g. 0x4000
	markMasq         string // "-j MARK --or-mark 0x4000"
	endpointComments bool
}

func newCommon(opts Options, snap *proxy.Snapshot) *common {
	n := 0
	for _, sp := range snap.ServicePorts() {
		if ofFamily(sp, opts.IPv6) {
			n += len(sp.AllEndpoints)
		}
	}
	c := &common{opts: opts, mark: opts.markValue(), endpointComments: n <= LargeClusterEndpoints}
	c.markMasq = "-j MARK --or-mark " + c.mark
	return c
}

// fragment is everything one service port contributes to the plan. It is a
// function of the port and the options only, which lets Renderer reuse it
// while the port is unchanged.
type fragment struct {
	svcChains []*Chain // endpoint chains
	extChains []*Chain // chains that jump to endpoint chains
	dispatch  []keyedRules
	nodePorts []keyedRules
	filter    []string
	hairpin   []netip.Addr
}

// keyedRules are the rules that send one (address or node port, protocol,
// port) to a service.
type keyedRules struct {
	ip    netip.Addr // dispatch only
	proto string     // node ports only: TCP, UDP, SCTP
	port  uint16     // node ports only
	key   string     // identity for conflict detection
	rules []string
}

// Render turns a Snapshot into the desired iptables rules. It is pure: no
// I/O, no state kept between calls, deterministic output.
func Render(snap *proxy.Snapshot, opts Options) *Plan {
	c := newCommon(opts, snap)
	return assemble(snap, c, func(sp *proxy.ServicePort) *fragment { return c.renderPort(sp) })
}

// Renderer renders like Render but reuses the fragment of every service
// port that is the same object as in the previous call: the tracker shares
// unchanged ports between Snapshots, so a sync after one endpoint change
// renders one port, not all of them. Its output is identical to Render's.
type Renderer struct {
	opts  Options
	c     *common
	cache map[*proxy.ServicePort]*fragment
}

// NewRenderer returns a Renderer for opts.
func NewRenderer(opts Options) *Renderer {
	return &Renderer{opts: opts, cache: map[*proxy.ServicePort]*fragment{}}
}

// Render implements the same function as the package-level Render.
func (r *Renderer) Render(snap *proxy.Snapshot) *Plan {
	if c := newCommon(r.opts, snap); r.c == nil || c.endpointComments != r.c.endpointComments {
		r.c, r.cache = c, map[*proxy.ServicePort]*fragment{}
	}
	next := make(map[*proxy.ServicePort]*fragment, len(snap.ServicePorts()))
	plan := assemble(snap, r.c, func(sp *proxy.ServicePort) *fragment {
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

func lowerProto(p string) string { return strings.ToLower(p) }

func (c *common) renderPort(sp *proxy.ServicePort) *fragment {
	f := &fragment{}
	name := sp.Name.String()
	cmt := sp.Name.Comment()
	proto := lowerProto(string(sp.Protocol))
	port := strconv.Itoa(int(sp.Port))

	if !sp.HasEndpoints() {
		reject := func(match string) {
			f.filter = append(f.filter, "-m comment --comment "+comment(cmt+" has no endpoints")+" "+match+" -j REJECT")
		}
		reject(dst(sp.ClusterIP) + " -p " + proto + " --dport " + port)
		for _, ip := range externalAddrs(sp) {
			reject(dst(ip) + " -p " + proto + " --dport " + port)
		}
		if sp.NodePort != 0 {
			for _, local := range c.nodePortDsts() {
				reject(local + " -p " + proto + " --dport " + strconv.Itoa(int(sp.NodePort)))
			}
		}
		return f
	}

	// Endpoint chains.
	svc, svl := "", ""
	if sp.UsesClusterEndpoints && len(sp.ClusterEndpoints) > 0 {
		svc = serviceChain(name)
	}
	if sp.UsesLocalEndpoints && len(sp.LocalEndpoints) > 0 {
		svl = localChain(name)
	}
	internal := svc
	if sp.InternalPolicyLocal {
		internal = svl
	}
	clusterMatch := dst(sp.ClusterIP) + " -p " + proto + " --dport " + port
	if svc != "" {
		f.svcChains = append(f.svcChains, c.endpointChain(f, svc, sp, sp.ClusterEndpoints, internal == svc, clusterMatch))
	}
	if svl != "" {
		f.svcChains = append(f.svcChains, c.endpointChain(f, svl, sp, sp.LocalEndpoints, internal == svl, clusterMatch))
	}

	// Cluster IP.
	if internal != "" {
		f.addDispatch(sp.ClusterIP, proto, port, []string{
			"-m comment --comment " + comment(cmt+" cluster IP") + " " + clusterMatch + " -g " + internal})
	} else {
		f.filter = append(f.filter, "-m comment --comment "+comment(cmt+" has no local endpoints")+" "+clusterMatch+" -j DROP")
	}

	if !sp.HasExternal() {
		return f
	}

	// External traffic: NodePort, ExternalIPs, LoadBalancer IPs.
	var toExternal func(match string) []string
	noExternalEndpoints := len(sp.ExternalEndpoints()) == 0
	switch {
	case sp.ExternalPolicyLocal:
		ext := externalChain(name)
		var rules []string
		if svc != "" {
			// Pods and the node itself reach an externally-visible
			// address through the cluster endpoints (kube-proxy's
			// short-circuit), the node with masquerade.
			for _, cidr := range c.opts.ClusterCIDRs {
				rules = append(rules, "-m comment --comment "+comment(cmt+" pod traffic for external destinations")+" -s "+cidr.String()+" -g "+svc)
			}
			rules = append(rules,
				"-m comment --comment "+comment(cmt+" masquerade LOCAL traffic")+" -m addrtype --src-type LOCAL "+c.markMasq,
				"-m comment --comment "+comment(cmt+" route LOCAL traffic to cluster endpoints")+" -m addrtype --src-type LOCAL -g "+svc)
		}
		if svl != "" {
			rules = append(rules, "-m comment --comment "+comment(cmt+" local endpoints")+" -g "+svl)
		}
		f.extChains = append(f.extChains, &Chain{Name: ext, Rules: rules})
		toExternal = func(match string) []string { return []string{match + " -g " + ext} }
	case svc != "":
		toExternal = func(match string) []string {
			return []string{match + " " + c.markMasq, match + " -g " + svc}
		}
	default:
		toExternal = nil
		noExternalEndpoints = true
	}
	drop := func(match, why string) {
		f.filter = append(f.filter, "-m comment --comment "+comment(cmt+" "+why)+" "+match+" -j DROP")
	}

	for _, ip := range sp.ExternalIPs {
		m := dst(ip) + " -p " + proto + " --dport " + port
		if noExternalEndpoints {
			drop(m, "has no local endpoints")
		}
		if toExternal != nil {
			f.addDispatch(ip, proto, port, toExternal("-m comment --comment "+comment(cmt+" external IP")+" "+m))
		}
	}
	// Source ranges restrict the load-balancer addresses even when none
	// is of this family (a dual-stack Service with ranges of the other
	// family only) or none parsed: then no source may connect.
	restricted := sp.LoadBalancerSourceRangesSet || len(sp.LoadBalancerSourceRanges) > 0
	var fw string
	if len(sp.LoadBalancerIPs) > 0 && len(sp.LoadBalancerSourceRanges) > 0 && toExternal != nil {
		fw = firewallChain(name)
		var rules []string
		for _, src := range sp.LoadBalancerSourceRanges {
			rules = append(rules, toExternal("-m comment --comment "+comment(cmt+" loadBalancerSourceRanges")+" -s "+src.String())...)
		}
		f.extChains = append(f.extChains, &Chain{Name: fw, Rules: rules})
	}
	for _, ip := range sp.LoadBalancerIPs {
		m := dst(ip) + " -p " + proto + " --dport " + port
		if restricted {
			// Allowed sources are DNATed in nat; what is left still has
			// the LB IP as destination and is dropped here.
			drop(m, "traffic not allowed by loadBalancerSourceRanges")
		} else if noExternalEndpoints {
			drop(m, "has no local endpoints")
		}
		if toExternal == nil || (restricted && fw == "") {
			continue // nothing to DNAT: no endpoints, or no source allowed
		}
		c := "-m comment --comment " + comment(cmt+" loadbalancer IP") + " " + m
		if fw != "" {
			f.addDispatch(ip, proto, port, []string{c + " -g " + fw})
		} else {
			f.addDispatch(ip, proto, port, toExternal(c))
		}
	}
	if sp.NodePort != 0 {
		np := strconv.Itoa(int(sp.NodePort))
		if noExternalEndpoints {
			for _, local := range c.nodePortDsts() {
				drop(local+" -p "+proto+" --dport "+np, "has no local endpoints")
			}
		}
		if toExternal != nil {
			f.nodePorts = append(f.nodePorts, keyedRules{proto: strings.ToUpper(proto), port: uint16(sp.NodePort), key: "np/" + proto + "/" + np,
				rules: toExternal("-m comment --comment " + comment(cmt+" nodePort") + " -p " + proto + " --dport " + np)})
		}
	}
	return f
}

// endpointChain renders the endpoints of one service port as rules of one
// chain: ClientIP affinity via xt_recent, a random split via xt_statistic
// and the DNAT in the same rule, so there is no chain per endpoint.
func (c *common) endpointChain(f *fragment, name string, sp *proxy.ServicePort, eps []*proxy.Endpoint, masq bool, clusterMatch string) *Chain {
	cmt := sp.Name.Comment()
	proto := lowerProto(string(sp.Protocol))
	portName := sp.Name.String()
	rules := make([]string, 0, 2*len(eps)+1)
	if masq {
		switch {
		case c.opts.MasqueradeAll:
			rules = append(rules, "-m comment --comment "+comment(cmt+" cluster IP")+" "+clusterMatch+" "+c.markMasq)
		case len(c.opts.ClusterCIDRs) == 1:
			rules = append(rules, "-m comment --comment "+comment(cmt+" cluster IP")+" "+clusterMatch+" ! -s "+c.opts.ClusterCIDRs[0].String()+" "+c.markMasq)
		case len(c.opts.ClusterCIDRs) > 1:
			// "not in any of them" needs a chain: one "! -s" rule per CIDR
			// would mark pods of every other CIDR.
			rules = append(rules, "-m comment --comment "+comment(cmt+" cluster IP")+" "+clusterMatch+" -j "+MasqOffClusterChain)
		}
	}
	for _, ep := range eps {
		if ep.IsLocal {
			f.hairpin = append(f.hairpin, ep.IP)
		}
	}
	if sp.AffinityTimeout > 0 {
		for _, ep := range eps {
			rules = append(rules, c.endpointComment(cmt, ep)+
				"-m recent --name "+affinityList(portName, ep.String())+" --update --seconds "+strconv.Itoa(int(sp.AffinityTimeout))+" --reap"+
				" -p "+proto+" -j DNAT --to-destination "+ep.String())
		}
	}
	n := len(eps)
	for i, ep := range eps {
		var b strings.Builder
		b.WriteString(c.endpointComment(cmt, ep))
		if i < n-1 {
			b.WriteString("-m statistic --mode random --probability ")
			b.WriteString(probability(n - i))
			b.WriteByte(' ')
		}
		if sp.AffinityTimeout > 0 {
			b.WriteString("-m recent --name ")
			b.WriteString(affinityList(portName, ep.String()))
			b.WriteString(" --set ")
		}
		b.WriteString("-p ")
		b.WriteString(proto)
		b.WriteString(" -j DNAT --to-destination ")
		b.WriteString(ep.String())
		rules = append(rules, b.String())
	}
	return &Chain{Name: name, Rules: rules}
}

// nodePortDsts returns the matches for the destinations node ports answer
// on: local addresses within --nodeport-addresses, or every local address
// but loopback. The REJECT and DROP rules for node ports use the same, so
// that other local addresses are left alone.
func (c *common) nodePortDsts() []string {
	if len(c.opts.NodePortAddresses) == 0 {
		if c.opts.IPv6 {
			return []string{"! -d ::1/128 -m addrtype --dst-type LOCAL"}
		}
		return []string{"! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL"}
	}
	out := make([]string, 0, len(c.opts.NodePortAddresses))
	for _, pfx := range c.opts.NodePortAddresses {
		out = append(out, "-d "+pfx.String()+" -m addrtype --dst-type LOCAL")
	}
	return out
}

// endpointComment returns the comment of a DNAT rule with a trailing space,
// or nothing in large clusters.
func (c *common) endpointComment(cmt string, ep *proxy.Endpoint) string {
	if !c.endpointComments {
		return ""
	}
	return "-m comment --comment " + comment(cmt+" -> "+ep.String()) + " "
}

// probability is 1/n formatted as kube-proxy does.
func probability(n int) string { return fmt.Sprintf("%0.10f", 1.0/float64(n)) }

func dst(ip netip.Addr) string { return "-d " + host(ip) }

// filterRules are the rules of FilterChain: in IPv6 without
// --nodeport-addresses, link-local destinations first go back (the node-port
// REJECT and DROP rules match every local address, and node ports never
// answer on link-local ones).
func filterRules(opts Options, rules []string) []string {
	if !opts.IPv6 || len(opts.NodePortAddresses) > 0 {
		return rules
	}
	return append([]string{"-m comment --comment " + comment("no node ports on link-local addresses") + " -d fe80::/10 -j RETURN"}, rules...)
}

// ofFamily reports whether sp is of the family a plan renders: a service
// port belongs to the family of its cluster IP (the tracker gives a
// dual-stack Service one port per family).
func ofFamily(sp *proxy.ServicePort, ipv6 bool) bool { return sp.ClusterIP.Is6() == ipv6 }

// host returns ip as a one-address prefix: "10.0.0.1/32", "fd00::1/128".
func host(ip netip.Addr) string { return netip.PrefixFrom(ip, ip.BitLen()).String() }

func externalAddrs(sp *proxy.ServicePort) []netip.Addr {
	return append(slices.Clone(sp.ExternalIPs), sp.LoadBalancerIPs...)
}

func (f *fragment) addDispatch(ip netip.Addr, proto, port string, rules []string) {
	f.dispatch = append(f.dispatch, keyedRules{ip: ip, key: ip.String() + "/" + proto + "/" + port, rules: rules})
}

// assemble collects the fragments of every port and builds the plan, with
// chains in dependency order. A second service claiming an address, protocol
// and port already taken (an ExternalIP conflict) is shadowed by the first,
// which sorts first.
func assemble(snap *proxy.Snapshot, c *common, fragmentOf func(*proxy.ServicePort) *fragment) *Plan {
	p := &Plan{}
	r := struct {
		opts                 Options
		mark, markMasq       string
		svcChains, extChains []*Chain
		addrKeys             map[netip.Addr][]string
		portKeys             map[string]map[uint16][]string
		filter               []string
		hairpin              map[netip.Addr]bool
	}{opts: c.opts, mark: c.mark, markMasq: c.markMasq, addrKeys: map[netip.Addr][]string{},
		portKeys: map[string]map[uint16][]string{}, hairpin: map[netip.Addr]bool{}}
	seen := map[string]bool{}
	for _, sp := range snap.ServicePorts() {
		if !ofFamily(sp, c.opts.IPv6) {
			continue
		}
		f := fragmentOf(sp)
		r.svcChains = append(r.svcChains, f.svcChains...)
		r.extChains = append(r.extChains, f.extChains...)
		r.filter = append(r.filter, f.filter...)
		for _, ip := range f.hairpin {
			r.hairpin[ip] = true
		}
		for _, d := range f.dispatch {
			if !seen[d.key] {
				seen[d.key] = true
				r.addrKeys[d.ip] = append(r.addrKeys[d.ip], d.rules...)
			}
		}
		for _, np := range f.nodePorts {
			if !seen[np.key] {
				seen[np.key] = true
				if r.portKeys[np.proto] == nil {
					r.portKeys[np.proto] = map[uint16][]string{}
				}
				r.portKeys[np.proto][np.port] = np.rules
			}
		}
	}

	// Filter table.
	p.Filter = []*Chain{
		{Name: FilterChain, Rules: filterRules(c.opts, r.filter)},
		{Name: ForwardChain, Rules: ForwardRules("svcproxy", r.mark)},
	}

	// nat table: endpoint chains, then the chains that jump to them, then
	// the trees, then the fixed wiring.
	nat := make([]*Chain, 0, len(r.svcChains)+len(r.extChains)+64)
	if len(r.opts.ClusterCIDRs) > 1 && !r.opts.MasqueradeAll {
		var rules []string
		for _, cidr := range r.opts.ClusterCIDRs {
			rules = append(rules, "-s "+cidr.String()+" -j RETURN")
		}
		nat = append(nat, &Chain{Name: MasqOffClusterChain, Rules: append(rules, r.markMasq)})
	}
	nat = append(nat, r.svcChains...)
	nat = append(nat, r.extChains...)

	keys := make([]treeKey, 0, len(r.addrKeys))
	for ip, rules := range r.addrKeys {
		keys = append(keys, treeKey{key: addrKey(ip), rules: rules})
	}
	slices.SortFunc(keys, func(a, b treeKey) int { return cmpKeys(&a, &b) })
	dispatchSpec, hairpinSpec := addrTree, hairpinTree
	if c.opts.IPv6 {
		dispatchSpec, hairpinSpec = addrTree6, hairpinTree6
	}
	root, tree := buildTree(keys, dispatchSpec)
	nat = append(nat, tree...)
	nat = append(nat, &Chain{Name: DispatchChain, Rules: root})

	var npRoot []string
	for _, proto := range []string{"TCP", "UDP", "SCTP"} {
		ports := r.portKeys[proto]
		if len(ports) == 0 {
			continue
		}
		pk := make([]treeKey, 0, len(ports))
		for port, rules := range ports {
			pk = append(pk, treeKey{key: portKey(port), rules: rules})
		}
		slices.SortFunc(pk, func(a, b treeKey) int { return cmpKeys(&a, &b) })
		protoRoot, protoTree := buildTree(pk, portTree(proto))
		nat = append(nat, protoTree...)
		npRoot = append(npRoot, protoRoot...)
	}
	nat = append(nat, &Chain{Name: NodePortsChain, Rules: npRoot})

	services := []string{"-m comment --comment " + comment("service portals") + " -j " + DispatchChain}
	if c.opts.IPv6 && len(c.opts.NodePortAddresses) == 0 {
		// Node ports answer on the node's addresses, never on link-local
		// ones (an addrtype LOCAL match alone would take them).
		services = append(services, "-m comment --comment "+comment("no node ports on link-local addresses")+" -d fe80::/10 -j RETURN")
	}
	for _, local := range c.nodePortDsts() {
		services = append(services, "-m comment --comment "+comment("node ports on local addresses")+" "+local+" -j "+NodePortsChain)
	}
	nat = append(nat, &Chain{Name: ServicesChain, Rules: services})

	// Hairpin: a local endpoint reaching itself through its service must be
	// masqueraded, or it would get its own packet back with its own source.
	// One rule per local endpoint, behind a tree on the source address so
	// that a new connection does not walk all of them.
	hk := make([]treeKey, 0, len(r.hairpin))
	for ip := range r.hairpin {
		s := host(ip)
		hk = append(hk, treeKey{key: addrKey(ip),
			rules: []string{"-m comment --comment " + comment("hairpin") + " -s " + s + " -d " + s + " -j MASQUERADE"}})
	}
	slices.SortFunc(hk, func(a, b treeKey) int { return cmpKeys(&a, &b) })
	hpRoot, hpTree := buildTree(hk, hairpinSpec)
	nat = append(nat, hpTree...)
	nat = append(nat, &Chain{Name: HairpinChain, Rules: hpRoot})
	nat = append(nat, &Chain{Name: PostroutingChain,
		Rules: PostroutingRules("-m conntrack --ctstate DNAT -j "+HairpinChain, r.mark, r.opts.RandomFully)})
	p.NAT = nat
	p.Jumps = jumps
	return p
}

// jumps is the fixed wiring from the built-in chains, in the order the
// rules appear at the top of each built-in chain: the firewall before the
// forward accept, like kube-proxy. Each is inserted at the top, so they are
// applied in reverse (Plan.InsertOrder).
var jumps = []Jump{
	{TableFilter, "INPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "svcproxy-firewall", "-j", FilterChain}},
	{TableFilter, "FORWARD", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "svcproxy-firewall", "-j", FilterChain}},
	{TableFilter, "FORWARD", []string{"-m", "comment", "--comment", "svcproxy-forward", "-j", ForwardChain}},
	{TableFilter, "OUTPUT", []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "svcproxy-firewall", "-j", FilterChain}},
	{TableNAT, "PREROUTING", []string{"-m", "comment", "--comment", "svcproxy-services", "-j", ServicesChain}},
	{TableNAT, "OUTPUT", []string{"-m", "comment", "--comment", "svcproxy-services", "-j", ServicesChain}},
	{TableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "svcproxy-postrouting", "-j", PostroutingChain}},
}
