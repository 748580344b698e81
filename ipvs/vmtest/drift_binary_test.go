//go:build vm

package vmtest

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
)

// driftSeed makes the state file's changes the same every run.
const driftSeed = 9

const fullSyncCount = "kubeproxy_sync_full_proxy_rules_duration_seconds_count"

// driftRepairBound is how fast svcproxy must repair each fault in the VM.
// On a real node it is about 2 s (a drift check every 2 s, then a full
// sync), and the integration fault test holds iptables mode to 5 s on the
// host's kernel; the VM emulates its one CPU (qemu -accel tcg), where one
// drift check takes 0.5–3 s and a full sync of this small state 1–18 s on
// a loaded host. So here the bound proves the repair happens without a
// restart or a periodic full sync (--sync-period is an hour in this test),
// and each repair's time is logged with svcproxy's timeline.
const driftRepairBound = 30 * time.Second

// TestDriftRepairWithTheBinary runs the svcproxy program in IPVS mode with
// --state on the node, under a stream of new TCP connections from a pod to
// a ClusterIP, while the state file changes every 1–2 s (other Services
// come and go, their endpoints and ports change), and breaks its data plane
// from outside, twice each:
//
//   - iptables -t nat -F; iptables -t nat -X (a firewall reload);
//   - the jump from nat PREROUTING into SVCP-IPVS-SERVICES deleted;
//   - ip link del svcproxy-ipvs0: its addresses go with it, and IPVS sees
//     no packet to a service address until they are back;
//   - one address (the streamed ClusterIP) deleted from svcproxy-ipvs0.
//
// Each time, within driftRepairBound, svcproxy's iptables rules must be back exactly as
// before the fault, the link must hold the ClusterIP again, and new
// connections must be answered: the pod's to the ClusterIP, and srv1's to
// itself through a second Service (hairpin: answered only if svcproxy's nat
// rules masquerade it, so the nat faults break it). The time each repair
// took is logged, with svcproxy's drift detections and syncs meanwhile.
// Stream connections may fail only while a fault is unrepaired.
//
// See driftRepairBound for why the VM's bound is looser than a node's.
func TestDriftRepairWithTheBinary(t *testing.T) {
	if _, err := os.Stat(svcproxyBin); err != nil {
		t.Fatalf("%s: %v (run hack/vm/run.sh with VM_WITH_SVCPROXY=1)", svcproxyBin, err)
	}
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, tp.addPod(t, "srv2", "10.244.1.11"), "srv2", 8080)
	cli := tp.addPod(t, "cli", "10.244.1.20")
	p := newProxier(t, tp) // only to look at the kernel
	hn := handle(t, tp.node)
	var variant iptables.Variant
	must(t, inNS(tp.node, func() error { variant = iptables.DetectVariant(); return nil }))
	ipt := "iptables-" + string(variant)

	dir := t.TempDir()
	state := filepath.Join(dir, "state.yaml")
	r := rand.New(rand.NewSource(driftSeed))
	writeState := func(gen int) {
		t.Helper()
		tmp := state + ".tmp"
		must(t, os.WriteFile(tmp, []byte(driftState(r, gen)), 0o644))
		must(t, os.Rename(tmp, state)) // never a half-written file
	}
	writeState(0)

	logPath := filepath.Join(dir, "svcproxy.log")
	logFile, err := os.Create(logPath)
	must(t, err)
	cmd := exec.Command(svcproxyBin, "--mode=ipvs", "--state="+state, "--hostname-override=node1",
		"--cluster-cidr=10.244.0.0/16", "--min-sync-period=100ms", "--sync-period=1h", "--healthz-bind-address=",
		"--metrics-bind-address=127.0.0.1:10249", "-v=2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	must(t, inNS(tp.node, cmd.Start))
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("svcproxy --mode=ipvs log:\n%s", out)
		}
	})

	const target = "10.96.1.10:80"
	targetIP := netip.MustParseAddr("10.96.1.10")
	// hairpin is a Service whose only endpoint, srv1, calls it: the
	// answer comes back only if svcproxy's nat POSTROUTING rules
	// masquerade it (the nat faults break this one).
	const hairpin = "10.96.1.11:80"
	// probe is one new connection from ns to addr with a short timeout.
	probe := func(ns nsHandle, addr string) error {
		var c net.Conn
		err := inNS(ns, func() error {
			var err error
			c, err = net.DialTimeout("tcp4", addr, 300*time.Millisecond)
			return err
		})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		_, err = io.ReadAll(io.LimitReader(c, 1)) // the greeting's first byte
		return err
	}
	// works: the pod's connection to target and srv1's to itself through
	// hairpin are both answered.
	works := func() error {
		if err := probe(cli, target); err != nil {
			return fmt.Errorf("cli -> %s: %w", target, err)
		}
		if err := probe(srv1, hairpin); err != nil {
			return fmt.Errorf("srv1 -> %s (hairpin): %w", hairpin, err)
		}
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := works()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never answered after svcproxy started: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// svcproxy's iptables rules as first programmed: a fixed handful in
	// IPVS mode, whatever the services, so they must come back the same.
	ourRules := func() []string {
		var out []string
		must(t, inNS(tp.node, func() error {
			b, err := exec.Command(ipt + "-save").Output()
			if err != nil {
				return err
			}
			table := ""
			for _, l := range strings.Split(string(b), "\n") {
				switch {
				case strings.HasPrefix(l, "*"):
					table = l[1:]
				case strings.HasPrefix(l, ":SVCP-IPVS-"):
					out = append(out, table+" "+strings.Fields(l)[0])
				case strings.HasPrefix(l, "-A ") && strings.Contains(l, "SVCP-IPVS-"):
					out = append(out, table+" "+l)
				}
			}
			return nil
		}))
		slices.Sort(out)
		return out
	}
	// The rules are complete once the six jumps from the built-in chains
	// are in (they go in last).
	jumps := func(rules []string) int {
		n := 0
		for _, l := range rules {
			for _, c := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
				if strings.Contains(l, " -A "+c+" ") {
					n++
				}
			}
		}
		return n
	}
	var want []string
	deadline = time.Now().Add(30 * time.Second)
	for {
		want = ourRules()
		if jumps(want) == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("svcproxy's jumps never all appeared: %v", want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("svcproxy's iptables rules (%d lines): %s", len(want), strings.Join(want, " | "))

	metrics := func() map[string]float64 {
		out := map[string]float64{}
		client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				err = inNS(tp.node, func() error {
					var d net.Dialer
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			}}}
		resp, err := client.Get("http://127.0.0.1:10249/metrics")
		if err != nil {
			t.Logf("metrics: %v", err)
			return out
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) == 2 && !strings.HasPrefix(l, "#") {
				if v, err := strconv.ParseFloat(f[1], 64); err == nil {
					name, _, _ := strings.Cut(f[0], "{")
					out[name] += v
				}
			}
		}
		return out
	}

	// The stream: a new connection every 20 ms, all the test long (the VM
	// has one emulated CPU: the test's own load slows svcproxy down).
	type try struct {
		at, end time.Time
		err     error
	}
	var (
		mu    sync.Mutex
		tries []try
	)
	streamStop, streamDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(streamDone)
		for {
			select {
			case <-streamStop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			_, err := dial(cli, "tcp", target)
			mu.Lock()
			tries = append(tries, try{at: start, end: time.Now(), err: err})
			mu.Unlock()
		}
	}()
	// The state file changes every 1–2 s.
	stateStop, stateDone := make(chan struct{}), make(chan struct{})
	stateWrites := 0
	go func() {
		defer close(stateDone)
		wr := rand.New(rand.NewSource(driftSeed + 1))
		for gen := 1; ; gen++ {
			select {
			case <-stateStop:
				return
			case <-time.After(time.Second + time.Duration(wr.Int63n(int64(time.Second)))):
			}
			tmp := state + ".tmp"
			if err := os.WriteFile(tmp, []byte(driftState(wr, gen)), 0o644); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, state); err != nil {
				t.Error(err)
				return
			}
			stateWrites++
		}
	}()
	var stopOnce sync.Once
	stopBackground := func() {
		stopOnce.Do(func() {
			close(stateStop)
			<-stateDone
			close(streamStop)
			<-streamDone
		})
	}
	defer stopBackground()
	time.Sleep(2 * time.Second)

	inNode := func(name string, args ...string) error {
		return inNS(tp.node, func() error {
			if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
				return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
			}
			return nil
		})
	}
	hasTarget := func() bool {
		var addrs []netip.Addr
		err := inNS(tp.node, func() error {
			var err error
			addrs, err = p.kernel.ListAddresses(ipvs.DummyInterface)
			return err
		})
		return err == nil && slices.Contains(addrs, targetIP)
	}
	faults := []struct {
		name   string
		inject func() error
	}{
		{"iptables -t nat -F; iptables -t nat -X", func() error {
			if err := inNode(ipt, "-t", "nat", "-F"); err != nil {
				return err
			}
			return inNode(ipt, "-t", "nat", "-X")
		}},
		{"delete the jump nat PREROUTING -> " + ipvs.ServicesChain, func() error {
			var rules []string
			if err := inNS(tp.node, func() error {
				var err error
				rules, err = p.ipt.ListRules(iptables.TableNAT, "PREROUTING")
				return err
			}); err != nil {
				return err
			}
			for i, r := range rules {
				if strings.HasSuffix(r, "-j "+ipvs.ServicesChain) {
					return inNode(ipt, "-t", "nat", "-D", "PREROUTING", strconv.Itoa(i+1))
				}
			}
			return fmt.Errorf("no jump to %s in nat PREROUTING: %q", ipvs.ServicesChain, rules)
		}},
		{"ip link del " + ipvs.DummyInterface, func() error {
			l, err := hn.LinkByName(ipvs.DummyInterface)
			if err != nil {
				return err
			}
			return hn.LinkDel(l)
		}},
		{"ip addr del " + targetIP.String() + "/32 dev " + ipvs.DummyInterface, func() error {
			l, err := hn.LinkByName(ipvs.DummyInterface)
			if err != nil {
				return err
			}
			return hn.AddrDel(l, ipNet(targetIP.String()+"/32"))
		}},
	}
	type window struct {
		name       string
		start, end time.Time
	}
	var windows []window
	type outcome struct {
		round                         int
		name                          string
		start                         time.Time
		rulesBack, linkBack, answered time.Duration
		drift, syncFailures           float64
		broke                         error
	}
	var outcomes []outcome
	for round := 1; round <= 2; round++ {
		for _, f := range faults {
			m0 := metrics()
			start := time.Now()
			if err := f.inject(); err != nil {
				t.Fatalf("injecting %q: %v", f.name, err)
			}
			o := outcome{round: round, name: f.name, start: start}
			// Did the fault break the service? One try right away.
			o.broke = works()
			// Light polling: the VM has one emulated CPU, and every
			// iptables-save here (hundreds of milliseconds under tcg) is
			// CPU that svcproxy does not get. The rules are listed at
			// once, after each full sync svcproxy reports, and every
			// 2 s; addresses (netlink) and probes are cheap.
			fulls := m0[fullSyncCount]
			for i := 0; time.Since(start) < 2*driftRepairBound; i++ {
				if o.rulesBack == 0 {
					m := metrics()
					if i == 0 || i%20 == 19 || m[fullSyncCount] > fulls {
						fulls = m[fullSyncCount]
						if slices.Equal(ourRules(), want) {
							o.rulesBack = time.Since(start)
						}
					}
				}
				if o.linkBack == 0 && hasTarget() {
					o.linkBack = time.Since(start)
				}
				if o.rulesBack > 0 && o.linkBack > 0 {
					if err := works(); err == nil {
						o.answered = time.Since(start)
						break
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
			end := time.Now()
			windows = append(windows, window{f.name, start, end})
			m1 := metrics()
			o.drift = m1["svcproxy_drift_detected_total"] - m0["svcproxy_drift_detected_total"]
			o.syncFailures = m1["svcproxy_sync_proxy_rules_failures_total"] - m0["svcproxy_sync_proxy_rules_failures_total"]
			outcomes = append(outcomes, o)
			if o.answered == 0 {
				logText, _ := os.ReadFile(logPath)
				t.Errorf("round %d, %s (at %s): not repaired within %v (rules back: %v, address back: %v); svcproxy meanwhile:\n%s\nrules now:\n%s\nwant:\n%s",
					round, f.name, start.Format("15:04:05.000"), 2*driftRepairBound, o.rulesBack > 0, o.linkBack > 0,
					syncTimeline(string(logText), start, time.Now()), strings.Join(ourRules(), "\n"), strings.Join(want, "\n"))
				// Where is svcproxy stuck? SIGQUIT makes the Go runtime
				// print every goroutine's stack (to the log) and exit.
				cmd.Process.Signal(syscall.SIGQUIT)
				time.Sleep(3 * time.Second)
				stopBackground()
				t.FailNow() // the log, with the stacks, is printed by the cleanup
			}
			time.Sleep(time.Duration(1000+r.Intn(1000)) * time.Millisecond)
		}
	}
	logText, _ := os.ReadFile(logPath)
	for _, o := range outcomes {
		broke := "right after the fault both probes were still answered"
		if o.broke != nil {
			broke = "right after the fault: " + o.broke.Error()
		}
		ms := func(d time.Duration) string {
			if d == 0 {
				return "never"
			}
			return d.Round(time.Millisecond).String()
		}
		t.Logf("round %d, %s at %s: rules as before after %s, %s on %s after %s, answered after %s; drift detections %v, failed syncs %v; %s\n%s",
			o.round, o.name, o.start.Format("15:04:05.000"), ms(o.rulesBack), targetIP, ipvs.DummyInterface, ms(o.linkBack), ms(o.answered),
			o.drift, o.syncFailures, broke, syncTimeline(string(logText), o.start, o.start.Add(max(o.answered, o.rulesBack, o.linkBack)+time.Second)))
		if o.answered > driftRepairBound {
			t.Errorf("round %d, %s: service answered again after %v, want within %v", o.round, o.name, o.answered.Round(time.Millisecond), driftRepairBound)
		}
	}
	stopBackground()

	mu.Lock()
	defer mu.Unlock()
	perWindow := make([]int, len(windows))
	var outside []string
	failed := 0
	for _, tr := range tries {
		if tr.err == nil {
			continue
		}
		failed++
		// A connection under way when a fault hit counts for that fault.
		i := slices.IndexFunc(windows, func(w window) bool { return !tr.end.Before(w.start) && !tr.at.After(w.end) })
		if i >= 0 {
			perWindow[i]++
			continue
		}
		outside = append(outside, fmt.Sprintf("%s: %v", tr.at.Format("15:04:05.000"), tr.err))
	}
	for i, w := range windows {
		t.Logf("stream during %q (%v): %d failed connections", w.name, w.end.Sub(w.start).Round(time.Millisecond), perWindow[i])
	}
	t.Logf("stream: %d connections, %d failed (%d outside a fault's window); state file rewritten %d times",
		len(tries), failed, len(outside), stateWrites)
	if len(outside) > 0 {
		t.Errorf("%d connections failed outside any fault's window:\n%s", len(outside), strings.Join(outside, "\n"))
	}
	if len(tries) < 100 {
		t.Errorf("only %d connections in the stream", len(tries))
	}
}

// driftState returns a --state file: the streamed Service web
// (10.96.1.10:80 -> srv1, srv2) and hairpin (10.96.1.11:80 -> srv1),
// always the same, and 5 to 25 other
// Services whose addresses, ports, types and endpoints change with every
// generation.
func driftState(r *rand.Rand, gen int) string {
	var b strings.Builder
	b.WriteString(`apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: it}
  spec:
    clusterIP: 10.96.1.10
    ports: [{name: http, port: 80, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: it, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.1.10], conditions: {ready: true}, nodeName: node1}
  - {addresses: [10.244.1.11], conditions: {ready: true}, nodeName: node1}
- apiVersion: v1
  kind: Service
  metadata: {name: hairpin, namespace: it}
  spec:
    clusterIP: 10.96.1.11
    ports: [{name: http, port: 80, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: hairpin-1, namespace: it, labels: {kubernetes.io/service-name: hairpin}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.1.10], conditions: {ready: true}, nodeName: node1}
`)
	n := 5 + r.Intn(21)
	names, ips, nodePorts := map[string]bool{}, map[string]bool{}, map[int]bool{}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("other-%d", r.Intn(40))
		ip := fmt.Sprintf("10.96.2.%d", 1+r.Intn(250))
		if names[name] || ips[ip] {
			continue
		}
		names[name], ips[ip] = true, true
		proto := []string{"TCP", "UDP", "SCTP"}[r.Intn(3)]
		port := 1 + r.Intn(65535)
		typ, nodePort := "ClusterIP", ""
		if np := 30000 + r.Intn(2768); r.Intn(4) == 0 && !nodePorts[np] {
			nodePorts[np] = true
			typ, nodePort = "NodePort", fmt.Sprintf(", nodePort: %d", np)
		}
		affinity := ""
		if r.Intn(4) == 0 {
			affinity = "\n    sessionAffinity: ClientIP\n    sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}"
		}
		fmt.Fprintf(&b, `- apiVersion: v1
  kind: Service
  metadata: {name: %s, namespace: it, annotations: {generation: "%d"}}
  spec:
    type: %s
    clusterIP: %s
    ports: [{name: p, port: %d, protocol: %s%s}]%s
`, name, gen, typ, ip, port, proto, nodePort, affinity)
		var eps []string
		used := map[int]bool{}
		for k := r.Intn(4); k > 0; k-- {
			if host := 30 + r.Intn(50); !used[host] {
				used[host] = true
				eps = append(eps, fmt.Sprintf("  - {addresses: [10.244.1.%d], conditions: {ready: %v}, nodeName: node1}", host, r.Intn(5) > 0))
			}
		}
		if len(eps) == 0 {
			continue // no slice: a service without endpoints
		}
		fmt.Fprintf(&b, `- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: %s-1, namespace: it, labels: {kubernetes.io/service-name: %s}}
  addressType: IPv4
  ports: [{name: p, port: %d, protocol: %s}]
  endpoints:
%s
`, name, name, 1+r.Intn(65535), proto, strings.Join(eps, "\n"))
	}
	return b.String()
}

// syncTimeline picks from svcproxy's log the drift detections, syncs and
// sync failures logged between from and to, each with its offset from
// from: where the time to repair went.
func syncTimeline(log string, from, to time.Time) string {
	var b strings.Builder
	for _, l := range strings.Split(log, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || len(f[0]) != 5 || (f[0][0] != 'I' && f[0][0] != 'E') {
			continue
		}
		at, err := time.ParseInLocation("0102 15:04:05.000000", f[0][1:]+" "+f[1], from.Location())
		if err != nil {
			continue
		}
		at = at.AddDate(from.Year(), 0, 0)
		if at.Before(from) || at.After(to) {
			continue
		}
		msg := strings.Join(f[4:], " ")
		switch {
		case strings.Contains(msg, `"Rules changed outside svcproxy`):
			i := strings.Index(msg, "drift=")
			fmt.Fprintf(&b, "        +%v drift detected: %s\n", at.Sub(from).Round(time.Millisecond), msg[i:])
		case strings.Contains(msg, `"Synced rules"`):
			took := ""
			if i := strings.Index(msg, "took=\""); i >= 0 {
				took = msg[i+6:]
				took = took[:strings.Index(took, "\"")]
			}
			fmt.Fprintf(&b, "        +%v sync ended: %s took %s\n", at.Sub(from).Round(time.Millisecond), strings.Fields(msg)[2], took)
		case strings.Contains(msg, `"Sync failed`):
			fmt.Fprintf(&b, "        +%v sync failed: %s\n", at.Sub(from).Round(time.Millisecond), msg)
		}
	}
	return strings.TrimRight(b.String(), "\n")
}
