//go:build integration

package integration

// Dual-stack: the real svcproxy binary (and the --dry-run output of
// examples/dual-stack.yaml) programs IPv4 through iptables-restore and
// IPv6 through ip6tables-restore in a node namespace, and real IPv4 and
// IPv6 connections are checked.
//
// Address plan, examples/dual-stack.yaml's (see its header), on top of
// newTopology's:
//
//	node     192.168.50.1/24, 2001:db8:50::1/64 (link to client)
//	         192.168.51.1/24, 2001:db8:51::1/64 (link to client2)
//	         10.244.1.1/32 and fe80::1/64 on every pod veth
//	client   192.168.50.2, 2001:db8:50::2: inside lb's source ranges of
//	         both families and inside lb6's IPv6 one
//	client2  192.168.51.2, 2001:db8:51::2: outside every range
//	pods     srv1 10.244.1.10 fd00:10:244:1::10, srv2 10.244.1.11
//	         fd00:10:244:1::11, cli 10.244.1.20 fd00:10:244:1::20
//	services 10.96.10.0/24, fd00:10:96::/112; LB 203.0.113.10-11,
//	         2001:db8:ffff::10-11; node ports 30080 (np), 30081 (local,
//	         ETP Local), 30083 (empty), 30090 (lb), 30091 (lb6)

import (
	"bufio"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/proxy/source"
)

const (
	dualStackExample = "../../examples/dual-stack.yaml"
	dualStackCIDRs   = "10.244.0.0/16,fd00:10:244::/56"
)

// dsTopology is newTopology with IPv6 everywhere and a second outside
// client.
type dsTopology struct {
	*topology
	client2 string
}

func newDualStackTopology(t *testing.T) *dsTopology {
	t.Helper()
	tp := &dsTopology{topology: newTopology(t)}
	node := tp.node
	// A router forwards IPv6; REJECT's ICMP errors must not be rate
	// limited (ICMPv6 shares the namespace-wide limiter with ICMP).
	nsRun(t, node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.icmp.ratelimit=0",
		"net.ipv4.icmp_ratelimit=0", "net.ipv4.icmp_msgs_per_sec=1000000", "net.ipv4.icmp_msgs_burst=1000000")
	c0 := tp.prefix + "c0"
	nsRun(t, node, "ip", "-6", "addr", "add", "2001:db8:50::1/64", "dev", c0, "nodad")
	nsRun(t, node, "ip", "-6", "route", "add", "default", "via", "2001:db8:50::2")
	nsRun(t, tp.client, "ip", "-6", "addr", "add", "2001:db8:50::2/64", "dev", "eth0", "nodad")
	// Link-local addresses usable at once: node ports must not answer on
	// the node's.
	nsRun(t, node, "ip", "-6", "addr", "add", "fe80::50:1/64", "dev", c0, "nodad")
	nsRun(t, tp.client, "ip", "-6", "addr", "add", "fe80::50:2/64", "dev", "eth0", "nodad")
	nsRun(t, tp.client, "ip", "-6", "route", "add", "default", "via", "2001:db8:50::1")

	tp.client2 = addNS(t, tp.prefix+"-client2")
	c2 := tp.prefix + "c2"
	run(t, "ip", "link", "add", c2, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", tp.client2)
	nsRun(t, node, "ip", "addr", "add", "192.168.51.1/24", "dev", c2)
	nsRun(t, node, "ip", "-6", "addr", "add", "2001:db8:51::1/64", "dev", c2, "nodad")
	nsRun(t, node, "ip", "link", "set", c2, "up")
	nsRun(t, tp.client2, "ip", "addr", "add", "192.168.51.2/24", "dev", "eth0")
	nsRun(t, tp.client2, "ip", "-6", "addr", "add", "2001:db8:51::2/64", "dev", "eth0", "nodad")
	nsRun(t, tp.client2, "ip", "link", "set", "eth0", "up")
	nsRun(t, tp.client2, "ip", "route", "add", "default", "via", "192.168.51.1")
	nsRun(t, tp.client2, "ip", "-6", "route", "add", "default", "via", "2001:db8:51::1")
	return tp
}

// addPod46 creates a pod with an IPv4 and an IPv6 address, routed from the
// node; the pod's IPv6 gateway is fe80::1 on its veth.
func (tp *dsTopology) addPod46(t *testing.T, name, ip4, ip6 string) string {
	t.Helper()
	ns := tp.addPod(t, name, ip4)
	host := tp.prefix + name
	nsRun(t, tp.node, "ip", "-6", "addr", "add", "fe80::1/64", "dev", host, "nodad")
	nsRun(t, tp.node, "ip", "-6", "route", "add", ip6+"/128", "dev", host)
	nsRun(t, ns, "ip", "-6", "addr", "add", ip6+"/128", "dev", "eth0", "nodad")
	nsRun(t, ns, "ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
	return ns
}

// dsPods creates srv1, srv2 and cli with the example's addresses; srv1
// and srv2 serve TCP and UDP on port 8080 over both families.
func (tp *dsTopology) dsPods(t *testing.T) (srv1, srv2, cli string) {
	t.Helper()
	srv1 = tp.addPod46(t, "srv1", "10.244.1.10", "fd00:10:244:1::10")
	srv2 = tp.addPod46(t, "srv2", "10.244.1.11", "fd00:10:244:1::11")
	cli = tp.addPod46(t, "cli", "10.244.1.20", "fd00:10:244:1::20")
	for ns, name := range map[string]string{srv1: "srv1", srv2: "srv2"} {
		startServer(t, ns, name, 8080)
		startServer6(t, ns, name, 8080)
	}
	return srv1, srv2, cli
}

// startServer6 is startServer over IPv6: TCP and UDP servers on [::]:port
// (IPv6 only) that answer "<name> <source address>".
func startServer6(t testing.TB, ns, name string, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := inNS(ns, func() error {
		var err error
		if ln, err = net.Listen("tcp6", fmt.Sprintf("[::]:%d", port)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp6", fmt.Sprintf("[::]:%d", port))
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

// dialNet is dial with an explicit network: tcp4, udp4, tcp6 or udp6.
func dialNet(ns, network, addr string, timeout time.Duration) (answer, error) {
	var c net.Conn
	err := inNS(ns, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if strings.HasPrefix(network, "udp") {
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

// serversNet is servers over an explicit network.
func serversNet(ns, network, addr string, n int) (map[string]int, map[string]bool, error) {
	hits, sources := map[string]int{}, map[string]bool{}
	for i := 0; i < n; i++ {
		a, err := dialNet(ns, network, addr, 2*time.Second)
		if err != nil {
			return hits, sources, fmt.Errorf("connection %d to %s/%s: %w", i, network, addr, err)
		}
		hits[a.Server]++
		sources[a.Source] = true
	}
	return hits, sources, nil
}

// families are the two halves of every dual-stack check.
var families = []struct {
	name     string
	tcp, udp string
	// addresses: pod client, outside client, node (on the client link)
	cli, client, node string
}{
	{"IPv4", "tcp4", "udp4", "10.244.1.20", "192.168.50.2", "192.168.50.1"},
	{"IPv6", "tcp6", "udp6", "fd00:10:244:1::20", "2001:db8:50::2", "2001:db8:50::1"},
}

// hp joins an address and a port.
func hp(addr string, port int) string { return net.JoinHostPort(addr, fmt.Sprint(port)) }

// refusedUDP sends one datagram from ns to addr and returns how long the
// ICMP error took to arrive as ECONNREFUSED, or an error.
func refusedUDP(ns, network, addr string) (time.Duration, error) {
	start := time.Now()
	_, err := dialNet(ns, network, addr, 2*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return 0, fmt.Errorf("%s %s: got %v, want connection refused", network, addr, err)
	}
	return time.Since(start), nil
}

// dropped connects over TCP from ns to addr and expects silence: a
// timeout, not an answer, a refusal or an unreachable.
func dropped(ns, network, addr string) error {
	a, err := dialNet(ns, network, addr, 1500*time.Millisecond)
	if err == nil {
		return fmt.Errorf("%s %s: answered by %s (source %s), want it dropped", network, addr, a.Server, a.Source)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		return fmt.Errorf("%s %s: %v, want a timeout (dropped)", network, addr, err)
	}
	return nil
}

// checkDualStackExample checks examples/dual-stack.yaml's services, as
// programmed in tp's node, with real connections over both families.
func checkDualStackExample(t *testing.T, tp *dsTopology, srv1, cli string) {
	web := map[string]string{"IPv4": "10.96.10.10", "IPv6": "fd00:10:96::a"}
	t.Run("ClusterIP TCP and UDP from a pod reach the family's endpoints, no masquerade", func(t *testing.T) {
		for _, f := range families {
			for _, network := range []string{f.tcp, f.udp} {
				hits, sources, err := serversNet(cli, network, hp(web[f.name], 80), 30)
				if err != nil {
					t.Fatal(err)
				}
				if hits["srv1"] == 0 || hits["srv2"] == 0 || len(hits) != 2 {
					t.Errorf("%s: endpoints reached %v, want srv1 and srv2", network, hits)
				}
				if len(sources) != 1 || !sources[f.cli] {
					t.Errorf("%s: servers saw %v, want only the pod %s", network, sources, f.cli)
				}
			}
		}
	})
	t.Run("IPv6-only Service reaches its one IPv6 endpoint", func(t *testing.T) {
		for _, network := range []string{"tcp6", "udp6"} {
			hits, sources, err := serversNet(cli, network, "[fd00:10:96::14]:80", 10)
			if err != nil {
				t.Fatal(err)
			}
			if hits["srv2"] != 10 || !sources["fd00:10:244:1::20"] {
				t.Errorf("%s: %v from %v, want srv2 every time from the pod", network, hits, sources)
			}
		}
	})
	t.Run("the node itself reaches a ClusterIP of each family", func(t *testing.T) {
		for _, f := range families {
			if _, err := dialNet(tp.node, f.tcp, hp(web[f.name], 80), 2*time.Second); err != nil {
				t.Errorf("%s: %v", f.name, err)
			}
		}
	})
	t.Run("NodePort from outside is masqueraded (ETP Cluster), both cluster IPs of an IPv6-primary Service work", func(t *testing.T) {
		for _, f := range families {
			for _, network := range []string{f.tcp, f.udp} {
				hits, sources, err := serversNet(tp.client, network, hp(f.node, 30080), 30)
				if err != nil {
					t.Fatal(err)
				}
				if hits["srv1"] == 0 || hits["srv2"] == 0 {
					t.Errorf("%s: endpoints reached %v, want both", network, hits)
				}
				if sources[f.client] {
					t.Errorf("%s: servers saw the client address %v; want it masqueraded", network, sources)
				}
			}
		}
		for _, addr := range []string{"[fd00:10:96::1e]:80", "10.96.10.30:80"} {
			if _, _, err := serversNet(cli, "tcp", addr, 5); err != nil {
				t.Errorf("np's cluster IP: %v", err)
			}
		}
	})
	t.Run("externalIPs of each family: from outside masqueraded, from a pod too (ETP Cluster)", func(t *testing.T) {
		ext := map[string]string{"IPv4": "198.51.100.30", "IPv6": "2001:db8:eeee::30"}
		for _, f := range families {
			for _, network := range []string{f.tcp, f.udp} {
				for _, from := range []struct{ ns, src string }{{tp.client, f.client}, {cli, f.cli}} {
					hits, sources, err := serversNet(from.ns, network, hp(ext[f.name], 80), 20)
					if err != nil {
						t.Fatal(err)
					}
					if hits["srv1"] == 0 || hits["srv2"] == 0 {
						t.Errorf("%s from %s: endpoints reached %v, want both", network, from.src, hits)
					}
					if sources[from.src] {
						t.Errorf("%s from %s: servers saw %v; want it masqueraded", network, from.src, sources)
					}
				}
			}
		}
	})
	t.Run("the node itself reaches a NodePort on its own address of each family", func(t *testing.T) {
		for _, f := range families {
			for _, network := range []string{f.tcp, f.udp} {
				if _, _, err := serversNet(tp.node, network, hp(f.node, 30080), 5); err != nil {
					t.Error(err)
				}
			}
		}
	})
	t.Run("no node port on the node's IPv6 link-local address", func(t *testing.T) {
		// Not DNATed: nothing listens there on the node, so refused.
		if a, err := dialNet(tp.client, "tcp6", "[fe80::50:1%eth0]:30080", 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("[fe80::50:1]:30080: %v %v, want connection refused (no node port on link-local)", a, err)
		}
	})
	t.Run("NodePort and LB IP with ETP Local keep the client address, local endpoint only", func(t *testing.T) {
		lbLocal := map[string]string{"IPv4": "203.0.113.12", "IPv6": "2001:db8:ffff::12"}
		for _, f := range families {
			for _, target := range []struct{ network, addr string }{
				{f.tcp, hp(f.node, 30081)}, {f.udp, hp(f.node, 30081)}, {f.tcp, hp(lbLocal[f.name], 80)}, {f.udp, hp(lbLocal[f.name], 80)},
			} {
				network := target.network
				hits, sources, err := serversNet(tp.client, network, target.addr, 20)
				if err != nil {
					t.Fatal(err)
				}
				if hits["srv1"] != 20 {
					t.Errorf("%s: endpoints reached %v, want only srv1 (the other one is on node2)", network, hits)
				}
				if len(sources) != 1 || !sources[f.client] {
					t.Errorf("%s: servers saw %v, want the client's own %s", network, sources, f.client)
				}
			}
		}
	})
	t.Run("no endpoints: REJECT", func(t *testing.T) {
		empty := map[string]string{"IPv4": "10.96.10.80", "IPv6": "fd00:10:96::50"}
		for _, f := range families {
			for _, target := range []struct{ ns, addr string }{{cli, hp(empty[f.name], 80)}, {tp.client, hp(f.node, 30083)}} {
				udpTook, err := refusedUDP(target.ns, f.udp, target.addr)
				if err != nil {
					t.Error(err)
					continue
				}
				if udpTook > 500*time.Millisecond {
					t.Errorf("%s %s: refused after %v, want at once", f.udp, target.addr, udpTook)
				}
				// TCP: a REJECTed IPv4 SYN is refused at once; an IPv6
				// one only at the SYN retransmit (about 1 s).
				start := time.Now()
				_, err = dialNet(target.ns, f.tcp, target.addr, 3*time.Second)
				tcpTook := time.Since(start)
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("%s %s: got %v, want connection refused", f.tcp, target.addr, err)
				} else if f.name == "IPv4" && tcpTook > 500*time.Millisecond {
					t.Errorf("%s %s: refused after %v, want at once", f.tcp, target.addr, tcpTook)
				}
				t.Logf("%s %s: UDP refused after %v, TCP after %v", f.name, target.addr, udpTook, tcpTook)
			}
		}
	})
	t.Run("ClientIP affinity sticks", func(t *testing.T) {
		sticky := map[string]string{"IPv4": "10.96.10.60", "IPv6": "fd00:10:96::3c"}
		for _, f := range families {
			hits, _, err := serversNet(cli, f.tcp, hp(sticky[f.name], 80), 20)
			if err != nil {
				t.Fatal(err)
			}
			if len(hits) != 1 {
				t.Errorf("%s: reached %v, want one endpoint every time", f.name, hits)
			}
		}
	})
	t.Run("loadBalancerSourceRanges per family; an IPv6-only range list drops every IPv4 source", func(t *testing.T) {
		type c struct {
			ns, network, addr string
			open              bool
		}
		var wg sync.WaitGroup
		for _, tc := range []c{
			{tp.client, "tcp4", "203.0.113.10:80", true},
			{tp.client2, "tcp4", "203.0.113.10:80", false},
			{tp.client, "tcp6", "[2001:db8:ffff::10]:80", true},
			{tp.client2, "tcp6", "[2001:db8:ffff::10]:80", false},
			{tp.client, "tcp4", "203.0.113.11:80", false}, // lb6: no IPv4 range
			{tp.client2, "tcp4", "203.0.113.11:80", false},
			{cli, "tcp4", "203.0.113.11:80", false},
			{tp.client, "tcp6", "[2001:db8:ffff::11]:80", true},
			{tp.client2, "tcp6", "[2001:db8:ffff::11]:80", false},
			// Source ranges do not apply to node ports.
			{tp.client2, "tcp4", "192.168.51.1:30091", true},
			{tp.client2, "tcp6", "[2001:db8:51::1]:30091", true},
		} {
			// At once: each drop takes its timeout.
			wg.Add(1)
			go func() {
				defer wg.Done()
				who := map[string]string{tp.client: "client", tp.client2: "client2", cli: "pod cli"}[tc.ns]
				if tc.open {
					if _, _, err := serversNet(tc.ns, tc.network, tc.addr, 5); err != nil {
						t.Errorf("%s: %v, want it allowed", who, err)
					}
				} else if err := dropped(tc.ns, tc.network, tc.addr); err != nil {
					t.Errorf("%s: %v", who, err)
				}
			}()
		}
		wg.Wait()
	})
	t.Run("hairpin: a pod reaches itself through its service", func(t *testing.T) {
		for _, f := range families {
			hits, _, err := serversNet(srv1, f.tcp, hp(web[f.name], 80), 20)
			if err != nil {
				t.Fatal(err)
			}
			if hits["srv1"] == 0 {
				t.Errorf("%s: srv1 never reached itself: %v", f.name, hits)
			}
		}
	})
}

// pods6 are the pods' IPv6 addresses.
var pods6 = map[string]string{"srv1": "fd00:10:244:1::10", "srv2": "fd00:10:244:1::11"}

// dualStackState writes examples/dual-stack.yaml's Services and
// EndpointSlices to path as a kubectl-shaped List, without the IPv6
// endpoints of the pods without[service] lists.
func dualStackState(t *testing.T, path string, without map[string][]string) {
	t.Helper()
	writeExampleState(t, path, func(st *source.State) {
		for _, s := range st.EndpointSlices {
			gone := without[s.Labels[discovery.LabelServiceName]]
			if gone == nil || s.AddressType != discovery.AddressTypeIPv6 {
				continue
			}
			var keep []discovery.Endpoint
			for _, e := range s.Endpoints {
				if !slices.ContainsFunc(gone, func(pod string) bool { return slices.Contains(e.Addresses, pods6[pod]) }) {
					keep = append(keep, e)
				}
			}
			if len(keep) != len(s.Endpoints)-len(gone) {
				t.Fatalf("%s: removing %v left %d of %d endpoints", s.Name, gone, len(keep), len(s.Endpoints))
			}
			s.Endpoints = keep
		}
	})
}

// ipv4OnlyState writes examples/dual-stack.yaml as the cluster was before
// it became dual-stack: every Service single-stack IPv4 (the IPv6-only one
// absent), no IPv6 slice, no IPv6 load-balancer address.
func ipv4OnlyState(t *testing.T, path string) {
	t.Helper()
	writeExampleState(t, path, func(st *source.State) {
		var svcs []*v1.Service
		for _, s := range st.Services {
			var ips []string
			for _, ip := range s.Spec.ClusterIPs {
				if !strings.Contains(ip, ":") {
					ips = append(ips, ip)
				}
			}
			if len(ips) == 0 {
				continue
			}
			s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips
			s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol}
			s.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
			var ranges []string
			for _, r := range s.Spec.LoadBalancerSourceRanges {
				if !strings.Contains(r, ":") {
					ranges = append(ranges, r)
				}
			}
			s.Spec.LoadBalancerSourceRanges = ranges
			var ing []v1.LoadBalancerIngress
			for _, i := range s.Status.LoadBalancer.Ingress {
				if !strings.Contains(i.IP, ":") {
					ing = append(ing, i)
				}
			}
			s.Status.LoadBalancer.Ingress = ing
			svcs = append(svcs, s)
		}
		st.Services = svcs
		var slices4 []*discovery.EndpointSlice
		for _, s := range st.EndpointSlices {
			if s.AddressType == discovery.AddressTypeIPv4 {
				slices4 = append(slices4, s)
			}
		}
		st.EndpointSlices = slices4
	})
}

// writeExampleState writes examples/dual-stack.yaml's Services and
// EndpointSlices, changed by mod, to path as a kubectl-shaped List.
func writeExampleState(t *testing.T, path string, mod func(*source.State)) {
	t.Helper()
	st, err := source.LoadFile(dualStackExample)
	if err != nil {
		t.Fatal(err)
	}
	mod(st)
	var items []any
	for _, s := range st.Services {
		s.APIVersion, s.Kind = "v1", "Service"
		items = append(items, s)
	}
	for _, s := range st.EndpointSlices {
		s.APIVersion, s.Kind = "discovery.k8s.io/v1", "EndpointSlice"
		items = append(items, s)
	}
	b, err := yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items, "metadata": map[string]any{"resourceVersion": ""}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// startDualStackProxy runs svcproxy in the node namespace with the
// cluster CIDRs of both families, and args.
func startDualStackProxy(t *testing.T, tp *dsTopology, state string, args ...string) *exec.Cmd {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), "svcproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", tp.node, svcproxyBin, "--state", state,
		"--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs,
		"--min-sync-period", "100ms", "--state-poll-interval", "100ms", "-v", "2"}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(log.Name())
			t.Logf("svcproxy log:\n%s", out)
		}
	})
	return cmd
}

// pinnedUDP opens UDP sockets from ns to addr until one is answered by
// want, and returns it: its conntrack entry pins it to want.
func pinnedUDP(t *testing.T, ns, network, addr, want string) net.Conn {
	t.Helper()
	for range 40 {
		var c net.Conn
		if err := inNS(ns, func() error {
			var err error
			c, err = net.Dial(network, addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if got, err := ask(c); err == nil && got == want {
			t.Cleanup(func() { c.Close() })
			return c
		}
		c.Close()
	}
	t.Fatalf("%s %s: no socket answered by %s in 40 tries", network, addr, want)
	return nil
}

// TestDualStackProxy runs the svcproxy binary on a dual-stack --state file
// (examples/dual-stack.yaml) and checks real IPv4 and IPv6 connections,
// then a partial sync that changes only web's IPv6 endpoints: new IPv6
// connections follow it, a long-lived IPv6 UDP socket on the removed
// endpoint moves (conntrack cleanup), the IPv4 side is untouched.
func TestDualStackProxy(t *testing.T) {
	tp := newDualStackTopology(t)
	srv1, _, cli := tp.dsPods(t)
	state := filepath.Join(t.TempDir(), "state.yaml")
	dualStackState(t, state, nil)
	proxy := startDualStackProxy(t, tp, state)
	eventually(t, "first sync, both families", 10*time.Second, func() error {
		if _, err := dialNet(cli, "tcp4", "10.96.10.10:80", time.Second); err != nil {
			return err
		}
		_, err := dialNet(cli, "tcp6", "[fd00:10:96::a]:80", time.Second)
		return err
	})
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		if out := nsRun(t, tp.node, cmd, "-t", "nat"); !strings.Contains(out, "-A PREROUTING -m comment --comment svcproxy-services -j SVCP-SERVICES") {
			t.Errorf("%s: no jump to SVCP-SERVICES:\n%s", cmd, out)
		}
	}

	checkDualStackExample(t, tp, srv1, cli)

	t.Run("health-check node port of the ETP Local LoadBalancer answers on each family", func(t *testing.T) {
		for _, f := range families {
			code, body, err := httpGet(tp.client, "http://"+hp(f.node, 30082)+"/")
			if err != nil || code != 200 || !strings.Contains(body, `"localEndpoints": 1`) {
				t.Errorf("%s: GET http://%s/: %d %q %v, want 200 with one local endpoint", f.name, hp(f.node, 30082), code, body, err)
			}
		}
	})
	t.Run("metrics per IP family", func(t *testing.T) {
		// The rule counts are set once the first sync returned, after
		// the traffic it enabled was checked: wait for them.
		eventually(t, "rule counts of both families", 10*time.Second, func() error {
			_, body, err := httpGet(tp.node, "http://127.0.0.1:10249/metrics")
			if err != nil {
				return err
			}
			for _, m := range []string{`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}`,
				`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv6",table="nat"}`} {
				if !strings.Contains(body, m) {
					return fmt.Errorf("/metrics lacks %s", m)
				}
			}
			return nil
		})
	})

	t.Run("partial sync of IPv6 endpoints; conntrack cleanup of an IPv6 UDP flow; IPv4 untouched", func(t *testing.T) {
		long6 := pinnedUDP(t, cli, "udp6", "[fd00:10:96::a]:80", "srv1")
		longNP := pinnedUDP(t, tp.client, "udp6", "[2001:db8:50::1]:30080", "srv1")
		long4 := pinnedUDP(t, cli, "udp4", "10.96.10.10:80", "srv1")
		full := metricValue(t, tp.topology, "kubeproxy_sync_full_proxy_rules_duration_seconds_count")
		partial := metricValue(t, tp.topology, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count")

		dualStackState(t, state, map[string][]string{"web": {"srv1"}, "np": {"srv1"}})
		eventually(t, "new IPv6 connections reach srv2 only", 5*time.Second, func() error {
			for _, network := range []string{"tcp6", "udp6"} {
				hits, _, err := serversNet(cli, network, "[fd00:10:96::a]:80", 20)
				if err != nil {
					return err
				}
				if hits["srv1"] != 0 {
					return fmt.Errorf("%s: srv1 still reached: %v", network, hits)
				}
			}
			return nil
		})
		for name, c := range map[string]net.Conn{"to the ClusterIP": long6, "from outside to the node port": longNP} {
			// srv1 still runs: without the cleanup it would keep answering.
			// (The cleanup follows the rules: allow for the moment between.)
			eventually(t, "the long-lived IPv6 socket "+name+" moves to srv2", 2*time.Second, func() error {
				got, err := ask(c)
				if err == nil && got != "srv2" {
					err = fmt.Errorf("still answered by %s", got)
				}
				return err
			})
		}
		if got, err := ask(long4); err != nil || got != "srv1" {
			t.Errorf("the long-lived IPv4 socket: %q %v, want srv1 still (its endpoint stays)", got, err)
		}
		for _, network := range []string{"tcp4", "udp4"} {
			hits, _, err := serversNet(cli, network, "10.96.10.10:80", 30)
			if err != nil || hits["srv1"] == 0 || hits["srv2"] == 0 {
				t.Errorf("IPv4 %s after the IPv6 change: %v %v, want both endpoints", network, hits, err)
			}
		}
		if f := metricValue(t, tp.topology, "kubeproxy_sync_full_proxy_rules_duration_seconds_count"); f != full {
			t.Errorf("full syncs went from %v to %v: the change was not applied by a partial sync", full, f)
		}
		if p := metricValue(t, tp.topology, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"); p <= partial {
			t.Errorf("partial syncs: %v, then %v", partial, p)
		}
	})

	t.Run("IPv6 drift is repaired: a deleted jump, a flushed nat table", func(t *testing.T) {
		detected := metricValue(t, tp.topology, "svcproxy_drift_detected_total")
		for _, damage := range [][]string{
			{"ip6tables", "-w", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "svcproxy-services", "-j", "SVCP-SERVICES"},
			{"ip6tables", "-w", "-t", "nat", "-F"},
		} {
			nsRun(t, tp.node, damage...)
			start := time.Now()
			if _, err := dialNet(cli, "tcp6", "[fd00:10:96::14]:80", 300*time.Millisecond); err == nil {
				t.Errorf("after %v: the IPv6 ClusterIP still answers", damage)
			}
			if _, err := dialNet(cli, "tcp4", "10.96.10.14:80", 300*time.Millisecond); err == nil {
				// 10.96.10.14 is no service: just proves the probe fails.
				t.Errorf("10.96.10.14 answers")
			}
			eventually(t, "repair", 8*time.Second, func() error {
				_, err := dialNet(cli, "tcp6", "[fd00:10:96::14]:80", 300*time.Millisecond)
				return err
			})
			t.Logf("%v: repaired after %v", damage[4:], time.Since(start).Round(10*time.Millisecond))
			if _, _, err := serversNet(cli, "tcp4", "10.96.10.10:80", 5); err != nil {
				t.Errorf("IPv4 after IPv6 damage: %v", err)
			}
		}
		if d := metricValue(t, tp.topology, "svcproxy_drift_detected_total"); d < detected+2 {
			t.Errorf("svcproxy_drift_detected_total %v, then %v: want 2 more", detected, d)
		}
	})

	t.Run("--cleanup removes the rules of both families", func(t *testing.T) {
		proxy.Process.Signal(syscall.SIGTERM)
		proxy.Wait()
		nsRun(t, tp.node, svcproxyBin, "--cleanup")
		for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
			if out := nsRun(t, tp.node, cmd); strings.Contains(out, "SVCP-") {
				t.Errorf("%s after --cleanup:\n%s", cmd, out)
			}
		}
	})
}

// TestDualStackDryRunProgramsANamespace splits the --dry-run output of
// examples/dual-stack.yaml at its comment lines, feeds each section to the
// command its comment names inside an empty node namespace, and checks
// real connections there.
func TestDualStackDryRunProgramsANamespace(t *testing.T) {
	tp := newDualStackTopology(t)
	srv1, _, cli := tp.dsPods(t)

	out, err := exec.Command(svcproxyBin, "--dry-run", "--state", dualStackExample,
		"--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs).Output()
	if err != nil {
		t.Fatalf("svcproxy --dry-run: %v", err)
	}
	type section struct {
		cmd  string
		text strings.Builder
	}
	var sections []*section
	for _, line := range strings.SplitAfter(string(out), "\n") {
		if strings.HasPrefix(line, "# ") {
			sections = append(sections, &section{cmd: strings.TrimSpace(line[2:])})
			continue
		}
		if len(sections) == 0 {
			if strings.TrimSpace(line) != "" {
				t.Fatalf("--dry-run output starts with %q, not with a comment naming a command", line)
			}
			continue
		}
		sections[len(sections)-1].text.WriteString(line)
	}
	var cmds []string
	for _, s := range sections {
		cmds = append(cmds, s.cmd)
	}
	if want := []string{"iptables-restore --noflush", "ip6tables-restore --noflush"}; !slices.Equal(cmds, want) {
		t.Fatalf("sections %q, want %q", cmds, want)
	}
	for _, s := range sections {
		restore := exec.Command("ip", append([]string{"netns", "exec", tp.node}, strings.Fields(s.cmd)...)...)
		restore.Stdin = strings.NewReader(s.text.String())
		if out, err := restore.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", s.cmd, err, out)
		}
	}
	checkDualStackExample(t, tp, srv1, cli)
}

// dsFlow is a long-lived UDP socket, the server that answers it and its
// conntrack entry's start time.
type dsFlow struct {
	name   string
	conn   net.Conn
	server string
	start  uint64
}

// dsEntries returns the node's UDP conntrack entries of both families, by
// "src:sport dst:dport" of the original direction.
func dsEntries(t *testing.T, node string) map[string]*netlink.ConntrackFlow {
	t.Helper()
	out := map[string]*netlink.ConntrackFlow{}
	for _, fam := range []netlink.InetFamily{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		var flows []*netlink.ConntrackFlow
		if err := inNS(node, func() error {
			var err error
			flows, err = netlink.ConntrackTableList(netlink.ConntrackTable, fam)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for _, f := range flows {
			if f.Forward.Protocol == syscall.IPPROTO_UDP {
				out[ctKey(f.Forward.SrcIP, f.Forward.SrcPort, f.Forward.DstIP, f.Forward.DstPort)] = f
			}
		}
	}
	return out
}

// entry returns f's conntrack entry: the flows are not masqueraded on the
// client side, so the socket's addresses are the original tuple.
func (f *dsFlow) entry(entries map[string]*netlink.ConntrackFlow) *netlink.ConntrackFlow {
	l, r := f.conn.LocalAddr().(*net.UDPAddr), f.conn.RemoteAddr().(*net.UDPAddr)
	return entries[ctKey(l.IP, uint16(l.Port), r.IP, uint16(r.Port))]
}

// TestDualStackConntrackRestart: long-lived IPv6 UDP flows (pods to a
// ClusterIP, an outside client to a node port) and IPv4 ones keep their
// conntrack entries across a restart of svcproxy; after IPv6 endpoints
// went while svcproxy was down, the first sync moves the IPv6 flows of
// those endpoints at once, and only those: the IPv4 flows to the same
// pods (whose IPv4 endpoints stay) keep their entries.
func TestDualStackConntrackRestart(t *testing.T) {
	tp := newDualStackTopology(t)
	nsRun(t, tp.node, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
	_, _, cli := tp.dsPods(t)
	state := filepath.Join(t.TempDir(), "state.yaml")
	dualStackState(t, state, nil)
	p1 := startDualStackProxy(t, tp, state)
	ctWaitSync(t, tp.node, "svcproxy's first sync", 0)

	var flows []*dsFlow
	for _, target := range []struct{ name, ns, network, addr string }{
		{"pod to the IPv6 ClusterIP", cli, "udp6", "[fd00:10:96::a]:80"},
		{"outside to the IPv6 node port", tp.client, "udp6", "[2001:db8:50::1]:30080"},
		{"pod to the IPv4 ClusterIP", cli, "udp4", "10.96.10.10:80"},
		{"outside to the IPv4 node port", tp.client, "udp4", "192.168.50.1:30080"},
	} {
		seen := map[string]int{}
		for i := 0; i < 40 && (seen["srv1"] < 2 || seen["srv2"] < 2); i++ {
			var c net.Conn
			if err := inNS(target.ns, func() error {
				var err error
				c, err = net.Dial(target.network, target.addr)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			f := &dsFlow{name: fmt.Sprintf("%s #%d", target.name, i), conn: c}
			var err error
			if f.server, err = ask(c); err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
			seen[f.server]++
			flows = append(flows, f)
		}
		if seen["srv1"] < 2 || seen["srv2"] < 2 {
			t.Fatalf("%s: 40 flows, endpoints %v", target.name, seen)
		}
	}
	entries := dsEntries(t, tp.node)
	for _, f := range flows {
		e := f.entry(entries)
		if e == nil || e.TimeStart == 0 {
			t.Fatalf("%s: no conntrack entry with a start time: %v", f.name, e)
		}
		f.start = e.TimeStart
	}
	checkKept := func(when string, fs []*dsFlow) {
		t.Helper()
		for _, f := range fs {
			if got, err := ask(f.conn); err != nil || got != f.server {
				t.Errorf("%s: %s answered by %q (%v), want %s", when, f.name, got, err, f.server)
			}
		}
		entries := dsEntries(t, tp.node)
		kept := 0
		for _, f := range fs {
			if e := f.entry(entries); e == nil || e.TimeStart != f.start {
				t.Errorf("%s: %s: conntrack entry deleted and re-created (%v)", when, f.name, e)
			} else {
				kept++
			}
		}
		t.Logf("%s: %d/%d flows kept their conntrack entry and their endpoint", when, kept, len(fs))
	}

	ctStop(t, p1)
	p2 := startDualStackProxy(t, tp, state)
	ctWaitSync(t, tp.node, "the restarted svcproxy's first sync", 0)
	checkKept("after a restart", flows)

	// srv2's IPv6 endpoints of web and np go while svcproxy is down.
	ctStop(t, p2)
	dualStackState(t, state, map[string][]string{"web": {"srv2"}, "np": {"srv2"}})
	startDualStackProxy(t, tp, state)
	ctWaitSync(t, tp.node, "the first sync without srv2's IPv6 endpoints", 0)
	var stay []*dsFlow
	moved := 0
	for _, f := range flows {
		v6 := f.conn.RemoteAddr().(*net.UDPAddr).IP.To4() == nil
		if !v6 || f.server != "srv2" {
			stay = append(stay, f)
			continue
		}
		moved++
		// srv2 still runs: without the cleanup it would keep answering.
		if got, err := ask(f.conn); err != nil || got != "srv1" {
			t.Errorf("%s was on srv2, whose IPv6 endpoint went during the restart: answered by %q (%v), want srv1 at once", f.name, got, err)
		}
	}
	t.Logf("after a restart without srv2's IPv6 endpoints: %d IPv6 flows moved to srv1", moved)
	checkKept("after a restart without srv2's IPv6 endpoints", stay)
}

// ourChains6 returns svcproxy's chains in the node's ip6tables nat table.
func ourChains6(t *testing.T, node string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(nsRun(t, node, "ip6tables-save", "-t", "nat"), "\n") {
		if strings.HasPrefix(l, ":SVCP-") {
			out = append(out, strings.Fields(l)[0][1:])
		}
	}
	return out
}

// TestDualStackConversion: a cluster turns dual-stack while svcproxy runs
// (IPv4-only Services gain an IPv6 cluster IP, IPv6 slices and LB
// addresses, an IPv6-only Service appears), then back: each step is a
// partial sync; IPv6 works after the first, its chains are gone after the
// second, and IPv4 works throughout.
func TestDualStackConversion(t *testing.T) {
	tp := newDualStackTopology(t)
	srv1, _, cli := tp.dsPods(t)
	state := filepath.Join(t.TempDir(), "state.yaml")
	ipv4OnlyState(t, state)
	startDualStackProxy(t, tp, state)
	eventually(t, "first sync", 10*time.Second, func() error {
		_, err := dialNet(cli, "tcp4", "10.96.10.10:80", time.Second)
		return err
	})
	fixed := ourChains6(t, tp.node)
	t.Logf("ip6tables nat chains with no IPv6 service: %v", fixed)
	if _, err := dialNet(cli, "tcp6", "[fd00:10:96::a]:80", 500*time.Millisecond); err == nil {
		t.Fatal("the IPv6 ClusterIP answers before the Service has it")
	}
	full := metricValue(t, tp.topology, "kubeproxy_sync_full_proxy_rules_duration_seconds_count")

	dualStackState(t, state, nil)
	eventually(t, "IPv6 after the cluster went dual-stack", 5*time.Second, func() error {
		_, err := dialNet(cli, "tcp6", "[fd00:10:96::14]:80", 500*time.Millisecond)
		return err
	})
	checkDualStackExample(t, tp, srv1, cli)

	ipv4OnlyState(t, state)
	eventually(t, "IPv6 chains gone after the cluster went back to IPv4 only", 5*time.Second, func() error {
		if got := ourChains6(t, tp.node); !slices.Equal(got, fixed) {
			return fmt.Errorf("ip6tables nat chains %v, want %v", got, fixed)
		}
		return nil
	})
	if _, err := dialNet(cli, "tcp6", "[fd00:10:96::a]:80", 500*time.Millisecond); err == nil {
		t.Error("the IPv6 ClusterIP still answers")
	}
	if hits, _, err := serversNet(cli, "tcp4", "10.96.10.10:80", 20); err != nil || len(hits) != 2 {
		t.Errorf("IPv4 after going back: %v %v", hits, err)
	}
	if f := metricValue(t, tp.topology, "kubeproxy_sync_full_proxy_rules_duration_seconds_count"); f != full {
		t.Errorf("full syncs went from %v to %v: the conversions were not partial syncs", full, f)
	}
}

// TestDualStackNodePortAddresses: with --nodeport-addresses of both
// families, node ports (and their REJECT rules, and health-check node
// ports) answer on the node's addresses within them only: the client
// link's, not client2's.
func TestDualStackNodePortAddresses(t *testing.T) {
	tp := newDualStackTopology(t)
	_, _, cli := tp.dsPods(t)
	state := filepath.Join(t.TempDir(), "state.yaml")
	dualStackState(t, state, nil)
	startDualStackProxy(t, tp, state, "--nodeport-addresses", "192.168.50.0/24,2001:db8:50::/64")
	eventually(t, "first sync", 10*time.Second, func() error {
		_, err := dialNet(cli, "tcp6", "[fd00:10:96::a]:80", time.Second)
		return err
	})
	// client2 reaches the node's client-link addresses through the node.
	for _, tc := range []struct {
		network, addr string
		open          bool
	}{
		{"tcp4", "192.168.50.1:30080", true},
		{"tcp6", "[2001:db8:50::1]:30080", true},
		{"udp6", "[2001:db8:50::1]:30080", true},
		{"tcp4", "192.168.51.1:30080", false},
		{"tcp6", "[2001:db8:51::1]:30080", false},
	} {
		a, err := dialNet(tp.client2, tc.network, tc.addr, 2*time.Second)
		switch {
		case tc.open && err != nil:
			t.Errorf("%s %s: %v, want an answer", tc.network, tc.addr, err)
		case !tc.open && !errors.Is(err, syscall.ECONNREFUSED):
			// Nothing listens on the node: refused when not DNATed.
			t.Errorf("%s %s: %v %v, want refused (not a node-port address)", tc.network, tc.addr, a, err)
		}
	}
	// Without endpoints: REJECTed within the addresses; outside them not
	// touched (refused by the node's own stack all the same, so judged by
	// the rule counters below instead).
	for _, addr := range []string{"192.168.50.1:30083", "[2001:db8:50::1]:30083"} {
		network := "udp4"
		if strings.HasPrefix(addr, "[") {
			network = "udp6"
		}
		if _, err := refusedUDP(tp.client, network, addr); err != nil {
			t.Error(err)
		}
	}
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out := nsRun(t, tp.node, cmd)
		if strings.Contains(out, "! -d 127.0.0.0/8 -m addrtype") || strings.Contains(out, "! -d ::1/128 -m addrtype") {
			t.Errorf("%s: node-port rules for every local address despite --nodeport-addresses:\n%s", cmd, out)
		}
	}
	for _, tc := range []struct {
		host string
		open bool
	}{{"192.168.50.1", true}, {"2001:db8:50::1", true}, {"192.168.51.1", false}, {"2001:db8:51::1", false}} {
		code, _, err := httpGet(tp.client2, "http://"+hp(tc.host, 30082)+"/")
		if tc.open && (err != nil || code != 200) {
			t.Errorf("health-check node port on %s: %d %v, want 200", tc.host, code, err)
		}
		if !tc.open && err == nil {
			t.Errorf("health-check node port answers on %s, outside --nodeport-addresses", tc.host)
		}
	}
}

// nibbleAddrs returns 9 addresses next to base and, for each nibble of
// the address, base with that nibble's top bit flipped: keys that a
// prefix tree splitting 4 bits a level would need a level per nibble for.
func nibbleAddrs(base netip.Addr) []string {
	b := new(big.Int).SetBytes(base.AsSlice())
	bits := base.BitLen()
	var out []string
	add := func(v *big.Int) {
		buf := make([]byte, bits/8)
		v.FillBytes(buf)
		a, _ := netip.AddrFromSlice(buf)
		out = append(out, a.String())
	}
	for i := range 9 {
		add(new(big.Int).Add(b, big.NewInt(int64(i))))
	}
	for n := 0; n < bits/4-1; n++ {
		add(new(big.Int).Xor(b, new(big.Int).Lsh(big.NewInt(8), uint(bits-4*(n+1)))))
	}
	return out
}

// TestDualStackDeepIPv6Tree: a Service whose externalIPs differ one nibble
// at a time (anyone who creates Services can set them) does not break the
// node's IPv6 rules: nf_tables refuses chain graphs deeper than 16 jumps,
// and such IPv6 addresses used to make a 31-level dispatch tree, so the
// IPv6 sync of every Service failed. With the real ip6tables-restore, every
// IPv6 Service works and so does the deepest address.
func TestDualStackDeepIPv6Tree(t *testing.T) {
	tp := newDualStackTopology(t)
	_, _, cli := tp.dsPods(t)
	ext := nibbleAddrs(netip.MustParseAddr("2001:db8:eeee::a0"))
	state := filepath.Join(t.TempDir(), "state.yaml")
	writeExampleState(t, state, func(st *source.State) {
		st.Services = append(st.Services, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "deep"},
			Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: "fd00:10:96::5", ClusterIPs: []string{"fd00:10:96::5"},
				IPFamilies: []v1.IPFamily{v1.IPv6Protocol}, ExternalIPs: ext,
				Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
		})
		st.EndpointSlices = append(st.EndpointSlices, &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "demo", Name: "deep-1", Labels: map[string]string{discovery.LabelServiceName: "deep"}},
			AddressType: discovery.AddressTypeIPv6,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
			Endpoints:   []discovery.Endpoint{{Addresses: []string{"fd00:10:244:1::11"}, NodeName: ptr.To("node1")}},
		})
	})
	startDualStackProxy(t, tp, state)
	eventually(t, "IPv6 programmed", 10*time.Second, func() error {
		_, err := dialNet(cli, "tcp6", "[fd00:10:96::a]:80", time.Second)
		return err
	})
	for _, addr := range []string{ext[0], ext[8], ext[len(ext)-1]} {
		a, err := dialNet(tp.client, "tcp6", hp(addr, 80), 2*time.Second)
		if err != nil || a.Server != "srv2" {
			t.Errorf("[%s]:80 from outside: %v %v, want srv2", addr, a, err)
		}
	}
	chains := 0
	for _, l := range strings.Split(nsRun(t, tp.node, "ip6tables-save", "-t", "nat"), "\n") {
		if strings.HasPrefix(l, ":SVCP-T6-") {
			chains++
		}
	}
	t.Logf("%d IPv6 externalIPs, %d IPv6 dispatch tree chains", len(ext), chains)
}
