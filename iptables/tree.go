package iptables

import (
	"cmp"
	"fmt"
	"net/netip"
)

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
	// maxLevels caps the levels of chains below the root. Each level takes
	// at least splitBits bits, so an IPv4 or port tree never reaches it;
	// IPv6 keys chosen to differ one nibble at a time (externalIPs, a
	// selector-less Service's endpoints) would otherwise need 31 levels,
	// and nf_tables refuses chain graphs deeper than 16 jumps, failing the
	// whole family's sync. A node at the cap is a leaf, whatever its size.
	maxLevels = 8
)

// treeKey is one key and the rules that match it exactly (each rule already
// carries its own exact match, e.g. "-d 10.96.0.10/32 -p udp --dport 53").
// A key is a bit string of the tree's width, left-aligned (most
// significant bit first): an IPv4 address in 4 bytes, an IPv6 address in
// 16, a port in 2.
type treeKey struct {
	key   [16]byte
	rules []string
}

// addrKey returns the key of an address.
func addrKey(a netip.Addr) [16]byte {
	var k [16]byte
	if a.Is4() {
		b := a.As4()
		copy(k[:], b[:])
		return k
	}
	return a.As16()
}

// portKey returns the key of a port.
func portKey(p uint16) [16]byte {
	var k [16]byte
	k[0], k[1] = byte(p>>8), byte(p)
	return k
}

func cmpKeys(a, b *treeKey) int {
	// Two big-endian halves compare like the bytes, in two steps.
	if x, y := be64(a.key[:8]), be64(b.key[:8]); x != y {
		return cmp.Compare(x, y)
	}
	return cmp.Compare(be64(a.key[8:]), be64(b.key[8:]))
}

func be64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// treeSpec says how to name and match tree nodes for one key space.
type treeSpec struct {
	width int                                    // bits in a key
	name  func(prefix [16]byte, plen int) string // chain name of a node
	match func(prefix [16]byte, plen int) string // rule match selecting a node's keys
}

// buildTree returns the rules of the root (to be placed in a chain of the
// caller's) and the node chains, children before parents. keys must be
// sorted by key and unique.
func buildTree(keys []treeKey, spec treeSpec) (root []string, chains []*Chain) {
	return buildNode(keys, spec, 0, 0, &chains), chains
}

func buildNode(keys []treeKey, spec treeSpec, plen, level int, chains *[]*Chain) []string {
	if len(keys) <= leafSize || level == maxLevels {
		return flatten(keys)
	}
	// Common prefix of the first and last key (they are sorted).
	l := plen
	for l < spec.width && bit(keys[0].key, l) == bit(keys[len(keys)-1].key, l) {
		l++
	}
	n := splitBits
	if l+n > spec.width {
		n = spec.width - l
	}
	var rules []string
	for start := 0; start < len(keys); {
		end := start + 1
		part := prefixOf(keys[start].key, l+n)
		for end < len(keys) && prefixOf(keys[end].key, l+n) == part {
			end++
		}
		group := keys[start:end]
		if count := countRules(group); count <= inlineMax {
			rules = append(rules, flatten(group)...)
		} else {
			childLen := l + n
			name := spec.name(part, childLen)
			childRules := buildNode(group, spec, childLen, level+1, chains)
			*chains = append(*chains, &Chain{Name: name, Rules: childRules})
			rules = append(rules, spec.match(part, childLen)+" -g "+name)
		}
		start = end
	}
	return rules
}

// bit returns bit i of k, 0 being the most significant.
func bit(k [16]byte, i int) byte { return (k[i/8] >> (7 - i%8)) & 1 }

// prefixOf returns k with every bit from plen on cleared.
func prefixOf(k [16]byte, plen int) [16]byte {
	i := plen / 8
	if plen%8 != 0 {
		k[i] &= byte(0xff << (8 - plen%8))
		i++
	}
	for ; i < 16; i++ {
		k[i] = 0
	}
	return k
}

// u32 returns the first four bytes of a key as a number.
func u32(k [16]byte) uint32 {
	return uint32(k[0])<<24 | uint32(k[1])<<16 | uint32(k[2])<<8 | uint32(k[3])
}

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
	name: func(p [16]byte, l int) string {
		return fmt.Sprintf("%s%08X-%d", treeChainPrefix, u32(p), l)
	},
	match: func(p [16]byte, l int) string {
		return fmt.Sprintf("-d %d.%d.%d.%d/%d", p[0], p[1], p[2], p[3], l)
	},
}

// hairpinTree names and matches nodes of the hairpin tree, on the source
// address.
var hairpinTree = treeSpec{
	width: 32,
	name: func(p [16]byte, l int) string {
		return fmt.Sprintf("%s%08X-%d", hairpinChainPrefix, u32(p), l)
	},
	match: func(p [16]byte, l int) string {
		return fmt.Sprintf("-s %d.%d.%d.%d/%d", p[0], p[1], p[2], p[3], l)
	},
}

// addrTree6 and hairpinTree6 are the IPv6 trees. An IPv6 prefix in hex
// does not fit the 28 characters iptables allows a chain name, so their
// nodes are named by a hash of the prefix, like service chains.
var (
	addrTree6 = treeSpec{
		width: 128,
		name: func(p [16]byte, l int) string {
			return tree6ChainPrefix + hash16(prefix6(p, l).String())
		},
		match: func(p [16]byte, l int) string { return "-d " + prefix6(p, l).String() },
	}
	hairpinTree6 = treeSpec{
		width: 128,
		name: func(p [16]byte, l int) string {
			return hairpin6ChainPrefix + hash16(prefix6(p, l).String())
		},
		match: func(p [16]byte, l int) string { return "-s " + prefix6(p, l).String() },
	}
)

func prefix6(p [16]byte, l int) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom16(p), l) }

// portTree returns the spec of the node-port tree of one protocol.
func portTree(proto string) treeSpec {
	return treeSpec{
		width: 16,
		name: func(p [16]byte, l int) string {
			return fmt.Sprintf("%s%s-%04X-%d", npChainPrefix, proto, uint16(p[0])<<8|uint16(p[1]), l)
		},
		match: func(p [16]byte, l int) string {
			lo := uint32(p[0])<<8 | uint32(p[1])
			hi := lo | (1<<(16-l) - 1)
			return fmt.Sprintf("-p %s --dport %d:%d", lowerProto(proto), lo, hi)
		},
	}
}
