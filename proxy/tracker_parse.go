package proxy

import (
	"net/netip"
	"slices"
	"strings"
	"time"

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

	// families holds what differs per IP family, primary family first:
	// one entry per cluster IP (clusterIPs), so a single-stack Service has
	// one and a dual-stack one two.
	families            []familyInfo
	affinityTimeout     int32
	scheduler           string    // IPVS scheduler from an annotation; "" for the default
	created             time.Time // creationTimestamp: the oldest Service wins an address conflict
	externalLocal       bool
	healthCheckNodePort int32 // only for a LoadBalancer with externalTrafficPolicy Local
	internalLocal       bool
	ports               []portInfo
}

// familyInfo is the part of a Service of one IP family.
type familyInfo struct {
	family      v1.IPFamily
	clusterIP   netip.Addr
	externalIPs []netip.Addr
	lbIPs       []netip.Addr
	ranges      []netip.Prefix
	// rangesSet: the Service restricts its load-balancer addresses to
	// source ranges, whether or not any is of this family (fail closed).
	rangesSet bool
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
	info := &serviceInfo{namespace: intern(svc.Namespace), name: svc.Name, created: svc.CreationTimestamp.Time}
	note := func(level klog.Level, reason, msg string, kv ...any) {
		info.notes = append(info.notes, skipNote{kind: "Service", reason: reason, level: level, msg: msg, kv: kv})
	}
	if reason := skipService(svc); reason != "" {
		note(2, reason, "Skipping service", "service", key, "reason", reason)
		info.skipped = true
		return info
	}
	clusterIPs := clusterIPs(key, svc, note)
	if len(clusterIPs) == 0 {
		note(0, "invalid-cluster-ip", "Skipping service without a valid cluster IP", "service", key, "clusterIPs", svc.Spec.ClusterIPs, "clusterIP", svc.Spec.ClusterIP)
		info.skipped = true
		return info
	}
	externalIPs := parseIPs(key, "externalIPs", svc.Spec.ExternalIPs, note)
	var lbIPs []netip.Addr
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer {
		var raw []string
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// An ingress with ipMode Proxy is reached through the load
			// balancer's own proxy, not by its IP on this node.
			if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode != v1.LoadBalancerIPModeProxy) {
				raw = append(raw, ing.IP)
			}
		}
		lbIPs = parseIPs(key, "loadBalancer ingress", raw, note)
	}
	ranges, rangesSet := sourceRanges(key, svc, note)
	for _, cip := range clusterIPs {
		is6 := cip.Is6()
		f := familyInfo{family: v1.IPv4Protocol, clusterIP: cip, rangesSet: rangesSet}
		if is6 {
			f.family = v1.IPv6Protocol
		}
		f.externalIPs = ofFamily(externalIPs, is6)
		f.lbIPs = ofFamily(lbIPs, is6)
		for _, r := range ranges {
			if r.Addr().Is6() == is6 {
				f.ranges = append(f.ranges, r)
			}
		}
		if rangesSet && len(f.ranges) == 0 && len(f.lbIPs) > 0 {
			note(0, "no-source-range-of-family", "No loadBalancerSourceRange of this IP family: no source may reach the service's load-balancer addresses of it", "service", key, "ipFamily", f.family)
		}
		info.families = append(info.families, f)
	}
	info.scheduler = schedulerAnnotation(key, svc, note)
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
			switch {
			case p.NodePort >= MinNodePort && p.NodePort <= 65535:
				out.nodePort = p.NodePort
			case p.NodePort != 0:
				// A node port of 22 would capture the node's own SSH: no
				// API server allocates one below its node-port range.
				note(0, "invalid-node-port", "Skipping node port the API server would refuse", "service", key, "port", p.Name, "nodePort", p.NodePort, "min", MinNodePort)
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

// clusterIPs returns the Service's cluster IPs, one per family, primary
// first (clusterIPs, or clusterIP when that is empty). An address the API
// server would refuse (not an IP, loopback, unspecified, link-local,
// multicast) is skipped with a note, as is a second one of a family.
func clusterIPs(key string, svc *v1.Service, note noteFunc) []netip.Addr {
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 {
		raw = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, s := range raw {
		a, why := parseServiceAddress(s)
		if why != "" {
			note(0, "invalid-cluster-ip", "Skipping cluster IP the API server would refuse", "service", key, "address", s, "why", why)
			continue
		}
		if len(out) == 1 && out[0].Is6() == a.Is6() {
			note(0, "invalid-cluster-ip", "Skipping a second cluster IP of one family", "service", key, "address", s)
			continue
		}
		if len(out) == 2 {
			break
		}
		out = append(out, a)
	}
	return out
}

// parseServiceAddress parses a service address (IPv4-mapped IPv6 taken as
// IPv4) and says why the API server would refuse it, "" when it would not.
func parseServiceAddress(s string) (netip.Addr, string) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err == nil {
		a = a.Unmap()
	}
	return a, badServiceAddress(a, err)
}

// badServiceAddress says why the API server would refuse a as a service
// address (cluster, external or load-balancer IP), "" when it would not.
// A service address that captures the node's own loopback or a multicast
// group would break the node, whatever a --state file says.
func badServiceAddress(a netip.Addr, err error) string {
	switch {
	case err != nil || !a.IsValid():
		return "not an IP address"
	case a.Zone() != "":
		return "has a zone"
	}
	return badEndpointAddress(a)
}

// badEndpointAddress says why the API server would refuse a as an
// endpoint address (or a service address), "" when it would not
// (EndpointSlice validation: not unspecified, loopback, link-local or
// multicast).
func badEndpointAddress(a netip.Addr) string {
	switch {
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsMulticast():
		return "multicast"
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "broadcast"
	}
	return ""
}

// ofFamily returns the addresses of one family.
func ofFamily(addrs []netip.Addr, is6 bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if a.Is6() == is6 {
			out = append(out, a)
		}
	}
	return out
}

// schedulerAnnotation returns the IPVS scheduler a Service asks for
// (IPVSSchedulerAnnotation, else kube-router's), "" for the default. A
// value that is not a scheduler of the kernel is logged and ignored.
func schedulerAnnotation(key string, svc *v1.Service, note noteFunc) string {
	for _, a := range []string{IPVSSchedulerAnnotation, KubeRouterSchedulerAnnotation} {
		v, ok := svc.Annotations[a]
		if !ok {
			continue
		}
		v = strings.ToLower(strings.TrimSpace(v))
		if !slices.Contains(IPVSSchedulers, v) {
			note(0, "invalid-ipvs-scheduler", "Ignoring unknown IPVS scheduler", "service", key, "annotation", a, "value", v, "valid", IPVSSchedulers)
			return ""
		}
		return v
	}
	return ""
}

type noteFunc func(level klog.Level, reason, msg string, kv ...any)

func parseIPs(key, field string, raw []string, note noteFunc) []netip.Addr {
	var out []netip.Addr
	for _, s := range raw {
		a, why := parseServiceAddress(s)
		if why != "" {
			note(0, "invalid-address", "Skipping address the API server would refuse", "service", key, "field", field, "address", s, "why", why)
			continue
		}
		out = append(out, a)
	}
	return out
}

// sourceRanges returns the Service's loadBalancerSourceRanges (or the
// legacy annotation) of both families, and whether any was given: a
// Service that gives ranges, none of which parses or is of a family, admits
// no source of that family (fail closed).
func sourceRanges(key string, svc *v1.Service, note noteFunc) ([]netip.Prefix, bool) {
	raw := svc.Spec.LoadBalancerSourceRanges
	if len(raw) == 0 {
		if a := svc.Annotations[AnnotationLBSourceRanges]; a != "" {
			raw = strings.Split(a, ",")
		}
	}
	var out []netip.Prefix
	set := false
	for _, s := range raw {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		set = true
		p, err := netip.ParsePrefix(s)
		if err != nil {
			note(0, "invalid-source-range", "Skipping invalid loadBalancerSourceRange", "service", key, "range", s, "err", err)
			continue
		}
		out = append(out, p.Masked())
	}
	return out, set
}

// sliceInfo is what the Tracker keeps of an EndpointSlice: its endpoints,
// built once per port of the slice.
type sliceInfo struct {
	namespace, name string
	addressType     discovery.AddressType
	ports           []slicePort
	// invalid are the addresses skipped as not of the slice's family or
	// refused by the API server's rules, reported whenever a port of the
	// slice is used.
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
	if info.addressType != discovery.AddressTypeIPv4 && info.addressType != discovery.AddressTypeIPv6 {
		return info // nothing of it is used
	}
	is6 := info.addressType == discovery.AddressTypeIPv6
	// The first valid address of every endpoint, as the API defines it.
	type first struct {
		ip netip.Addr
		e  *discovery.Endpoint
	}
	firsts := make([]first, 0, len(s.Endpoints))
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		for _, a := range e.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil || ip.Is4In6() || ip.Is6() != is6 || ip.Zone() != "" || badEndpointAddress(ip) != "" {
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
			// One block for the slice's endpoints: one allocation, and
			// side by side in memory for the render that walks them.
			block := make([]Endpoint, len(firsts))
			eps := make([]*Endpoint, len(firsts))
			for i, f := range firsts {
				fillEndpoint(&block[i], f.ip, num, f.e, nodeName)
				eps[i] = &block[i]
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

// fillEndpoint sets ep from an EndpointSlice endpoint.
func fillEndpoint(ep *Endpoint, ip netip.Addr, port int32, e *discovery.Endpoint, nodeName string) {
	// Per the API, a nil ready condition means "unknown, assume ready";
	// serving defaults to ready; terminating to false.
	ready := e.Conditions.Ready == nil || *e.Conditions.Ready
	serving := ready
	if e.Conditions.Serving != nil {
		serving = *e.Conditions.Serving
	}
	terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
	*ep = Endpoint{IP: ip, Port: port, Ready: ready && !terminating, Serving: serving, Terminating: terminating}
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
}
