package proxy

import (
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unique"

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
//
// An old object need not be the whole object that was sent before: sources
// that do not keep objects (both of svcproxy's) send its namespace and name,
// and for an EndpointSlice its kubernetes.io/service-name label and its
// last-change-trigger-time annotation. A handler must not keep the objects
// it is handed beyond the call if it wants svcproxy to stay small, and must
// not modify them.
type Handler interface {
	OnServiceUpdate(old, cur *v1.Service)
	OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice)
	OnNodeUpdate(node *v1.Node)
}

// SkipFunc is told about every object, or part of one, that was skipped.
type SkipFunc func(kind, reason string)

// Tracker folds Service, EndpointSlice and Node events into pending changes
// and turns them into Snapshots. It is safe for concurrent use.
//
// It keeps no API object: an event is parsed into the few fields that
// service ports are built from (tracker_parse.go), and an EndpointSlice's
// endpoints are built once and shared with the Snapshots.
type Tracker struct {
	nodeName string
	onChange func()
	onSkip   SkipFunc

	mu       sync.Mutex
	zone     string
	services map[string]*serviceInfo   // ns/name
	slices   map[string][]*sliceInfo   // ns/service -> its slices, sorted by name
	dirty    map[string]bool           // ns/service keys changed since the last Snapshot
	ports    map[string][]*ServicePort // ns/service -> ports at the last Snapshot, sorted
	order    []string                  // keys of ports, sorted; nil when to be rebuilt
	// conflicts are the address conflicts reported by the last Snapshot,
	// so that each is logged once.
	conflicts map[string]bool
	claims    map[destination]*ServicePort // scratch space of resolveConflicts
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
		services: map[string]*serviceInfo{},
		slices:   map[string][]*sliceInfo{},
		dirty:    map[string]bool{},
		ports:    map[string][]*ServicePort{},
		claims:   map[destination]*ServicePort{},
	}
}

// OnServiceUpdate implements Handler.
func (t *Tracker) OnServiceUpdate(old, cur *v1.Service) {
	var info *serviceInfo
	if cur != nil {
		info = parseService(cur) // outside the lock: Snapshot need not wait
	}
	t.mu.Lock()
	if cur == nil {
		key := old.Namespace + "/" + old.Name
		delete(t.services, key)
		t.dirty[key] = true
	} else {
		key := cur.Namespace + "/" + cur.Name
		t.services[key] = info
		t.dirty[key] = true
	}
	t.mu.Unlock()
	t.onChange()
}

// OnEndpointSliceUpdate implements Handler.
func (t *Tracker) OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice) {
	var curKey string
	var info *sliceInfo
	if cur != nil {
		var ok bool
		if curKey, ok = sliceServiceKey(cur); ok {
			info = parseSlice(cur, t.nodeName)
		}
	}
	changed := false
	t.mu.Lock()
	if old != nil {
		if key, ok := sliceServiceKey(old); ok {
			if list := t.slices[key]; list != nil {
				if i, found := findSlice(list, old.Name); found {
					list = slices.Delete(list, i, i+1)
				}
				if len(list) == 0 {
					delete(t.slices, key)
				} else {
					t.slices[key] = list
				}
			}
			t.dirty[key] = true
			changed = true
		}
	}
	if info != nil {
		list := t.slices[curKey]
		if i, found := findSlice(list, info.name); found {
			list[i] = info
		} else {
			t.slices[curKey] = slices.Insert(list, i, info)
		}
		t.dirty[curKey] = true
		changed = true
	}
	t.mu.Unlock()
	if cur != nil && info == nil {
		klog.V(2).InfoS("Skipping EndpointSlice without a service-name label", "endpointSlice", klog.KObj(cur))
		t.onSkip("EndpointSlice", "no-service-label")
	}
	if changed {
		t.onChange()
	}
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

// findSlice returns the position of the slice named name in list, sorted by
// name, or where it would be inserted.
func findSlice(list []*sliceInfo, name string) (int, bool) {
	return slices.BinarySearchFunc(list, name, func(s *sliceInfo, name string) int { return strings.Compare(s.name, name) })
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
		sort.Slice(cur, func(i, j int) bool { return cur[i].Less(cur[j]) })
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
	all, t.conflicts = resolveConflicts(all, func(sp *ServicePort) time.Time {
		if svc := t.services[sp.Name.Namespace+"/"+sp.Name.Name]; svc != nil {
			return svc.created
		}
		return time.Time{}
	}, t.conflicts, t.claims, func(msg string, kv ...any) {
		klog.InfoS(msg, kv...)
		t.onSkip("Service", "conflict")
	})
	return &Snapshot{NodeName: t.nodeName, NodeZone: t.zone, ports: all}, changes
}

// diffPorts compares the ports of one service before and after. Ports equal
// to their previous version are replaced in cur by the previous pointer so
// that unchanged ports stay shared between Snapshots.
func diffPorts(prev, cur []*ServicePort) []Change {
	var changes []Change
	type key struct {
		name   ServicePortName
		family v1.IPFamily
	}
	old := map[key]*ServicePort{}
	for _, p := range prev {
		old[key{p.Name, p.IPFamily}] = p
	}
	for i, c := range cur {
		p, ok := old[key{c.Name, c.IPFamily}]
		delete(old, key{c.Name, c.IPFamily})
		if ok && reflect.DeepEqual(p, c) {
			cur[i] = p
			continue
		}
		changes = append(changes, Change{Prev: p, Cur: c})
	}
	for _, p := range prev {
		if _, ok := old[key{p.Name, p.IPFamily}]; ok {
			changes = append(changes, Change{Prev: p})
		}
	}
	return changes
}

// buildPorts turns a Service and its slices into node-local service ports.
// It returns nil for services svcproxy does not handle. What was skipped
// while parsing is reported (logged and counted) again on every build, as
// when the objects themselves were kept and parsed here.
func (t *Tracker) buildPorts(key string) []*ServicePort {
	svc := t.services[key]
	if svc == nil {
		return nil
	}
	t.report(svc.notes)
	if svc.skipped {
		return nil
	}
	var out []*ServicePort
	for fi := range svc.families {
		f := &svc.families[fi]
		hasExternal := len(f.externalIPs) > 0 || len(f.lbIPs) > 0
		for i := range svc.ports {
			p := &svc.ports[i]
			if p.note != nil {
				if fi == 0 {
					t.report1(p.note)
				}
				continue
			}
			sp := &ServicePort{
				Name:                        ServicePortName{Namespace: svc.namespace, Name: svc.name, Port: p.name, Protocol: p.proto},
				IPFamily:                    f.family,
				Protocol:                    p.proto,
				Port:                        p.port,
				ClusterIP:                   f.clusterIP,
				NodePort:                    p.nodePort,
				ExternalIPs:                 f.externalIPs,
				LoadBalancerIPs:             f.lbIPs,
				LoadBalancerSourceRanges:    f.ranges,
				LoadBalancerSourceRangesSet: f.rangesSet,
				AffinityTimeout:             svc.affinityTimeout,
				IPVSScheduler:               svc.scheduler,
			}
			if hasExternal || sp.NodePort != 0 {
				sp.ExternalPolicyLocal = svc.externalLocal
				sp.HealthCheckNodePort = svc.healthCheckNodePort
			}
			sp.InternalPolicyLocal = svc.internalLocal
			sp.AllEndpoints = t.endpointsFor(key, p.name, p.proto, f.family)
			SelectEndpoints(sp, t.nodeName, t.zone)
			sp.ClusterEndpoints = shareEndpoints(sp.ClusterEndpoints, sp.AllEndpoints)
			sp.LocalEndpoints = shareEndpoints(sp.LocalEndpoints, sp.AllEndpoints)
			out = append(out, sp)
		}
	}
	return out
}

// endpointsFor merges the endpoints of every slice of the service for one
// port, de-duplicated by address (a ready copy wins) and sorted. A port
// served by one slice shares that slice's list.
func (t *Tracker) endpointsFor(key, portName string, proto v1.Protocol, family v1.IPFamily) []*Endpoint {
	var lists [][]*Endpoint
	for _, s := range t.slices[key] { // in name order
		switch s.addressType {
		case discovery.AddressType(family):
		case discovery.AddressTypeIPv4, discovery.AddressTypeIPv6:
			continue // the other family's port takes it
		case discovery.AddressTypeFQDN:
			klog.V(2).InfoS("Skipping FQDN EndpointSlice", "endpointSlice", klog.KRef(s.namespace, s.name))
			t.onSkip("EndpointSlice", "fqdn")
			continue
		default:
			klog.V(4).InfoS("Skipping EndpointSlice of another IP family", "endpointSlice", klog.KRef(s.namespace, s.name), "addressType", s.addressType)
			t.onSkip("EndpointSlice", "other-ip-family")
			continue
		}
		sp := s.port(portName, proto)
		if sp == nil || !sp.valid {
			continue
		}
		for _, a := range s.invalid {
			klog.InfoS("Skipping endpoint address the API server would refuse", "endpointSlice", klog.KRef(s.namespace, s.name), "addressType", s.addressType, "address", a)
			t.onSkip("EndpointSlice", "invalid-address")
		}
		lists = append(lists, sp.endpoints)
	}
	switch len(lists) {
	case 0:
		return []*Endpoint{}
	case 1:
		return lists[0] // sorted and de-duplicated already
	}
	byAddr := map[netip.AddrPort]*Endpoint{}
	for _, l := range lists {
		for _, ep := range l {
			ap := netip.AddrPortFrom(ep.IP, uint16(ep.Port))
			if prev, ok := byAddr[ap]; ok && (prev.Ready || !ep.Ready) {
				continue
			}
			byAddr[ap] = ep
		}
	}
	out := make([]*Endpoint, 0, len(byAddr))
	for _, ep := range byAddr {
		out = append(out, ep)
	}
	sortEndpoints(out)
	return out
}

// shareEndpoints returns all (capped, so that an append copies) when eps
// holds the same endpoints: usually every endpoint is selected, and the
// copy would live as long as the port.
func shareEndpoints(eps, all []*Endpoint) []*Endpoint {
	if len(eps) == 0 || len(eps) != len(all) {
		return eps
	}
	for i := range eps {
		if eps[i] != all[i] {
			return eps
		}
	}
	return all[:len(all):len(all)]
}

func sortEndpoints(eps []*Endpoint) {
	sort.SliceStable(eps, func(i, j int) bool {
		if c := eps[i].IP.Compare(eps[j].IP); c != 0 {
			return c < 0
		}
		return eps[i].Port < eps[j].Port
	})
}

// intern returns the canonical copy of s: namespace, node, zone and port
// names repeat across thousands of objects.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

// skipNote is a skipped part of an object, found while parsing it: logged
// and counted each time the service is built, as if parsed then.
type skipNote struct {
	kind, reason string
	level        klog.Level
	msg          string
	kv           []any
}

func (t *Tracker) report(notes []skipNote) {
	for i := range notes {
		t.report1(&notes[i])
	}
}

func (t *Tracker) report1(n *skipNote) {
	klog.V(n.level).InfoS(n.msg, n.kv...)
	t.onSkip(n.kind, n.reason)
}
