package nftables

import (
	"time"

	"sigs.k8s.io/knftables"
)

// Plan is the desired content of one family's table: a fixed part that
// depends on the options only, and one fragment per service port of that
// family, in Snapshot order. A fragment is a function of its service port
// and the options, so the Syncer compares fragments by identity
// (Renderer reuses the fragment of an unchanged port) and sends only what
// the changed ones add or remove.
type Plan struct {
	Family knftables.Family
	fixed  *fragment
	ports  []*fragment
}

// Chain is one chain and its rules, each the text nft takes after "add
// rule <family> <table> <chain>".
type Chain struct {
	Name  string
	Base  *BaseChain // nil: a regular chain
	Rules []string
}

// BaseChain is what hooks a chain into the packet path.
type BaseChain struct {
	Type     knftables.BaseChainType
	Hook     knftables.BaseChainHook
	Priority knftables.BaseChainPriority
}

// Set is a named set, or a verdict map when Map is set.
type Set struct {
	Name string
	Map  bool
	// Type is the key type ("ipv4_addr . inet_proto . inet_service"); a
	// map's values are verdicts.
	Type    string
	Flags   []knftables.SetFlag
	Timeout time.Duration
	// Dynamic sets are filled by the packet path (ClientIP affinity): the
	// Syncer never flushes them, so a sync keeps every client's endpoint.
	Dynamic bool
}

// Element is one element of a set or map. Key and Value are nft's text
// ("10.96.0.10 . tcp . 53", "goto svc-kube-system/kube-dns/dns/udp"); a
// set's elements have no value.
type Element struct {
	Set   string
	Key   string
	Value string
}

// fragment is what one service port (or the fixed part) puts in the
// table: its chains, the sets it owns and its elements in the shared
// sets and maps.
type fragment struct {
	// name orders fragments in a transaction: the service port's
	// "ns/name:port/PROTO", "" for the fixed part.
	name   string
	chains []*Chain
	sets   []*Set
	elems  []Element
}

// Chains calls fn with every chain of the plan: the fixed ones first,
// then each service port's.
func (p *Plan) Chains(fn func(*Chain)) {
	for _, f := range p.fragments() {
		for _, c := range f.chains {
			fn(c)
		}
	}
}

// Sets calls fn with every set and map of the plan.
func (p *Plan) Sets(fn func(*Set)) {
	for _, f := range p.fragments() {
		for _, s := range f.sets {
			fn(s)
		}
	}
}

// Elements calls fn with every element of the plan, once per set and key:
// a key claimed twice (never by the tracker, which settles address
// conflicts) goes to the first claim.
func (p *Plan) Elements(fn func(Element)) {
	seen := map[elemID]bool{}
	for _, f := range p.fragments() {
		for _, e := range f.elems {
			id := elemID{e.Set, e.Key}
			if !seen[id] {
				seen[id] = true
				fn(e)
			}
		}
	}
}

// Stats counts the plan's chains, rules and elements.
func (p *Plan) Stats() (chains, rules, elements int) {
	for _, f := range p.fragments() {
		chains += len(f.chains)
		for _, c := range f.chains {
			rules += len(c.Rules)
		}
		elements += len(f.elems)
	}
	return chains, rules, elements
}

// fragments returns the fixed part and then every port's fragment.
func (p *Plan) fragments() []*fragment {
	out := make([]*fragment, 0, len(p.ports)+1)
	return append(append(out, p.fixed), p.ports...)
}

// elemID names an element: its set and key.
type elemID struct{ set, key string }

// knftables objects of the plan's types.

func (c *Chain) object() *knftables.Chain {
	out := &knftables.Chain{Name: c.Name}
	if c.Base != nil {
		out.Type = knftables.PtrTo(c.Base.Type)
		out.Hook = knftables.PtrTo(c.Base.Hook)
		out.Priority = knftables.PtrTo(c.Base.Priority)
	}
	return out
}

// object returns the set or map as knftables' Set or Map.
func (s *Set) object() knftables.Object {
	if s.Map {
		return &knftables.Map{Name: s.Name, Type: s.Type + " : verdict", Flags: s.Flags}
	}
	out := &knftables.Set{Name: s.Name, Type: s.Type, Flags: s.Flags}
	if s.Timeout > 0 {
		out.Timeout = knftables.PtrTo(s.Timeout)
	}
	return out
}

// sameSet reports whether a and b are the same definition.
func sameSet(a, b *Set) bool {
	if a == b {
		return true
	}
	if a.Name != b.Name || a.Map != b.Map || a.Type != b.Type || a.Timeout != b.Timeout || a.Dynamic != b.Dynamic || len(a.Flags) != len(b.Flags) {
		return false
	}
	for i := range a.Flags {
		if a.Flags[i] != b.Flags[i] {
			return false
		}
	}
	return true
}

// element returns e as knftables' Element of the set or map it names;
// withValue false leaves the value out (a deletion).
func (e Element) object(isMap, withValue bool) *knftables.Element {
	out := &knftables.Element{Key: []string{e.Key}}
	if isMap {
		out.Map = e.Set
		if withValue {
			out.Value = []string{e.Value}
		}
	} else {
		out.Set = e.Set
	}
	return out
}

func sameRules(a, b *Chain) bool {
	if a == b {
		return true
	}
	if len(a.Rules) != len(b.Rules) || (a.Base == nil) != (b.Base == nil) || (a.Base != nil && *a.Base != *b.Base) {
		return false
	}
	for i := range a.Rules {
		if a.Rules[i] != b.Rules[i] {
			return false
		}
	}
	return true
}
