//go:build vm

package vmtest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/ipvs"
)

// Address plan of every test (inside the VM, in namespaces the test
// creates):
//
//	node     192.168.50.1/24 on the link to the outside client;
//	         10.244.1.1/32 on every pod veth (pods routed point to point)
//	outside  192.168.50.2 (client outside the cluster)
//	pods     10.244.1.10 (srv1), 10.244.1.11 (srv2), 10.244.1.20 (cli)
//	services 10.96.0.0/16, node ports 30000-32767
//
// and IPv6 beside it in a dual-stack topology (newDualStackTopology; the
// prefixes are kind's defaults), every address added without duplicate
// address detection (nodad):
//
//	node     fd00:50::1/64 on the link to the outside client;
//	         fd00:10:244:1::1/128 on the veth of every pod with an IPv6
//	         address (pods routed point to point, as with IPv4)
//	outside  fd00:50::2
//	pods     fd00:10:244:1::10 (srv1), ::11 (srv2), ::20 (cli), in the
//	         cluster CIDR fd00:10:244::/56
//	services fd00:10:96::/112
const (
	nodeIP    = "192.168.50.1"
	outsideIP = "192.168.50.2"
	podGW     = "10.244.1.1"

	nodeIP6      = "fd00:50::1"
	outsideIP6   = "fd00:50::2"
	podGW6       = "fd00:10:244:1::1"
	srv1IP6      = "fd00:10:244:1::10"
	srv2IP6      = "fd00:10:244:1::11"
	cliIP6       = "fd00:10:244:1::20"
	clusterCIDR6 = "fd00:10:244::/56"
	serviceCIDR6 = "fd00:10:96::/112"
)

// newNS creates an anonymous network namespace with lo up; it is closed
// (and so destroyed, once nothing uses it) when the test ends.
func newNS(t testing.TB) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("restoring namespace: %v", err) // thread stays locked, and dies
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { ns.Close() })
	h := handle(t, ns)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	must(t, h.LinkSetUp(lo))
	return ns
}

// inNS runs fn on an OS thread switched into ns. Sockets and netlink
// handles created by fn stay in ns; commands fn runs start in ns.
func inNS(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("restoring namespace: %w", err) // thread stays locked and dies
	}
	runtime.UnlockOSThread()
	return ferr
}

func handle(t testing.TB, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns, syscall.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ipNet(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// nodad is ipNet for an address added without duplicate address detection
// (IFA_F_NODAD): usable at once, where DAD would keep an IPv6 address
// tentative (unusable) for a second or more.
func nodad(s string) *netlink.Addr {
	a := ipNet(s)
	a.Flags = unix.IFA_F_NODAD
	return a
}

// is6 reports whether ip (an address, without prefix length) is IPv6.
func is6(ip string) bool {
	a, err := netip.ParseAddr(ip)
	return err == nil && a.Is6() && !a.Is4In6()
}

// waitLocal waits until the kernel behind h delivers each of ips locally.
// A nodad IPv6 address is usable at once, but its local route is added by
// a kernel work item right after the address: a packet to it arriving in
// between would be routed away.
func waitLocal(t testing.TB, h *netlink.Handle, ips ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, ip := range ips {
		for {
			rs, err := h.RouteGet(net.ParseIP(ip))
			if err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not a local address after 5s: %+v, %v", ip, rs, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// sysctl writes a sysctl inside ns.
func sysctl(t testing.TB, ns netns.NsHandle, name, value string) {
	t.Helper()
	must(t, inNS(ns, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
	}))
}

// topology is one node with pods and an outside client.
type topology struct {
	node, outside netns.NsHandle
	pods          map[string]netns.NsHandle
	n             int
	ipv6          bool // dual-stack: the IPv6 plan too
}

// newTopology builds the IPv4 plan: node, outside client, no pods yet.
func newTopology(t testing.TB) *topology {
	t.Helper()
	return buildTopology(t, false)
}

// newDualStackTopology builds the IPv4 and the IPv6 plan: the node and the
// outside client have addresses and default routes of both families, and
// pods may have IPv6 addresses (addPod). In the node namespace IPv6
// forwarding is on (net.ipv6.conf.all.forwarding=1) and ICMPv6 errors are
// not rate-limited (net.ipv6.icmp.ratelimit=0: a REJECT answers every
// packet); in every namespace of the topology the links' own link-local
// addresses skip duplicate address detection too (accept_dad=0, set before
// the links exist), since the kernel sends neighbour solicitations for
// forwarded packets from the link-local address only.
func newDualStackTopology(t testing.TB) *topology {
	t.Helper()
	return buildTopology(t, true)
}

func buildTopology(t testing.TB, ipv6 bool) *topology {
	t.Helper()
	tp := &topology{node: newNS(t), outside: newNS(t), pods: map[string]netns.NsHandle{}, ipv6: ipv6}
	sysctl(t, tp.node, "net/ipv4/ip_forward", "1")
	if ipv6 {
		sysctl(t, tp.node, "net/ipv6/conf/all/forwarding", "1")
		sysctl(t, tp.node, "net/ipv6/icmp/ratelimit", "0")
		for _, ns := range []netns.NsHandle{tp.node, tp.outside} {
			noDAD(t, ns)
		}
	}
	hn, ho := handle(t, tp.node), handle(t, tp.outside)
	must(t, hn.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ext0"}, PeerName: "out0"}))
	peer, err := hn.LinkByName("out0")
	must(t, err)
	must(t, hn.LinkSetNsFd(peer, int(tp.outside)))
	ext, err := hn.LinkByName("ext0")
	must(t, err)
	must(t, hn.AddrAdd(ext, ipNet(nodeIP+"/24")))
	must(t, hn.LinkSetUp(ext))
	out, err := ho.LinkByName("out0")
	must(t, err)
	must(t, ho.AddrAdd(out, ipNet(outsideIP+"/24")))
	must(t, ho.LinkSetUp(out))
	must(t, ho.RouteAdd(&netlink.Route{Dst: ipNet("0.0.0.0/0").IPNet, Gw: net.ParseIP(nodeIP)}))
	// Like a real node: a default route, so service addresses without a
	// virtual server are routed away rather than unreachable.
	must(t, hn.RouteAdd(&netlink.Route{Dst: ipNet("0.0.0.0/0").IPNet, Gw: net.ParseIP(outsideIP)}))
	if ipv6 {
		// After the links are up: IPv6 refuses routes through a link
		// that is down.
		must(t, hn.AddrAdd(ext, nodad(nodeIP6+"/64")))
		must(t, ho.AddrAdd(out, nodad(outsideIP6+"/64")))
		must(t, ho.RouteAdd(&netlink.Route{Dst: ipNet("::/0").IPNet, Gw: net.ParseIP(nodeIP6)}))
		must(t, hn.RouteAdd(&netlink.Route{Dst: ipNet("::/0").IPNet, Gw: net.ParseIP(outsideIP6)}))
		waitLocal(t, hn, nodeIP6)
		waitLocal(t, ho, outsideIP6)
	}
	return tp
}

// noDAD turns off duplicate address detection for the links created in ns
// from now on (and for those moved into it).
func noDAD(t testing.TB, ns netns.NsHandle) {
	t.Helper()
	sysctl(t, ns, "net/ipv6/conf/all/accept_dad", "0")
	sysctl(t, ns, "net/ipv6/conf/default/accept_dad", "0")
}

// addPod creates a pod namespace with addresses ips (IPv4, IPv6 or both;
// IPv6 only in a dual-stack topology), routed from the node: a /32 or /128
// each, through podGW or podGW6 on the node's end of the pod's veth. A pod
// without an IPv4 address has no IPv4 route.
func (tp *topology) addPod(t testing.TB, name string, ips ...string) netns.NsHandle {
	t.Helper()
	var v4, v6 []string
	for _, ip := range ips {
		if is6(ip) {
			v6 = append(v6, ip)
		} else {
			v4 = append(v4, ip)
		}
	}
	switch {
	case len(ips) == 0:
		t.Fatalf("pod %s: no address", name)
	case len(v6) > 0 && !tp.ipv6:
		t.Fatalf("pod %s: IPv6 address %s in an IPv4-only topology (newDualStackTopology)", name, v6[0])
	}
	pod := newNS(t)
	if len(v6) > 0 {
		noDAD(t, pod) // before the pod's end of the veth moves in
	}
	tp.n++
	hostName, peerName := fmt.Sprintf("veth%d", tp.n), fmt.Sprintf("peer%d", tp.n)
	hn, hp := handle(t, tp.node), handle(t, pod)
	must(t, hn.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: peerName}))
	peer, err := hn.LinkByName(peerName)
	must(t, err)
	must(t, hn.LinkSetNsFd(peer, int(pod)))
	host, err := hn.LinkByName(hostName)
	must(t, err)
	must(t, hn.AddrAdd(host, ipNet(podGW+"/32")))
	must(t, hn.LinkSetUp(host))
	for _, ip := range v4 {
		must(t, hn.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(ip + "/32").IPNet, Scope: netlink.SCOPE_LINK}))
	}
	eth, err := hp.LinkByName(peerName)
	must(t, err)
	for _, ip := range v4 {
		must(t, hp.AddrAdd(eth, ipNet(ip+"/32")))
	}
	must(t, hp.LinkSetUp(eth))
	if len(v4) > 0 {
		must(t, hp.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(podGW + "/32").IPNet, Scope: netlink.SCOPE_LINK}))
		must(t, hp.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet("0.0.0.0/0").IPNet, Gw: net.ParseIP(podGW)}))
	}
	if len(v6) > 0 {
		// After both ends are up: IPv6 refuses routes through a link
		// that is down.
		must(t, hn.AddrAdd(host, nodad(podGW6+"/128")))
		for _, ip := range v6 {
			must(t, hn.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(ip + "/128").IPNet}))
			must(t, hp.AddrAdd(eth, nodad(ip+"/128")))
		}
		must(t, hp.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(podGW6 + "/128").IPNet}))
		must(t, hp.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet("::/0").IPNet, Gw: net.ParseIP(podGW6)}))
		waitLocal(t, hn, podGW6)
		waitLocal(t, hp, v6...)
	}
	tp.pods[name] = pod
	return pod
}

// server is a TCP and UDP server inside a pod that answers
// "<name> <client address>\n"; TCP connections stay open until the client
// closes them, answering every line it sends.
type server struct {
	name string
	ln   net.Listener
	pc   net.PacketConn
	mu   sync.Mutex
	open int
}

func startServer(t testing.TB, ns netns.NsHandle, name string, port int) *server {
	t.Helper()
	return listenServer(t, ns, name, port, "4")
}

// startServer6 is startServer on IPv6: TCP and UDP on port of every IPv6
// address of ns (IPv6 only: an IPv4 server, startServer, may share the
// port). It answers with the client's IPv6 address.
func startServer6(t testing.TB, ns netns.NsHandle, name string, port int) *server {
	t.Helper()
	return listenServer(t, ns, name, port, "6")
}

// listenServer starts the server of family "4" or "6".
func listenServer(t testing.TB, ns netns.NsHandle, name string, port int, family string) *server {
	t.Helper()
	s := &server{name: name}
	must(t, inNS(ns, func() error {
		var err error
		if s.ln, err = net.Listen("tcp"+family, fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		s.pc, err = net.ListenPacket("udp"+family, fmt.Sprintf(":%d", port))
		return err
	}))
	t.Cleanup(func() { s.ln.Close(); s.pc.Close() })
	go func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, addr, err := s.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", name, addr.(*net.UDPAddr).IP)), addr)
		}
	}()
	return s
}

func (s *server) serve(c net.Conn) {
	defer c.Close()
	s.mu.Lock()
	s.open++
	s.mu.Unlock()
	defer func() { s.mu.Lock(); s.open--; s.mu.Unlock() }()
	src := c.RemoteAddr().(*net.TCPAddr).IP
	fmt.Fprintf(c, "%s %s\n", s.name, src)
	r := bufio.NewReader(c)
	for {
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		fmt.Fprintf(c, "%s %s\n", s.name, src)
	}
}

// answer is what a server said: its name and the client address it saw.
type answer struct{ Server, Source string }

func parseAnswer(line string) (answer, error) {
	f := strings.Fields(line)
	if len(f) != 2 {
		return answer{}, fmt.Errorf("bad answer %q", line)
	}
	return answer{Server: f[0], Source: f[1]}, nil
}

// dial connects from ns to addr over proto ("tcp" or "udp"), reads one
// answer and closes. addr is "host:port" with an IPv4 address or
// "[host]:port" with an IPv6 one (addr builds either); its family picks
// the socket's.
func dial(ns netns.NsHandle, proto, addr string) (answer, error) {
	c, err := connect(ns, proto, addr)
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	return c.ask()
}

// conn is a client connection that can ask several times.
type conn struct {
	net.Conn
	proto string
	r     *bufio.Reader
	first bool
}

func connect(ns netns.NsHandle, proto, addr string) (*conn, error) {
	var c net.Conn
	err := inNS(ns, func() error {
		var err error
		c, err = net.DialTimeout(network(proto, addr), addr, 2*time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, proto: proto, r: bufio.NewReader(c), first: true}, nil
}

// ask reads an answer: the greeting of a new TCP connection, otherwise
// the reply to a line sent.
func (c *conn) ask() (answer, error) {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if c.proto == "udp" || !c.first {
		if _, err := c.Write([]byte("hi\n")); err != nil {
			return answer{}, err
		}
	}
	c.first = false
	line, err := c.r.ReadString('\n')
	if err != nil {
		return answer{}, err
	}
	return parseAnswer(line)
}

// addr joins ip and port: "10.96.1.10:80", "[fd00:10:96::10]:80".
func addr(ip string, port int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port)).String()
}

// network is proto ("tcp", "udp") of the family of addr's address: proto+"6"
// for an IPv6 address, proto+"4" otherwise.
func network(proto, addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && !ap.Addr().Is4In6() {
		return proto + "6"
	}
	return proto + "4"
}

type nsHandle = netns.NsHandle

type ipvsRealServer = ipvs.RealServer

// isTimeout reports whether err is a dial or read timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
