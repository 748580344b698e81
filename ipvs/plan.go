// Package ipvs is svcproxy's IPVS mode: Render turns a proxy.Snapshot into
// a Plan (virtual servers, the addresses bound to a dummy interface, ipsets
// and a constant handful of iptables rules), Diff compares a Plan with what
// the kernel holds, and an Applier makes the kernel match through Interface,
// draining removed real servers gracefully.
package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
)

// ServiceKey identifies a virtual server: address, protocol and port.
type ServiceKey struct {
	Address  netip.Addr
	Protocol v1.Protocol // TCP, UDP or SCTP
	Port     uint16
}

// String returns the ipvsadm service argument, e.g. "-t 10.96.0.1:443".
func (k ServiceKey) String() string {
	return protoFlag(k.Protocol) + " " + netip.AddrPortFrom(k.Address, k.Port).String()
}

// Compare orders keys by address, protocol and port.
func (k ServiceKey) Compare(o ServiceKey) int {
	if c := k.Address.Compare(o.Address); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Protocol, o.Protocol); c != 0 {
		return c
	}
	return cmp.Compare(k.Port, o.Port)
}

func protoFlag(p v1.Protocol) string {
	switch p {
	case v1.ProtocolUDP:
		return "-u"
	case v1.ProtocolSCTP:
		return "--sctp-service"
	default:
		return "-t"
	}
}

// VirtualServer is one IPVS service and its real servers.
type VirtualServer struct {
	ServiceKey
	Scheduler string
	// Timeout is the persistence timeout in seconds (ClientIP session
	// affinity); 0 means not persistent.
	Timeout uint32
	// Service names the service port ("ns/name:port") in logs and the
	// dump; empty in what the kernel lists, and ignored by Diff.
	Service string
	// Destinations are the real servers, sorted by address and port.
	Destinations []*RealServer
}

// sameConfig reports whether two virtual servers need no update.
func (vs *VirtualServer) sameConfig(o *VirtualServer) bool {
	return vs.Scheduler == o.Scheduler && vs.Timeout == o.Timeout
}

// RealServer is one destination of a virtual server. IPVS mode always
// forwards by masquerading (NAT).
type RealServer struct {
	Address netip.Addr
	Port    uint16
	Weight  int
	// ActiveConns and InactiveConns are what the kernel lists; Render
	// leaves them 0 and Diff ignores them.
	ActiveConns, InactiveConns int
}

// AddrPort returns the real server's address and port.
func (rs *RealServer) AddrPort() netip.AddrPort { return netip.AddrPortFrom(rs.Address, rs.Port) }

// Set is one ipset and its entries, in `ipset save` syntax
// ("10.96.0.1,tcp:443"), sorted.
type Set struct {
	Name    string
	Type    string
	Entries []string
}

// Plan is the desired state of IPVS mode on this node.
type Plan struct {
	// Interface is the dummy link the Addresses are bound to.
	Interface string
	// Addresses are the service addresses bound to Interface, sorted:
	// ClusterIPs, ExternalIPs and LoadBalancer IPs.
	Addresses []netip.Addr
	// Services are the virtual servers, sorted by key.
	Services []*VirtualServer
	// Sets are the ipsets, in setLayout order: IPv4's, then IPv6's.
	Sets []*Set
	// IPTables holds the constant handful of rules, applied with the
	// iptables Syncer; nil when IPv4 is not programmed.
	IPTables *iptables.Plan
	// IPTables6 is the same for IPv6, applied through ip6tables; nil when
	// IPv6 is not programmed.
	IPTables6 *iptables.Plan
}

// Stats counts what the plan programs.
func (p *Plan) Stats() (services, destinations, addresses, entries int) {
	for _, vs := range p.Services {
		destinations += len(vs.Destinations)
	}
	for _, s := range p.Sets {
		entries += len(s.Entries)
	}
	return len(p.Services), destinations, len(p.Addresses), entries
}

// Dump renders the plan as sections, each introduced by a comment line:
// `ipset save` format (for `ipset restore -exist`; the sets of both
// families), `ipvsadm -Sn` format (for `ipvsadm -R`, which has no comment
// syntax: drop the lines starting with "#"), and `iptables-save` format
// (for `iptables-restore --noflush`) for IPv4 and `ip6tables-save` format
// (for `ip6tables-restore --noflush`) for IPv6, each where that family is
// programmed. Comment lines above the sets say what each holds and list
// the addresses to bind to the dummy interface.
// This is the --dry-run output of IPVS mode.
func (p *Plan) Dump() string {
	var b strings.Builder
	b.WriteString("# ipset save (restore with: ipset restore -exist)\n")
	// ipset restore reads lines of at most 1024 bytes: a longer comment
	// would come back as a bad command, so the addresses go ten a line.
	if len(p.Addresses) == 0 {
		fmt.Fprintf(&b, "# bound to %s: (none)\n", p.Interface)
	}
	for i := 0; i < len(p.Addresses); i += 10 {
		fmt.Fprintf(&b, "# bound to %s: %s\n", p.Interface, joinAddrs(p.Addresses[i:min(i+10, len(p.Addresses))]))
	}
	if len(p.Addresses) > 0 && p.Addresses[len(p.Addresses)-1].Is6() {
		fmt.Fprintf(&b, "# (IPv6 ones as /128 with nodad: usable at once, never tentative)\n")
	}
	b.WriteString(setsText(p.Sets, true))
	b.WriteString("# ipvsadm -Sn (restore with: grep -v '^#' | ipvsadm -R)\n")
	b.WriteString(servicesText(p.Services))
	if p.IPTables != nil {
		b.WriteString("# iptables-save (restore with: iptables-restore --noflush)\n")
		b.WriteString(p.IPTables.String())
	}
	if p.IPTables6 != nil {
		b.WriteString("# ip6tables-save (restore with: ip6tables-restore --noflush)\n")
		b.WriteString(p.IPTables6.String())
	}
	return b.String()
}

// String returns Dump.
func (p *Plan) String() string { return p.Dump() }

func joinAddrs(as []netip.Addr) string {
	if len(as) == 0 {
		return "(none)"
	}
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}

// setOptions returns the creation options of a set of ours: its family,
// and a generous maxelem because it cannot be changed without recreating
// the set.
func setOptions(name string) string {
	return "family " + setFamily(name) + " hashsize 1024 maxelem 1048576"
}

// setsText renders sets as `ipset save` output.
func setsText(sets []*Set, comments bool) string {
	var b strings.Builder
	for _, s := range sets {
		if comments {
			if c := setComment(s.Name); c != "" {
				fmt.Fprintf(&b, "# %s: %s\n", s.Name, c)
			}
		}
		fmt.Fprintf(&b, "create %s %s %s\n", s.Name, s.Type, setOptions(s.Name))
		for _, e := range s.Entries {
			fmt.Fprintf(&b, "add %s %s\n", s.Name, e)
		}
	}
	return b.String()
}

func setComment(name string) string {
	for _, s := range layoutFor(isIPv6Set(name)) {
		if s.name == name {
			return s.comment
		}
	}
	return ""
}

// servicesText renders virtual servers as `ipvsadm -Sn` output.
func servicesText(vss []*VirtualServer) string {
	var b strings.Builder
	for _, vs := range vss {
		b.WriteString(addServiceLine(vs))
		b.WriteByte('\n')
		for _, rs := range vs.Destinations {
			b.WriteString(destLine("-a", vs.ServiceKey, rs))
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func addServiceLine(vs *VirtualServer) string { return serviceLine("-A", vs) }

func serviceLine(cmd string, vs *VirtualServer) string {
	s := cmd + " " + vs.ServiceKey.String() + " -s " + vs.Scheduler
	if vs.Timeout > 0 {
		s += fmt.Sprintf(" -p %d", vs.Timeout)
	}
	return s
}

func destLine(cmd string, k ServiceKey, rs *RealServer) string {
	return fmt.Sprintf("%s %s -r %s -m -w %d", cmd, k, rs.AddrPort(), rs.Weight)
}
