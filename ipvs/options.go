package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/svcproxy/svcproxy/proxy"
)

// Schedulers are the IPVS schedulers IPVS mode accepts (--ipvs-scheduler
// and a Service's proxy.IPVSSchedulerAnnotation): proxy.IPVSSchedulers.
var Schedulers = proxy.IPVSSchedulers

// DefaultScheduler is kube-proxy's default IPVS scheduler.
const DefaultScheduler = "rr"

// ValidScheduler reports whether s is one of Schedulers.
func ValidScheduler(s string) bool { return slices.Contains(Schedulers, s) }

// Options are the settings that shape IPVS mode's plan and its applier.
type Options struct {
	// IPv4 and IPv6 say which families are programmed: their virtual
	// servers, service addresses, ipsets (IPv6 ones named per SetName)
	// and iptables rules (IPv6 ones through ip6tables). DefaultOptions
	// has IPv4 only; a dual-stack node sets both. Service ports of a
	// family not programmed are left out.
	IPv4, IPv6 bool
	// Scheduler is the IPVS scheduler of every virtual server; "rr" by
	// default.
	Scheduler string
	// NodeAddresses are the addresses that NodePorts answer on: one
	// virtual server per address and node port of its family. The caller
	// finds them (local addresses within --nodeport-addresses, neither
	// loopback nor link-local).
	NodeAddresses []netip.Addr
	// LocalAddresses are all the node's own addresses (on links other than
	// DummyInterface), whatever --nodeport-addresses says. A service
	// address among them (an externalIP set to a node address) gets its
	// virtual server but is not bound to DummyInterface nor put in
	// SetIPs: IPVS sees its packets anyway, and the REJECT of a service
	// address's other ports would cut the node's own services (SSH, the
	// kubelet) off that address. kube-proxy does the same.
	LocalAddresses []netip.Addr
	// NodePortRange bounds the ports of virtual servers on node addresses
	// that IPVS mode considers its own when it finds them in the kernel
	// (after a restart, or in Cleanup). Virtual servers on node addresses
	// outside it belong to someone else and are never touched.
	NodePortRange PortRange
	// ClusterCIDRs are the pod networks of both families; traffic to a ClusterIP from
	// outside them is masqueraded. Empty (and MasqueradeAll false): the
	// node's own traffic is, nothing else, as in kube-proxy.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll masquerades all traffic to ClusterIPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit (0-31) that asks for SNAT; 14 like
	// kube-proxy and iptables mode.
	MasqueradeBit int
	// RandomFully adds --random-fully to MASQUERADE.
	RandomFully bool
	// GracefulTimeout bounds how long a removed TCP real server is kept
	// with weight 0 while it still has active connections.
	GracefulTimeout time.Duration
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Min, Max uint16 }

// Contains reports whether p is within the range.
func (r PortRange) Contains(p uint16) bool { return p >= r.Min && p <= r.Max }

// String returns "min-max".
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// DefaultGracefulTimeout is how long a removed TCP real server with active
// connections is drained at most: the longest termination grace period
// most workloads use, well under IPVS's 15-minute established timeout.
const DefaultGracefulTimeout = 5 * time.Minute

// DefaultOptions returns kube-proxy's defaults.
func DefaultOptions() Options {
	return Options{
		IPv4:            true,
		Scheduler:       DefaultScheduler,
		NodePortRange:   PortRange{30000, 32767},
		MasqueradeBit:   proxy.DefaultMasqueradeBit,
		RandomFully:     true,
		GracefulTimeout: DefaultGracefulTimeout,
	}
}

// Validate checks the options; every problem is reported.
func (o Options) Validate() error {
	var errs []error
	if !ValidScheduler(o.Scheduler) {
		errs = append(errs, fmt.Errorf("IPVS scheduler %q: want one of %v", o.Scheduler, Schedulers))
	}
	if !o.IPv4 && !o.IPv6 {
		errs = append(errs, errors.New("no IP family to program"))
	}
	for _, a := range o.NodeAddresses {
		if !a.IsValid() || a.Is4In6() || a.IsLinkLocalUnicast() || a.IsLoopback() {
			errs = append(errs, fmt.Errorf("node address %s: want a global or private address", a))
		}
	}
	if o.NodePortRange.Min == 0 || o.NodePortRange.Min > o.NodePortRange.Max {
		errs = append(errs, fmt.Errorf("node port range %s: want 1 <= min <= max", o.NodePortRange))
	}
	for _, p := range o.ClusterCIDRs {
		if !p.IsValid() || p.Addr().Is4In6() {
			errs = append(errs, fmt.Errorf("cluster CIDR %s: not a valid prefix", p))
		}
	}
	if o.MasqueradeBit < 0 || o.MasqueradeBit > 31 {
		errs = append(errs, fmt.Errorf("masquerade bit %d: must be within 0-31", o.MasqueradeBit))
	}
	if o.GracefulTimeout < 0 {
		errs = append(errs, fmt.Errorf("graceful termination timeout %v: must not be negative", o.GracefulTimeout))
	}
	return errors.Join(errs...)
}

func (o Options) markValue() string { return proxy.MasqueradeMark(o.MasqueradeBit) }
