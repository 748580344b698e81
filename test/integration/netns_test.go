//go:build integration

package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// run runs a command and fails the test with its output on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nsRun runs a command inside network namespace ns.
func nsRun(t testing.TB, ns string, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// addNS creates a network namespace that is deleted when the test ends.
func addNS(t testing.TB, name string) string {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	nsRun(t, name, "ip", "link", "set", "lo", "up")
	return name
}

// inNS runs fn on an OS thread switched into namespace ns. Sockets created
// by fn stay in ns after it returns.
func inNS(ns string, fn func() error) error {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine instead of
		// running other goroutines in the wrong namespace.
		return fmt.Errorf("restoring namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// startServer runs, inside namespace ns, a TCP and a UDP echo-style server
// on port that answer "<name> <source address>".
func startServer(t testing.TB, ns, name string, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := inNS(ns, func() error {
		var err error
		if ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("server %s: %v", name, err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", name, addr.(*net.UDPAddr).IP)), addr)
		}
	}()
}

// answer is what a server said: its name and the client address it saw.
type answer struct {
	Server, Source string
}

// dial connects from namespace ns to addr over proto ("tcp" or "udp") and
// returns the server's answer.
func dial(ns, proto, addr string, timeout time.Duration) (answer, error) {
	var c net.Conn
	err := inNS(ns, func() error {
		var err error
		c, err = net.DialTimeout(proto+"4", addr, timeout)
		return err
	})
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := c.Write([]byte("hi")); err != nil {
			return answer{}, err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return answer{}, err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return answer{}, fmt.Errorf("bad answer %q", line)
	}
	return answer{Server: f[0], Source: f[1]}, nil
}

// topology is the test's network: one node, pods routed to it point to
// point (like Calico, so replies always pass the node's conntrack), and an
// outside client on a separate link.
//
// Address plan:
//
//	node   192.168.50.1/24 (link to client), 10.244.1.1/32 on every pod veth
//	client 192.168.50.2 (outside the cluster)
//	pods   10.244.1.10 (srv1), 10.244.1.11 (srv2), 10.244.1.20 (cli, a pod client)
//	services 10.96.0.0/16, node ports 30000-32767
type topology struct {
	prefix string
	node   string
	client string
	pods   map[string]string // pod name -> namespace
}

func newTopology(t testing.TB) *topology {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("integration tests need root (they create network namespaces)")
	}
	tp := &topology{prefix: fmt.Sprintf("svcpi%d", os.Getpid()), pods: map[string]string{}}
	tp.node = addNS(t, tp.prefix+"-node")
	nsRun(t, tp.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	tp.client = addNS(t, tp.prefix+"-client")
	run(t, "ip", "link", "add", tp.prefix+"c0", "netns", tp.node, "type", "veth", "peer", "name", "eth0", "netns", tp.client)
	nsRun(t, tp.node, "ip", "addr", "add", "192.168.50.1/24", "dev", tp.prefix+"c0")
	nsRun(t, tp.node, "ip", "link", "set", tp.prefix+"c0", "up")
	// Like a real node, a default route: service IPs are routable, so
	// packets to a ClusterIP without endpoints reach the filter REJECT.
	nsRun(t, tp.node, "ip", "route", "add", "default", "via", "192.168.50.2")
	nsRun(t, tp.client, "ip", "addr", "add", "192.168.50.2/24", "dev", "eth0")
	nsRun(t, tp.client, "ip", "link", "set", "eth0", "up")
	nsRun(t, tp.client, "ip", "route", "add", "default", "via", "192.168.50.1")
	return tp
}

// addPod creates a pod namespace with address ip, routed from the node.
func (tp *topology) addPod(t testing.TB, name, ip string) string {
	t.Helper()
	ns := addNS(t, tp.prefix+"-"+name)
	host := tp.prefix + name
	run(t, "ip", "link", "add", host, "netns", tp.node, "type", "veth", "peer", "name", "eth0", "netns", ns)
	nsRun(t, tp.node, "ip", "addr", "add", "10.244.1.1/32", "dev", host)
	nsRun(t, tp.node, "ip", "link", "set", host, "up")
	nsRun(t, tp.node, "ip", "route", "add", ip+"/32", "dev", host)
	nsRun(t, ns, "ip", "addr", "add", ip+"/32", "dev", "eth0")
	nsRun(t, ns, "ip", "link", "set", "eth0", "up")
	nsRun(t, ns, "ip", "route", "add", "10.244.1.1", "dev", "eth0")
	nsRun(t, ns, "ip", "route", "add", "default", "via", "10.244.1.1")
	tp.pods[name] = ns
	return ns
}
