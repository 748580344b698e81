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

// IPVSSchedulers are the IPVS schedulers of the Linux kernel
// (ip_vs_<name>.ko), every one of which moby/ipvs can set on a virtual
// server: round robin, weighted round robin, least connection, weighted
// least connection, locality-based least connection (with replication),
// destination and source hashing, shortest expected delay, never queue,
// Maglev hashing, weighted failover, weighted overflow and weighted random
// twos (Linux 6.2+). Every real server has weight 1, so a weighted
// scheduler behaves like its plain one. The kernel loads a scheduler's
// module when a virtual server first uses it; one the kernel lacks fails
// that sync with the kernel's error.
var IPVSSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos"}

// MinNodePort is the lowest node port svcproxy programs. An API server
// allocates node ports from its --service-node-port-range (30000-32767 by
// default); below 1024 a node port would capture the node's own services
// (SSH on 22), which only an unvalidated --state file can ask for.
const MinNodePort = 1024
