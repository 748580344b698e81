package iptables

import "fmt"

// The dispatch tree replaces kube-proxy's linear list of one rule per
// service port. Keys (destination addresses, or node ports) are sorted; a
// node with more than leafSize keys is split 16 ways on the four bits after
// the keys' common prefix, and each part becomes a child chain reached with
// -g (goto). A new connection so walks a handful of rules per level instead
// of half of every service. Gotos keep the jump stack flat, and 16-way splits
// keep the tree shallow: nf_tables refuses chain graphs deeper than 16.

const (
	leafSize  = 8 // keys in a leaf chain
	splitBits = 4 // 16-way split
	inlineMax = 2 // a part with at most this many rules is inlined in its parent
)

// treeKey is one key and the rules that match it exactly (each rule already
// carries its own exact match, e.g. "-d 10.96.0.10/32 -p udp --dport 53").
type treeKey struct {
	key   uint32
	rules []string
}

// treeSpec says how to name and match tree nodes for one key space.
type treeSpec struct {
	width int                                  // bits in a key
	name  func(prefix uint32, plen int) string // chain name of a node
	match func(prefix uint32, plen int) string // rule match selecting a node's keys
}

// buildTree returns the rules of the root (to be placed in a chain of the
// caller's) and the node chains, children before parents. keys must be
// sorted by key and unique.
func buildTree(keys []treeKey, spec treeSpec) (root []string, chains []*Chain) {
	return buildNode(keys, spec, 0, &chains), chains
}

func buildNode(keys []treeKey, spec treeSpec, plen int, chains *[]*Chain) []string {
	if len(keys) <= leafSize {
		return flatten(keys)
	}
	// Common prefix of the first and last key (they are sorted).
	l := plen
	for l < spec.width && bit(keys[0].key, l, spec.width) == bit(keys[len(keys)-1].key, l, spec.width) {
		l++
	}
	n := splitBits
	if l+n > spec.width {
		n = spec.width - l
	}
	var rules []string
	for start := 0; start < len(keys); {
		end := start + 1
		part := keys[start].key >> (spec.width - l - n)
		for end < len(keys) && keys[end].key>>(spec.width-l-n) == part {
			end++
		}
		group := keys[start:end]
		if count := countRules(group); count <= inlineMax {
			rules = append(rules, flatten(group)...)
		} else {
			childLen := l + n
			prefix := part << (spec.width - childLen)
			name := spec.name(prefix, childLen)
			childRules := buildNode(group, spec, childLen, chains)
			*chains = append(*chains, &Chain{Name: name, Rules: childRules})
			rules = append(rules, spec.match(prefix, childLen)+" -g "+name)
		}
		start = end
	}
	return rules
}

func bit(k uint32, i, width int) uint32 { return (k >> (width - 1 - i)) & 1 }

func countRules(keys []treeKey) int {
	n := 0
	for _, k := range keys {
		n += len(k.rules)
	}
	return n
}

func flatten(keys []treeKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.rules...)
	}
	return out
}

// addrTree names and matches nodes of the destination-address tree.
var addrTree = treeSpec{
	width: 32,
	name: func(p uint32, l int) string {
		return fmt.Sprintf("%s%08X-%d", treeChainPrefix, p, l)
	},
	match: func(p uint32, l int) string {
		return fmt.Sprintf("-d %d.%d.%d.%d/%d", p>>24, p>>16&0xff, p>>8&0xff, p&0xff, l)
	},
}

// hairpinTree names and matches nodes of the hairpin tree, on the source
// address.
var hairpinTree = treeSpec{
	width: 32,
	name: func(p uint32, l int) string {
		return fmt.Sprintf("%s%08X-%d", hairpinChainPrefix, p, l)
	},
	match: func(p uint32, l int) string {
		return fmt.Sprintf("-s %d.%d.%d.%d/%d", p>>24, p>>16&0xff, p>>8&0xff, p&0xff, l)
	},
}

// portTree returns the spec of the node-port tree of one protocol.
func portTree(proto string) treeSpec {
	return treeSpec{
		width: 16,
		name: func(p uint32, l int) string {
			return fmt.Sprintf("%s%s-%04X-%d", npChainPrefix, proto, p, l)
		},
		match: func(p uint32, l int) string {
			hi := p | (1<<(16-l) - 1)
			return fmt.Sprintf("-p %s --dport %d:%d", lowerProto(proto), p, hi)
		},
	}
}
