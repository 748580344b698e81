// Package proxytest builds Services and EndpointSlices for tests.
package proxytest

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Service returns a ClusterIP Service ns/name at clusterIP with one TCP port
// named portName, after applying mods.
func Service(ns, name, clusterIP, portName string, port int32, mods ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports:      []v1.ServicePort{{Name: portName, Port: port, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mods {
		m(svc)
	}
	return svc
}

// EP is one endpoint of a slice.
type EP struct {
	IP          string
	Node        string
	Ready       bool
	Serving     bool
	Terminating bool
	Zone        string
	ForZones    []string
	ForNodes    []string
}

// Ready returns a ready endpoint on node.
func Ready(ip, node string) EP { return EP{IP: ip, Node: node, Ready: true, Serving: true} }

// Terminating returns a serving, terminating endpoint on node.
func Terminating(ip, node string) EP { return EP{IP: ip, Node: node, Serving: true, Terminating: true} }

// Slice returns an IPv4 EndpointSlice of service ns/svc with one TCP port
// named portName.
func Slice(ns, svc, name, portName string, port int32, eps ...EP) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			Labels: map[string]string{discovery.LabelServiceName: svc},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports: []discovery.EndpointPort{{
			Name: ptr.To(portName), Port: ptr.To(port), Protocol: ptr.To(v1.ProtocolTCP),
		}},
	}
	for _, e := range eps {
		ep := discovery.Endpoint{
			Addresses: []string{e.IP},
			Conditions: discovery.EndpointConditions{
				Ready: ptr.To(e.Ready), Serving: ptr.To(e.Serving), Terminating: ptr.To(e.Terminating),
			},
		}
		if e.Node != "" {
			ep.NodeName = ptr.To(e.Node)
		}
		if e.Zone != "" {
			ep.Zone = ptr.To(e.Zone)
		}
		if len(e.ForZones) > 0 || len(e.ForNodes) > 0 {
			ep.Hints = &discovery.EndpointHints{}
			for _, z := range e.ForZones {
				ep.Hints.ForZones = append(ep.Hints.ForZones, discovery.ForZone{Name: z})
			}
			for _, n := range e.ForNodes {
				ep.Hints.ForNodes = append(ep.Hints.ForNodes, discovery.ForNode{Name: n})
			}
		}
		s.Endpoints = append(s.Endpoints, ep)
	}
	return s
}
