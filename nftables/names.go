package nftables

import (
	"crypto/sha256"
	"encoding/base32"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/proxy"
)

// TableName is the name of svcproxy's table in both families ("ip
// svcproxy", "ip6 svcproxy"). Everything of nftables mode lives in it;
// other tables (upstream kube-proxy's "kube-proxy", iptables-nft's "nat"
// and "filter") are never touched.
const TableName = "svcproxy"

// Fixed chains: the base chains (hooked, named <type>-<hook>) and the
// regular chains they jump to.
const (
	natPreroutingChain       = "nat-prerouting"
	natOutputChain           = "nat-output"
	natPostroutingChain      = "nat-postrouting"
	filterPreroutingChain    = "filter-prerouting-pre-dnat"
	filterOutputPreDNATChain = "filter-output-pre-dnat"
	filterInputChain         = "filter-input"
	filterForwardChain       = "filter-forward"
	filterOutputChain        = "filter-output"

	servicesChain               = "services"                 // dispatch: @service-ips, then node ports
	masqueradingChain           = "masquerading"             // postrouting: marked traffic, hairpin
	firewallCheckChain          = "firewall-check"           // loadBalancerSourceRanges, before DNAT
	endpointsCheckChain         = "endpoints-check"          // REJECT/DROP of service addresses
	nodePortEndpointsCheckChain = "nodeport-endpoints-check" // REJECT/DROP of node ports
	rejectChain                 = "reject-chain"             // the target of "goto" for REJECT
)

// Sets and maps.
const (
	serviceIPsMap          = "service-ips"           // addr . proto . port : goto the port's chain
	serviceNodePortsMap    = "service-nodeports"     // proto . port : goto the port's chain
	noEndpointServicesMap  = "no-endpoint-services"  // addr . proto . port : goto reject-chain | drop
	noEndpointNodePortsMap = "no-endpoint-nodeports" // proto . port : goto reject-chain | drop
	firewallIPsSet         = "firewall-ips"          // LB addr . proto . port with source ranges
	firewallAllowSet       = "firewall-allow"        // LB addr . proto . port . allowed source range
	hairpinSet             = "hairpin"               // local endpoint . itself: masquerade
	clusterCIDRsSet        = "cluster-cidrs"         // --cluster-cidr, with more than one
	nodePortAddressesSet   = "nodeport-addresses"    // --nodeport-addresses
)

// Prefixes of the per-service-port objects.
const (
	svcChainPrefix = "svc-" // cluster endpoints
	svlChainPrefix = "svl-" // this node's endpoints (a Local traffic policy)
	extChainPrefix = "ext-" // external traffic (NodePort, ExternalIP, LB IP)
	epChainPrefix  = "ep-"  // one endpoint, with ClientIP affinity only
	affinityPrefix = "aff-" // an endpoint's affinity set (source addresses)
)

// maxNameLen is the longest name nft takes for a chain or set (the
// kernel's NFT_NAME_MAXLEN less its NUL: 255, measured with nft 1.0.6 on
// kernel 6.18).
const maxNameLen = 255

// hashLen is the length of the base32 hash that ends a name built from
// input that is not clean or too long.
const hashLen = 16

// portParts returns the parts that name a service port: namespace, name,
// port name (its number for an unnamed port: a port name always has a
// letter, so the two cannot collide) and protocol.
func portParts(sp *proxy.ServicePort) []string {
	port := sp.Name.Port
	if port == "" {
		port = strconv.Itoa(int(sp.Port))
	}
	return []string{sp.Name.Namespace, sp.Name.Name, port, strings.ToLower(string(sp.Protocol))}
}

// objectName returns prefix followed by parts joined with "/": readable
// and unique, because no part can hold a "/". A part with a character nft
// does not take in a name (a --state file is not validated by an API
// server, and IPv6 addresses have colons), or a name over maxNameLen,
// turns into a sanitized, cut prefix followed by "-" and a hash of the
// parts: a clean name ends in "/part", a hashed one in "-HASH", so the
// two kinds never collide.
func objectName(prefix string, parts ...string) string {
	n := len(prefix) + len(parts) - 1
	clean := true
	for _, p := range parts {
		n += len(p)
		clean = clean && cleanPart(p)
	}
	if clean && n <= maxNameLen {
		var b strings.Builder
		b.Grow(n)
		b.WriteString(prefix)
		for i, p := range parts {
			if i > 0 {
				b.WriteByte('/')
			}
			b.WriteString(p)
		}
		return b.String()
	}
	sum := sha256.Sum256([]byte(prefix + "\x00" + strings.Join(parts, "\x00")))
	suffix := "-" + base32.StdEncoding.EncodeToString(sum[:])[:hashLen]
	b := []byte(prefix + strings.Join(parts, "/"))
	for i, c := range b {
		if !nameChar(c) {
			b[i] = '_'
		}
	}
	if len(b) > maxNameLen-len(suffix) {
		b = b[:maxNameLen-len(suffix)]
	}
	return string(b) + suffix
}

// cleanPart reports whether p is made of the characters Kubernetes names
// and IPv4 addresses use: lower-case letters, digits, "-" and ".".
func cleanPart(p string) bool {
	if p == "" {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// nameChar reports whether nft takes c in a name after its first
// character.
func nameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '/'
}
