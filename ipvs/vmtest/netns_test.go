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
const (
	nodeIP    = "192.168.50.1"
	outsideIP = "192.168.50.2"
	podGW     = "10.244.1.1"
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
}

func newTopology(t testing.TB) *topology {
	t.Helper()
	tp := &topology{node: newNS(t), outside: newNS(t), pods: map[string]netns.NsHandle{}}
	sysctl(t, tp.node, "net/ipv4/ip_forward", "1")
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
	return tp
}

// addPod creates a pod namespace with address ip, routed from the node.
func (tp *topology) addPod(t testing.TB, name, ip string) netns.NsHandle {
	t.Helper()
	pod := newNS(t)
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
	must(t, hn.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipNet(ip + "/32").IPNet, Scope: netlink.SCOPE_LINK}))
	eth, err := hp.LinkByName(peerName)
	must(t, err)
	must(t, hp.AddrAdd(eth, ipNet(ip+"/32")))
	must(t, hp.LinkSetUp(eth))
	must(t, hp.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(podGW + "/32").IPNet, Scope: netlink.SCOPE_LINK}))
	must(t, hp.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet("0.0.0.0/0").IPNet, Gw: net.ParseIP(podGW)}))
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
	s := &server{name: name}
	must(t, inNS(ns, func() error {
		var err error
		if s.ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		s.pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
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
// answer and closes.
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
		c, err = net.DialTimeout(proto+"4", addr, 2*time.Second)
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

func addr(ip string, port int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port)).String()
}

type nsHandle = netns.NsHandle

type ipvsRealServer = ipvs.RealServer

// isTimeout reports whether err is a dial or read timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
