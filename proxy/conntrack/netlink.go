package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// Netlink is the real Interface, in the caller's network namespace.
type Netlink struct{}

var _ Interface = Netlink{}

// List implements Interface. An interrupted dump (the table changed while
// it was read) is an error, with what was read.
func (Netlink) List(family Family) ([]Entry, error) {
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, netlink.InetFamily(family))
	var out []Entry
	for _, f := range flows {
		if e, ok := entryOf(f); ok {
			out = append(out, e)
		}
	}
	if err != nil {
		err = fmt.Errorf("listing %v conntrack entries: %w", family, err)
	}
	return out, err
}

// Delete implements Interface: one dump of the table, and a delete request
// for each stale entry (made from the dumped entry itself, so it removes
// exactly that flow). An interrupted dump still deletes what it judged
// stale and reports the interruption.
func (Netlink) Delete(family Family, stale func(Entry) bool) (uint, error) {
	return netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(family), matcher(stale))
}

// NodeAddrs implements Interface: the destinations of the local routing
// table's local routes, which is what iptables' "-m addrtype --dst-type
// LOCAL" matches, loopback left out like svcproxy's node-port rules.
func (Netlink) NodeAddrs(family Family) ([]netip.Prefix, error) {
	routes, err := netlink.RouteListFiltered(int(family), &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		// An address came or went while the table was read: read it again.
		routes, err = netlink.RouteListFiltered(int(family), &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	}
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		p := netip.PrefixFrom(a.Unmap(), ones)
		if !p.IsValid() || p.Addr().IsLoopback() {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// matcher makes a judgement on Entries a netlink filter.
type matcher func(Entry) bool

func (m matcher) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	e, ok := entryOf(f)
	return ok && m(e)
}

// entryOf converts a UDP or SCTP flow; ok is false for other protocols.
func entryOf(f *netlink.ConntrackFlow) (e Entry, ok bool) {
	switch f.Forward.Protocol {
	case unix.IPPROTO_UDP:
		e.Protocol = v1.ProtocolUDP
	case unix.IPPROTO_SCTP:
		e.Protocol = v1.ProtocolSCTP
	default:
		return Entry{}, false
	}
	e.Orig = Tuple{Src: addrPort(f.Forward.SrcIP, f.Forward.SrcPort), Dst: addrPort(f.Forward.DstIP, f.Forward.DstPort)}
	e.Reply = Tuple{Src: addrPort(f.Reverse.SrcIP, f.Reverse.SrcPort), Dst: addrPort(f.Reverse.DstIP, f.Reverse.DstPort)}
	e.Zone = f.Zone
	return e, true
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

func (f Family) String() string {
	switch f {
	case afINET:
		return "IPv4"
	case afINET6:
		return "IPv6"
	}
	return fmt.Sprintf("family %d", uint8(f))
}
