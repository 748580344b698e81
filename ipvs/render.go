package ipvs

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxy"
)

// Render turns a Snapshot into IPVS mode's desired state. It is pure: no
// I/O, no state kept between calls, deterministic output.
//
// Per service port:
//   - the ClusterIP is bound to the dummy interface and gets a virtual
//     server whose real servers are the port's internal endpoints
//     (internalTrafficPolicy);
//   - every ExternalIP and LoadBalancer IP likewise, and every node address
//     gets a virtual server on the NodePort, with the external endpoints
//     (externalTrafficPolicy);
//   - ClientIP affinity becomes persistence with the affinity timeout;
//   - the ipsets say which virtual servers to masquerade, reject (no
//     endpoints), drop (Local policy without local endpoints) or firewall
//     (loadBalancerSourceRanges), and which endpoints may hairpin.
//
// A second service port claiming a virtual server already taken (an
// ExternalIP conflict) is shadowed by the first in name order.
func Render(snap *proxy.Snapshot, opts Options) *Plan {
	r := &renderer{
		opts:  opts,
		vs:    map[ServiceKey]*VirtualServer{},
		addrs: map[netip.Addr]bool{},
		sets:  map[string]map[string]bool{},
	}
	var layout []setSpec
	for _, v6 := range opts.families() {
		layout = append(layout, layoutFor(v6)...)
	}
	for _, s := range layout {
		r.sets[s.name] = map[string]bool{}
	}
	for _, sp := range snap.ServicePorts() {
		if !opts.programs(sp.IPFamily == v1.IPv6Protocol) {
			continue
		}
		r.port(sp)
	}
	for _, p := range opts.ClusterCIDRs {
		v6 := p.Addr().Is6()
		if !opts.programs(v6) {
			continue
		}
		for _, q := range splitZero(p.Masked()) {
			r.add(SetName(SetClusterCIDR, v6), netEntry(q))
		}
	}

	plan := &Plan{Interface: DummyInterface}
	for a := range r.addrs {
		plan.Addresses = append(plan.Addresses, a)
		r.add(SetName(SetIPs, a.Is6()), a.String())
	}
	slices.SortFunc(plan.Addresses, netip.Addr.Compare)
	for _, vs := range r.vs {
		plan.Services = append(plan.Services, vs)
	}
	slices.SortFunc(plan.Services, func(a, b *VirtualServer) int { return a.ServiceKey.Compare(b.ServiceKey) })
	for _, s := range layout {
		set := &Set{Name: s.name, Type: s.typ}
		for e := range r.sets[s.name] {
			set.Entries = append(set.Entries, e)
		}
		sortEntries(set.Entries)
		plan.Sets = append(plan.Sets, set)
	}
	if opts.IPv4 {
		plan.IPTables = renderRules(opts, false)
	}
	if opts.IPv6 {
		plan.IPTables6 = renderRules(opts, true)
	}
	return plan
}

// families returns the families programmed, IPv4 first, as "is IPv6".
func (o Options) families() []bool {
	var out []bool
	if o.IPv4 {
		out = append(out, false)
	}
	if o.IPv6 {
		out = append(out, true)
	}
	return out
}

// programs reports whether the family (IPv6 or not) is programmed.
func (o Options) programs(ipv6 bool) bool {
	if ipv6 {
		return o.IPv6
	}
	return o.IPv4
}

type renderer struct {
	opts  Options
	vs    map[ServiceKey]*VirtualServer
	addrs map[netip.Addr]bool
	sets  map[string]map[string]bool
}

func (r *renderer) add(set, entry string) { r.sets[set][entry] = true }

// bind asks for a service address on the dummy link (and in SetIPs),
// unless it is one of the node's own addresses (Options.LocalAddresses).
func (r *renderer) bind(a netip.Addr) {
	if !slices.Contains(r.opts.LocalAddresses, a) {
		r.addrs[a] = true
	}
}

// addFor adds entry to the set of the layout named base for the family of
// addr.
func (r *renderer) addFor(addr netip.Addr, base, entry string) {
	r.sets[SetName(base, addr.Is6())][entry] = true
}

// port renders one service port.
func (r *renderer) port(sp *proxy.ServicePort) {
	hasEndpoints := sp.HasEndpoints()
	internal := sp.InternalEndpoints()
	external := sp.ExternalEndpoints()

	// vserver adds the virtual server for key with endpoints eps, unless
	// an earlier port took it, and classifies it for REJECT / DROP.
	vserver := func(key ServiceKey, eps []*proxy.Endpoint) bool {
		if _, taken := r.vs[key]; taken {
			return false
		}
		scheduler := r.opts.Scheduler
		if sp.IPVSScheduler != "" {
			scheduler = sp.IPVSScheduler // the Service's annotation
		}
		vs := &VirtualServer{ServiceKey: key, Scheduler: scheduler, Service: sp.Name.Comment()}
		if sp.AffinityTimeout > 0 {
			vs.Timeout = uint32(sp.AffinityTimeout)
		}
		for _, ep := range eps {
			vs.Destinations = append(vs.Destinations, &RealServer{Address: ep.IP, Port: uint16(ep.Port), Weight: 1})
			if ep.IsLocal {
				r.addFor(ep.IP, SetLoopback, ep.IP.String()+","+portEntry(sp.Protocol, uint16(ep.Port))+","+ep.IP.String())
			}
		}
		slices.SortFunc(vs.Destinations, func(a, b *RealServer) int { return a.AddrPort().Compare(b.AddrPort()) })
		r.vs[key] = vs
		entry := ipPortEntry(key)
		switch {
		case !hasEndpoints:
			r.addFor(key.Address, SetReject, entry)
		case len(eps) == 0:
			r.addFor(key.Address, SetDrop, entry)
		}
		return true
	}

	port := uint16(sp.Port)
	key := ServiceKey{Address: sp.ClusterIP, Protocol: sp.Protocol, Port: port}
	r.bind(sp.ClusterIP)
	if vserver(key, internal) {
		r.addFor(key.Address, SetClusterIP, ipPortEntry(key))
	}

	externalSet := SetExternal
	if sp.ExternalPolicyLocal {
		externalSet = SetExternalLocal
	}
	for _, ip := range sp.ExternalIPs {
		key := ServiceKey{Address: ip, Protocol: sp.Protocol, Port: port}
		r.bind(ip)
		if vserver(key, external) {
			r.addFor(ip, externalSet, ipPortEntry(key))
		}
	}
	for _, ip := range sp.LoadBalancerIPs {
		key := ServiceKey{Address: ip, Protocol: sp.Protocol, Port: port}
		r.bind(ip)
		if !vserver(key, external) {
			continue
		}
		r.addFor(ip, externalSet, ipPortEntry(key))
		// Ranges given but none of this family (or none parsed): in
		// LB-FW with no LB-SRC entry, no source is allowed (fail closed).
		if sp.LoadBalancerSourceRangesSet || len(sp.LoadBalancerSourceRanges) > 0 {
			r.addFor(ip, SetLBFirewall, ipPortEntry(key))
			for _, src := range sp.LoadBalancerSourceRanges {
				if src.Addr().Is6() != ip.Is6() {
					continue // the tracker gives one family; be sure
				}
				for _, q := range splitZero(src.Masked()) {
					r.addFor(ip, SetLBSource, ipPortEntry(key)+","+netEntry(q))
				}
			}
		}
	}
	if sp.NodePort != 0 {
		for _, ip := range r.opts.NodeAddresses {
			if ip.Is6() != sp.ClusterIP.Is6() {
				continue
			}
			key := ServiceKey{Address: ip, Protocol: sp.Protocol, Port: uint16(sp.NodePort)}
			if vserver(key, external) && !sp.ExternalPolicyLocal {
				r.addFor(ip, SetNodePort, ipPortEntry(key))
			}
		}
	}
}

// ipPortEntry returns a hash:ip,port entry, e.g. "10.96.0.1,tcp:443".
func ipPortEntry(k ServiceKey) string {
	return k.Address.String() + "," + portEntry(k.Protocol, k.Port)
}

func portEntry(p v1.Protocol, port uint16) string {
	return strings.ToLower(string(p)) + ":" + strconv.Itoa(int(port))
}

// netEntry returns a network as `ipset save` prints it: a host without
// its /32.
func netEntry(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// splitZero splits 0.0.0.0/0 and ::/0, which hash:net sets refuse, into
// their halves.
func splitZero(p netip.Prefix) []netip.Prefix {
	switch {
	case p.Bits() != 0:
		return []netip.Prefix{p}
	case p.Addr().Is6():
		return []netip.Prefix{netip.MustParsePrefix("::/1"), netip.MustParsePrefix("8000::/1")}
	}
	return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/1"), netip.MustParsePrefix("128.0.0.0/1")}
}

// sortEntries sorts set entries like compareEntries, computing each
// entry's sort key once (sorting is most of Render's cost otherwise).
func sortEntries(es []string) {
	type keyed struct {
		key   string
		entry string
	}
	ks := make([]keyed, len(es))
	for i, e := range es {
		ks[i] = keyed{entryKey(e), e}
	}
	slices.SortFunc(ks, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	for i := range ks {
		es[i] = ks[i].entry
	}
}

// entryKey returns a byte string that sorts like compareEntries: each
// field as a fixed-width address and prefix length, or protocol and
// big-endian port.
func entryKey(e string) string {
	var b []byte
	for f := range strings.SplitSeq(e, ",") {
		if p, err := netip.ParsePrefix(f); err == nil {
			a := p.Addr().As16()
			b = append(b, 'a')
			b = append(b, a[:]...)
			b = append(b, byte(p.Bits()))
			continue
		}
		if a, err := netip.ParseAddr(f); err == nil {
			a16 := a.As16()
			b = append(b, 'a')
			b = append(b, a16[:]...)
			b = append(b, byte(a.BitLen()))
			continue
		}
		if proto, num, ok := strings.Cut(f, ":"); ok {
			n, _ := strconv.Atoi(num)
			b = append(b, 'p')
			b = append(b, proto...)
			b = append(b, 0, byte(n>>8), byte(n))
			continue
		}
		b = append(b, 's')
		b = append(b, f...)
		b = append(b, 0)
	}
	return string(b)
}

// compareEntries orders set entries by their parsed fields (addresses
// numerically), so that the dump reads naturally.
func compareEntries(a, b string) int {
	fa, fb := strings.Split(a, ","), strings.Split(b, ",")
	for i := 0; i < len(fa) && i < len(fb); i++ {
		if c := compareField(fa[i], fb[i]); c != 0 {
			return c
		}
	}
	return len(fa) - len(fb)
}

func compareField(a, b string) int {
	if pa, err := netip.ParsePrefix(a); err == nil {
		if pb, err := netip.ParsePrefix(b); err == nil {
			if c := pa.Addr().Compare(pb.Addr()); c != 0 {
				return c
			}
			return pa.Bits() - pb.Bits()
		}
	}
	if pa, err := netip.ParseAddr(a); err == nil {
		if pb, err := netip.ParseAddr(b); err == nil {
			return pa.Compare(pb)
		}
	}
	pa, na, oka := strings.Cut(a, ":")
	pb, nb, okb := strings.Cut(b, ":")
	if oka && okb {
		if pa != pb {
			return strings.Compare(pa, pb)
		}
		ia, _ := strconv.Atoi(na)
		ib, _ := strconv.Atoi(nb)
		return ia - ib
	}
	return strings.Compare(a, b)
}

// renderRules returns the constant iptables part of one family (the
// ip6tables one references the IPv6 sets). Only the options change it,
// never the services: everything per service is in the ipsets.
func renderRules(opts Options, ipv6 bool) *iptables.Plan {
	mark := opts.markValue()
	markMasq := "-j MARK --or-mark " + mark
	match := func(set, dirs string) string { return "-m set --match-set " + SetName(set, ipv6) + " " + dirs }
	notMatch := func(set, dirs string) string { return "-m set ! --match-set " + SetName(set, ipv6) + " " + dirs }
	cmt := iptables.Comment
	cidrs := 0
	for _, p := range opts.ClusterCIDRs {
		if p.Addr().Is6() == ipv6 {
			cidrs++
		}
	}

	var services []string
	switch {
	case opts.MasqueradeAll:
		services = append(services, cmt("masquerade all traffic to cluster IPs")+" "+match(SetClusterIP, "dst,dst")+" "+markMasq)
	case cidrs > 0:
		services = append(services, cmt("masquerade off-cluster traffic to cluster IPs")+" "+notMatch(SetClusterCIDR, "src")+" "+match(SetClusterIP, "dst,dst")+" "+markMasq)
	}
	services = append(services,
		// The node's own connections to a service address on the dummy
		// interface leave with that address as source.
		cmt("masquerade traffic from service addresses")+" "+match(SetIPs, "src")+" "+match(SetClusterIP, "dst,dst")+" "+markMasq,
		cmt("masquerade external traffic, externalTrafficPolicy Cluster")+" "+match(SetExternal, "dst,dst")+" "+markMasq,
		cmt("masquerade node ports, externalTrafficPolicy Cluster")+" "+match(SetNodePort, "dst,dst")+" "+markMasq,
	)
	return &iptables.Plan{
		Filter: []*iptables.Chain{
			{Name: FilterChain, Rules: []string{
				cmt("service has no endpoints") + " " + match(SetReject, "dst,dst") + " -j REJECT",
				cmt("service has no local endpoints") + " " + match(SetDrop, "dst,dst") + " -j DROP",
				cmt("source not allowed by loadBalancerSourceRanges") + " " + match(SetLBFirewall, "dst,dst") + " " + notMatch(SetLBSource, "dst,dst,src") + " -j DROP",
				// Service addresses are local: without this, a host
				// process listening on 0.0.0.0 would answer on them.
				cmt("service address, not a service port") + " " + match(SetIPs, "dst") + " " + notMatch(SetClusterIP, "dst,dst") + " " +
					notMatch(SetExternal, "dst,dst") + " " + notMatch(SetExternalLocal, "dst,dst") + " -j REJECT",
			}},
			{Name: ForwardChain, Rules: iptables.ForwardRules("svcproxy-ipvs", mark)},
		},
		NAT: []*iptables.Chain{
			{Name: ServicesChain, Rules: services},
			{Name: PostroutingChain, Rules: iptables.PostroutingRules(
				cmt("hairpin: an endpoint reaching itself through its service")+" "+match(SetLoopback, "dst,dst,src")+" -j MASQUERADE",
				mark, opts.RandomFully)},
		},
		Jumps: jumps,
	}
}

// jumps is the fixed wiring from the built-in chains, in the order the
// rules appear at the top of each built-in chain. The filter chain sees
// only new flows: IPVS itself handles the rest. No FORWARD firewall jump:
// traffic to service addresses is local (INPUT), and IPVS sends it on from
// LOCAL_OUT.
var jumps = []iptables.Jump{
	{Table: iptables.TableFilter, Chain: "INPUT", Args: []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "svcproxy-ipvs-firewall", "-j", FilterChain}},
	{Table: iptables.TableFilter, Chain: "OUTPUT", Args: []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "svcproxy-ipvs-firewall", "-j", FilterChain}},
	{Table: iptables.TableFilter, Chain: "FORWARD", Args: []string{"-m", "comment", "--comment", "svcproxy-ipvs-forward", "-j", ForwardChain}},
	{Table: iptables.TableNAT, Chain: "PREROUTING", Args: []string{"-m", "comment", "--comment", "svcproxy-ipvs-services", "-j", ServicesChain}},
	{Table: iptables.TableNAT, Chain: "OUTPUT", Args: []string{"-m", "comment", "--comment", "svcproxy-ipvs-services", "-j", ServicesChain}},
	{Table: iptables.TableNAT, Chain: "POSTROUTING", Args: []string{"-m", "comment", "--comment", "svcproxy-ipvs-postrouting", "-j", PostroutingChain}},
}
