package ipvs

import (
	"errors"
	"net/netip"
	"syscall"
)

// Interface is the kernel boundary of IPVS mode: virtual servers over
// netlink, the dummy link and its addresses, ipsets and sysctls. It is the
// only code that touches the host. Methods are called from one goroutine at
// a time; on a real host they act on the network namespace of the calling
// thread when the implementation first needs it.
type Interface interface {
	// Available reports whether the kernel has IPVS loaded, without
	// loading it (the other IPVS methods load it): where it is not, no
	// virtual server can exist.
	Available() bool
	// ListServices returns every virtual server in the kernel with its
	// real servers (connection counts filled in), ours or not, of both
	// families. Firewall mark virtual servers are left out.
	ListServices() ([]*VirtualServer, error)
	// ListDestinations returns the real servers of one virtual server;
	// IsNotFound when it does not exist.
	ListDestinations(k ServiceKey) ([]*RealServer, error)
	// AddService creates a virtual server without real servers (its
	// Destinations are ignored); IsExist when it exists.
	AddService(vs *VirtualServer) error
	// UpdateService sets scheduler and persistence; IsNotFound when the
	// virtual server does not exist.
	UpdateService(vs *VirtualServer) error
	// DeleteService deletes a virtual server and its real servers;
	// IsNotFound when it does not exist.
	DeleteService(k ServiceKey) error
	// AddDestination adds a masquerading real server; IsNotFound when the
	// virtual server does not exist, IsExist when the real server does.
	AddDestination(k ServiceKey, rs *RealServer) error
	// UpdateDestination sets a real server's weight; IsNotFound when the
	// virtual server or the real server does not exist.
	UpdateDestination(k ServiceKey, rs *RealServer) error
	// DeleteDestination deletes a real server; IsNotFound when the virtual
	// server or the real server does not exist.
	DeleteDestination(k ServiceKey, rs *RealServer) error

	// EnsureDummy creates a dummy link named name unless a link of that
	// name exists (of whatever type), and leaves it down.
	EnsureDummy(name string) error
	// DeleteLink deletes the link named name; a missing link is not an
	// error.
	DeleteLink(name string) error
	// ListAddresses returns the addresses on link, IPv4 and IPv6 but
	// link-local ones; IsNotFound when the link does not exist.
	ListAddresses(link string) ([]netip.Addr, error)
	// AddAddress binds a/32, or a/128 without duplicate address
	// detection, to link; IsExist when it is bound already, IsNotFound
	// when the link does not exist.
	AddAddress(link string, a netip.Addr) error
	// DeleteAddress unbinds a from link; IsNotFound when it is not bound
	// or the link does not exist.
	DeleteAddress(link string, a netip.Addr) error

	// ListSets returns every ipset with its entries (as `ipset save`
	// prints them), ours or not.
	ListSets() ([]*Set, error)
	// RestoreSets feeds data to `ipset restore -exist`: "create", "add",
	// "del" and "destroy" lines. Adding an entry present, deleting one
	// absent and creating a set that exists with the same type are not
	// errors. Like ipset it is not atomic: lines before a failing one
	// stay applied.
	RestoreSets(data []byte) error

	// Sysctl reads /proc/sys/<name> ("net/ipv4/vs/conntrack"), trimmed.
	Sysctl(name string) (string, error)
	// SetSysctl writes value to /proc/sys/<name>.
	SetSysctl(name, value string) error
}

// Errors an Interface wraps so that callers can tell the common cases
// apart with errors.Is, IsNotFound and IsExist.
var (
	ErrNotFound = errors.New("not found")
	ErrExist    = errors.New("already exists")
)

// IsNotFound reports whether err says that the object acted on does not
// exist. It also recognises the errnos IPVS and rtnetlink use for that.
func IsNotFound(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ENODEV)
}

// IsExist reports whether err says that the object to create exists.
func IsExist(err error) bool { return errors.Is(err, ErrExist) || errors.Is(err, syscall.EEXIST) }
