// Package conntrack removes connection-tracking entries that would keep
// sending UDP or SCTP traffic to an endpoint that is gone, or nowhere.
//
// TCP needs none of this: a connection to a removed endpoint is reset. A
// UDP "connection" (the same 5-tuple, e.g. a DNS client's socket) stays
// pinned by conntrack to the endpoint it was first DNATed to for as long as
// packets keep flowing, so a removed DNS server would blackhole its clients;
// and packets sent while a service had no endpoints leave entries without
// DNAT that keep new endpoints unused (kubernetes issue #48370).
package conntrack

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// Filter selects entries to delete: all set fields must match. Zero fields
// match anything.
type Filter struct {
	Protocol   v1.Protocol
	OrigDst    netip.Addr // the service address the client sent to
	OrigPort   uint16     // the service port (or node port) the client sent to
	ReplySrcIP netip.Addr // the endpoint the flow was DNATed to
}

func (f Filter) String() string {
	return fmt.Sprintf("%s dst=%v dport=%d endpoint=%v", f.Protocol, f.OrigDst, f.OrigPort, f.ReplySrcIP)
}

// Interface deletes entries from the kernel's conntrack table.
type Interface interface {
	// Delete removes every IPv4 entry matching one of filters and returns
	// how many went.
	Delete(filters []Filter) (uint, error)
}

// Netlink is the real Interface, in the caller's network namespace.
type Netlink struct{}

var _ Interface = Netlink{}

// Delete implements Interface.
func (Netlink) Delete(filters []Filter) (uint, error) {
	if len(filters) == 0 {
		return 0, nil
	}
	nf := make([]netlink.CustomConntrackFilter, 0, len(filters))
	for _, f := range filters {
		cf := &netlink.ConntrackFilter{}
		proto := uint8(unix.IPPROTO_UDP)
		if f.Protocol == v1.ProtocolSCTP {
			proto = unix.IPPROTO_SCTP
		}
		if err := cf.AddProtocol(proto); err != nil {
			return 0, err
		}
		if f.OrigDst.IsValid() {
			if err := cf.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.OrigDst.AsSlice())); err != nil {
				return 0, err
			}
		}
		if f.OrigPort != 0 {
			if err := cf.AddPort(netlink.ConntrackOrigDstPort, f.OrigPort); err != nil {
				return 0, err
			}
		}
		if f.ReplySrcIP.IsValid() {
			if err := cf.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.ReplySrcIP.AsSlice())); err != nil {
				return 0, err
			}
		}
		nf = append(nf, cf)
	}
	return netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, nf...)
}

// StaleFilters returns the filters for the entries that changes make stale,
// for UDP and SCTP ports:
//   - an endpoint that no traffic path uses any more: entries DNATed to it
//     from any of the port's addresses (ClusterIP, ExternalIPs, LB IPs) and
//     from its node port;
//   - a port that had no usable endpoint and now has one: entries to its
//     addresses and node port that were never DNATed.
func StaleFilters(changes []proxy.Change) []Filter {
	var out []Filter
	for _, c := range changes {
		prev, cur := c.Prev, c.Cur
		sp := cur
		if sp == nil {
			sp = prev
		}
		if sp.Protocol != v1.ProtocolUDP && sp.Protocol != v1.ProtocolSCTP {
			continue
		}
		var addrs []netip.Addr
		var nodePort int32
		if prev != nil {
			addrs = serviceAddrs(prev)
			nodePort = prev.NodePort
		}
		was, now := used(prev), used(cur)
		for ip := range was {
			if now[ip] {
				continue
			}
			for _, a := range addrs {
				out = append(out, Filter{Protocol: sp.Protocol, OrigDst: a, OrigPort: uint16(prev.Port), ReplySrcIP: ip})
			}
			if nodePort != 0 {
				out = append(out, Filter{Protocol: sp.Protocol, OrigPort: uint16(nodePort), ReplySrcIP: ip})
			}
		}
		if len(was) == 0 && len(now) > 0 {
			for _, a := range serviceAddrs(cur) {
				out = append(out, Filter{Protocol: sp.Protocol, OrigDst: a, OrigPort: uint16(cur.Port)})
			}
			if cur.NodePort != 0 {
				out = append(out, Filter{Protocol: sp.Protocol, OrigPort: uint16(cur.NodePort)})
			}
		}
	}
	return out
}

func serviceAddrs(sp *proxy.ServicePort) []netip.Addr {
	out := []netip.Addr{sp.ClusterIP}
	out = append(out, sp.ExternalIPs...)
	return append(out, sp.LoadBalancerIPs...)
}

// used returns the endpoint addresses some traffic path of sp sends to.
func used(sp *proxy.ServicePort) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	if sp == nil {
		return out
	}
	for _, eps := range [][]*proxy.Endpoint{sp.ClusterEndpoints, sp.LocalEndpoints} {
		for _, ep := range eps {
			out[ep.IP] = true
		}
	}
	return out
}
