package app

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/iptables/trace"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/config"
)

func verdictOf(o trace.Outcome) string {
	switch {
	case o.Verdict == trace.Reject:
		return verdictReject
	case o.Verdict == trace.Drop:
		return verdictDrop
	case o.Verdict == trace.Unknown:
		return verdictUnknown
	case o.DNAT.IsValid():
		return verdictDNAT
	}
	return verdictNoMatch
}

// Source classes, as the rules tell them apart.
const (
	classPod      = "pod"      // inside --cluster-cidr
	classNode     = "node"     // the node itself
	classExternal = "external" // anything else
)

func (x *explainer) classify(src netip.Addr) string {
	if x.src.kind == fromNode {
		return classNode
	}
	if x.inClusterCIDR(src) {
		return classPod
	}
	return classExternal
}

func (x *explainer) inClusterCIDR(a netip.Addr) bool {
	return slices.ContainsFunc(x.o.ClusterCIDRs(), func(p netip.Prefix) bool { return p.Contains(a) })
}

func (x *explainer) cidrs(ipv6 bool) string {
	var s []string
	for _, p := range x.o.ClusterCIDRs() {
		if p.Addr().Is6() == ipv6 {
			s = append(s, p.String())
		}
	}
	return strings.Join(s, ",")
}

// dnatReason says which endpoints a DNAT picks from, and why those.
func (x *explainer) dnatReason(d dest, c string) string {
	sp := d.sp
	var parts []string
	local := false
	switch {
	case d.via == viaClusterIP && sp.InternalPolicyLocal:
		local = true
		parts = append(parts, "internalTrafficPolicy Local: this node's endpoints only")
	case d.via != viaClusterIP && sp.ExternalPolicyLocal && c == classExternal:
		local = true
		parts = append(parts, "externalTrafficPolicy Local: this node's endpoints only")
	case d.via != viaClusterIP && sp.ExternalPolicyLocal && x.ipvsMode():
		local = true
		parts = append(parts, "externalTrafficPolicy Local: this node's endpoints only, for pods and the node too (IPVS mode: one virtual server serves every source)")
	case d.via != viaClusterIP && sp.ExternalPolicyLocal:
		parts = append(parts, "externalTrafficPolicy Local, but traffic from pods and from the node itself goes to every endpoint, as in kube-proxy")
	}
	used := sp.ClusterEndpoints
	if local {
		used = sp.LocalEndpoints
	}
	ready, notReady, terminating := 0, 0, 0
	for _, ep := range sp.AllEndpoints {
		if local && !ep.IsLocal {
			continue
		}
		switch {
		case ep.Ready:
			ready++
		case ep.Terminating:
			terminating++
		default:
			notReady++
		}
	}
	switch {
	case len(used) > 0 && !used[0].Ready:
		parts = append(parts, fmt.Sprintf("no endpoint is ready: %s, serving but terminating, get the traffic until they go", count(len(used), "endpoint")))
	case !local && len(used) < ready:
		parts = append(parts, fmt.Sprintf("topology hints: %d of %d ready endpoints are meant for this node or its zone", len(used), ready))
	default:
		parts = append(parts, count(len(used), "ready endpoint"))
	}
	if terminating > 0 && len(used) > 0 && used[0].Ready {
		parts = append(parts, fmt.Sprintf("%d terminating, unused while others are ready", terminating))
	}
	if notReady > 0 {
		parts = append(parts, fmt.Sprintf("%d not ready", notReady))
	}
	if sp.AffinityTimeout > 0 && !x.ipvsMode() { // IPVS mode: its persistence says it
		parts = append(parts, fmt.Sprintf("sessionAffinity ClientIP: a client keeps the endpoint it got for %d s after its last connection", sp.AffinityTimeout))
	}
	return strings.Join(parts, "; ")
}

// rejectReason says why a port with no usable endpoint rejects.
func rejectReason(sp *proxy.ServicePort) string {
	notReady, terminating := 0, 0
	for _, ep := range sp.AllEndpoints {
		if ep.Terminating {
			terminating++
		} else {
			notReady++
		}
	}
	switch {
	case sp.HasEndpoints():
		return "rejected by a rule of svcproxy's, though the port has endpoints"
	case len(sp.AllEndpoints) == 0:
		return "no endpoints: the Service has no " + string(sp.IPFamily) + " endpoint at all (does its selector match a running pod?)"
	case notReady == 0:
		return fmt.Sprintf("only terminating endpoints: all %d are shutting down and none is serving", terminating)
	}
	return fmt.Sprintf("no ready endpoints: %d not ready, %d terminating and not serving", notReady, terminating)
}

// dropReason says why a connection is dropped.
func (x *explainer) dropReason(d dest, src netip.Addr, c string) string {
	sp := d.sp
	elsewhere := elsewhere(sp)
	node := x.o.NodeName()
	switch {
	case d.via == viaClusterIP && sp.InternalPolicyLocal && len(sp.LocalEndpoints) == 0:
		return fmt.Sprintf("internalTrafficPolicy Local and no endpoint on %s (%d on other nodes)", node, elsewhere)
	case d.via == viaLBIP && (sp.LoadBalancerSourceRangesSet || len(sp.LoadBalancerSourceRanges) > 0) &&
		!slices.ContainsFunc(sp.LoadBalancerSourceRanges, func(p netip.Prefix) bool { return p.Contains(src) }):
		if len(sp.LoadBalancerSourceRanges) == 0 {
			return fmt.Sprintf("source not in loadBalancerSourceRanges: they hold no %s range, so no %s client may connect", sp.IPFamily, sp.IPFamily)
		}
		var rs []string
		for _, p := range sp.LoadBalancerSourceRanges {
			rs = append(rs, p.String())
		}
		return fmt.Sprintf("source %s not in loadBalancerSourceRanges %s", src, strings.Join(rs, ","))
	case d.via != viaClusterIP && sp.ExternalPolicyLocal && len(sp.LocalEndpoints) == 0 && (c == classExternal || x.ipvsMode()):
		return x.etpLocalReason(sp, elsewhere, c)
	}
	return dropFallback
}

// dropFallback is dropReason's answer when the Snapshot does not say why.
const dropFallback = "dropped by a rule of svcproxy's"

// etpLocalReason says why externalTrafficPolicy Local without a local
// endpoint turns a connection away, and what steers clients elsewhere: a
// LoadBalancer's health-check node port; a NodePort Service (or an
// external IP) has none.
func (x *explainer) etpLocalReason(sp *proxy.ServicePort, elsewhere int, c string) string {
	s := fmt.Sprintf("externalTrafficPolicy Local and no endpoint on %s (%d on other nodes)", x.o.NodeName(), elsewhere)
	if c != classExternal {
		// IPVS mode only: iptables mode sends pods and the node to every
		// endpoint.
		return s + ": in IPVS mode pods and the node reach this address through the virtual server outside clients use, so they get this node's endpoints only too"
	}
	if sp.HealthCheckNodePort != 0 {
		return s + fmt.Sprintf("; the load balancer's health check (node port %d) steers clients to nodes that have one", sp.HealthCheckNodePort)
	}
	return s + "; the Service has no health-check node port (only a LoadBalancer gets one): clients must be sent to nodes that have an endpoint"
}

// ipvsMode reports whether explain follows IPVS mode's plan.
func (x *explainer) ipvsMode() bool { return x.o.Mode == config.ModeIPVS }

// noMatchReason says why no rule of svcproxy's took the connection.
func (x *explainer) noMatchReason(d dest, local []netip.Addr) string {
	ip := d.dst.Addr()
	if d.via != viaNodePort {
		return noMatchFallback
	}
	switch {
	case ip.IsLoopback():
		return fmt.Sprintf("node ports do not answer on loopback addresses (%s)", ip)
	case ip.IsLinkLocalUnicast():
		return fmt.Sprintf("node ports do not answer on link-local addresses (%s)", ip)
	case !slices.Contains(local, ip):
		return fmt.Sprintf("%s is not an address of %s: the packet is routed on untouched (explain it on the node that has it)", ip, x.o.NodeName())
	}
	if npa := x.o.NodePortAddressPrefixes(); len(npa) > 0 && !slices.ContainsFunc(npa, func(p netip.Prefix) bool { return p.Contains(ip) }) {
		var s []string
		for _, p := range npa {
			s = append(s, p.String())
		}
		return fmt.Sprintf("nodePort not on an allowed address: %s is not within --nodeport-addresses %s", ip, strings.Join(s, ","))
	}
	return noMatchFallback
}

// noMatchFallback is noMatchReason's answer when the Snapshot and the
// flags do not say why.
const noMatchFallback = "no rule of svcproxy's matched"

// masqueradeReason says why a DNATed connection is (or is not)
// masqueraded: the endpoint sees the node's address, or the client's.
func (x *explainer) masqueradeReason(d dest, src netip.Addr, c string, masq bool, masqEPs map[netip.Addr]bool) string {
	sp := d.sp
	node := x.o.NodeName()
	if masq {
		switch {
		case len(masqEPs) == 1 && masqEPs[src]:
			return fmt.Sprintf("only when the pod reaches itself (%s): hairpin traffic is masqueraded so that the reply comes back through the node", src)
		case d.via == viaClusterIP && x.o.MasqueradeAll:
			return "--masquerade-all: every connection to a cluster IP is masqueraded"
		case d.via == viaClusterIP && !x.inClusterCIDR(src):
			return fmt.Sprintf("the source %s is outside --cluster-cidr %s: off-cluster traffic to a cluster IP is masqueraded so that replies come back through %s", src, x.cidrs(src.Is6()), node)
		case d.via != viaClusterIP && c == classNode && sp.ExternalPolicyLocal:
			return "traffic from the node itself to an externalTrafficPolicy Local address is masqueraded"
		case d.via != viaClusterIP && !sp.ExternalPolicyLocal:
			return fmt.Sprintf("externalTrafficPolicy Cluster: traffic to a %s is masqueraded so that replies come back through %s; the endpoint sees %s's address, not the client's", d.via, node, node)
		}
		return "a rule on the path marked the connection for masquerade"
	}
	switch {
	case d.via == viaClusterIP && len(x.o.ClusterCIDRs()) == 0:
		return "no --cluster-cidr and no --masquerade-all: connections to cluster IPs keep their source"
	case d.via == viaClusterIP:
		return fmt.Sprintf("the source is inside --cluster-cidr %s: the endpoint sees the pod's address", x.cidrs(src.Is6()))
	case sp.ExternalPolicyLocal && c == classExternal:
		return "externalTrafficPolicy Local: the endpoint sees the client's address"
	case c == classPod:
		return "traffic from a pod keeps its address"
	}
	return ""
}
