package proxytest

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxy"
)

// byteSource turns fuzz input into choices; it yields zeros when exhausted.
type byteSource struct {
	data []byte
	pos  int
}

func (b *byteSource) next() byte {
	if b.pos >= len(b.data) {
		return 0
	}
	c := b.data[b.pos]
	b.pos++
	return c
}

func (b *byteSource) intn(n int) int { return int(b.next()) % n }

func (b *byteSource) u16() int { return int(b.next())<<8 | int(b.next()) }

// name returns a name that may hold characters no apiserver would accept:
// a --state file is not validated.
func (b *byteSource) name() string {
	const alphabet = "abcz09-._ \"'\\/:;$`!#{}*[]\t"
	n := 1 + b.intn(12)
	out := make([]byte, n)
	for i := range out {
		out[i] = alphabet[b.intn(len(alphabet))]
	}
	return string(out)
}

// RandomSnapshot builds a snapshot for node1 from fuzz input: odd ports,
// many endpoints, weird names, every service type and policy, conflicting
// IPs, duplicate endpoints.
func RandomSnapshot(data []byte) *proxy.Snapshot {
	b := &byteSource{data: data}
	tr := proxy.NewTracker("node1", nil, nil)
	nsvc := 1 + b.intn(12)
	for i := 0; i < nsvc; i++ {
		ns, name := b.name(), b.name()
		svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		// A small address space makes conflicts between services likely.
		ip := fmt.Sprintf("10.96.%d.%d", b.intn(3), b.intn(4))
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ip, []string{ip}
		switch b.intn(4) {
		case 0:
			svc.Spec.Type = v1.ServiceTypeClusterIP
		case 1:
			svc.Spec.Type = v1.ServiceTypeNodePort
		case 2:
			svc.Spec.Type = v1.ServiceTypeLoadBalancer
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: fmt.Sprintf("203.0.113.%d", b.intn(4))}}
			if b.intn(2) == 0 {
				svc.Spec.LoadBalancerSourceRanges = []string{fmt.Sprintf("198.51.%d.0/24", b.intn(3)), "192.0.2.0/28"}
			}
		case 3:
			svc.Spec.ExternalIPs = []string{fmt.Sprintf("192.0.2.%d", b.intn(4)), "not-an-ip"}
		}
		if b.intn(2) == 0 {
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}
		if b.intn(3) == 0 {
			svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}
		if b.intn(3) == 0 {
			svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(b.u16()))}}
		}
		nports := 1 + b.intn(3)
		protos := []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}
		for p := 0; p < nports; p++ {
			sp := v1.ServicePort{Name: b.name(), Port: int32(b.u16()), Protocol: protos[b.intn(3)]}
			if svc.Spec.Type != v1.ServiceTypeClusterIP {
				sp.NodePort = int32(30000 + b.intn(20))
			}
			svc.Spec.Ports = append(svc.Spec.Ports, sp)
		}
		tr.OnServiceUpdate(nil, svc)

		slice := &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-x", Labels: map[string]string{discovery.LabelServiceName: name}},
			AddressType: discovery.AddressTypeIPv4,
		}
		for _, sp := range svc.Spec.Ports {
			slice.Ports = append(slice.Ports, discovery.EndpointPort{Name: ptr.To(sp.Name), Port: ptr.To(int32(b.u16())), Protocol: ptr.To(sp.Protocol)})
		}
		neps := b.intn(4)
		if b.intn(8) == 0 {
			neps = 150 // many endpoints
		}
		for e := 0; e < neps; e++ {
			ep := discovery.Endpoint{
				Addresses: []string{fmt.Sprintf("10.244.%d.%d", b.intn(3), b.next())},
				NodeName:  ptr.To(fmt.Sprintf("node%d", 1+b.intn(3))),
				Conditions: discovery.EndpointConditions{
					Ready: ptr.To(b.intn(3) != 0), Serving: ptr.To(b.intn(2) == 0), Terminating: ptr.To(b.intn(4) == 0),
				},
			}
			slice.Endpoints = append(slice.Endpoints, ep)
		}
		tr.OnEndpointSliceUpdate(nil, slice)
	}
	snap, _ := tr.Snapshot()
	return snap
}
