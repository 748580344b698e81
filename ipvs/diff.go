package ipvs

import (
	"fmt"
	"net/netip"
	"slices"
)

// State is what the kernel holds of IPVS mode, or what the Applier knows it
// programmed: only objects of ours (see Applier for which those are).
type State struct {
	// LinkExists says whether the dummy interface exists.
	LinkExists bool
	// Addresses are the addresses on the dummy interface.
	Addresses []netip.Addr
	// Services are our virtual servers with their real servers.
	Services []*VirtualServer
	// Sets are our ipsets.
	Sets []*Set
}

// StateOf returns the state that applying p from scratch leaves.
func StateOf(p *Plan) *State {
	return &State{LinkExists: true, Addresses: p.Addresses, Services: p.Services, Sets: p.Sets}
}

// OpKind says what an Op does.
type OpKind int

// The kinds of Op, in the order the Applier runs additions.
const (
	OpCreateLink OpKind = iota
	OpCreateSet
	OpAddEntry
	OpAddService
	OpUpdateService
	OpAddDestination
	OpUpdateDestination
	OpAddAddress
	OpDeleteAddress
	OpDeleteDestination
	OpDeleteService
	OpDeleteEntry
	OpDestroySet
)

// Op is one change to the kernel.
type Op struct {
	Kind    OpKind
	Service *VirtualServer // service ops: the virtual server; destination ops: its key matters
	Dest    *RealServer    // destination ops
	Address netip.Addr     // address ops
	Link    string         // link and address ops
	Set     string         // set ops
	SetType string         // OpCreateSet
	Entry   string         // entry ops
}

// String renders the op as the command that would do it by hand.
func (op Op) String() string {
	switch op.Kind {
	case OpCreateLink:
		return "ip link add " + op.Link + " type dummy"
	case OpCreateSet:
		return "ipset create " + op.Set + " " + op.SetType
	case OpAddEntry:
		return "ipset add " + op.Set + " " + op.Entry
	case OpAddService:
		return "ipvsadm " + serviceLine("-A", op.Service)
	case OpUpdateService:
		return "ipvsadm " + serviceLine("-E", op.Service)
	case OpAddDestination:
		return "ipvsadm " + destLine("-a", op.Service.ServiceKey, op.Dest)
	case OpUpdateDestination:
		return "ipvsadm " + destLine("-e", op.Service.ServiceKey, op.Dest)
	case OpAddAddress:
		if op.Address.Is6() {
			return "ip addr add " + op.Address.String() + "/128 dev " + op.Link + " nodad"
		}
		return "ip addr add " + op.Address.String() + "/32 dev " + op.Link
	case OpDeleteAddress:
		return "ip addr del " + netip.PrefixFrom(op.Address, op.Address.BitLen()).String() + " dev " + op.Link
	case OpDeleteDestination:
		return fmt.Sprintf("ipvsadm -d %s -r %s", op.Service.ServiceKey, op.Dest.AddrPort())
	case OpDeleteService:
		return "ipvsadm -D " + op.Service.ServiceKey.String()
	case OpDeleteEntry:
		return "ipset del " + op.Set + " " + op.Entry
	case OpDestroySet:
		return "ipset destroy " + op.Set
	}
	return fmt.Sprintf("op(%d)", int(op.Kind))
}

// Changes are the operations that turn one State into a Plan. Add holds
// everything that creates or updates, Remove everything that deletes; the
// Applier runs Add, then the iptables rules, then Remove, so that nothing
// in use disappears before its replacement is in place.
type Changes struct {
	Add    []Op
	Remove []Op
}

// Empty reports whether there is nothing to do.
func (c Changes) Empty() bool { return len(c.Add) == 0 && len(c.Remove) == 0 }

// Strings returns every op as text, additions first.
func (c Changes) Strings() []string {
	out := make([]string, 0, len(c.Add)+len(c.Remove))
	for _, op := range c.Add {
		out = append(out, op.String())
	}
	for _, op := range c.Remove {
		out = append(out, op.String())
	}
	return out
}

// Diff returns the minimal operations that turn have into want. It is pure
// and deterministic. have must hold only objects of ours: whatever is in it
// and not in want is deleted. Real servers that are in have but not in want
// come out as OpDeleteDestination; the Applier turns those into a graceful
// drain. A set whose type differs is destroyed and created again.
//
// Order within Add: link, sets and their new entries (the iptables rules
// and ipset lookups need them), virtual servers, real servers, then the
// addresses, so that a service address becomes local only once its
// virtual server can take traffic. Remove runs the other way round:
// addresses first, so traffic stops arriving before its virtual server
// goes.
func Diff(want *Plan, have *State) Changes {
	var c Changes
	if !have.LinkExists {
		c.Add = append(c.Add, Op{Kind: OpCreateLink, Link: want.Interface})
	}

	// Sets.
	haveSets := map[string]*Set{}
	for _, s := range have.Sets {
		haveSets[s.Name] = s
	}
	var entryAdds, entryDels []Op
	for _, s := range want.Sets {
		old, ok := haveSets[s.Name]
		delete(haveSets, s.Name)
		if ok && old.Type != s.Type {
			c.Add = append(c.Add, Op{Kind: OpDestroySet, Set: s.Name})
			ok, old = false, nil
		}
		if !ok {
			c.Add = append(c.Add, Op{Kind: OpCreateSet, Set: s.Name, SetType: s.Type})
			old = &Set{}
		}
		oldEntries := make(map[string]bool, len(old.Entries))
		for _, e := range old.Entries {
			oldEntries[e] = true
		}
		for _, e := range s.Entries {
			if oldEntries[e] {
				delete(oldEntries, e)
				continue
			}
			entryAdds = append(entryAdds, Op{Kind: OpAddEntry, Set: s.Name, Entry: e})
		}
		var gone []string
		for _, e := range old.Entries {
			if oldEntries[e] {
				gone = append(gone, e)
			}
		}
		slices.SortFunc(gone, compareEntries)
		for _, e := range gone {
			entryDels = append(entryDels, Op{Kind: OpDeleteEntry, Set: s.Name, Entry: e})
		}
	}
	c.Add = append(c.Add, entryAdds...)
	var staleSets []string
	for n := range haveSets {
		staleSets = append(staleSets, n)
	}
	slices.Sort(staleSets)

	// Virtual and real servers.
	haveVS := make(map[ServiceKey]*VirtualServer, len(have.Services))
	for _, vs := range have.Services {
		haveVS[vs.ServiceKey] = vs
	}
	var vsAdds, vsUpdates, rsAdds, rsUpdates, rsDels, vsDels []Op
	for _, vs := range want.Services {
		old, ok := haveVS[vs.ServiceKey]
		delete(haveVS, vs.ServiceKey)
		if !ok {
			vsAdds = append(vsAdds, Op{Kind: OpAddService, Service: vs})
			for _, rs := range vs.Destinations {
				rsAdds = append(rsAdds, Op{Kind: OpAddDestination, Service: vs, Dest: rs})
			}
			continue
		}
		if !vs.sameConfig(old) {
			vsUpdates = append(vsUpdates, Op{Kind: OpUpdateService, Service: vs})
		}
		oldRS := make(map[netip.AddrPort]*RealServer, len(old.Destinations))
		for _, rs := range old.Destinations {
			oldRS[rs.AddrPort()] = rs
		}
		for _, rs := range vs.Destinations {
			o, ok := oldRS[rs.AddrPort()]
			delete(oldRS, rs.AddrPort())
			switch {
			case !ok:
				rsAdds = append(rsAdds, Op{Kind: OpAddDestination, Service: vs, Dest: rs})
			case o.Weight != rs.Weight:
				rsUpdates = append(rsUpdates, Op{Kind: OpUpdateDestination, Service: vs, Dest: rs})
			}
		}
		gone := make([]*RealServer, 0, len(oldRS))
		for _, rs := range oldRS {
			gone = append(gone, rs)
		}
		slices.SortFunc(gone, func(a, b *RealServer) int { return a.AddrPort().Compare(b.AddrPort()) })
		for _, rs := range gone {
			rsDels = append(rsDels, Op{Kind: OpDeleteDestination, Service: old, Dest: rs})
		}
	}
	for _, vs := range have.Services {
		if _, ok := haveVS[vs.ServiceKey]; ok {
			vsDels = append(vsDels, Op{Kind: OpDeleteService, Service: vs})
		}
	}
	slices.SortFunc(vsDels, func(a, b Op) int { return a.Service.Compare(b.Service.ServiceKey) })
	c.Add = append(c.Add, vsAdds...)
	c.Add = append(c.Add, vsUpdates...)
	c.Add = append(c.Add, rsAdds...)
	c.Add = append(c.Add, rsUpdates...)

	// Addresses.
	haveAddr := make(map[netip.Addr]bool, len(have.Addresses))
	for _, a := range have.Addresses {
		haveAddr[a] = true
	}
	wantAddr := make(map[netip.Addr]bool, len(want.Addresses))
	for _, a := range want.Addresses {
		wantAddr[a] = true
		if !haveAddr[a] {
			c.Add = append(c.Add, Op{Kind: OpAddAddress, Address: a, Link: want.Interface})
		}
	}
	var addrDels []Op
	for _, a := range have.Addresses {
		if !wantAddr[a] {
			addrDels = append(addrDels, Op{Kind: OpDeleteAddress, Address: a, Link: want.Interface})
		}
	}
	slices.SortFunc(addrDels, func(a, b Op) int { return a.Address.Compare(b.Address) })

	c.Remove = append(c.Remove, addrDels...)
	c.Remove = append(c.Remove, rsDels...)
	c.Remove = append(c.Remove, vsDels...)
	c.Remove = append(c.Remove, entryDels...)
	for _, n := range staleSets {
		c.Remove = append(c.Remove, Op{Kind: OpDestroySet, Set: n})
	}
	return c
}
