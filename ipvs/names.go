package ipvs

import (
	"strings"

	"github.com/svcproxy/svcproxy/iptables"
)

// Names of everything IPVS mode creates. Chains and sets share one prefix,
// distinct from iptables mode's chains (which use "SVCP-" followed by
// something else), so that each mode can find and remove exactly its own.
const (
	// DummyInterface is the link every service address is bound to. It
	// stays down: addresses on a down link are still local (the kernel
	// adds their local routes regardless), and nothing answers ARP for
	// them.
	DummyInterface = "svcproxy-ipvs0"

	// ChainPrefix starts every iptables chain of IPVS mode.
	ChainPrefix = iptables.IPVSChainPrefix
	// SetPrefix starts every ipset of IPVS mode.
	SetPrefix = "SVCP-IPVS-"
	// SetPrefix6 starts every IPv6 ipset: an ipset holds one family, so
	// each set of the layout has an "inet6" twin, SVCP-IPVS-6-<rest>
	// (at most 26 characters; ipset allows 31).
	SetPrefix6 = "SVCP-IPVS-6-"

	// nat
	ServicesChain    = "SVCP-IPVS-SERVICES"    // PREROUTING, OUTPUT: masquerade marks
	PostroutingChain = "SVCP-IPVS-POSTROUTING" // POSTROUTING: hairpin, marked traffic
	// filter
	FilterChain  = "SVCP-IPVS-FILTER"  // INPUT, OUTPUT (new flows): REJECT / DROP
	ForwardChain = "SVCP-IPVS-FORWARD" // FORWARD: accept service traffic

	// SetIPs holds every address bound to DummyInterface (hash:ip).
	SetIPs = "SVCP-IPVS-IPS"
	// SetClusterIP holds ClusterIP,proto:port of every service port
	// (hash:ip,port).
	SetClusterIP = "SVCP-IPVS-CLUSTER-IP"
	// SetExternal holds ExternalIP and LoadBalancer IP virtual servers
	// with externalTrafficPolicy Cluster: masqueraded (hash:ip,port).
	SetExternal = "SVCP-IPVS-EXTERNAL"
	// SetExternalLocal holds those with externalTrafficPolicy Local: the
	// client address is kept (hash:ip,port).
	SetExternalLocal = "SVCP-IPVS-EXTERNAL-LOCAL"
	// SetNodePort holds nodeAddress,proto:nodePort of node ports with
	// externalTrafficPolicy Cluster: masqueraded (hash:ip,port).
	SetNodePort = "SVCP-IPVS-NODE-PORT"
	// SetLBFirewall holds LoadBalancer IP,proto:port of service ports with
	// loadBalancerSourceRanges (hash:ip,port).
	SetLBFirewall = "SVCP-IPVS-LB-FW"
	// SetLBSource holds LB IP,proto:port,allowed source range
	// (hash:ip,port,net).
	SetLBSource = "SVCP-IPVS-LB-SRC"
	// SetReject holds the virtual servers of service ports without any
	// endpoint: new connections are rejected (hash:ip,port).
	SetReject = "SVCP-IPVS-REJECT"
	// SetDrop holds the virtual servers whose traffic policy is Local and
	// that have no endpoint on this node: new connections are dropped
	// (hash:ip,port).
	SetDrop = "SVCP-IPVS-DROP"
	// SetLoopback holds endpoint,proto:port,endpoint of this node's
	// endpoints: a pod reaching itself through a service is masqueraded
	// (hash:ip,port,ip).
	SetLoopback = "SVCP-IPVS-LOOPBACK"
	// SetClusterCIDR holds the pod networks (hash:net).
	SetClusterCIDR = "SVCP-IPVS-CLUSTER-CIDR"
)

// IsOwnedChain reports whether an iptables chain belongs to IPVS mode.
func IsOwnedChain(name string) bool { return strings.HasPrefix(name, ChainPrefix) }

// IsOwnedSet reports whether an ipset belongs to IPVS mode.
func IsOwnedSet(name string) bool { return strings.HasPrefix(name, SetPrefix) }

// SetName returns the name of the set of the layout named base (one of
// the Set… constants) for one family: base itself for IPv4, its
// SetPrefix6 twin for IPv6.
func SetName(base string, ipv6 bool) string {
	if !ipv6 {
		return base
	}
	return SetPrefix6 + strings.TrimPrefix(base, SetPrefix)
}

// isIPv6Set reports whether a set of ours holds IPv6 entries.
func isIPv6Set(name string) bool { return strings.HasPrefix(name, SetPrefix6) }

// setFamily returns the ipset family of a set of ours.
func setFamily(name string) string {
	if isIPv6Set(name) {
		return "inet6"
	}
	return "inet"
}

// setSpec is one set of the fixed layout: name, type and the comment that
// the dump shows above it.
type setSpec struct {
	name, typ, comment string
}

// setLayout is every set IPVS mode creates, in the order they are created
// and dumped. All exist whether or not they have entries, so that the
// iptables rules that reference them are the same on every node.
var setLayout = []setSpec{
	{SetIPs, "hash:ip", "addresses bound to " + DummyInterface},
	{SetClusterIP, "hash:ip,port", "cluster IP virtual servers"},
	{SetExternal, "hash:ip,port", "external and load-balancer IP virtual servers, externalTrafficPolicy Cluster"},
	{SetExternalLocal, "hash:ip,port", "external and load-balancer IP virtual servers, externalTrafficPolicy Local"},
	{SetNodePort, "hash:ip,port", "node-port virtual servers, externalTrafficPolicy Cluster"},
	{SetLBFirewall, "hash:ip,port", "load-balancer IP virtual servers with loadBalancerSourceRanges"},
	{SetLBSource, "hash:ip,port,net", "allowed sources of load-balancer IP virtual servers"},
	{SetReject, "hash:ip,port", "virtual servers of service ports without endpoints"},
	{SetDrop, "hash:ip,port", "virtual servers with a Local traffic policy and no local endpoint"},
	{SetLoopback, "hash:ip,port,ip", "local endpoints, for hairpin masquerade"},
	{SetClusterCIDR, "hash:net", "pod networks"},
}

// layoutFor returns setLayout for one family (names per SetName).
func layoutFor(ipv6 bool) []setSpec {
	if !ipv6 {
		return setLayout
	}
	out := make([]setSpec, len(setLayout))
	for i, s := range setLayout {
		out[i] = setSpec{SetName(s.name, true), s.typ, s.comment + " (IPv6)"}
	}
	return out
}
