// Package proxy is the mode-independent core of svcproxy: the Snapshot model
// handed to every backend, the trackers that build it from Services and
// EndpointSlices, node-local endpoint selection, and the sync runner.
package proxy

import (
	"fmt"
	"net/netip"
	"sort"

	v1 "k8s.io/api/core/v1"
)

// ServicePortName identifies one port of one Service. Its String form,
// "ns/name:port/proto", is the key for chain names and rule comments.
type ServicePortName struct {
	Namespace string
	Name      string
	Port      string // the port's name; "" for a single unnamed port
	Protocol  v1.Protocol
}

// String returns "ns/name:port/proto".
func (n ServicePortName) String() string {
	return fmt.Sprintf("%s/%s:%s/%s", n.Namespace, n.Name, n.Port, n.Protocol)
}

// Comment returns the short "ns/name:port" form used in rule comments.
func (n ServicePortName) Comment() string {
	return fmt.Sprintf("%s/%s:%s", n.Namespace, n.Name, n.Port)
}

// Less orders names by namespace, name, port name and protocol.
func (n ServicePortName) Less(o ServicePortName) bool {
	if n.Namespace != o.Namespace {
		return n.Namespace < o.Namespace
	}
	if n.Name != o.Name {
		return n.Name < o.Name
	}
	if n.Port != o.Port {
		return n.Port < o.Port
	}
	return n.Protocol < o.Protocol
}

// Endpoint is one backend address of a service port as seen from this node.
type Endpoint struct {
	IP          netip.Addr
	Port        int32
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	// IsLocal is true when the endpoint runs on this node.
	IsLocal bool
	// ZoneHints and NodeHints are the topology hints the EndpointSlice
	// controller set (hints.forZones / hints.forNodes). Nil means no hints.
	ZoneHints map[string]bool
	NodeHints map[string]bool
}

// String returns "ip:port".
func (e *Endpoint) String() string {
	return netip.AddrPortFrom(e.IP, uint16(e.Port)).String()
}

// ServicePort is one port of a Service, with its endpoints already selected
// for this node. Backends program exactly what it says.
type ServicePort struct {
	Name ServicePortName
	// IPFamily is the family of every address of the port: a dual-stack
	// Service has one ServicePort per family, with the same Name.
	IPFamily v1.IPFamily
	Protocol v1.Protocol
	Port     int32

	ClusterIP       netip.Addr
	NodePort        int32 // 0 when none
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges are the sources (of this family) allowed to
	// reach LoadBalancerIPs when LoadBalancerSourceRangesSet.
	LoadBalancerSourceRanges []netip.Prefix
	// LoadBalancerSourceRangesSet says the Service restricts its
	// load-balancer addresses to source ranges. With it and no range of
	// this family (all of the other family, or unparsable), no source may
	// connect: fail closed, never open to everyone.
	LoadBalancerSourceRangesSet bool
	// IPVSScheduler is the Service's own IPVS scheduler (an annotation);
	// "" means the --ipvs-scheduler default.
	IPVSScheduler string
	// AffinityTimeout is the ClientIP session affinity timeout in seconds;
	// 0 means no affinity.
	AffinityTimeout     int32
	ExternalPolicyLocal bool
	InternalPolicyLocal bool
	HealthCheckNodePort int32

	// AllEndpoints holds every endpoint of the port, de-duplicated and sorted.
	AllEndpoints []*Endpoint
	// ClusterEndpoints are the endpoints that traffic using the Cluster
	// traffic policy goes to: ready endpoints (or serving-terminating ones
	// when none is ready), filtered by topology. Empty when no path uses them.
	ClusterEndpoints []*Endpoint
	// LocalEndpoints are the endpoints on this node that traffic using a
	// Local policy goes to, with the same terminating fallback.
	LocalEndpoints []*Endpoint
	// UsesClusterEndpoints and UsesLocalEndpoints say which of the two lists
	// some traffic path uses (and so which chains a backend needs).
	UsesClusterEndpoints bool
	UsesLocalEndpoints   bool
}

// HasExternal reports whether the port is reachable from outside the cluster
// network: through a NodePort, an ExternalIP or a LoadBalancer IP.
func (sp *ServicePort) HasExternal() bool {
	return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
}

// HasEndpoints reports whether the port has any endpoint anywhere that could
// serve traffic (ready, or serving and terminating). A port without one is
// rejected rather than blackholed.
func (sp *ServicePort) HasEndpoints() bool {
	for _, ep := range sp.AllEndpoints {
		if ep.Ready || (ep.Serving && ep.Terminating) {
			return true
		}
	}
	return false
}

// InternalEndpoints returns the endpoints for traffic from inside the
// cluster (to the ClusterIP), following internalTrafficPolicy.
func (sp *ServicePort) InternalEndpoints() []*Endpoint {
	if sp.InternalPolicyLocal {
		return sp.LocalEndpoints
	}
	return sp.ClusterEndpoints
}

// ExternalEndpoints returns the endpoints for traffic from outside (NodePort,
// ExternalIPs, LoadBalancer IPs), following externalTrafficPolicy.
func (sp *ServicePort) ExternalEndpoints() []*Endpoint {
	if sp.ExternalPolicyLocal {
		return sp.LocalEndpoints
	}
	return sp.ClusterEndpoints
}

// Less orders service ports by name, then IPv4 before IPv6.
func (sp *ServicePort) Less(o *ServicePort) bool {
	if sp.Name != o.Name {
		return sp.Name.Less(o.Name)
	}
	return sp.IPFamily == v1.IPv4Protocol && o.IPFamily != v1.IPv4Protocol
}

// Snapshot is the complete, immutable, node-local view a backend renders.
// Nothing in it may be modified after it is built.
type Snapshot struct {
	NodeName string
	NodeZone string
	// ports sorted by name
	ports []*ServicePort
}

// NewSnapshot builds a Snapshot from service ports; it sorts them by name.
func NewSnapshot(nodeName, nodeZone string, ports []*ServicePort) *Snapshot {
	sort.Slice(ports, func(i, j int) bool { return ports[i].Less(ports[j]) })
	return &Snapshot{NodeName: nodeName, NodeZone: nodeZone, ports: ports}
}

// ServicePorts returns every service port, sorted by name. The caller must
// not modify the slice or its elements.
func (s *Snapshot) ServicePorts() []*ServicePort { return s.ports }
