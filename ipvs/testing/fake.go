// Package ipvstest provides a stateful fake of ipvs.Interface: it keeps
// virtual servers with their real servers, links with their addresses,
// ipsets with their entries and sysctls, and refuses what the kernel
// refuses (a real server for a missing virtual server, a duplicate, an
// unknown scheduler, an ipset entry that does not fit its set's type, and,
// wired to an iptablestest.Fake with UseIPTables, a rule naming a missing
// set or destroying a set a rule uses), so that a test passing against it
// says something.
package ipvstest

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	v1 "k8s.io/api/core/v1"

	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/ipvs"
)

// Fake is an in-memory model of the kernel state IPVS mode uses. The zero
// value is not usable; call NewFake. It is safe for concurrent use.
type Fake struct {
	// NoIPVS makes the fake a kernel without ip_vs loaded: Available is
	// false and the other IPVS methods fail (a real one would load it).
	NoIPVS bool

	mu       sync.Mutex
	services map[ipvs.ServiceKey]*service
	links    map[string]*link
	sets     map[string]*set
	setRefs  map[string]int // iptables rules using each set, all users summed
	// refsBy are the references of each iptables fake wired with
	// UseIPTables (user 0: direct ReferenceSets calls); setRefs sums them.
	refsBy  map[int]map[string]int
	users   int
	sysctls map[string]string
	calls   []string
	fail    map[string]error
}

var _ ipvs.Interface = (*Fake)(nil)

type service struct {
	scheduler string
	timeout   uint32
	dests     map[netip.AddrPort]*ipvs.RealServer
}

type link struct {
	kind  string
	addrs map[netip.Addr]bool
}

type set struct {
	typ     string
	family  string // "inet" or "inet6"; "" for bitmap:port
	max     int    // maxelem
	lo, hi  int    // bitmap:port range
	entries map[string]bool
}

// KernelSchedulers are the schedulers a Debian kernel ships modules for.
var KernelSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}

// DefaultSysctls are the values a fresh network namespace has for every
// sysctl IPVS mode reads or writes.
func DefaultSysctls() map[string]string {
	return map[string]string{
		"kernel/osrelease":                      "6.1.0-fake-amd64",
		"net/ipv4/vs/conntrack":                 "0",
		"net/ipv4/vs/conn_reuse_mode":           "1",
		"net/ipv4/vs/expire_nodest_conn":        "0",
		"net/ipv4/vs/expire_quiescent_template": "0",
		"net/ipv4/conf/all/arp_ignore":          "0",
		"net/ipv4/conf/all/arp_announce":        "0",
		"net/ipv6/conf/all/disable_ipv6":        "0",
	}
}

// NewFake returns a Fake with no virtual servers, links or sets, and the
// sysctls of DefaultSysctls.
func NewFake() *Fake {
	return &Fake{
		services: map[ipvs.ServiceKey]*service{},
		links:    map[string]*link{},
		sets:     map[string]*set{},
		sysctls:  DefaultSysctls(),
		fail:     map[string]error{},
	}
}

// UseIPTables wires ipt to f the way the kernel wires iptables to ipsets:
// ipt then refuses a rule naming a set f does not have, and f refuses to
// destroy a set a rule of ipt uses. Call it before either holds state that
// depends on the other; it fails if ipt's rules already name a missing set.
// Several iptables fakes (iptables and ip6tables) may be wired: a set is in
// use while a rule of any of them names it.
func (f *Fake) UseIPTables(ipt *iptablestest.Fake) error {
	f.mu.Lock()
	f.users++
	v := setsUser{f, f.users}
	f.mu.Unlock()
	return ipt.UseSets(v)
}

// setsUser is f as one wired iptables fake sees it: its references are
// kept apart from the other users'.
type setsUser struct {
	f  *Fake
	id int
}

func (u setsUser) HasSet(name string) bool { return u.f.HasSet(name) }

func (u setsUser) ReferenceSets(refs map[string]int) error { return u.f.referenceSets(u.id, refs) }

var _ iptablestest.Sets = (*Fake)(nil)

// FailNext makes the next call of method (e.g. "AddDestination") return
// err without doing anything.
func (f *Fake) FailNext(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[method] = err
}

// Calls returns the mutating calls made so far, one line each
// ("AddService -t 10.96.0.1:443 -s rr").
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// ResetCalls forgets the calls made so far.
func (f *Fake) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// record logs a mutating call and returns an injected failure, if any.
// f.mu is held.
func (f *Fake) record(method, args string) error {
	f.calls = append(f.calls, strings.TrimSpace(method+" "+args))
	return f.injected(method)
}

// injected returns the failure injected for method, once. f.mu is held.
func (f *Fake) injected(method string) error {
	if err, ok := f.fail[method]; ok {
		delete(f.fail, method)
		return err
	}
	return nil
}

func notFound(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ipvs.ErrNotFound)
}

func exists(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ipvs.ErrExist)
}

// modelled refuses addresses the fake does not model: with a zone (the
// real Kernel drops it) or IPv4-mapped (the real Kernel lists them as
// IPv4, so they would not round-trip).
func modelled(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("no address")
	case a.Zone() != "":
		return fmt.Errorf("address %s: zones are not modelled by the fake", a)
	case a.Is4In6():
		return fmt.Errorf("address %s: IPv4-mapped addresses are not modelled by the fake", a)
	}
	return nil
}

func validKey(k ipvs.ServiceKey) error {
	if err := modelled(k.Address); err != nil {
		return fmt.Errorf("virtual server %v: %w", k, err)
	}
	switch k.Protocol {
	case v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP:
	default:
		return fmt.Errorf("virtual server %v: bad protocol %q", k, k.Protocol)
	}
	return nil
}

func validScheduler(s string) error {
	if !slices.Contains(KernelSchedulers, s) {
		return fmt.Errorf("scheduler %q: no such scheduler module", s)
	}
	return nil
}

// Available implements ipvs.Interface.
func (f *Fake) Available() bool { return !f.NoIPVS }

// ListServices implements ipvs.Interface.
func (f *Fake) ListServices() ([]*ipvs.VirtualServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.NoIPVS {
		return nil, errors.New("ipvstest: IPVS used while NoIPVS is set")
	}
	if err := f.injected("ListServices"); err != nil {
		return nil, err
	}
	out := make([]*ipvs.VirtualServer, 0, len(f.services))
	for k, s := range f.services {
		out = append(out, s.export(k))
	}
	// The kernel lists in hash order; so does the fake, roughly.
	return out, nil
}

func (s *service) export(k ipvs.ServiceKey) *ipvs.VirtualServer {
	vs := &ipvs.VirtualServer{ServiceKey: k, Scheduler: s.scheduler, Timeout: s.timeout}
	for _, d := range s.dests {
		c := *d
		vs.Destinations = append(vs.Destinations, &c)
	}
	return vs
}

// ListDestinations implements ipvs.Interface.
func (f *Fake) ListDestinations(k ipvs.ServiceKey) ([]*ipvs.RealServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("ListDestinations"); err != nil {
		return nil, err
	}
	s, ok := f.services[k]
	if !ok {
		return nil, notFound("virtual server %v", k)
	}
	return s.export(k).Destinations, nil
}

// AddService implements ipvs.Interface.
func (f *Fake) AddService(vs *ipvs.VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AddService", serviceArgs(vs)); err != nil {
		return err
	}
	if err := validKey(vs.ServiceKey); err != nil {
		return err
	}
	if err := validScheduler(vs.Scheduler); err != nil {
		return err
	}
	if _, ok := f.services[vs.ServiceKey]; ok {
		return exists("virtual server %v", vs.ServiceKey)
	}
	f.services[vs.ServiceKey] = &service{scheduler: vs.Scheduler, timeout: vs.Timeout, dests: map[netip.AddrPort]*ipvs.RealServer{}}
	return nil
}

func serviceArgs(vs *ipvs.VirtualServer) string {
	s := vs.ServiceKey.String() + " -s " + vs.Scheduler
	if vs.Timeout > 0 {
		s += " -p " + strconv.Itoa(int(vs.Timeout))
	}
	return s
}

// UpdateService implements ipvs.Interface.
func (f *Fake) UpdateService(vs *ipvs.VirtualServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("UpdateService", serviceArgs(vs)); err != nil {
		return err
	}
	s, ok := f.services[vs.ServiceKey]
	if !ok {
		return notFound("virtual server %v", vs.ServiceKey)
	}
	if err := validScheduler(vs.Scheduler); err != nil {
		return err
	}
	s.scheduler, s.timeout = vs.Scheduler, vs.Timeout
	return nil
}

// DeleteService implements ipvs.Interface.
func (f *Fake) DeleteService(k ipvs.ServiceKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteService", k.String()); err != nil {
		return err
	}
	if _, ok := f.services[k]; !ok {
		return notFound("virtual server %v", k)
	}
	delete(f.services, k)
	return nil
}

func destArgs(k ipvs.ServiceKey, rs *ipvs.RealServer) string {
	return fmt.Sprintf("%s -r %s -w %d", k, rs.AddrPort(), rs.Weight)
}

// AddDestination implements ipvs.Interface.
func (f *Fake) AddDestination(k ipvs.ServiceKey, rs *ipvs.RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AddDestination", destArgs(k, rs)); err != nil {
		return err
	}
	s, ok := f.services[k]
	if !ok {
		return notFound("virtual server %v", k)
	}
	if err := sameFamily(k, rs); err != nil {
		return err
	}
	if !rs.Address.IsValid() || rs.Address.Zone() != "" || rs.Port == 0 || rs.Weight < 0 {
		return fmt.Errorf("real server %s weight %d: invalid", rs.AddrPort(), rs.Weight)
	}
	if _, ok := s.dests[rs.AddrPort()]; ok {
		return exists("real server %s of %v", rs.AddrPort(), k)
	}
	if err := unicast(rs.Address); err != nil {
		return err
	}
	s.dests[rs.AddrPort()] = &ipvs.RealServer{Address: rs.Address, Port: rs.Port, Weight: rs.Weight}
	return nil
}

// sameFamily refuses a masquerading real server of another family than
// its virtual server, as the kernel does (only tunnelling may mix them).
// The kernel checks it before looking the real server up, for a new or
// an updated one, not for a deleted one.
func sameFamily(k ipvs.ServiceKey, rs *ipvs.RealServer) error {
	if k.Address.Is4() != rs.Address.Is4() {
		return fmt.Errorf("real server %s of %v: masquerading across address families: %w", rs.AddrPort(), k, syscall.EINVAL)
	}
	return nil
}

// unicast refuses a new real server the kernel refuses: one that is not
// a unicast address (IPv4-mapped ones are not, to the kernel). The kernel
// takes a link-local IPv6 address when it is local; the fake does not
// model link-local addresses.
func unicast(a netip.Addr) error {
	bad := a.IsUnspecified() || a.IsMulticast()
	if a.Is4() {
		b := a.As4()
		bad = bad || b[0] == 0 || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})
	} else {
		bad = bad || a.IsLinkLocalUnicast() || a.Is4In6()
	}
	if bad {
		return fmt.Errorf("real server %s: not a unicast address: %w", a, syscall.EINVAL)
	}
	return nil
}

// UpdateDestination implements ipvs.Interface.
func (f *Fake) UpdateDestination(k ipvs.ServiceKey, rs *ipvs.RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("UpdateDestination", destArgs(k, rs)); err != nil {
		return err
	}
	s, ok := f.services[k]
	if !ok {
		return notFound("virtual server %v", k)
	}
	if err := sameFamily(k, rs); err != nil {
		return err
	}
	d, ok := s.dests[rs.AddrPort()]
	if !ok {
		return notFound("real server %s of %v", rs.AddrPort(), k)
	}
	if rs.Weight < 0 {
		return fmt.Errorf("weight %d: invalid", rs.Weight)
	}
	d.Weight = rs.Weight
	return nil
}

// DeleteDestination implements ipvs.Interface.
func (f *Fake) DeleteDestination(k ipvs.ServiceKey, rs *ipvs.RealServer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteDestination", fmt.Sprintf("%s -r %s", k, rs.AddrPort())); err != nil {
		return err
	}
	s, ok := f.services[k]
	if !ok {
		return notFound("virtual server %v", k)
	}
	if _, ok := s.dests[rs.AddrPort()]; !ok {
		return notFound("real server %s of %v", rs.AddrPort(), k)
	}
	delete(s.dests, rs.AddrPort())
	return nil
}

// SetConnections sets the connection counts the kernel would list for a
// real server; false when there is no such real server.
func (f *Fake) SetConnections(k ipvs.ServiceKey, rs netip.AddrPort, active, inactive int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[k]
	if !ok {
		return false
	}
	d, ok := s.dests[rs]
	if !ok {
		return false
	}
	d.ActiveConns, d.InactiveConns = active, inactive
	return true
}

// AddLink creates a link of any kind ("veth", "dummy"), as another program
// would.
func (f *Fake) AddLink(name, kind string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[name]; !ok {
		f.links[name] = &link{kind: kind, addrs: map[netip.Addr]bool{}}
	}
}

// Link returns the kind of the link named name, or "" when there is none.
func (f *Fake) Link(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[name]; ok {
		return l.kind
	}
	return ""
}

// EnsureDummy implements ipvs.Interface.
func (f *Fake) EnsureDummy(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[name]; ok {
		return nil
	}
	if err := f.record("EnsureDummy", name); err != nil {
		return err
	}
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ ") {
		return fmt.Errorf("link name %q: invalid", name)
	}
	f.links[name] = &link{kind: "dummy", addrs: map[netip.Addr]bool{}}
	return nil
}

// DeleteLink implements ipvs.Interface.
func (f *Fake) DeleteLink(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteLink", name); err != nil {
		return err
	}
	delete(f.links, name)
	return nil
}

// ListAddresses implements ipvs.Interface.
func (f *Fake) ListAddresses(name string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("ListAddresses"); err != nil {
		return nil, err
	}
	l, ok := f.links[name]
	if !ok {
		return nil, notFound("link %q", name)
	}
	out := make([]netip.Addr, 0, len(l.addrs))
	for a := range l.addrs {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// AddAddress implements ipvs.Interface.
func (f *Fake) AddAddress(name string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AddAddress", a.String()+" "+name); err != nil {
		return err
	}
	l, ok := f.links[name]
	if !ok {
		return notFound("link %q", name)
	}
	if err := modelled(a); err != nil {
		return err
	}
	if a.IsLinkLocalUnicast() {
		return fmt.Errorf("address %s: link-local, which the real Kernel does not list: not modelled by the fake", a)
	}
	if l.addrs[a] {
		return exists("address %s on %s", a, name)
	}
	if a.Is6() && (a.IsUnspecified() || a.IsMulticast() || a.IsLoopback()) {
		// The kernel's errno, which IsNotFound takes for a missing link.
		return fmt.Errorf("address %s on %s: cannot be assigned: %w", a, name, syscall.EADDRNOTAVAIL)
	}
	l.addrs[a] = true
	return nil
}

// DeleteAddress implements ipvs.Interface.
func (f *Fake) DeleteAddress(name string, a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteAddress", a.String()+" "+name); err != nil {
		return err
	}
	l, ok := f.links[name]
	if !ok {
		return notFound("link %q", name)
	}
	if !l.addrs[a] {
		return notFound("address %s on %s", a, name)
	}
	delete(l.addrs, a)
	return nil
}

// Sysctl implements ipvs.Interface.
func (f *Fake) Sysctl(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("Sysctl"); err != nil {
		return "", err
	}
	v, ok := f.sysctls[name]
	if !ok {
		return "", fmt.Errorf("open /proc/sys/%s: %w", name, errors.New("no such file or directory"))
	}
	return v, nil
}

// SetSysctl implements ipvs.Interface.
func (f *Fake) SetSysctl(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("SetSysctl", name+"="+value); err != nil {
		return err
	}
	if _, ok := f.sysctls[name]; !ok {
		return fmt.Errorf("open /proc/sys/%s: %w", name, errors.New("no such file or directory"))
	}
	f.sysctls[name] = value
	return nil
}

// Sysctls returns a copy of the sysctls.
func (f *Fake) Sysctls() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]string, len(f.sysctls))
	for k, v := range f.sysctls {
		out[k] = v
	}
	return out
}
