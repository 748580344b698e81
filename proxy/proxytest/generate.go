package proxytest

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// Generate returns n Services with epsPerService endpoints each, spread
// over 100 nodes named node1..node100 (so node1 has about 1% of them), as a
// benchmark cluster: ClusterIPs from 10.96.0.1 on, pod IPs in 10.244.0.0/16
// and beyond, every 10th service a NodePort (while ports last).
func Generate(n, epsPerService int) ([]*v1.Service, []*discovery.EndpointSlice) {
	svcs := make([]*v1.Service, 0, n)
	slices := make([]*discovery.EndpointSlice, 0, n)
	pod := uint32(10<<24 | 244<<16 | 1)
	for i := 0; i < n; i++ {
		ipN := uint32(10<<24|96<<16) + uint32(i) + 1
		ip := fmt.Sprintf("%d.%d.%d.%d", ipN>>24, ipN>>16&0xff, ipN>>8&0xff, ipN&0xff)
		name := fmt.Sprintf("svc-%d", i)
		ns := fmt.Sprintf("ns-%d", i%50)
		svc := Service(ns, name, ip, "http", 80)
		if i%10 == 0 && 30000+i/10 <= 32767 {
			svc.Spec.Type = v1.ServiceTypeNodePort
			svc.Spec.Ports[0].NodePort = int32(30000 + i/10)
		}
		svcs = append(svcs, svc)
		var eps []EP
		for j := 0; j < epsPerService; j++ {
			eps = append(eps, Ready(fmt.Sprintf("%d.%d.%d.%d", pod>>24, pod>>16&0xff, pod>>8&0xff, pod&0xff),
				fmt.Sprintf("node%d", (i*epsPerService+j)%100+1)))
			pod++
		}
		slices = append(slices, Slice(ns, name, name+"-abcde", "http", 8080, eps...))
	}
	return svcs, slices
}
