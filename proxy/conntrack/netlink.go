package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// Netlink is the real Interface, in the caller's network namespace. It
// talks ctnetlink itself rather than through netlink.ConntrackTableList,
// which drops the entries' status (and so whether netfilter or IPVS did
// the DNAT).
type Netlink struct{}

var _ Interface = Netlink{}

// ipsDstNAT is IPS_DST_NAT of enum ip_conntrack_status.
const ipsDstNAT = 1 << 5

// dump calls f with every UDP and SCTP entry of family's table and the
// message it came in (only valid during the call). An interrupted dump
// (the table changed while it was read) is reported after the entries
// that were read.
func dump(family Family, f func(Entry, []byte)) error {
	req := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(family), Version: nl.NFNETLINK_V0})
	err := req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		if e, ok := parseEntry(msg); ok {
			f(e, msg)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("listing %v conntrack entries: %w", family, err)
	}
	return nil
}

// List implements Interface.
func (Netlink) List(family Family) ([]Entry, error) {
	var out []Entry
	err := dump(family, func(e Entry, _ []byte) { out = append(out, e) })
	return out, err
}

// Delete implements Interface: one dump of the table, then a delete
// request for each stale entry, made of the dumped entry itself (its
// tuples and zone), so that it removes exactly that flow. An entry already
// gone is not counted. An interrupted dump still deletes what it judged
// stale, and reports the interruption.
func (Netlink) Delete(family Family, stale func(Entry) bool) (uint, error) {
	var del [][]byte
	derr := dump(family, func(e Entry, msg []byte) {
		if stale(e) {
			del = append(del, append([]byte(nil), msg[nl.SizeofNfgenmsg:]...))
		}
	})
	if derr != nil && !errors.Is(derr, netlink.ErrDumpInterrupted) {
		return 0, derr
	}
	var n uint
	var failed int
	var last error
	for _, attrs := range del {
		req := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK)
		req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(family), Version: nl.NFNETLINK_V0})
		req.AddRawData(attrs)
		switch _, err := req.Execute(unix.NETLINK_NETFILTER, 0); {
		case err == nil:
			n++
		case errors.Is(err, fs.ErrNotExist):
			// Gone meanwhile (timed out, or deleted by someone else).
		default:
			failed++
			last = err
		}
	}
	if failed > 0 {
		derr = errors.Join(derr, fmt.Errorf("deleting %d of %d stale %v conntrack entries failed: %w", failed, len(del), family, last))
	}
	return n, derr
}

// NodeAddrs implements Interface: the destinations of the local routing
// table's local routes, which is what iptables' "-m addrtype --dst-type
// LOCAL" matches, loopback left out like svcproxy's node-port rules.
func (Netlink) NodeAddrs(family Family) ([]netip.Prefix, error) {
	list := func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(int(family), &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	}
	routes, err := list()
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		// An address came or went while the table was read: read it again.
		routes, err = list()
	}
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	seen := map[netip.Prefix]bool{} // an address on several links has a route on each
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
		if !p.IsValid() || p.Addr().IsLoopback() || seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, p)
	}
	return out, nil
}

// parseEntry parses one ctnetlink message (struct nfgenmsg, then the
// entry's attributes); ok is false for a protocol other than UDP and SCTP,
// or a message it cannot read.
func parseEntry(msg []byte) (e Entry, ok bool) {
	if len(msg) < nl.SizeofNfgenmsg {
		return Entry{}, false
	}
	attrs, err := nl.ParseRouteAttr(msg[nl.SizeofNfgenmsg:])
	if err != nil {
		return Entry{}, false
	}
	var proto uint8
	var haveOrig, haveReply bool
	for _, a := range attrs {
		switch a.Attr.Type & nl.NLA_TYPE_MASK {
		case nl.CTA_TUPLE_ORIG:
			proto, e.Orig, haveOrig = parseTuple(a.Value)
		case nl.CTA_TUPLE_REPLY:
			_, e.Reply, haveReply = parseTuple(a.Value)
		case nl.CTA_STATUS:
			if len(a.Value) == 4 {
				e.DstNAT = binary.BigEndian.Uint32(a.Value)&ipsDstNAT != 0
			}
		case nl.CTA_ZONE:
			if len(a.Value) == 2 {
				e.Zone = binary.BigEndian.Uint16(a.Value)
			}
		}
	}
	switch proto {
	case unix.IPPROTO_UDP:
		e.Protocol = v1.ProtocolUDP
	case unix.IPPROTO_SCTP:
		e.Protocol = v1.ProtocolSCTP
	default:
		return Entry{}, false
	}
	return e, haveOrig && haveReply
}

// parseTuple parses a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY attribute.
func parseTuple(b []byte) (proto uint8, t Tuple, ok bool) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return 0, Tuple{}, false
	}
	var src, dst netip.Addr
	var sport, dport uint16
	for _, a := range attrs {
		switch a.Attr.Type & nl.NLA_TYPE_MASK {
		case nl.CTA_TUPLE_IP:
			ips, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return 0, Tuple{}, false
			}
			for _, ip := range ips {
				switch ip.Attr.Type & nl.NLA_TYPE_MASK {
				case nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC:
					src, _ = netip.AddrFromSlice(ip.Value)
				case nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST:
					dst, _ = netip.AddrFromSlice(ip.Value)
				}
			}
		case nl.CTA_TUPLE_PROTO:
			ps, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return 0, Tuple{}, false
			}
			for _, p := range ps {
				switch p.Attr.Type & nl.NLA_TYPE_MASK {
				case nl.CTA_PROTO_NUM:
					if len(p.Value) == 1 {
						proto = p.Value[0]
					}
				case nl.CTA_PROTO_SRC_PORT:
					sport = be16(p)
				case nl.CTA_PROTO_DST_PORT:
					dport = be16(p)
				}
			}
		}
	}
	t = Tuple{Src: netip.AddrPortFrom(src.Unmap(), sport), Dst: netip.AddrPortFrom(dst.Unmap(), dport)}
	return proto, t, src.IsValid() && dst.IsValid()
}

func be16(a syscall.NetlinkRouteAttr) uint16 {
	if len(a.Value) != 2 {
		return 0
	}
	return binary.BigEndian.Uint16(a.Value)
}

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return fmt.Sprintf("family %d", uint8(f))
}
