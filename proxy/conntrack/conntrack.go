// Package conntrack removes connection-tracking entries that would keep
// sending UDP or SCTP traffic to an endpoint that is gone, or nowhere.
//
// TCP needs none of this: a connection to a removed endpoint is reset. A
// UDP "connection" (the same 5-tuple, e.g. a DNS client's socket) stays
// pinned by conntrack to the endpoint it was first DNATed to for as long as
// packets keep flowing, so a removed DNS server would blackhole its clients;
// and packets sent while a service had no endpoints leave entries without
// DNAT that keep new endpoints unused (kubernetes issue #48370).
//
// An entry is stale when its original destination is a service address and
// port (ClusterIP, ExternalIP, LoadBalancer IP) or a node port on one of the
// node's addresses, and either
//   - it was DNATed (its reply source is not its original destination) to an
//     endpoint the rules no longer use for that port, or
//   - it was never DNATed while the port has endpoints the rules use, or
//   - it was DNATed by IPVS and the data plane is iptables (after a switch
//     from IPVS mode, svcproxy's or kube-proxy's): nothing translates its
//     packets any more, so it would blackhole the flow for as long as the
//     client keeps sending.
//
// Every other entry stays: above all, a flow whose endpoint is still there
// keeps its entry, and so its endpoint, across a restart of svcproxy, an
// upgrade or a mode switch (unlike kube-proxy, kubernetes issue #122740,
// whose first sync deletes every UDP flow to every service).
//
// Cleanup is called after every successful sync. On a full sync (the first
// after a start, the retry after a failure: whenever the caller cannot
// trust its list of changes; and the periodic one, and drift repair) it
// reconciles: every entry of the table is judged against the rules now in
// place. Otherwise only the
// entries the changes can have made stale are looked at, and each is still
// judged against the rules now in place, so an outdated change cannot
// delete a valid entry.
package conntrack

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// Family is an address family: unix.AF_INET or unix.AF_INET6.
type Family uint8

// The address families.
const (
	IPv4 = Family(unix.AF_INET)
	IPv6 = Family(unix.AF_INET6)
)

// families are the address families Cleanup looks at: each is listed and
// judged on its own (an IPv6 entry only against IPv6 service ports).
var families = []Family{IPv4, IPv6}

// Tuple is one direction of an entry.
type Tuple struct {
	Src, Dst netip.AddrPort
}

// Entry is one conntrack entry, the parts svcproxy looks at. It is
// comparable; two entries with equal fields are the same flow.
type Entry struct {
	Protocol v1.Protocol // UDP or SCTP
	// Orig is the tuple of the first packet: Dst is the address the client
	// sent to (a service address or a node address and node port).
	Orig Tuple
	// Reply is the tuple replies are expected with: Src is the endpoint the
	// flow was DNATed to, or Orig.Dst when it never was.
	Reply Tuple
	Zone  uint16
	// DstNAT is set when netfilter's NAT did the DNAT (status
	// IPS_DST_NAT): iptables rules, svcproxy's or kube-proxy's. An entry
	// DNATed without it was rewritten by IPVS, and only IPVS translates
	// its packets.
	DstNAT bool
}

// DNATed reports whether the flow's destination was rewritten: its replies
// come from another address or port than the client sent to.
func (e Entry) DNATed() bool { return e.Reply.Src != e.Orig.Dst }

// Family returns the entry's address family.
func (e Entry) Family() Family { return familyOf(e.Orig.Dst.Addr()) }

func (e Entry) String() string {
	s := fmt.Sprintf("%s src=%v dst=%v reply src=%v dst=%v", e.Protocol, e.Orig.Src, e.Orig.Dst, e.Reply.Src, e.Reply.Dst)
	if e.DNATed() && !e.DstNAT {
		s += " (IPVS)"
	}
	if e.Zone != 0 {
		s += fmt.Sprintf(" zone=%d", e.Zone)
	}
	return s
}

// Interface is the kernel's conntrack table (and the node's addresses, to
// tell node-port flows from others), in one network namespace.
type Interface interface {
	// List returns the UDP and SCTP entries of family.
	List(family Family) ([]Entry, error)
	// Delete goes through the UDP and SCTP entries of family once, deletes
	// each one for which stale returns true and returns how many went.
	Delete(family Family, stale func(Entry) bool) (uint, error)
	// NodeAddrs returns the node's local addresses of family (its local
	// routes), loopback excluded: where node ports answer.
	NodeAddrs(family Family) ([]netip.Prefix, error)
}

// Filter selects entries to delete: all set fields must match. Zero fields
// match anything.
type Filter struct {
	Protocol v1.Protocol
	OrigDst  netip.Addr // the service address the client sent to
	OrigPort uint16     // the service port (or node port) the client sent to
	// NodeAddr requires the original destination to be one of the node's
	// addresses (a node-port flow, not one to another host's port).
	NodeAddr bool
	// ReplySrcIP and ReplySrcPort: the endpoint the flow was DNATed to.
	ReplySrcIP   netip.Addr
	ReplySrcPort uint16
	// NotDNATed selects only entries that were never DNATed.
	NotDNATed bool
}

func (f Filter) String() string {
	s := fmt.Sprintf("%s dst=%v dport=%d", f.Protocol, f.OrigDst, f.OrigPort)
	if f.NodeAddr {
		s += " dst=node"
	}
	if f.ReplySrcIP.IsValid() || f.ReplySrcPort != 0 {
		s += fmt.Sprintf(" endpoint=%v:%d", f.ReplySrcIP, f.ReplySrcPort)
	}
	if f.NotDNATed {
		s += " not-DNATed"
	}
	return s
}

// Match reports whether e matches f; isNodeAddr tells the node's addresses.
func (f Filter) Match(e Entry, isNodeAddr func(netip.Addr) bool) bool {
	switch {
	case f.Protocol != "" && f.Protocol != e.Protocol,
		f.OrigDst.IsValid() && f.OrigDst != e.Orig.Dst.Addr(),
		f.OrigPort != 0 && f.OrigPort != e.Orig.Dst.Port(),
		f.NodeAddr && !isNodeAddr(e.Orig.Dst.Addr()),
		f.ReplySrcIP.IsValid() && f.ReplySrcIP != e.Reply.Src.Addr(),
		f.ReplySrcPort != 0 && f.ReplySrcPort != e.Reply.Src.Port(),
		f.NotDNATed && e.DNATed():
		return false
	}
	return true
}

// family returns the family f's addresses belong to, 0 when it has none
// (a node-port filter, for every family).
func (f Filter) family() Family {
	for _, a := range []netip.Addr{f.OrigDst, f.ReplySrcIP} {
		if a.IsValid() {
			return familyOf(a)
		}
	}
	return 0
}

// StaleFilters returns the filters for the entries that changes can have
// made stale, for UDP and SCTP ports:
//   - an endpoint that no traffic path uses any more: entries DNATed to it
//     from any of the port's addresses (ClusterIP, ExternalIPs, LB IPs) and
//     from its node port;
//   - a port that had no usable endpoint and now has one (a new port, and
//     every port on the first sync after a start): entries to its addresses
//     and node port that were never DNATed. Entries DNATed to an endpoint
//     are not touched.
func StaleFilters(changes []proxy.Change) []Filter {
	var out []Filter
	for _, c := range changes {
		prev, cur := c.Prev, c.Cur
		sp := cur
		if sp == nil {
			sp = prev
		}
		if sp == nil || !cleaned(sp.Protocol) {
			continue
		}
		was, now := used(prev), used(cur)
		for ep := range was {
			if now[ep] {
				continue
			}
			for _, a := range serviceAddrs(prev) {
				out = append(out, Filter{Protocol: sp.Protocol, OrigDst: a, OrigPort: uint16(prev.Port), ReplySrcIP: ep.Addr(), ReplySrcPort: ep.Port()})
			}
			if prev.NodePort != 0 {
				out = append(out, Filter{Protocol: sp.Protocol, OrigPort: uint16(prev.NodePort), NodeAddr: true, ReplySrcIP: ep.Addr(), ReplySrcPort: ep.Port()})
			}
		}
		if len(was) == 0 && len(now) > 0 {
			for _, a := range serviceAddrs(cur) {
				out = append(out, Filter{Protocol: sp.Protocol, OrigDst: a, OrigPort: uint16(cur.Port), NotDNATed: true})
			}
			if cur.NodePort != 0 {
				out = append(out, Filter{Protocol: sp.Protocol, OrigPort: uint16(cur.NodePort), NodeAddr: true, NotDNATed: true})
			}
		}
	}
	return out
}

// Options says how Cleanup judges.
type Options struct {
	// Reconcile judges every entry of the table: for the first sync after
	// a start and the retry after a failure, whenever the changes may not
	// say everything that changed since the table was last cleaned.
	Reconcile bool
	// IPVS says the data plane is IPVS: entries IPVS DNATed are its flows.
	// Otherwise they are left from an IPVS data plane that is gone, and
	// stale.
	IPVS bool
}

// Cleanup deletes the entries that are stale under snap, the rules now in
// place, and returns how many went. With o.Reconcile it judges every entry
// of the table; otherwise only those that changes can have made stale. In
// both cases an entry whose destination is one of snap's ports is deleted
// only if snap makes it stale; changes alone decide for the others (a
// deleted port, an address a port no longer has).
//
// An error leaves the remaining stale entries for a later call; nothing
// valid is deleted because of it.
func Cleanup(ct Interface, snap *proxy.Snapshot, changes []proxy.Change, o Options) (uint, error) {
	reconcile := o.Reconcile
	if reconcile {
		// Without a previous port a change only says "judge this port",
		// which the reconcile does for every port of snap anyway.
		var withPrev []proxy.Change
		for _, c := range changes {
			if c.Prev != nil {
				withPrev = append(withPrev, c)
			}
		}
		changes = withPrev
	}
	filters := StaleFilters(changes)
	if !reconcile && len(filters) == 0 {
		return 0, nil
	}
	j := newJudge(snap, o.IPVS)
	var total uint
	var errs []error
	for _, fam := range families {
		fs := newFilterSet(filters, fam)
		if !reconcile && fs.empty() {
			continue
		}
		isNodeAddr := func(netip.Addr) bool { return false }
		if len(j.nodePorts) > 0 || fs.nodeAddr {
			pfx, err := ct.NodeAddrs(fam)
			if err != nil {
				// Node-port entries are then left alone, valid or not.
				errs = append(errs, fmt.Errorf("listing the node's addresses: %w", err))
			} else {
				isNodeAddr = newAddrSet(pfx).contains
			}
		}
		n, err := ct.Delete(fam, func(e Entry) bool {
			if t := j.target(e, isNodeAddr); t != nil {
				return t.stale(e) && (reconcile || fs.match(e, isNodeAddr))
			}
			return fs.match(e, isNodeAddr)
		})
		total += n
		if err != nil {
			errs = append(errs, fmt.Errorf("deleting stale conntrack entries: %w", err))
		}
	}
	return total, errors.Join(errs...)
}

// judge knows, for every UDP and SCTP port of a Snapshot, which endpoints
// its rules use.
type judge struct {
	services  map[serviceKey]*target
	nodePorts map[nodePortKey]*target
}

type serviceKey struct {
	protocol v1.Protocol
	addr     netip.AddrPort
}

type nodePortKey struct {
	protocol v1.Protocol
	port     uint16
}

// target is what a flow to a service address or node port goes to.
type target struct {
	// endpoints the rules DNAT to; empty when the port has none usable.
	endpoints map[netip.AddrPort]bool
	// ipvs: the data plane is IPVS.
	ipvs bool
}

// stale reports whether e, a flow to t, is stale: DNATed to an endpoint the
// rules do not use, DNATed by IPVS when IPVS is not the data plane, or not
// DNATed although there are endpoints.
func (t *target) stale(e Entry) bool {
	if e.DNATed() {
		if !e.DstNAT && !t.ipvs {
			return true
		}
		return !t.endpoints[e.Reply.Src]
	}
	return len(t.endpoints) > 0
}

func newJudge(snap *proxy.Snapshot, ipvs bool) *judge {
	j := &judge{services: map[serviceKey]*target{}, nodePorts: map[nodePortKey]*target{}}
	if snap == nil {
		return j
	}
	// Two ports can claim the same address and port (an ExternalIP shared
	// by mistake): their endpoints are merged, so that no valid entry goes.
	get := func(t *target) *target {
		if t == nil {
			t = &target{endpoints: map[netip.AddrPort]bool{}, ipvs: ipvs}
		}
		return t
	}
	for _, sp := range snap.ServicePorts() {
		if !cleaned(sp.Protocol) {
			continue
		}
		eps := used(sp)
		for _, a := range serviceAddrs(sp) {
			k := serviceKey{sp.Protocol, netip.AddrPortFrom(a, uint16(sp.Port))}
			t := get(j.services[k])
			for ep := range eps {
				t.endpoints[ep] = true
			}
			j.services[k] = t
		}
		if sp.NodePort != 0 {
			k := nodePortKey{sp.Protocol, uint16(sp.NodePort)}
			t := get(j.nodePorts[k])
			for ep := range eps {
				t.endpoints[ep] = true
			}
			j.nodePorts[k] = t
		}
	}
	return j
}

// target returns what e's destination is, or nil when it is no service
// address or node port of the Snapshot.
func (j *judge) target(e Entry, isNodeAddr func(netip.Addr) bool) *target {
	if t := j.services[serviceKey{e.Protocol, e.Orig.Dst}]; t != nil {
		return t
	}
	if t := j.nodePorts[nodePortKey{e.Protocol, e.Orig.Dst.Port()}]; t != nil && isNodeAddr(e.Orig.Dst.Addr()) {
		return t
	}
	return nil
}

// filterSet holds the filters of one family, indexed by protocol and port
// (every filter StaleFilters makes has both).
type filterSet struct {
	byPort   map[nodePortKey][]Filter
	nodeAddr bool // some filter needs the node's addresses
}

func newFilterSet(filters []Filter, fam Family) filterSet {
	fs := filterSet{byPort: map[nodePortKey][]Filter{}}
	for _, f := range filters {
		if ff := f.family(); ff != 0 && ff != fam {
			continue
		}
		k := nodePortKey{f.Protocol, f.OrigPort}
		fs.byPort[k] = append(fs.byPort[k], f)
		fs.nodeAddr = fs.nodeAddr || f.NodeAddr
	}
	return fs
}

func (fs filterSet) empty() bool { return len(fs.byPort) == 0 }

func (fs filterSet) match(e Entry, isNodeAddr func(netip.Addr) bool) bool {
	for _, f := range fs.byPort[nodePortKey{e.Protocol, e.Orig.Dst.Port()}] {
		if f.Match(e, isNodeAddr) {
			return true
		}
	}
	return false
}

// addrSet answers "is this one of the node's addresses" quickly even with
// thousands of host routes (IPVS mode's service addresses).
type addrSet struct {
	hosts    map[netip.Addr]bool
	prefixes []netip.Prefix
}

func newAddrSet(pfx []netip.Prefix) *addrSet {
	s := &addrSet{hosts: map[netip.Addr]bool{}}
	for _, p := range pfx {
		p = p.Masked()
		if p.IsSingleIP() {
			s.hosts[p.Addr()] = true
		} else {
			s.prefixes = append(s.prefixes, p)
		}
	}
	return s
}

func (s *addrSet) contains(a netip.Addr) bool {
	if s.hosts[a] {
		return true
	}
	for _, p := range s.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// cleaned reports whether flows of protocol need cleaning up: connectionless
// ones, which a removed endpoint does not reset.
func cleaned(protocol v1.Protocol) bool {
	return protocol == v1.ProtocolUDP || protocol == v1.ProtocolSCTP
}

// serviceAddrs returns the addresses of sp: ClusterIP, ExternalIPs and
// LoadBalancer IPs. An invalid one is left out: as a filter's OrigDst it
// would match every address.
func serviceAddrs(sp *proxy.ServicePort) []netip.Addr {
	var out []netip.Addr
	for _, as := range [][]netip.Addr{{sp.ClusterIP}, sp.ExternalIPs, sp.LoadBalancerIPs} {
		for _, a := range as {
			if a.IsValid() {
				out = append(out, a)
			}
		}
	}
	return out
}

// used returns the endpoints (address and port) some traffic path of sp
// sends to.
func used(sp *proxy.ServicePort) map[netip.AddrPort]bool {
	out := map[netip.AddrPort]bool{}
	if sp == nil {
		return out
	}
	for _, eps := range [][]*proxy.Endpoint{sp.ClusterEndpoints, sp.LocalEndpoints} {
		for _, ep := range eps {
			out[netip.AddrPortFrom(ep.IP, uint16(ep.Port))] = true
		}
	}
	return out
}

func familyOf(a netip.Addr) Family {
	if a.Is4() || a.Is4In6() {
		return IPv4
	}
	return IPv6
}
