package proxy

import (
	"net/netip"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
)

// serviceInfo is what the Tracker keeps of a Service: the parsed fields
// that its service ports are built from.
type serviceInfo struct {
	namespace, name string
	// notes are the service-wide parts that were skipped, in the order
	// they were found; skipped means the whole service is.
	notes   []skipNote
	skipped bool

	clusterIP           netip.Addr
	externalIPs         []netip.Addr
	lbIPs               []netip.Addr
	ranges              []netip.Prefix
	affinityTimeout     int32
	externalLocal       bool
	healthCheckNodePort int32 // only for a LoadBalancer with externalTrafficPolicy Local
	internalLocal       bool
	ports               []portInfo
}

// portInfo is one entry of a Service's ports.
type portInfo struct {
	note     *skipNote // not nil: the port is skipped, for this reason
	name     string
	proto    v1.Protocol
	port     int32
	nodePort int32 // 0 unless a valid node port of a NodePort or LoadBalancer service
}

// parseService parses svc; it reads nothing but svc.
func parseService(svc *v1.Service) *serviceInfo {
	key := svc.Namespace + "/" + svc.Name
	info := &serviceInfo{namespace: intern(svc.Namespace), name: svc.Name}
	note := func(level klog.Level, reason, msg string, kv ...any) {
		info.notes = append(info.notes, skipNote{kind: "Service", reason: reason, level: level, msg: msg, kv: kv})
	}
	if reason := skipService(svc); reason != "" {
		note(2, reason, "Skipping service", "service", key, "reason", reason)
		info.skipped = true
		return info
	}
	clusterIP, ok := ipv4ClusterIP(svc)
	if !ok {
		note(2, "other-ip-family", "Skipping service without an IPv4 cluster IP", "service", key, "clusterIPs", svc.Spec.ClusterIPs)
		info.skipped = true
		return info
	}
	info.clusterIP = clusterIP
	info.externalIPs = parseIPs(key, "externalIPs", svc.Spec.ExternalIPs, note)
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		var raw []string
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// An ingress with ipMode Proxy is reached through the load
			// balancer's own proxy, not by its IP on this node.
			if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode != v1.LoadBalancerIPModeProxy) {
				raw = append(raw, ing.IP)
			}
		}
		info.lbIPs = parseIPs(key, "loadBalancer ingress", raw, note)
	}
	info.ranges = sourceRanges(key, svc, note)
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		info.affinityTimeout = v1.DefaultClientIPServiceAffinitySeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			info.affinityTimeout = *c.ClientIP.TimeoutSeconds
		}
	}
	info.externalLocal = svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	if info.externalLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		info.healthCheckNodePort = svc.Spec.HealthCheckNodePort
	}
	info.internalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal

	info.ports = make([]portInfo, len(svc.Spec.Ports))
	type portKey struct {
		name  string
		proto v1.Protocol
	}
	var seen map[portKey]bool
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		out := &info.ports[i]
		skip := func(reason, msg string, kv ...any) {
			out.note = &skipNote{kind: "Service", reason: reason, msg: msg, kv: append([]any{"service", key, "port", p.Name}, kv...)}
		}
		if p.Port <= 0 || p.Port > 65535 {
			skip("invalid-port", "Skipping service port with invalid port number", "number", p.Port)
			continue
		}
		proto := protocol(p.Protocol)
		if proto == "" {
			skip("invalid-protocol", "Skipping service port with unknown protocol", "protocol", p.Protocol)
			continue
		}
		k := portKey{p.Name, proto}
		if seen[k] {
			// An apiserver refuses this; a --state file may hold it.
			skip("duplicate-port", "Skipping duplicate service port", "protocol", proto)
			continue
		}
		if seen == nil {
			seen = map[portKey]bool{}
		}
		seen[k] = true
		out.name, out.proto, out.port = intern(p.Name), proto, p.Port
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			if p.NodePort > 0 && p.NodePort <= 65535 {
				out.nodePort = p.NodePort
			}
		}
	}
	return info
}

// protocol returns the canonical protocol of a port (TCP when empty), or ""
// for one svcproxy does not handle.
func protocol(p v1.Protocol) v1.Protocol {
	switch p {
	case "", v1.ProtocolTCP:
		return v1.ProtocolTCP
	case v1.ProtocolUDP:
		return v1.ProtocolUDP
	case v1.ProtocolSCTP:
		return v1.ProtocolSCTP
	}
	return ""
}

func skipService(svc *v1.Service) string {
	switch {
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return "external-name"
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		return "headless"
	case svc.Spec.ClusterIP == "":
		return "no-cluster-ip"
	case svc.Labels[LabelServiceProxyName] != "":
		return "service-proxy-name"
	}
	return ""
}

func ipv4ClusterIP(svc *v1.Service) (netip.Addr, bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

type noteFunc func(level klog.Level, reason, msg string, kv ...any)

func parseIPs(key, field string, raw []string, note noteFunc) []netip.Addr {
	var out []netip.Addr
	for _, s := range raw {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || !a.Is4() {
			note(2, "other-ip-family", "Skipping address that is not IPv4", "service", key, "field", field, "address", s)
			continue
		}
		out = append(out, a)
	}
	return out
}

func sourceRanges(key string, svc *v1.Service, note noteFunc) []netip.Prefix {
	raw := svc.Spec.LoadBalancerSourceRanges
	if len(raw) == 0 {
		if a := svc.Annotations[AnnotationLBSourceRanges]; a != "" {
			raw = strings.Split(a, ",")
		}
	}
	var out []netip.Prefix
	for _, s := range raw {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			note(0, "invalid-source-range", "Skipping invalid loadBalancerSourceRange", "service", key, "range", s, "err", err)
			continue
		}
		if !p.Addr().Is4() {
			continue
		}
		out = append(out, p.Masked())
	}
	return out
}

// sliceInfo is what the Tracker keeps of an EndpointSlice: its endpoints,
// built once per port of the slice.
type sliceInfo struct {
	namespace, name string
	addressType     discovery.AddressType
	ports           []slicePort
	// invalid are the addresses skipped as not IPv4, reported whenever a
	// port of the slice is used.
	invalid []string
}

// slicePort is one entry of a slice's ports that has a port number.
type slicePort struct {
	name  string
	proto v1.Protocol
	// valid is false for a number out of range: the slice then serves
	// nothing for this port.
	valid bool
	// endpoints are sorted by address and de-duplicated (a ready copy
	// wins); never nil when valid.
	endpoints []*Endpoint
}

// port returns the first entry for a port name and protocol, or nil.
func (s *sliceInfo) port(name string, proto v1.Protocol) *slicePort {
	for i := range s.ports {
		if p := &s.ports[i]; p.name == name && p.proto == proto {
			return p
		}
	}
	return nil
}

// parseSlice parses s for the node nodeName.
func parseSlice(s *discovery.EndpointSlice, nodeName string) *sliceInfo {
	info := &sliceInfo{namespace: intern(s.Namespace), name: s.Name, addressType: addressType(s.AddressType)}
	if info.addressType != discovery.AddressTypeIPv4 {
		return info // nothing of it is used
	}
	// The first IPv4 address of every endpoint, as the API defines it.
	type first struct {
		ip netip.Addr
		e  *discovery.Endpoint
	}
	firsts := make([]first, 0, len(s.Endpoints))
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		for _, a := range e.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil || !ip.Is4() {
				info.invalid = append(info.invalid, a)
				continue
			}
			firsts = append(firsts, first{ip, e})
			break
		}
	}
	for _, sp := range s.Ports {
		if sp.Port == nil {
			continue // never matches a service port
		}
		proto := v1.ProtocolTCP
		if sp.Protocol != nil {
			proto = *sp.Protocol
		}
		name := ""
		if sp.Name != nil {
			name = *sp.Name
		}
		p := slicePort{name: intern(name), proto: canonicalProtocol(proto)}
		if num := *sp.Port; num > 0 && num <= 65535 {
			p.valid = true
			eps := make([]*Endpoint, 0, len(firsts))
			for _, f := range firsts {
				eps = append(eps, newEndpoint(f.ip, num, f.e, nodeName))
			}
			p.endpoints = dedupEndpoints(eps)
		}
		info.ports = append(info.ports, p)
	}
	return info
}

// dedupEndpoints sorts eps by address and keeps one endpoint per address:
// the first ready one, or the first one when none is.
func dedupEndpoints(eps []*Endpoint) []*Endpoint {
	sortEndpoints(eps) // stable: equal addresses keep their order
	out := eps[:0]
	for _, ep := range eps {
		if n := len(out); n > 0 && out[n-1].IP == ep.IP && out[n-1].Port == ep.Port {
			if !out[n-1].Ready && ep.Ready {
				out[n-1] = ep
			}
			continue
		}
		out = append(out, ep)
	}
	clear(eps[len(out):])
	return out
}

// addressType and canonicalProtocol return the constants for the values
// they know, so that the kept slices do not hold thousands of copies.
func addressType(t discovery.AddressType) discovery.AddressType {
	switch t {
	case discovery.AddressTypeIPv4:
		return discovery.AddressTypeIPv4
	case discovery.AddressTypeIPv6:
		return discovery.AddressTypeIPv6
	case discovery.AddressTypeFQDN:
		return discovery.AddressTypeFQDN
	}
	return t
}

func canonicalProtocol(p v1.Protocol) v1.Protocol {
	if c := protocol(p); c != "" {
		return c
	}
	return p
}

func newEndpoint(ip netip.Addr, port int32, e *discovery.Endpoint, nodeName string) *Endpoint {
	// Per the API, a nil ready condition means "unknown, assume ready";
	// serving defaults to ready; terminating to false.
	ready := e.Conditions.Ready == nil || *e.Conditions.Ready
	serving := ready
	if e.Conditions.Serving != nil {
		serving = *e.Conditions.Serving
	}
	terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
	ep := &Endpoint{IP: ip, Port: port, Ready: ready && !terminating, Serving: serving, Terminating: terminating}
	if e.NodeName != nil {
		ep.NodeName = intern(*e.NodeName)
		ep.IsLocal = nodeName != "" && *e.NodeName == nodeName
	}
	if e.Zone != nil {
		ep.Zone = intern(*e.Zone)
	}
	if e.Hints != nil {
		if len(e.Hints.ForZones) > 0 {
			ep.ZoneHints = map[string]bool{}
			for _, z := range e.Hints.ForZones {
				ep.ZoneHints[intern(z.Name)] = true
			}
		}
		if len(e.Hints.ForNodes) > 0 {
			ep.NodeHints = map[string]bool{}
			for _, n := range e.Hints.ForNodes {
				ep.NodeHints[intern(n.Name)] = true
			}
		}
	}
	return ep
}
