package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
)

// An address conflict is two service ports claiming one destination: the
// same cluster, external or load-balancer IP with the same protocol and
// port, or the same node port and protocol. The API server never allocates
// one cluster IP or node port twice, but nothing stops two Services from
// naming the same externalIP or being given the same load-balancer address,
// and a --state file is not validated at all. A destination can lead to one
// service only: the oldest Service keeps it (the API server's allocation
// order), ties going to the first in name order; the others lose that
// destination (a port whose cluster IP:port is taken is dropped whole). Each
// new conflict is logged once with both names and counted as a skipped
// Service part, reason "conflict".

// destination is what a claim is for: an address (none for a node port),
// a protocol and a port, per family.
type destination struct {
	addr   netip.Addr // zero for a node port
	proto  v1.Protocol
	port   int32
	family v1.IPFamily
}

func (d destination) String() string {
	if !d.addr.IsValid() {
		return fmt.Sprintf("node port %s/%d (%s)", d.proto, d.port, d.family)
	}
	return netip.AddrPortFrom(d.addr, uint16(d.port)).String() + "/" + string(d.proto)
}

// claim is one destination a service port asks for.
type claim struct {
	key  destination
	kind string // "cluster", "external", "loadbalancer", "nodeport"
}

// forEachClaim calls fn with every destination sp claims.
func forEachClaim(sp *ServicePort, fn func(claim)) {
	fn(claim{destination{sp.ClusterIP, sp.Protocol, sp.Port, sp.IPFamily}, "cluster"})
	for _, a := range sp.ExternalIPs {
		fn(claim{destination{a, sp.Protocol, sp.Port, sp.IPFamily}, "external"})
	}
	for _, a := range sp.LoadBalancerIPs {
		fn(claim{destination{a, sp.Protocol, sp.Port, sp.IPFamily}, "loadbalancer"})
	}
	if sp.NodePort != 0 {
		fn(claim{destination{proto: sp.Protocol, port: sp.NodePort, family: sp.IPFamily}, "nodeport"})
	}
}

// resolveConflicts returns ports (sorted by name) with every destination
// claimed by more than one port kept only by the oldest claimant: losers are
// replaced by copies without the destinations they lost. created gives a
// port's Service creation time. It reports each conflict not reported by the
// previous call through report.
//
// owner is scratch space kept by the caller between calls (its buckets are
// reused: a Snapshot of 10,000 services would otherwise allocate a map of
// 20,000 entries each time).
func resolveConflicts(ports []*ServicePort, created func(*ServicePort) time.Time, seen map[string]bool,
	owner map[destination]*ServicePort, report func(msg string, kv ...any)) ([]*ServicePort, map[string]bool) {
	clear(owner)
	older := func(a, b *ServicePort) bool {
		ca, cb := created(a), created(b)
		if !ca.Equal(cb) {
			return ca.Before(cb)
		}
		return a.Less(b)
	}
	conflicted := false
	for _, sp := range ports {
		forEachClaim(sp, func(c claim) {
			if cur, ok := owner[c.key]; !ok {
				owner[c.key] = sp
			} else {
				conflicted = true
				if older(sp, cur) {
					owner[c.key] = sp
				}
			}
		})
	}
	if !conflicted {
		clear(owner) // hold no ports until the next call
		return ports, nil
	}
	defer clear(owner)
	now := map[string]bool{}
	out := make([]*ServicePort, 0, len(ports))
	for _, sp := range ports {
		var lost []claim
		forEachClaim(sp, func(c claim) {
			if w := owner[c.key]; w != sp {
				lost = append(lost, c)
				id := c.key.String() + " " + sp.Name.String() + " " + w.Name.String()
				now[id] = true
				if !seen[id] {
					report("Destination claimed by two services: the oldest keeps it", "destination", c.key.String(),
						"kind", c.kind, "kept", w.Name.Namespace+"/"+w.Name.Name, "skipped", sp.Name.Namespace+"/"+sp.Name.Name)
				}
			}
		})
		if len(lost) == 0 {
			out = append(out, sp)
			continue
		}
		cp := *sp
		drop := false
		for _, c := range lost {
			switch c.kind {
			case "cluster":
				drop = true
			case "external":
				cp.ExternalIPs = slices.DeleteFunc(slices.Clone(cp.ExternalIPs), func(a netip.Addr) bool { return a == c.key.addr })
			case "loadbalancer":
				cp.LoadBalancerIPs = slices.DeleteFunc(slices.Clone(cp.LoadBalancerIPs), func(a netip.Addr) bool { return a == c.key.addr })
			case "nodeport":
				cp.NodePort = 0
			}
		}
		if !drop {
			out = append(out, &cp)
		}
	}
	return out, now
}
