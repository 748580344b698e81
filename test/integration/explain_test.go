//go:build integration

package integration

// svcproxy explain --live on a real kernel: the svcproxy binary programs a
// node namespace (--state), explain runs in that namespace as an operator
// would on the node, and what it says is held to real connections: the
// endpoints it lists are exactly the ones connections reach, REJECT where
// they are refused, DROP where they time out, masquerade where the backend
// sees another source. Then the rules are tampered with by hand (an
// endpoint's DNAT rule, a jump from a built-in chain, another program's
// DROP above ours): --live reports it and exits 3, and 0 again once the
// next sync has programmed the rules again (or the foreign rule is gone:
// svcproxy leaves other programs' rules alone).

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// explainState is the IPv4 state of these tests: web (a NodePort, TCP and
// UDP, two endpoints on this node), empty (no endpoints: REJECT), local
// (ETP Local: only this node's endpoint, the client's address kept) and
// itp (internalTrafficPolicy Local with its only endpoint elsewhere: DROP
// from a pod).
const explainState = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: it}
  spec:
    type: NodePort
    clusterIP: 10.96.1.10
    ports:
    - {name: http, port: 80, protocol: TCP, nodePort: 30080}
    - {name: echo, port: 80, protocol: UDP, nodePort: 30080}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: it, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports:
  - {name: http, port: 8080, protocol: TCP}
  - {name: echo, port: 8080, protocol: UDP}
  endpoints:
  - {addresses: [10.244.1.10], conditions: {ready: true}, nodeName: node1}
  - {addresses: [10.244.1.11], conditions: {ready: true}, nodeName: node1}
- apiVersion: v1
  kind: Service
  metadata: {name: empty, namespace: it}
  spec:
    type: NodePort
    clusterIP: 10.96.1.13
    ports: [{name: http, port: 80, protocol: TCP, nodePort: 30083}]
- apiVersion: v1
  kind: Service
  metadata: {name: local, namespace: it}
  spec:
    type: NodePort
    externalTrafficPolicy: Local
    clusterIP: 10.96.1.14
    ports: [{name: http, port: 80, protocol: TCP, nodePort: 30081}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: local-1, namespace: it, labels: {kubernetes.io/service-name: local}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.1.10], conditions: {ready: true}, nodeName: node1}
  - {addresses: [10.244.2.50], conditions: {ready: true}, nodeName: node2}
- apiVersion: v1
  kind: Service
  metadata: {name: itp, namespace: it}
  spec:
    clusterIP: 10.96.1.16
    internalTrafficPolicy: Local
    ports: [{name: http, port: 80, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: itp-1, namespace: it, labels: {kubernetes.io/service-name: itp}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.2.50], conditions: {ready: true}, nodeName: node2}
`

// serverOf names the server at each pod address.
var serverOf = map[string]string{"10.244.1.10": "srv1", "10.244.1.11": "srv2", "fd00:10:244:1::10": "srv1", "fd00:10:244:1::11": "srv2"}

// explained is the part of explain's JSON these tests read.
type explained struct {
	Results []struct {
		Service, Via, Destination, Verdict string
		Endpoints                          []explainedEndpoint
		Masquerade                         bool
		Kernel                             *struct {
			Verdict    string
			Endpoints  []explainedEndpoint
			Masquerade bool
		}
		Drift []struct{ Kind, Detail string }
	}
}

type explainedEndpoint struct {
	IP          string
	Port        int
	Probability float64
}

// explainLive runs `svcproxy explain --live -o json` in the node namespace
// with the flags the daemon runs with, and returns its exit code, its
// parsed output and its stderr.
func explainLive(t *testing.T, node, state, cidrs string, args ...string) (int, *explained, string) {
	t.Helper()
	out, stderr, code := runExplain(t, node, append([]string{"--state", state, "--hostname-override", "node1", "--cluster-cidr", cidrs, "--live", "-o", "json"}, args...)...)
	if code != 0 && code != 3 {
		t.Fatalf("svcproxy explain %q: exit %d, stderr:\n%s", args, code, stderr)
	}
	var x explained
	if err := json.Unmarshal([]byte(out), &x); err != nil {
		t.Fatalf("svcproxy explain %q: %v:\n%s", args, err, out)
	}
	return code, &x, stderr
}

// runExplain runs `svcproxy explain args` in namespace ns.
func runExplain(t *testing.T, ns string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, svcproxyBin, "explain"}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// endpointSet returns the servers of endpoints (by name), sorted.
func endpointSet(eps []explainedEndpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, cmp.Or(serverOf[e.IP], e.IP))
	}
	slices.Sort(out)
	return out
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func driftKinds(x *explained) []string {
	var out []string
	for _, r := range x.Results {
		for _, d := range r.Drift {
			out = append(out, d.Kind)
		}
	}
	return out
}

// flow is a connection explain and the kernel must agree on.
type flow struct {
	name       string
	ns         string // where it comes from
	network    string
	from       string // explain's --from
	target     string // explain's TARGET
	addr       string // what the client dials
	verdict    string
	endpoints  []string // the servers, sorted
	masquerade bool
	source     string // the address the servers see, "" when masqueraded
}

// checkFlow holds explain --live's account of f to real connections.
func checkFlow(t *testing.T, node, state, cidrs string, f flow) {
	t.Helper()
	code, x, _ := explainLive(t, node, state, cidrs, "--from", f.from, f.target)
	if code != 0 || len(x.Results) != 1 {
		t.Fatalf("%s: exit %d, %d results, drift %q; want 0 and one result", f.name, code, len(x.Results), driftKinds(x))
	}
	r := x.Results[0]
	if r.Verdict != f.verdict || r.Kernel == nil || r.Kernel.Verdict != f.verdict {
		t.Fatalf("%s: verdict %q (kernel %+v), want %q", f.name, r.Verdict, r.Kernel, f.verdict)
	}
	switch f.verdict {
	case "dnat":
		got := endpointSet(r.Endpoints)
		if !slices.Equal(got, f.endpoints) || !slices.Equal(endpointSet(r.Kernel.Endpoints), f.endpoints) {
			t.Errorf("%s: explain lists %q (kernel %q), want %q", f.name, got, endpointSet(r.Kernel.Endpoints), f.endpoints)
		}
		if r.Masquerade != f.masquerade || r.Kernel.Masquerade != f.masquerade {
			t.Errorf("%s: masquerade %v (kernel %v), want %v", f.name, r.Masquerade, r.Kernel.Masquerade, f.masquerade)
		}
		// Enough connections that an endpoint of p=0.5 is missed with
		// probability 2^-30.
		hits, sources, err := serversNet(f.ns, f.network, f.addr, 30)
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		if reached := keys(hits); !slices.Equal(reached, got) {
			t.Errorf("%s: connections reached %v, explain lists %q", f.name, hits, got)
		}
		switch {
		case f.masquerade && sources[f.source]:
			t.Errorf("%s: explain says masquerade, the servers saw the client's own address %v", f.name, sources)
		case !f.masquerade && (len(sources) != 1 || !sources[f.source]):
			t.Errorf("%s: explain says no masquerade, the servers saw %v, want only %s", f.name, sources, f.source)
		}
	case "reject":
		if _, err := dialNet(f.ns, f.network, f.addr, 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: explain says REJECT, the connection got %v, want refused", f.name, err)
		}
	case "drop":
		if err := dropped(f.ns, f.network, f.addr); err != nil {
			t.Errorf("%s: explain says DROP: %v", f.name, err)
		}
	}
}

// ipt runs iptables (or another command) in the node namespace.
func ipt(t *testing.T, node string, args ...string) {
	t.Helper()
	nsRun(t, node, args...)
}

// ruleNumber returns the 1-based number of the first rule of table/chain
// whose `iptables -S` line contains sub.
func ruleNumber(t *testing.T, node, cmd, table, chain, sub string) int {
	t.Helper()
	n := 0
	for _, l := range strings.Split(nsRun(t, node, cmd, "-t", table, "-S", chain), "\n") {
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		n++
		if strings.Contains(l, sub) {
			return n
		}
	}
	t.Fatalf("%s -t %s -S %s: no rule with %q", cmd, table, chain, sub)
	return 0
}

// chainOf returns the chain of a table whose rules contain all of subs.
func chainOf(t *testing.T, node, save, table string, subs ...string) string {
	t.Helper()
	for _, l := range strings.Split(nsRun(t, node, save, "-t", table), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && f[0] == "-A" && !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(l, s) }) {
			return f[1]
		}
	}
	t.Fatalf("%s -t %s: no rule with %q", save, table, subs)
	return ""
}

// wantDrift runs explain and wants exit 3 with each of kinds among the
// drift (and with details containing each of details).
func wantDrift(t *testing.T, node, state, cidrs string, kinds, details []string, args ...string) *explained {
	t.Helper()
	code, x, stderr := explainLive(t, node, state, cidrs, args...)
	got := driftKinds(x)
	var all []string
	for _, r := range x.Results {
		for _, d := range r.Drift {
			all = append(all, d.Kind+": "+d.Detail)
		}
	}
	if code != 3 {
		t.Errorf("explain %q: exit %d, want 3; drift %q, stderr:\n%s", args, code, all, stderr)
	}
	for _, k := range kinds {
		if !slices.Contains(got, k) {
			t.Errorf("explain %q: drift %q lacks %q", args, all, k)
		}
	}
	for _, d := range details {
		if !slices.ContainsFunc(all, func(s string) bool { return strings.Contains(s, d) }) {
			t.Errorf("explain %q: drift %q lacks %q", args, all, d)
		}
	}
	return x
}

// agreesAgain waits until explain exits 0 again.
func agreesAgain(t *testing.T, node, state, cidrs string, args ...string) {
	t.Helper()
	eventually(t, "explain --live agrees again", 10*time.Second, func() error {
		if code, x, _ := explainLive(t, node, state, cidrs, args...); code != 0 {
			return fmt.Errorf("exit %d, drift %q", code, driftKinds(x))
		}
		return nil
	})
}

// explainAll runs explain --live --all in the node namespace (text) and
// returns its exit code and output.
func explainAll(t *testing.T, node, state, cidrs string) (int, string) {
	t.Helper()
	out, stderr, code := runExplain(t, node, "--state", state, "--hostname-override", "node1", "--cluster-cidr", cidrs, "--live", "--all")
	if code != 0 && code != 3 {
		t.Fatalf("explain --live --all: exit %d, stderr:\n%s", code, stderr)
	}
	return code, out
}

func TestExplainLive(t *testing.T) {
	start := time.Now()
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	srv2 := tp.addPod(t, "srv2", "10.244.1.11")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, srv2, "srv2", 8080)
	const cidr = "10.244.0.0/16"
	state := filepath.Join(t.TempDir(), "state.yaml")
	if err := os.WriteFile(state, []byte(explainState), 0o644); err != nil {
		t.Fatal(err)
	}
	proxy := startProxyWith(t, tp, state, nil)
	eventually(t, "first sync", 10*time.Second, func() error {
		_, err := dial(cli, "tcp", "10.96.1.10:80", time.Second)
		return err
	})
	node := tp.node
	// The daemon restarted by a subtest outlives it: the test's cleanup
	// stops it.
	top := t
	restart := func() *exec.Cmd { return startProxyWith(top, tp, state, nil) }

	t.Run("explain --live agrees with real connections", func(t *testing.T) {
		for _, f := range []flow{
			{name: "cluster IP from a pod", ns: cli, network: "tcp4", from: "pod:10.244.1.20", target: "10.96.1.10:80/tcp", addr: "10.96.1.10:80",
				verdict: "dnat", endpoints: []string{"srv1", "srv2"}, source: "10.244.1.20"},
			{name: "cluster IP over UDP from a pod", ns: cli, network: "udp4", from: "pod:10.244.1.20", target: "10.96.1.10:80/udp", addr: "10.96.1.10:80",
				verdict: "dnat", endpoints: []string{"srv1", "srv2"}, source: "10.244.1.20"},
			{name: "node port from outside (ETP Cluster: masqueraded)", ns: tp.client, network: "tcp4", from: "external:192.168.50.2", target: "192.168.50.1:30080/tcp", addr: "192.168.50.1:30080",
				verdict: "dnat", endpoints: []string{"srv1", "srv2"}, masquerade: true, source: "192.168.50.2"},
			{name: "node port from outside (ETP Local: this node's endpoint, the client's address)", ns: tp.client, network: "tcp4", from: "external:192.168.50.2", target: "192.168.50.1:30081", addr: "192.168.50.1:30081",
				verdict: "dnat", endpoints: []string{"srv1"}, source: "192.168.50.2"},
			{name: "cluster IP without endpoints", ns: cli, network: "tcp4", from: "pod:10.244.1.20", target: "empty.it", addr: "10.96.1.13:80", verdict: "reject"},
			{name: "node port without endpoints", ns: tp.client, network: "tcp4", from: "external:192.168.50.2", target: "192.168.50.1:30083", addr: "192.168.50.1:30083", verdict: "reject"},
			{name: "internalTrafficPolicy Local without a local endpoint", ns: cli, network: "tcp4", from: "pod:10.244.1.20", target: "itp.it", addr: "10.96.1.16:80", verdict: "drop"},
		} {
			t.Run(f.name, func(t *testing.T) { checkFlow(t, node, state, cidr, f) })
		}
	})

	web := []string{"--from", "pod:10.244.1.20", "10.96.1.10:80/tcp"}
	t.Run("an endpoint's DNAT rule deleted by hand, then the next sync", func(t *testing.T) {
		ctStop(t, proxy) // the tamper stays until the next sync
		chain := chainOf(t, node, "iptables-save", "nat", `"it/web:http -> 10.244.1.10:8080"`, "DNAT")
		ipt(t, node, "iptables", "-t", "nat", "-D", chain, fmt.Sprint(ruleNumber(t, node, "iptables", "nat", chain, "10.244.1.10:8080")))
		x := wantDrift(t, node, state, cidr, []string{"missing-endpoint", "endpoint-probability", "chain-rules"},
			[]string{"10.244.1.10:8080 (p=0.5000 intended) is never reached", "10.244.1.11:8080: p=1.0000 in the kernel's rules, 0.5000 intended"}, web...)
		// What the kernel's rules do is what connections do.
		if got := endpointSet(x.Results[0].Kernel.Endpoints); !slices.Equal(got, []string{"srv2"}) {
			t.Errorf("kernel endpoints %q, want srv2", got)
		}
		if hits, _, err := servers(cli, "tcp", "10.96.1.10:80", 20); err != nil || !slices.Equal(keys(hits), []string{"srv2"}) {
			t.Errorf("connections reached %v (%v), want srv2 only, as explain says", hits, err)
		}
		proxy = restart() // its first sync is full
		agreesAgain(t, node, state, cidr, web...)
	})
	t.Run("the jump from PREROUTING deleted by hand, then the next sync", func(t *testing.T) {
		ctStop(t, proxy)
		ipt(t, node, "iptables", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "svcproxy-services", "-j", "SVCP-SERVICES")
		wantDrift(t, node, state, cidr, []string{"missing-jump", "verdict"}, []string{"nat/PREROUTING has no jump to SVCP-SERVICES", "intended DNAT; the kernel's rules give NO-MATCH"}, web...)
		proxy = restart()
		agreesAgain(t, node, state, cidr, web...)
	})
	t.Run("a foreign DROP above our jump in FORWARD", func(t *testing.T) {
		rule := []string{"FORWARD", "-s", "10.244.1.20/32", "-j", "DROP"}
		ipt(t, node, append([]string{"iptables", "-I"}, rule...)...)
		x := wantDrift(t, node, state, cidr, []string{"verdict", "foreign-rule"},
			[]string{"a foreign rule earlier in filter/FORWARD catches the packet first: -s 10.244.1.20/32 -j DROP"}, web...)
		if x.Results[0].Kernel.Verdict != "drop" {
			t.Errorf("kernel verdict %q, want drop", x.Results[0].Kernel.Verdict)
		}
		if err := dropped(cli, "tcp4", "10.96.1.10:80"); err != nil {
			t.Errorf("explain says the kernel drops it: %v", err)
		}
		// A sync leaves other programs' rules alone: the operator
		// removes it.
		ipt(t, node, append([]string{"iptables", "-D"}, rule...)...)
		agreesAgain(t, node, state, cidr, web...)
	})
	t.Run("a foreign DROP above our jump in INPUT turns a REJECT into a DROP", func(t *testing.T) {
		rule := []string{"INPUT", "-p", "tcp", "--dport", "30083", "-j", "DROP"}
		ipt(t, node, append([]string{"iptables", "-I"}, rule...)...)
		args := []string{"--from", "external:192.168.50.2", "192.168.50.1:30083"}
		wantDrift(t, node, state, cidr, []string{"verdict", "foreign-rule"},
			[]string{"intended REJECT; the kernel's rules give DROP", "a foreign rule earlier in filter/INPUT catches the packet first: -p tcp -m tcp --dport 30083 -j DROP"}, args...)
		if err := dropped(tp.client, "tcp4", "192.168.50.1:30083"); err != nil {
			t.Errorf("explain says the kernel drops it: %v", err)
		}
		ipt(t, node, append([]string{"iptables", "-D"}, rule...)...)
		agreesAgain(t, node, state, cidr, args...)
	})
	t.Run("a foreign DROP in PREROUTING (mangle, before nat's jump)", func(t *testing.T) {
		rule := []string{"PREROUTING", "-s", "192.168.50.2/32", "-p", "tcp", "--dport", "30080", "-j", "DROP"}
		ipt(t, node, append([]string{"iptables", "-t", "mangle", "-I"}, rule...)...)
		args := []string{"--from", "external:192.168.50.2", "192.168.50.1:30080/tcp"}
		wantDrift(t, node, state, cidr, []string{"verdict", "foreign-rule"},
			[]string{"a foreign rule earlier in mangle/PREROUTING catches the packet first: -s 192.168.50.2/32 -p tcp -m tcp --dport 30080 -j DROP"}, args...)
		if err := dropped(tp.client, "tcp4", "192.168.50.1:30080"); err != nil {
			t.Errorf("explain says the kernel drops it: %v", err)
		}
		ipt(t, node, append([]string{"iptables", "-t", "mangle", "-D"}, rule...)...)
		agreesAgain(t, node, state, cidr, args...)
	})
	t.Run("a foreign rule explain cannot evaluate", func(t *testing.T) {
		// physdev: a bridge port match the model does not know, in
		// front of our jump.
		if out, err := exec.Command("ip", "netns", "exec", node, "iptables", "-I", "FORWARD", "-m", "physdev", "--physdev-is-bridged", "-j", "DROP").CombinedOutput(); err != nil {
			t.Fatalf("iptables -m physdev: %v\n%s", err, out)
		}
		wantDrift(t, node, state, cidr, []string{"foreign-rule-may-match"},
			[]string{"a foreign rule earlier in filter/FORWARD may catch the packet first: -m physdev --physdev-is-bridged -j DROP"}, web...)
		ipt(t, node, "iptables", "-D", "FORWARD", "-m", "physdev", "--physdev-is-bridged", "-j", "DROP")
		agreesAgain(t, node, state, cidr, web...)
	})
	t.Run("--all: 0 on an intact node, 3 after one tamper, 0 after the next sync", func(t *testing.T) {
		code, out := explainAll(t, node, state, cidr)
		if code != 0 || !strings.Contains(out, "5 service ports checked on node1 (5 IPv4, 0 IPv6) against the kernel's rules: 5 agree, 0 differ; the node's jumps and chains agree") {
			t.Fatalf("intact: exit %d:\n%s", code, out)
		}
		ctStop(t, proxy)
		chain := chainOf(t, node, "iptables-save", "nat", `"it/web:echo -> 10.244.1.11:8080"`, "DNAT")
		ipt(t, node, "iptables", "-t", "nat", "-D", chain, fmt.Sprint(ruleNumber(t, node, "iptables", "nat", chain, "10.244.1.11:8080")))
		code, out = explainAll(t, node, state, cidr)
		if code != 3 || !strings.Contains(out, "DRIFT  it/web:echo/UDP IPv4") || !strings.Contains(out, "4 agree, 1 differ; 1 difference in the node's jumps and chains") {
			t.Errorf("one tamper: exit %d:\n%s", code, out)
		}
		proxy = restart()
		eventually(t, "--all agrees again", 10*time.Second, func() error {
			if code, out := explainAll(t, node, state, cidr); code != 0 {
				return fmt.Errorf("exit %d:\n%s", code, out)
			}
			return nil
		})
	})
	t.Logf("took %v", time.Since(start).Round(100*time.Millisecond))
}

// TestExplainLiveDualStack: the same on examples/dual-stack.yaml over both
// families (IPv6 through ip6tables-save).
func TestExplainLiveDualStack(t *testing.T) {
	start := time.Now()
	tp := newDualStackTopology(t)
	_, _, cli := tp.dsPods(t)
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
	node := tp.node
	top := t
	restart := func() *exec.Cmd { return startDualStackProxy(top, tp, state) }

	t.Run("explain --live agrees with real connections over both families", func(t *testing.T) {
		for _, f := range []flow{
			{name: "IPv6 cluster IP from a pod", ns: cli, network: "tcp6", from: "pod:fd00:10:244:1::20", target: "web.demo:http", addr: "[fd00:10:96::a]:80",
				verdict: "dnat", endpoints: []string{"srv1", "srv2"}, source: "fd00:10:244:1::20"},
			{name: "IPv4 cluster IP from a pod", ns: cli, network: "tcp4", from: "pod:10.244.1.20", target: "web.demo:http", addr: "10.96.10.10:80",
				verdict: "dnat", endpoints: []string{"srv1", "srv2"}, source: "10.244.1.20"},
			{name: "IPv6 node port from outside (masqueraded)", ns: tp.client, network: "tcp6", from: "external:2001:db8:50::2", target: "[2001:db8:50::1]:30080/tcp", addr: "[2001:db8:50::1]:30080",
				verdict: "dnat", endpoints: []string{"srv1", "srv2"}, masquerade: true, source: "2001:db8:50::2"},
			{name: "IPv6 ETP Local load-balancer IP from outside", ns: tp.client, network: "tcp6", from: "external:2001:db8:50::2", target: "[2001:db8:ffff::12]:80/tcp", addr: "[2001:db8:ffff::12]:80",
				verdict: "dnat", endpoints: []string{"srv1"}, source: "2001:db8:50::2"},
			{name: "IPv6 service without endpoints", ns: cli, network: "udp6", from: "pod:fd00:10:244:1::20", target: "[fd00:10:96::50]:80/udp", addr: "[fd00:10:96::50]:80", verdict: "reject"},
			{name: "IPv6 source outside loadBalancerSourceRanges", ns: tp.client2, network: "tcp6", from: "external:2001:db8:51::2", target: "[2001:db8:ffff::11]:80/tcp", addr: "[2001:db8:ffff::11]:80", verdict: "drop"},
		} {
			t.Run(f.name, func(t *testing.T) { checkFlow(t, node, state, dualStackCIDRs, f) })
		}
	})
	t.Run("an IPv6 endpoint's DNAT rule deleted by hand, then the next sync", func(t *testing.T) {
		args := []string{"--from", "pod:fd00:10:244:1::20", "web.demo:http"}
		ctStop(t, proxy)
		chain := chainOf(t, node, "ip6tables-save", "nat", "demo/web:http", "--to-destination [fd00:10:244:1::10]:8080")
		ipt(t, node, "ip6tables", "-t", "nat", "-D", chain, fmt.Sprint(ruleNumber(t, node, "ip6tables", "nat", chain, "[fd00:10:244:1::10]:8080")))
		x := wantDrift(t, node, state, dualStackCIDRs, []string{"missing-endpoint"}, []string{"[fd00:10:244:1::10]:8080 (p=0.5000 intended) is never reached"}, args...)
		if got := endpointSet(x.Results[0].Kernel.Endpoints); !slices.Equal(got, []string{"srv2"}) {
			t.Errorf("kernel endpoints %q, want srv2", got)
		}
		if hits, _, err := serversNet(cli, "tcp6", "[fd00:10:96::a]:80", 20); err != nil || !slices.Equal(keys(hits), []string{"srv2"}) {
			t.Errorf("connections reached %v (%v), want srv2 only, as explain says", hits, err)
		}
		proxy = restart()
		agreesAgain(t, node, state, dualStackCIDRs, args...)
	})
	t.Run("--all over both families", func(t *testing.T) {
		code, out := explainAll(t, node, state, dualStackCIDRs)
		if code != 0 || !strings.Contains(out, "0 differ; the node's jumps and chains agree") {
			t.Fatalf("intact: exit %d:\n%s", code, out)
		}
		ctStop(t, proxy)
		ipt(t, node, "ip6tables", "-D", "FORWARD", "-m", "comment", "--comment", "svcproxy-forward", "-j", "SVCP-FORWARD")
		code, out = explainAll(t, node, state, dualStackCIDRs)
		if code != 3 || !strings.Contains(out, "DRIFT  node IPv6: missing-jump: filter/FORWARD has no jump to SVCP-FORWARD") {
			t.Errorf("one tamper: exit %d:\n%s", code, out)
		}
		proxy = restart()
		eventually(t, "--all agrees again", 10*time.Second, func() error {
			if code, out := explainAll(t, node, state, dualStackCIDRs); code != 0 {
				return fmt.Errorf("exit %d:\n%s", code, out)
			}
			return nil
		})
	})
	t.Logf("took %v", time.Since(start).Round(100*time.Millisecond))
}
