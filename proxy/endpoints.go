package proxy

import (
	v1 "k8s.io/api/core/v1"
)

// Topology modes derived from EndpointSlice hints, as kube-proxy names them.
const (
	topologyNone     = ""
	topologySameZone = v1.ServiceTrafficDistributionPreferSameZone
	topologySameNode = v1.ServiceTrafficDistributionPreferSameNode
)

// usesClusterEndpoints: the internal policy is Cluster, or the port accepts
// external traffic at all (even with externalTrafficPolicy Local, traffic
// from pods and from the node itself is short-circuited to cluster endpoints).
func usesClusterEndpoints(sp *ServicePort) bool {
	return !sp.InternalPolicyLocal || sp.HasExternal()
}

// usesLocalEndpoints: some traffic path is restricted to this node.
func usesLocalEndpoints(sp *ServicePort) bool {
	return sp.InternalPolicyLocal || (sp.ExternalPolicyLocal && sp.HasExternal())
}

// SelectEndpoints fills sp.ClusterEndpoints, sp.LocalEndpoints and the Uses*
// flags from sp.AllEndpoints for a node named nodeName in zone. It follows
// kube-proxy's CategorizeEndpoints:
//   - cluster endpoints are the ready ones that topology allows; when none is
//     ready anywhere, the serving-terminating ones (KEP-1669);
//   - local endpoints are this node's ready ones, or its serving-terminating
//     ones when none is ready;
//   - topology hints are honoured only when every ready endpoint carries them
//     and one is meant for this node (PreferSameNode) or zone (zone hints,
//     from PreferClose/PreferSameZone); otherwise they are ignored.
func SelectEndpoints(sp *ServicePort, nodeName, zone string) {
	sp.ClusterEndpoints, sp.LocalEndpoints = nil, nil
	sp.UsesClusterEndpoints = usesClusterEndpoints(sp)
	sp.UsesLocalEndpoints = usesLocalEndpoints(sp)

	if sp.UsesClusterEndpoints {
		mode := topologyMode(sp.AllEndpoints, nodeName, zone)
		sp.ClusterEndpoints = filterEndpoints(sp.AllEndpoints, func(ep *Endpoint) bool {
			return ep.Ready && availableForTopology(ep, mode, nodeName, zone)
		})
		if len(sp.ClusterEndpoints) == 0 {
			// No ready endpoint anywhere (topology would have been ignored
			// otherwise): fall back to serving-terminating ones.
			sp.ClusterEndpoints = filterEndpoints(sp.AllEndpoints, func(ep *Endpoint) bool {
				return ep.Serving && ep.Terminating && availableForTopology(ep, mode, nodeName, zone)
			})
		}
	}
	if sp.UsesLocalEndpoints {
		sp.LocalEndpoints = filterEndpoints(sp.AllEndpoints, func(ep *Endpoint) bool {
			return ep.IsLocal && ep.Ready
		})
		if len(sp.LocalEndpoints) == 0 {
			sp.LocalEndpoints = filterEndpoints(sp.AllEndpoints, func(ep *Endpoint) bool {
				return ep.IsLocal && ep.Serving && ep.Terminating
			})
		}
	}
}

func topologyMode(eps []*Endpoint, nodeName, zone string) string {
	hasForNode, allNodeHints := false, true
	hasForZone, allZoneHints := false, true
	any := false
	for _, ep := range eps {
		if !ep.Ready {
			continue
		}
		any = true
		if len(ep.ZoneHints) == 0 {
			allZoneHints = false
		} else if ep.ZoneHints[zone] {
			hasForZone = true
		}
		if len(ep.NodeHints) == 0 {
			allNodeHints = false
		} else if ep.NodeHints[nodeName] {
			hasForNode = true
		}
	}
	if !any {
		return topologyNone
	}
	if allNodeHints && hasForNode {
		return topologySameNode
	}
	if allZoneHints && hasForZone && zone != "" {
		return topologySameZone
	}
	return topologyNone
}

func availableForTopology(ep *Endpoint, mode, nodeName, zone string) bool {
	switch mode {
	case topologySameNode:
		return ep.NodeHints[nodeName]
	case topologySameZone:
		return ep.ZoneHints[zone]
	default:
		return true
	}
}

func filterEndpoints(eps []*Endpoint, keep func(*Endpoint) bool) []*Endpoint {
	var out []*Endpoint
	for _, ep := range eps {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}
