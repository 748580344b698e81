// Package conntracktest provides a stateful fake of conntrack.Interface: a
// conntrack table that holds entries, lists them, and deletes those a
// judgement picks, like the kernel's; and the node's addresses.
package conntracktest

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxy/conntrack"
)

// Fake is an in-memory conntrack table. The zero value is an empty table on
// a node without addresses; it is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	entries []conntrack.Entry
	deleted []conntrack.Entry
	nodes   []netip.Prefix
	// ListErr, DeleteErr and NodeAddrsErr, when set, make the calls fail
	// (Delete without deleting anything).
	ListErr, DeleteErr, NodeAddrsErr error

	deletes int
}

var _ conntrack.Interface = (*Fake)(nil)

// NewFake returns a table holding entries, on a node with addresses
// nodeAddrs.
func NewFake(nodeAddrs []netip.Prefix, entries ...conntrack.Entry) *Fake {
	f := &Fake{nodes: nodeAddrs}
	f.Add(entries...)
	return f
}

// Add inserts entries, as traffic would. It panics on an entry the kernel
// could not hold: mixed families, or an invalid address.
func (f *Fake) Add(entries ...conntrack.Entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range entries {
		fam := e.Orig.Src.Addr().Is4()
		for _, a := range []netip.AddrPort{e.Orig.Src, e.Orig.Dst, e.Reply.Src, e.Reply.Dst} {
			if !a.IsValid() || a.Addr().Is4() != fam || a.Addr().Is4In6() {
				panic(fmt.Sprintf("conntracktest: impossible entry %v", e))
			}
		}
		f.entries = append(f.entries, e)
	}
}

// SetNodeAddrs replaces the node's addresses.
func (f *Fake) SetNodeAddrs(p ...netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = slices.Clone(p)
}

// Entries returns every entry in the table, whatever its family or
// protocol.
func (f *Fake) Entries() []conntrack.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries)
}

// Deleted returns the entries Delete removed, in order.
func (f *Fake) Deleted() []conntrack.Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.deleted)
}

// Deletes returns how many times Delete was called.
func (f *Fake) Deletes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.deletes
}

func checkFamily(family conntrack.Family) error {
	if family != conntrack.IPv4 && family != conntrack.IPv6 {
		return fmt.Errorf("address family %d not supported", family)
	}
	return nil
}

// listed reports whether List and Delete see e in family: UDP and SCTP
// entries only, like the real one.
func listed(e conntrack.Entry, family conntrack.Family) bool {
	return e.Family() == family && (e.Protocol == v1.ProtocolUDP || e.Protocol == v1.ProtocolSCTP)
}

// List implements conntrack.Interface.
func (f *Fake) List(family conntrack.Family) ([]conntrack.Entry, error) {
	if err := checkFamily(family); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ListErr != nil {
		return nil, f.ListErr
	}
	var out []conntrack.Entry
	for _, e := range f.entries {
		if listed(e, family) {
			out = append(out, e)
		}
	}
	return out, nil
}

// Delete implements conntrack.Interface.
func (f *Fake) Delete(family conntrack.Family, stale func(conntrack.Entry) bool) (uint, error) {
	if err := checkFamily(family); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deletes++
	if f.DeleteErr != nil {
		return 0, f.DeleteErr
	}
	var n uint
	keep := f.entries[:0]
	for _, e := range f.entries {
		if listed(e, family) && stale(e) {
			f.deleted = append(f.deleted, e)
			n++
			continue
		}
		keep = append(keep, e)
	}
	f.entries = keep
	return n, nil
}

// NodeAddrs implements conntrack.Interface.
func (f *Fake) NodeAddrs(family conntrack.Family) ([]netip.Prefix, error) {
	if err := checkFamily(family); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.NodeAddrsErr != nil {
		return nil, f.NodeAddrsErr
	}
	var out []netip.Prefix
	for _, p := range f.nodes {
		if (family == conntrack.IPv4) == p.Addr().Is4() {
			out = append(out, p)
		}
	}
	return out, nil
}

// DNATed is the entry of a flow from client to dst (a service address or
// node port) that iptables rules DNATed to endpoint; addresses are
// "ip:port".
func DNATed(protocol v1.Protocol, client, dst, endpoint string) conntrack.Entry {
	e := IPVSDNATed(protocol, client, dst, endpoint)
	e.DstNAT = true
	return e
}

// IPVSDNATed is the entry of a flow from client to dst that IPVS sent to
// endpoint: its reply tuple rewritten, without netfilter's DNAT status.
func IPVSDNATed(protocol v1.Protocol, client, dst, endpoint string) conntrack.Entry {
	c, d, ep := netip.MustParseAddrPort(client), netip.MustParseAddrPort(dst), netip.MustParseAddrPort(endpoint)
	return conntrack.Entry{Protocol: protocol, Orig: conntrack.Tuple{Src: c, Dst: d}, Reply: conntrack.Tuple{Src: ep, Dst: c}}
}

// Direct is the entry of a flow from client to dst that was never DNATed.
func Direct(protocol v1.Protocol, client, dst string) conntrack.Entry {
	return IPVSDNATed(protocol, client, dst, dst)
}
