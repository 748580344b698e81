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

// driftRepairBound is how fast svcproxy must repair each fault: it checks
// for drift every 2 s and then runs a full sync.
const driftRepairBound = 5 * time.Second

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
// Each time, within 5 s, svcproxy's iptables rules must be back exactly as
// before the fault, the link must hold the ClusterIP again, and a new
// connection must be answered; the time each repair took is logged. Stream
// connections may fail only between a fault and its repair.
func TestDriftRepairWithTheBinary(t *testing.T) {
	if _, err := os.Stat(svcproxyBin); err != nil {
		t.Fatalf("%s: %v (run hack/vm/run.sh with VM_WITH_SVCPROXY=1)", svcproxyBin, err)
	}
	tp := newTopology(t)
	for _, n := range []struct{ name, ip string }{{"srv1", "10.244.1.10"}, {"srv2", "10.244.1.11"}} {
		startServer(t, tp.addPod(t, n.name, n.ip), n.name, 8080)
	}
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
		"--cluster-cidr=10.244.0.0/16", "--min-sync-period=100ms", "--healthz-bind-address=",
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
	// probe is one new connection with a short timeout.
	probe := func() error {
		var c net.Conn
		err := inNS(cli, func() error {
			var err error
			c, err = net.DialTimeout("tcp4", target, 300*time.Millisecond)
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
	deadline := time.Now().Add(30 * time.Second)
	for probe() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered after svcproxy started", target)
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
	var want []string
	deadline = time.Now().Add(10 * time.Second)
	for {
		want = ourRules()
		if slices.ContainsFunc(want, func(l string) bool { return strings.Contains(l, "-A PREROUTING") }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("svcproxy's nat jumps never appeared: %v", want)
		}
		time.Sleep(100 * time.Millisecond)
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

	// The stream: a new connection every 5 ms, all the test long.
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
			case <-time.After(5 * time.Millisecond):
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
	for round := 1; round <= 2; round++ {
		for _, f := range faults {
			m0 := metrics()
			start := time.Now()
			if err := f.inject(); err != nil {
				t.Fatalf("injecting %q: %v", f.name, err)
			}
			// Did the fault break the service? One try right away.
			brokeErr := probe()
			var rulesBack, linkBack, answered time.Duration
			for time.Since(start) < 2*driftRepairBound {
				if rulesBack == 0 && slices.Equal(ourRules(), want) {
					rulesBack = time.Since(start)
				}
				if linkBack == 0 && hasTarget() {
					linkBack = time.Since(start)
				}
				if rulesBack > 0 && linkBack > 0 {
					if err := probe(); err == nil {
						answered = time.Since(start)
						break
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			end := time.Now()
			windows = append(windows, window{f.name, start, end})
			m1 := metrics()
			drift := m1["svcproxy_drift_detected_total"] - m0["svcproxy_drift_detected_total"]
			syncFailures := m1["svcproxy_sync_proxy_rules_failures_total"] - m0["svcproxy_sync_proxy_rules_failures_total"]
			broke := "the service still answered right after the fault"
			if brokeErr != nil {
				broke = "right after the fault a new connection failed: " + brokeErr.Error()
			}
			t.Logf("round %d, %s: rules back after %v, %s holds %s after %v, answered after %v; drift detections %v, failed syncs %v; %s",
				round, f.name, rulesBack.Round(time.Millisecond), ipvs.DummyInterface, targetIP, linkBack.Round(time.Millisecond),
				answered.Round(time.Millisecond), drift, syncFailures, broke)
			switch {
			case answered == 0:
				t.Errorf("round %d, %s: not repaired within %v (rules back: %v, address back: %v); rules now:\n%s\nwant:\n%s",
					round, f.name, 2*driftRepairBound, rulesBack > 0, linkBack > 0, strings.Join(ourRules(), "\n"), strings.Join(want, "\n"))
			case answered > driftRepairBound:
				t.Errorf("round %d, %s: repaired after %v, want within %v", round, f.name, answered, driftRepairBound)
			}
			time.Sleep(time.Duration(1000+r.Intn(1000)) * time.Millisecond)
		}
	}
	close(stateStop)
	<-stateDone
	close(streamStop)
	<-streamDone

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
		i := slices.IndexFunc(windows, func(w window) bool { return !tr.at.Before(w.start) && !tr.at.After(w.end) })
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
// (10.96.1.10:80 -> srv1, srv2), always the same, and 5 to 25 other
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
