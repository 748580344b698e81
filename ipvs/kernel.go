//go:build linux

package ipvs

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// Kernel is the real Interface: virtual servers through IPVS's generic
// netlink family (github.com/moby/ipvs), the dummy link and its addresses
// through rtnetlink (github.com/vishvananda/netlink), ipsets through the
// ipset command and sysctls through /proc/sys.
//
// Its netlink sockets are opened on first use, in the network namespace of
// the calling thread, and stay there; commands run in the namespace of the
// calling thread. Opening the IPVS socket runs `modprobe ip_vs`.
type Kernel struct {
	// IPSet is the ipset command; "ipset" (from PATH) by default.
	IPSet string
	// ProcSys is where sysctls live; "/proc/sys" by default.
	ProcSys string

	mu   sync.Mutex
	ipvs *libipvs.Handle
	nl   *netlink.Handle
}

var _ Interface = (*Kernel)(nil)

// IP_VS_SVC_F_PERSISTENT from linux/ip_vs.h.
const svcFlagPersistent = 0x1

// NewKernel returns a Kernel. It opens nothing: sockets are opened by the
// first call that needs them.
func NewKernel() *Kernel { return &Kernel{IPSet: "ipset", ProcSys: "/proc/sys"} }

// Close closes the netlink sockets; a later call opens them again.
func (k *Kernel) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ipvs != nil {
		k.ipvs.Close()
		k.ipvs = nil
	}
	if k.nl != nil {
		k.nl.Close()
		k.nl = nil
	}
}

// ipvsProc exists while ip_vs is loaded; thread-self, not self: the
// calling thread's network namespace.
const ipvsProc = "/proc/thread-self/net/ip_vs"

// Available implements Interface.
func (k *Kernel) Available() bool {
	_, err := os.Stat(ipvsProc)
	return err == nil
}

func (k *Kernel) ipvsHandle() (*libipvs.Handle, error) {
	if k.ipvs == nil {
		h, err := libipvs.New("") // runs modprobe ip_vs
		if err == nil {
			// moby/ipvs only logs a missing IPVS family; say it plainly.
			if _, serr := os.Stat(ipvsProc); serr != nil {
				h.Close()
				err = fmt.Errorf("the kernel has no IPVS (load ip_vs): %w", serr)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("opening IPVS netlink socket (is ip_vs loaded?): %w", err)
		}
		k.ipvs = h
	}
	return k.ipvs, nil
}

func (k *Kernel) nlHandle() (*netlink.Handle, error) {
	if k.nl == nil {
		h, err := netlink.NewHandle(syscall.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("opening rtnetlink socket: %w", err)
		}
		k.nl = h
	}
	return k.nl, nil
}

func protoNumber(p string) uint16 {
	switch p {
	case "UDP":
		return syscall.IPPROTO_UDP
	case "SCTP":
		return syscall.IPPROTO_SCTP
	default:
		return syscall.IPPROTO_TCP
	}
}

func protoName(n uint16) (string, bool) {
	switch n {
	case syscall.IPPROTO_TCP:
		return "TCP", true
	case syscall.IPPROTO_UDP:
		return "UDP", true
	case syscall.IPPROTO_SCTP:
		return "SCTP", true
	}
	return "", false
}

// family returns the address family of a.
func family(a netip.Addr) uint16 {
	if a.Is6() {
		return syscall.AF_INET6
	}
	return syscall.AF_INET
}

func toLibService(k ServiceKey) *libipvs.Service {
	s := &libipvs.Service{
		Address:       net.IP(k.Address.AsSlice()),
		Protocol:      protoNumber(string(k.Protocol)),
		Port:          k.Port,
		AddressFamily: family(k.Address),
		// Persistence groups clients by this mask: one address each. The
		// kernel reads an IPv6 mask as a prefix length.
		Netmask: 0xffffffff,
	}
	if k.Address.Is6() {
		s.Netmask = 128
	}
	return s
}

func toLibServiceFull(vs *VirtualServer) *libipvs.Service {
	s := toLibService(vs.ServiceKey)
	s.SchedName = vs.Scheduler
	if vs.Timeout > 0 {
		s.Flags = svcFlagPersistent
		s.Timeout = vs.Timeout
	}
	return s
}

func toLibDest(rs *RealServer) *libipvs.Destination {
	return &libipvs.Destination{
		Address:         net.IP(rs.Address.AsSlice()),
		Port:            rs.Port,
		Weight:          rs.Weight,
		ConnectionFlags: libipvs.ConnectionFlagMasq,
		AddressFamily:   family(rs.Address),
	}
}

func fromLibDest(d *libipvs.Destination) (*RealServer, bool) {
	a, ok := netip.AddrFromSlice(d.Address)
	if !ok {
		return nil, false
	}
	return &RealServer{Address: a.Unmap(), Port: d.Port, Weight: d.Weight,
		ActiveConns: d.ActiveConnections, InactiveConns: d.InactiveConnections}, true
}

// errno wraps err, keeping its errno for IsNotFound and IsExist.
func wrap(err error, format string, a ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), err)
}

// ListServices implements Interface.
func (k *Kernel) ListServices() ([]*VirtualServer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	h, err := k.ipvsHandle()
	if err != nil {
		return nil, err
	}
	svcs, err := h.GetServices()
	if err != nil {
		return nil, wrap(err, "listing virtual servers")
	}
	out := make([]*VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		if s.FWMark != 0 || (s.AddressFamily != syscall.AF_INET && s.AddressFamily != syscall.AF_INET6) {
			continue
		}
		a, ok := netip.AddrFromSlice(s.Address)
		proto, pok := protoName(s.Protocol)
		if !ok || !pok {
			continue
		}
		vs := &VirtualServer{ServiceKey: ServiceKey{Address: a.Unmap(), Protocol: v1.Protocol(proto), Port: s.Port}, Scheduler: s.SchedName}
		if s.Flags&svcFlagPersistent != 0 {
			vs.Timeout = s.Timeout
		}
		dests, err := h.GetDestinations(s)
		if err != nil {
			return nil, wrap(err, "listing real servers of %s", vs.ServiceKey)
		}
		for _, d := range dests {
			if rs, ok := fromLibDest(d); ok {
				vs.Destinations = append(vs.Destinations, rs)
			}
		}
		out = append(out, vs)
	}
	return out, nil
}

// ListDestinations implements Interface.
func (k *Kernel) ListDestinations(key ServiceKey) ([]*RealServer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	h, err := k.ipvsHandle()
	if err != nil {
		return nil, err
	}
	s := toLibService(key)
	// Listing the real servers of a missing virtual server returns an
	// empty list, not an error: ask first.
	if !h.IsServicePresent(s) {
		return nil, fmt.Errorf("virtual server %s: %w", key, ErrNotFound)
	}
	dests, err := h.GetDestinations(s)
	if err != nil {
		return nil, wrap(err, "listing real servers of %s", key)
	}
	var out []*RealServer
	for _, d := range dests {
		if rs, ok := fromLibDest(d); ok {
			out = append(out, rs)
		}
	}
	return out, nil
}

func (k *Kernel) ipvsDo(f func(h *libipvs.Handle) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	h, err := k.ipvsHandle()
	if err != nil {
		return err
	}
	return f(h)
}

// AddService implements Interface.
func (k *Kernel) AddService(vs *VirtualServer) error {
	return k.ipvsDo(func(h *libipvs.Handle) error {
		return wrap(h.NewService(toLibServiceFull(vs)), "adding virtual server %s", vs.ServiceKey)
	})
}

// UpdateService implements Interface.
func (k *Kernel) UpdateService(vs *VirtualServer) error {
	return k.ipvsDo(func(h *libipvs.Handle) error {
		return wrap(h.UpdateService(toLibServiceFull(vs)), "updating virtual server %s", vs.ServiceKey)
	})
}

// DeleteService implements Interface.
func (k *Kernel) DeleteService(key ServiceKey) error {
	return k.ipvsDo(func(h *libipvs.Handle) error {
		return wrap(h.DelService(toLibService(key)), "deleting virtual server %s", key)
	})
}

// AddDestination implements Interface.
func (k *Kernel) AddDestination(key ServiceKey, rs *RealServer) error {
	return k.ipvsDo(func(h *libipvs.Handle) error {
		return wrap(h.NewDestination(toLibService(key), toLibDest(rs)), "adding real server %s to %s", rs.AddrPort(), key)
	})
}

// UpdateDestination implements Interface.
func (k *Kernel) UpdateDestination(key ServiceKey, rs *RealServer) error {
	return k.ipvsDo(func(h *libipvs.Handle) error {
		return wrap(h.UpdateDestination(toLibService(key), toLibDest(rs)), "updating real server %s of %s", rs.AddrPort(), key)
	})
}

// DeleteDestination implements Interface.
func (k *Kernel) DeleteDestination(key ServiceKey, rs *RealServer) error {
	return k.ipvsDo(func(h *libipvs.Handle) error {
		return wrap(h.DelDestination(toLibService(key), toLibDest(rs)), "deleting real server %s of %s", rs.AddrPort(), key)
	})
}

func (k *Kernel) linkByName(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, fmt.Errorf("link %s: %w", name, ErrNotFound)
	}
	return l, wrap(err, "link %s", name)
}

func (k *Kernel) nlDo(f func(h *netlink.Handle) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	h, err := k.nlHandle()
	if err != nil {
		return err
	}
	return f(h)
}

// EnsureDummy implements Interface.
func (k *Kernel) EnsureDummy(name string) error {
	return k.nlDo(func(h *netlink.Handle) error {
		_, err := k.linkByName(h, name)
		if err == nil || !IsNotFound(err) {
			return err
		}
		return wrap(h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}), "creating dummy link %s", name)
	})
}

// DeleteLink implements Interface.
func (k *Kernel) DeleteLink(name string) error {
	return k.nlDo(func(h *netlink.Handle) error {
		l, err := k.linkByName(h, name)
		if IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return wrap(h.LinkDel(l), "deleting link %s", name)
	})
}

// ListAddresses implements Interface.
func (k *Kernel) ListAddresses(name string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := k.nlDo(func(h *netlink.Handle) error {
		l, err := k.linkByName(h, name)
		if err != nil {
			return err
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return wrap(err, "listing addresses of %s", name)
		}
		for _, ad := range addrs {
			// The kernel gives a link that was ever up an IPv6 link-local
			// address: not a service address.
			if a, ok := netip.AddrFromSlice(ad.IP); ok && !a.IsLinkLocalUnicast() {
				out = append(out, a.Unmap())
			}
		}
		return nil
	})
	return out, err
}

// hostAddr returns a as a host address: /32, or /128 without duplicate
// address detection (an IPv6 address stays tentative, without its local
// route, until DAD completes; our dummy link is NOARP, which skips DAD, but
// a link of that name made by someone else might not be).
func hostAddr(a netip.Addr) *netlink.Addr {
	if a.Is6() {
		return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}
	}
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}}
}

// AddAddress implements Interface.
func (k *Kernel) AddAddress(name string, a netip.Addr) error {
	return k.nlDo(func(h *netlink.Handle) error {
		l, err := k.linkByName(h, name)
		if err != nil {
			return err
		}
		return wrap(h.AddrAdd(l, hostAddr(a)), "adding %s to %s", a, name)
	})
}

// DeleteAddress implements Interface.
func (k *Kernel) DeleteAddress(name string, a netip.Addr) error {
	return k.nlDo(func(h *netlink.Handle) error {
		l, err := k.linkByName(h, name)
		if err != nil {
			return err
		}
		return wrap(h.AddrDel(l, hostAddr(a)), "deleting %s from %s", a, name)
	})
}

// ListSets implements Interface. Without the ipset command there is no set
// to list (and RestoreSets fails).
func (k *Kernel) ListSets() ([]*Set, error) {
	if _, err := exec.LookPath(k.IPSet); err != nil {
		return nil, nil
	}
	var stderr bytes.Buffer
	cmd := exec.Command(k.IPSet, "save")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ipset save: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return ParseSetSave(out)
}

// RestoreSets implements Interface.
func (k *Kernel) RestoreSets(data []byte) error {
	var stderr bytes.Buffer
	cmd := exec.Command(k.IPSet, "restore", "-exist")
	cmd.Stdin = bytes.NewReader(data)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ipset restore: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Sysctl implements Interface.
func (k *Kernel) Sysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(k.ProcSys, name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// SetSysctl implements Interface.
func (k *Kernel) SetSysctl(name, value string) error {
	return os.WriteFile(filepath.Join(k.ProcSys, name), []byte(value+"\n"), 0o644)
}

// LocalAddresses returns the node's addresses that NodePorts should answer
// on, of both families: every address of every link but loopback and
// link-local addresses and the service addresses on DummyInterface (or
// kube-proxy's kube-ipvs0), within
// one of prefixes when any is given; sorted, without duplicates. It is
// meant for Options.NodeAddresses at start: IPVS needs one virtual server
// per address; ipvs.Backend.WithHostAddresses lists them again at every
// full sync.
func (k *Kernel) LocalAddresses(prefixes []netip.Prefix) ([]netip.Addr, error) {
	var out []netip.Addr
	err := k.nlDo(func(h *netlink.Handle) error {
		links, err := h.LinkList()
		if err != nil {
			return wrap(err, "listing links")
		}
		seen := map[netip.Addr]bool{}
		for _, l := range links {
			if name := l.Attrs().Name; name == DummyInterface || name == "kube-ipvs0" {
				continue
			}
			addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return wrap(err, "listing addresses of %s", l.Attrs().Name)
			}
			for _, ad := range addrs {
				a, ok := netip.AddrFromSlice(ad.IP)
				if !ok {
					continue
				}
				a = a.Unmap()
				// A tentative IPv6 address cannot be used yet, one that
				// failed duplicate address detection never.
				if ad.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
					continue
				}
				if a.IsLoopback() || a.IsLinkLocalUnicast() || seen[a] || !within(a, prefixes) {
					continue
				}
				seen[a] = true
				out = append(out, a)
			}
		}
		return nil
	})
	slices.SortFunc(out, netip.Addr.Compare)
	return out, err
}

// within reports whether a is in one of the prefixes of its family; a
// family without prefixes matches every address (--nodeport-addresses per
// family, as kube-proxy and iptables mode take it).
func within(a netip.Addr, prefixes []netip.Prefix) bool {
	ofFamily := false
	for _, p := range prefixes {
		if p.Addr().Is6() != a.Is6() {
			continue
		}
		ofFamily = true
		if p.Contains(a) {
			return true
		}
	}
	return !ofFamily
}
