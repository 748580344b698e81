package proxy

import (
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
)

// Labels and annotations the tracker honours.
const (
	// LabelServiceProxyName marks a Service handled by another proxy.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// AnnotationLBSourceRanges is the legacy form of loadBalancerSourceRanges.
	AnnotationLBSourceRanges = "service.beta.kubernetes.io/load-balancer-source-ranges"
	// AnnotationTriggerTime is set by the EndpointSlice controller to the
	// time of the change that caused the update.
	AnnotationTriggerTime = "endpoints.kubernetes.io/last-change-trigger-time"
)

// Handler receives object events from a source. A nil old object means an
// add, a nil new object a delete.
type Handler interface {
	OnServiceUpdate(old, cur *v1.Service)
	OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice)
	OnNodeUpdate(node *v1.Node)
}

// SkipFunc is told about every object, or part of one, that was skipped.
type SkipFunc func(kind, reason string)

// Tracker folds Service, EndpointSlice and Node events into pending changes
// and turns them into Snapshots. It is safe for concurrent use.
type Tracker struct {
	nodeName string
	onChange func()
	onSkip   SkipFunc

	mu       sync.Mutex
	zone     string
	services map[string]*v1.Service                         // ns/name
	slices   map[string]map[string]*discovery.EndpointSlice // ns/service -> slice name
	dirty    map[string]bool                                // ns/service keys changed since the last Snapshot
	ports    map[string][]*ServicePort                      // ns/service -> ports at the last Snapshot, sorted
	order    []string                                       // keys of ports, sorted; nil when to be rebuilt
}

var _ Handler = (*Tracker)(nil)

// NewTracker returns a Tracker for the node nodeName. onChange, if not nil,
// is called (without locks held) after every event that may change the
// rules; onSkip, if not nil, counts skipped objects.
func NewTracker(nodeName string, onChange func(), onSkip SkipFunc) *Tracker {
	if onChange == nil {
		onChange = func() {}
	}
	if onSkip == nil {
		onSkip = func(string, string) {}
	}
	return &Tracker{
		nodeName: nodeName,
		onChange: onChange,
		onSkip:   onSkip,
		services: map[string]*v1.Service{},
		slices:   map[string]map[string]*discovery.EndpointSlice{},
		dirty:    map[string]bool{},
		ports:    map[string][]*ServicePort{},
	}
}

// OnServiceUpdate implements Handler.
func (t *Tracker) OnServiceUpdate(old, cur *v1.Service) {
	t.mu.Lock()
	if cur == nil {
		key := old.Namespace + "/" + old.Name
		delete(t.services, key)
		t.dirty[key] = true
	} else {
		key := cur.Namespace + "/" + cur.Name
		t.services[key] = cur
		t.dirty[key] = true
	}
	t.mu.Unlock()
	t.onChange()
}

// OnEndpointSliceUpdate implements Handler.
func (t *Tracker) OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice) {
	t.mu.Lock()
	if old != nil {
		if key, ok := sliceServiceKey(old); ok {
			if m := t.slices[key]; m != nil {
				delete(m, old.Name)
				if len(m) == 0 {
					delete(t.slices, key)
				}
			}
			t.dirty[key] = true
		}
	}
	if cur != nil {
		key, ok := sliceServiceKey(cur)
		if !ok {
			t.mu.Unlock()
			klog.V(2).InfoS("Skipping EndpointSlice without a service-name label", "endpointSlice", klog.KObj(cur))
			t.onSkip("EndpointSlice", "no-service-label")
			return
		}
		m := t.slices[key]
		if m == nil {
			m = map[string]*discovery.EndpointSlice{}
			t.slices[key] = m
		}
		m[cur.Name] = cur
		t.dirty[key] = true
	}
	t.mu.Unlock()
	t.onChange()
}

// OnNodeUpdate implements Handler; only this node's zone label matters.
func (t *Tracker) OnNodeUpdate(node *v1.Node) {
	if node == nil || node.Name != t.nodeName {
		return
	}
	zone := node.Labels[v1.LabelTopologyZone]
	t.mu.Lock()
	changed := zone != t.zone
	if changed {
		t.zone = zone
		for key := range t.services {
			t.dirty[key] = true
		}
	}
	t.mu.Unlock()
	if changed {
		t.onChange()
	}
}

func sliceServiceKey(s *discovery.EndpointSlice) (string, bool) {
	name := s.Labels[discovery.LabelServiceName]
	if name == "" {
		return "", false
	}
	return s.Namespace + "/" + name, true
}

// Change describes a service port whose programmed state differs from the
// previous Snapshot. Prev is nil for a new port, Cur nil for a removed one.
type Change struct {
	Prev, Cur *ServicePort
}

// Snapshot returns the current node-local view and the service ports that
// changed since the previous call. Changes that cancel out (an update undone
// before the sync) are not reported. Unchanged ports are shared with the
// previous Snapshot.
func (t *Tracker) Snapshot() (*Snapshot, []Change) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var changes []Change
	keys := make([]string, 0, len(t.dirty))
	for k := range t.dirty {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		prev := t.ports[key]
		cur := t.buildPorts(key)
		sort.Slice(cur, func(i, j int) bool { return cur[i].Name.Less(cur[j].Name) })
		changes = append(changes, diffPorts(prev, cur)...)
		if len(cur) == 0 {
			if _, ok := t.ports[key]; ok {
				t.order = nil // the set of services changed
			}
			delete(t.ports, key)
		} else {
			if _, ok := t.ports[key]; !ok {
				t.order = nil
			}
			t.ports[key] = cur
		}
	}
	t.dirty = map[string]bool{}
	if t.order == nil {
		// Sorting is the costliest part of a Snapshot at scale, so the
		// order of services is kept until the set of services changes.
		t.order = make([]string, 0, len(t.ports))
		for k := range t.ports {
			t.order = append(t.order, k)
		}
		sort.Slice(t.order, func(i, j int) bool {
			a, b := t.ports[t.order[i]][0].Name, t.ports[t.order[j]][0].Name
			if a.Namespace != b.Namespace {
				return a.Namespace < b.Namespace
			}
			return a.Name < b.Name
		})
	}
	all := make([]*ServicePort, 0, len(t.ports)*2)
	for _, k := range t.order {
		all = append(all, t.ports[k]...)
	}
	return &Snapshot{NodeName: t.nodeName, NodeZone: t.zone, ports: all}, changes
}

// diffPorts compares the ports of one service before and after. Ports equal
// to their previous version are replaced in cur by the previous pointer so
// that unchanged ports stay shared between Snapshots.
func diffPorts(prev, cur []*ServicePort) []Change {
	var changes []Change
	old := map[ServicePortName]*ServicePort{}
	for _, p := range prev {
		old[p.Name] = p
	}
	for i, c := range cur {
		p, ok := old[c.Name]
		delete(old, c.Name)
		if ok && reflect.DeepEqual(p, c) {
			cur[i] = p
			continue
		}
		changes = append(changes, Change{Prev: p, Cur: c})
	}
	for _, p := range prev {
		if _, ok := old[p.Name]; ok {
			changes = append(changes, Change{Prev: p})
		}
	}
	return changes
}

// buildPorts turns a Service and its slices into node-local service ports.
// It returns nil for services svcproxy does not handle.
func (t *Tracker) buildPorts(key string) []*ServicePort {
	svc := t.services[key]
	if svc == nil {
		return nil
	}
	if reason := skipService(svc); reason != "" {
		klog.V(2).InfoS("Skipping service", "service", key, "reason", reason)
		t.onSkip("Service", reason)
		return nil
	}
	clusterIP, ok := ipv4ClusterIP(svc)
	if !ok {
		klog.V(2).InfoS("Skipping service without an IPv4 cluster IP", "service", key, "clusterIPs", svc.Spec.ClusterIPs)
		t.onSkip("Service", "other-ip-family")
		return nil
	}
	externalIPs := t.parseIPs(key, "externalIPs", svc.Spec.ExternalIPs)
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
		lbIPs = t.parseIPs(key, "loadBalancer ingress", raw)
	}
	ranges := t.sourceRanges(key, svc)
	var timeout int32
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		timeout = v1.DefaultClientIPServiceAffinitySeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			timeout = *c.ClientIP.TimeoutSeconds
		}
	}
	hasExternal := len(externalIPs) > 0 || len(lbIPs) > 0

	var out []*ServicePort
	seen := map[ServicePortName]bool{}
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		if p.Port <= 0 || p.Port > 65535 {
			klog.InfoS("Skipping service port with invalid port number", "service", key, "port", p.Name, "number", p.Port)
			t.onSkip("Service", "invalid-port")
			continue
		}
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		if proto != v1.ProtocolTCP && proto != v1.ProtocolUDP && proto != v1.ProtocolSCTP {
			klog.InfoS("Skipping service port with unknown protocol", "service", key, "port", p.Name, "protocol", proto)
			t.onSkip("Service", "invalid-protocol")
			continue
		}
		name := ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: p.Name, Protocol: proto}
		if seen[name] {
			// An apiserver refuses this; a --state file may hold it.
			klog.InfoS("Skipping duplicate service port", "service", key, "port", p.Name, "protocol", proto)
			t.onSkip("Service", "duplicate-port")
			continue
		}
		seen[name] = true
		sp := &ServicePort{
			Name:                     name,
			Protocol:                 proto,
			Port:                     p.Port,
			ClusterIP:                clusterIP,
			ExternalIPs:              externalIPs,
			LoadBalancerIPs:          lbIPs,
			LoadBalancerSourceRanges: ranges,
			AffinityTimeout:          timeout,
		}
		if svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer {
			if p.NodePort > 0 && p.NodePort <= 65535 {
				sp.NodePort = p.NodePort
			}
		}
		if hasExternal || sp.NodePort != 0 {
			sp.ExternalPolicyLocal = svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
			if sp.ExternalPolicyLocal && svc.Spec.Type == v1.ServiceTypeLoadBalancer {
				sp.HealthCheckNodePort = svc.Spec.HealthCheckNodePort
			}
		}
		sp.InternalPolicyLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
		sp.AllEndpoints = t.endpointsFor(key, p, proto)
		SelectEndpoints(sp, t.nodeName, t.zone)
		out = append(out, sp)
	}
	return out
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

func (t *Tracker) parseIPs(key, field string, raw []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range raw {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || !a.Is4() {
			klog.V(2).InfoS("Skipping address that is not IPv4", "service", key, "field", field, "address", s)
			t.onSkip("Service", "other-ip-family")
			continue
		}
		out = append(out, a)
	}
	return out
}

func (t *Tracker) sourceRanges(key string, svc *v1.Service) []netip.Prefix {
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
			klog.InfoS("Skipping invalid loadBalancerSourceRange", "service", key, "range", s, "err", err)
			t.onSkip("Service", "invalid-source-range")
			continue
		}
		if !p.Addr().Is4() {
			continue
		}
		out = append(out, p.Masked())
	}
	return out
}

// endpointsFor merges the endpoints of every slice of the service for one
// port, de-duplicated by address (a ready copy wins) and sorted.
func (t *Tracker) endpointsFor(key string, port *v1.ServicePort, proto v1.Protocol) []*Endpoint {
	slices := t.slices[key]
	names := make([]string, 0, len(slices))
	for n := range slices {
		names = append(names, n)
	}
	sort.Strings(names)
	byAddr := map[netip.AddrPort]*Endpoint{}
	for _, n := range names {
		s := slices[n]
		switch s.AddressType {
		case discovery.AddressTypeIPv4:
		case discovery.AddressTypeFQDN:
			klog.V(2).InfoS("Skipping FQDN EndpointSlice", "endpointSlice", klog.KObj(s))
			t.onSkip("EndpointSlice", "fqdn")
			continue
		default:
			klog.V(4).InfoS("Skipping EndpointSlice of another IP family", "endpointSlice", klog.KObj(s), "addressType", s.AddressType)
			t.onSkip("EndpointSlice", "other-ip-family")
			continue
		}
		var portNum int32 = -1
		for _, sp := range s.Ports {
			spProto := v1.ProtocolTCP
			if sp.Protocol != nil {
				spProto = *sp.Protocol
			}
			name := ""
			if sp.Name != nil {
				name = *sp.Name
			}
			if name == port.Name && spProto == proto && sp.Port != nil {
				portNum = *sp.Port
				break
			}
		}
		if portNum <= 0 || portNum > 65535 {
			continue
		}
		for i := range s.Endpoints {
			e := &s.Endpoints[i]
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || !ip.Is4() {
					klog.V(2).InfoS("Skipping endpoint address that is not IPv4", "endpointSlice", klog.KObj(s), "address", a)
					t.onSkip("EndpointSlice", "invalid-address")
					continue
				}
				ep := newEndpoint(ip, portNum, e, t.nodeName)
				ap := netip.AddrPortFrom(ip, uint16(portNum))
				if prev, ok := byAddr[ap]; ok && (prev.Ready || !ep.Ready) {
					continue
				}
				byAddr[ap] = ep
				// Only the first address of an endpoint is used, as the
				// API defines it.
				break
			}
		}
	}
	out := make([]*Endpoint, 0, len(byAddr))
	for _, ep := range byAddr {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].IP.Compare(out[j].IP); c != 0 {
			return c < 0
		}
		return out[i].Port < out[j].Port
	})
	return out
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
		ep.NodeName = *e.NodeName
		ep.IsLocal = nodeName != "" && *e.NodeName == nodeName
	}
	if e.Zone != nil {
		ep.Zone = *e.Zone
	}
	if e.Hints != nil {
		if len(e.Hints.ForZones) > 0 {
			ep.ZoneHints = map[string]bool{}
			for _, z := range e.Hints.ForZones {
				ep.ZoneHints[z.Name] = true
			}
		}
		if len(e.Hints.ForNodes) > 0 {
			ep.NodeHints = map[string]bool{}
			for _, n := range e.Hints.ForNodes {
				ep.NodeHints[n.Name] = true
			}
		}
	}
	return ep
}
