//go:build integration

package integration

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/svcproxy/svcproxy/proxy/conntrack"
)

// ctRestartState is a UDP NodePort service, dns at 10.96.1.53:53 and node
// port 30053, whose endpoints are the pods at the addresses given, port
// 8080.
const ctRestartState = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: kube-system}
  spec:
    type: NodePort
    clusterIP: 10.96.1.53
    ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  ports: [{name: dns, port: 8080, protocol: UDP}]
  endpoints:
%s`

func ctWriteState(t *testing.T, path string, eps ...string) {
	t.Helper()
	var b strings.Builder
	for _, ep := range eps {
		fmt.Fprintf(&b, "  - {addresses: [%s], conditions: {ready: true}, nodeName: node1}\n", ep)
	}
	if len(eps) == 0 {
		b.WriteString("  []\n")
	}
	if err := os.WriteFile(path+".tmp", []byte(fmt.Sprintf(ctRestartState, b.String())), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// ctFlow is one long-lived UDP socket and what it is known to reach.
type ctFlow struct {
	name   string
	conn   net.Conn
	server string // the server that answers it
	start  uint64 // its conntrack entry's start time, the entry's identity
}

// ctDial opens a UDP socket in ns to addr.
func ctDial(t *testing.T, ns, name, addr string) *ctFlow {
	t.Helper()
	var c net.Conn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.Dial("udp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &ctFlow{name: name, conn: c}
}

// ctAsk asks f's socket which server answers; a lost datagram is asked
// again (up to 3 times), an answer is never retried.
func ctAsk(f *ctFlow) (string, error) {
	var err error
	for range 3 {
		var got string
		if got, err = ask(f.conn); err == nil {
			return got, nil
		}
	}
	return "", fmt.Errorf("%s: %w", f.name, err)
}

// ctEntries returns the node's UDP conntrack entries, by "src:sport
// dst:dport" of the original direction.
func ctEntries(t *testing.T, node string) map[string]*netlink.ConntrackFlow {
	t.Helper()
	var flows []*netlink.ConntrackFlow
	if err := inNS(node, func() error {
		var err error
		flows, err = netlink.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	out := map[string]*netlink.ConntrackFlow{}
	for _, f := range flows {
		if f.Forward.Protocol == syscall.IPPROTO_UDP {
			out[ctKey(f.Forward.SrcIP, f.Forward.SrcPort, f.Forward.DstIP, f.Forward.DstPort)] = f
		}
	}
	return out
}

func ctKey(src net.IP, sport uint16, dst net.IP, dport uint16) string {
	return fmt.Sprintf("%v:%d %v:%d", src, sport, dst, dport)
}

// entry returns f's conntrack entry among entries (ctEntries). The flows of
// the test are not masqueraded on the client side, so the socket's own
// addresses are the original tuple.
func (f *ctFlow) entry(entries map[string]*netlink.ConntrackFlow) *netlink.ConntrackFlow {
	l, r := f.conn.LocalAddr().(*net.UDPAddr), f.conn.RemoteAddr().(*net.UDPAddr)
	return entries[ctKey(l.IP.To4(), uint16(l.Port), r.IP.To4(), uint16(r.Port))]
}

// ctLastSync returns svcproxy's last successful sync time (the metric
// kube-proxy calls kubeproxy_sync_proxy_rules_last_timestamp_seconds), 0
// before the first one. The conntrack cleanup of a sync is done by then.
func ctLastSync(node string) (float64, error) {
	_, body, err := httpGet(node, "http://127.0.0.1:10249/metrics")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(body, "\n") {
		if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[0], "kubeproxy_sync_proxy_rules_last_timestamp_seconds{") {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, nil
}

// ctWaitSync waits for a successful sync that started after since (a
// Unix time in seconds).
func ctWaitSync(t *testing.T, node, what string, since float64) {
	t.Helper()
	eventually(t, what, 10*time.Second, func() error {
		ts, err := ctLastSync(node)
		if err == nil && ts <= since {
			err = fmt.Errorf("last sync at %v, not after %v", ts, since)
		}
		return err
	})
}

func ctNow() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// ctStop ends svcproxy with SIGTERM, as a rolling upgrade or a restart
// does: the rules stay in place.
func ctStop(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("svcproxy after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("svcproxy still running 10 s after SIGTERM")
	}
}

// TestConntrackUDPFlowsSurviveRestart: long-lived UDP flows to a ClusterIP
// and to a node port keep their conntrack entry, and so their endpoint,
// across a SIGTERM and restart of svcproxy (kube-proxy's first sync deletes
// them all and re-balances them, kubernetes #122740). A restart after an
// endpoint went while svcproxy was down moves that endpoint's flows at
// once and only those. A flow to another host's port that happens to be a
// node port number is left alone, and a flow that started before svcproxy
// did (never DNATed, #48370) reaches an endpoint once it is up.
func TestConntrackUDPFlowsSurviveRestart(t *testing.T) {
	tp := newTopology(t)
	// Entries carry their start time: a deleted and re-created entry has
	// a new one, even to the same endpoint.
	nsRun(t, tp.node, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	srv2 := tp.addPod(t, "srv2", "10.244.1.11")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, srv2, "srv2", 8080)
	// Another host's UDP server on port 30053, the service's node port.
	startServer(t, tp.client, "outside", 30053)

	state := filepath.Join(t.TempDir(), "state.yaml")
	ctWriteState(t, state, "10.244.1.10", "10.244.1.11")

	// Before svcproxy runs, a socket to the ClusterIP gets an entry that
	// was never DNATed (the packet is routed towards the default gateway).
	// Conntrack tracks a namespace's packets once some rule needs it: on a
	// real node there always is one (the CNI's, the container runtime's).
	nsRun(t, tp.node, "iptables", "-w", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	early := ctDial(t, cli, "early", "10.96.1.53:53")
	early.conn.Write([]byte("q"))
	eventually(t, "the early flow's un-DNATed entry", 5*time.Second, func() error {
		if e := early.entry(ctEntries(t, tp.node)); e == nil || !e.Reverse.SrcIP.Equal(net.ParseIP("10.96.1.53")) {
			return fmt.Errorf("entry %v", e)
		}
		return nil
	})

	p1 := startProxy(t, tp, state)
	ctWaitSync(t, tp.node, "svcproxy's first sync", 0)
	// svcproxy's first sync deleted the early flow's entry: it now reaches
	// an endpoint.
	if got, err := ctAsk(early); err != nil || (got != "srv1" && got != "srv2") {
		t.Fatalf("the flow that started before svcproxy: answered by %q, %v", got, err)
	}

	// Long-lived flows, until both endpoints have some.
	var flows []*ctFlow
	seen := map[string]int{}
	for i := 0; i < 40 && (len(flows) < 8 || seen["srv1"] == 0 || seen["srv2"] == 0); i++ {
		f := ctDial(t, cli, fmt.Sprintf("pod flow %d", i), "10.96.1.53:53")
		var err error
		if f.server, err = ctAsk(f); err != nil {
			t.Fatal(err)
		}
		seen[f.server]++
		flows = append(flows, f)
	}
	if seen["srv1"] == 0 || seen["srv2"] == 0 {
		t.Fatalf("40 flows all went to one endpoint: %v", seen)
	}
	nodePort := ctDial(t, tp.client, "node-port flow from outside", "192.168.50.1:30053")
	other := ctDial(t, cli, "flow to another host's port 30053", "192.168.50.2:30053")
	for _, f := range []*ctFlow{early, nodePort, other} {
		var err error
		if f.server, err = ctAsk(f); err != nil {
			t.Fatal(err)
		}
		flows = append(flows, f)
	}
	if other.server != "outside" {
		t.Fatalf("%s: answered by %s", other.name, other.server)
	}
	entries := ctEntries(t, tp.node)
	for _, f := range flows {
		e := f.entry(entries)
		if e == nil || e.TimeStart == 0 {
			t.Fatalf("%s: no conntrack entry with a start time: %v", f.name, e)
		}
		f.start = e.TimeStart
	}
	t.Logf("%d long-lived UDP flows: pods to the ClusterIP %v, node port -> %s, another host's port 30053 -> %s",
		len(flows), seen, nodePort.server, other.server)
	ctCheckNetlink(t, tp, flows, other)

	// checkKept asserts every flow in fs still has its entry and its
	// server.
	checkKept := func(when string, fs []*ctFlow) {
		t.Helper()
		for _, f := range fs {
			got, err := ctAsk(f)
			if err != nil || got != f.server {
				t.Errorf("%s: %s answered by %q (%v), want %s", when, f.name, got, err, f.server)
			}
		}
		entries := ctEntries(t, tp.node)
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

	// Restart: SIGTERM, then a new svcproxy with the same state.
	ctStop(t, p1)
	checkKept("while svcproxy is stopped", flows)
	p2 := startProxy(t, tp, state)
	ctWaitSync(t, tp.node, "the restarted svcproxy's first sync", 0)
	checkKept("after a restart", flows)

	// srv2 goes while svcproxy is down: its flows move to srv1 with the
	// restarted svcproxy's first sync, the others keep their entries.
	ctStop(t, p2)
	ctWriteState(t, state, "10.244.1.10")
	startProxy(t, tp, state)
	ctWaitSync(t, tp.node, "the first sync without srv2", 0)
	var stay, moved []*ctFlow
	for _, f := range flows {
		if f.server == "srv2" {
			moved = append(moved, f)
		} else {
			stay = append(stay, f)
		}
	}
	for _, f := range moved {
		// srv2 still runs: without the cleanup it would keep answering.
		got, err := ctAsk(f)
		if err != nil || got != "srv1" {
			t.Errorf("%s was on srv2, gone during the restart: answered by %q (%v), want srv1 at once", f.name, got, err)
		}
	}
	t.Logf("after a restart without srv2: %d flows moved to srv1 at once", len(moved))
	checkKept("after a restart without srv2", stay)

	// While svcproxy runs: srv2 comes back (no flow moves), then srv1 goes:
	// every ClusterIP and node-port flow moves to srv2 at the sync.
	before := ctNow()
	ctWriteState(t, state, "10.244.1.10", "10.244.1.11")
	ctWaitSync(t, tp.node, "the sync that adds srv2", before)
	for _, f := range moved {
		f.server = "srv1"
		f.start = f.entry(ctEntries(t, tp.node)).TimeStart
	}
	checkKept("after srv2 came back", flows)
	before = ctNow()
	ctWriteState(t, state, "10.244.1.11")
	ctWaitSync(t, tp.node, "the sync that removes srv1", before)
	for _, f := range flows {
		if f == other {
			continue
		}
		got, err := ctAsk(f)
		if err != nil || got != "srv2" {
			t.Errorf("%s: srv1 removed: answered by %q (%v), want srv2 at once", f.name, got, err)
		}
	}
	checkKept("after srv1 was removed", []*ctFlow{other})
}

// ctCheckNetlink holds conntrack.Netlink, what svcproxy judges with, to the
// kernel: it reads the flows' tuples and netfilter's DNAT status (the flows
// to the service were DNATed by svcproxy's iptables rules, the one to
// another host never was), and the node's addresses are where node ports
// answer.
func ctCheckNetlink(t *testing.T, tp *topology, flows []*ctFlow, direct *ctFlow) {
	t.Helper()
	var entries []conntrack.Entry
	var addrs []netip.Prefix
	if err := inNS(tp.node, func() error {
		var err error
		if entries, err = (conntrack.Netlink{}).List(conntrack.IPv4); err != nil {
			return err
		}
		addrs, err = (conntrack.Netlink{}).NodeAddrs(conntrack.IPv4)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		l, r := f.conn.LocalAddr().(*net.UDPAddr).AddrPort(), f.conn.RemoteAddr().(*net.UDPAddr).AddrPort()
		var got *conntrack.Entry
		for i, e := range entries {
			if e.Protocol == "UDP" && e.Orig.Src == netip.AddrPortFrom(l.Addr().Unmap(), l.Port()) && e.Orig.Dst == netip.AddrPortFrom(r.Addr().Unmap(), r.Port()) {
				got = &entries[i]
			}
		}
		switch {
		case got == nil:
			t.Errorf("%s: conntrack.Netlink lists no entry", f.name)
		case f == direct && (got.DNATed() || got.DstNAT):
			t.Errorf("%s: %v, want an entry never DNATed", f.name, got)
		case f != direct && !(got.DNATed() && got.DstNAT && got.Reply.Src.Port() == 8080):
			t.Errorf("%s: %v, want an entry netfilter DNATed to an endpoint's port 8080", f.name, got)
		}
	}
	want := map[netip.Prefix]bool{netip.MustParsePrefix("192.168.50.1/32"): true, netip.MustParsePrefix("10.244.1.1/32"): true}
	for _, p := range addrs {
		if !want[p] {
			t.Errorf("node addresses %v: unexpected %v", addrs, p)
		}
		delete(want, p)
	}
	if len(want) > 0 {
		t.Errorf("node addresses %v lack %v", addrs, want)
	}
}
