package proxy

import "fmt"

// DefaultMasqueradeBit is the fwmark bit that asks for SNAT, kube-proxy's
// (--iptables-masquerade-bit). Every mode marks with the same bit, so that
// a mode switch never leaves a packet marked by one and ignored by the
// other.
const DefaultMasqueradeBit = 14

// MasqueradeMark returns the mark value of bit as iptables writes it
// ("0x4000" for 14).
func MasqueradeMark(bit int) string { return fmt.Sprintf("0x%x", uint32(1)<<bit) }

// IPVSSchedulerAnnotation on a Service sets the IPVS scheduler of its
// virtual servers in --mode=ipvs, overriding --ipvs-scheduler.
// KubeRouterSchedulerAnnotation, kube-router's name for the same setting,
// is accepted too so that kube-router users can move over; ours wins when
// both are set. An unknown scheduler is logged and ignored.
const (
	IPVSSchedulerAnnotation       = "svcproxy.io/ipvs-scheduler"
	KubeRouterSchedulerAnnotation = "kube-router.io/service.scheduler"
)
