package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Chain names. Every chain svcproxy creates starts with ChainPrefix; the
// fixed ones are listed here, per-service ones add 16 base32 characters of a
// sha256 to a prefix (iptables caps names at 28 characters).
const (
	ChainPrefix = "SVCP-"

	// nat
	ServicesChain    = "SVCP-SERVICES"    // PREROUTING, OUTPUT -> dispatch, then node ports
	DispatchChain    = "SVCP-DISPATCH"    // root of the destination-address tree
	NodePortsChain   = "SVCP-NODEPORTS"   // root of the node-port tree
	PostroutingChain = "SVCP-POSTROUTING" // masquerade marked traffic
	HairpinChain     = "SVCP-HAIRPIN"     // masquerade a pod reaching itself through a service
	// MasqOffClusterChain marks traffic from outside every cluster CIDR
	// (only with more than one).
	MasqOffClusterChain = "SVCP-MASQ-OFF-CLUSTER"

	// filter
	FilterChain  = "SVCP-FILTER"  // INPUT, FORWARD, OUTPUT (new flows): REJECT / DROP
	ForwardChain = "SVCP-FORWARD" // FORWARD: accept service traffic

	svcChainPrefix      = "SVCP-SVC-" // endpoints for cluster traffic policy
	svlChainPrefix      = "SVCP-SVL-" // endpoints on this node (Local policies)
	extChainPrefix      = "SVCP-EXT-" // external traffic with externalTrafficPolicy Local
	fwChainPrefix       = "SVCP-FW-"  // loadBalancerSourceRanges
	treeChainPrefix     = "SVCP-T-"   // dispatch tree nodes: SVCP-T-<hex addr>-<prefix len>
	tree6ChainPrefix    = "SVCP-T6-"  // IPv6 dispatch tree nodes: SVCP-T6-<hash of the prefix>
	npChainPrefix       = "SVCP-NP-"  // node-port tree nodes: SVCP-NP-<proto>-<hex port>-<len>
	hairpinChainPrefix  = "SVCP-H-"   // hairpin tree nodes: SVCP-H-<hex addr>-<len>
	hairpin6ChainPrefix = "SVCP-H6-"  // IPv6 hairpin tree nodes: SVCP-H6-<hash of the prefix>
	affinityPrefix      = "SVCP-A-"   // xt_recent list names for ClientIP affinity
)

// IPVSChainPrefix starts the chains of IPVS mode (package ipvs), which
// iptables mode must leave alone: after a mode switch both exist for a
// moment, and each mode removes only its own.
const IPVSChainPrefix = "SVCP-IPVS-"

// IsOwnedChain reports whether a chain name is one of iptables mode's.
func IsOwnedChain(name string) bool {
	return strings.HasPrefix(name, ChainPrefix) && !strings.HasPrefix(name, IPVSChainPrefix)
}

func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

func serviceChain(portName string) string  { return svcChainPrefix + hash16(portName) }
func localChain(portName string) string    { return svlChainPrefix + hash16(portName) }
func externalChain(portName string) string { return extChainPrefix + hash16(portName) }
func firewallChain(portName string) string { return fwChainPrefix + hash16(portName) }
func affinityList(portName, endpoint string) string {
	return affinityPrefix + hash16(portName+"/"+endpoint)
}

// comment returns s as a quoted rule comment. Names from a state file are
// not validated by an apiserver, so anything but a safe set of characters is
// replaced, and the length is capped at what xt_comment accepts.
func comment(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s) && i < 240; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '.', c == '/', c == ':', c == '_', c == ' ', c == '>', c == ',', c == '[', c == ']':
			b = append(b, c)
		default:
			b = append(b, '_')
		}
	}
	return string(append(b, '"'))
}
