//go:build vm

package vmtest

import (
	"bytes"
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

	"github.com/svcproxy/svcproxy/ipvs"
)

// explainState is a dual-stack ClusterIP Service it/web (10.96.1.10 and
// fd00:10:96::10, TCP 80 to 8080) with the endpoints srv1 and srv2 of both
// families on node1 (also the dual-stack takeover test's state).
const explainState = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: it}
  spec:
    clusterIP: 10.96.1.10
    clusterIPs: [10.96.1.10, "fd00:10:96::10"]
    ipFamilies: [IPv4, IPv6]
    ipFamilyPolicy: RequireDualStack
    ports: [{name: http, port: 80, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-4, namespace: it, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.1.10], conditions: {ready: true}, nodeName: node1}
  - {addresses: [10.244.1.11], conditions: {ready: true}, nodeName: node1}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-6, namespace: it, labels: {kubernetes.io/service-name: web}}
  addressType: IPv6
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: ["fd00:10:244:1::10"], conditions: {ready: true}, nodeName: node1}
  - {addresses: ["fd00:10:244:1::11"], conditions: {ready: true}, nodeName: node1}
`

// explainJSON is the part of `svcproxy explain -o json` this test reads.
type explainJSON struct {
	Mode    string `json:"mode"`
	Live    bool   `json:"live"`
	Results []struct {
		Source      string `json:"source"`
		Destination string `json:"destination"`
		Verdict     string `json:"verdict"`
		Endpoints   []struct {
			IP   string `json:"ip"`
			Port int    `json:"port"`
		} `json:"endpoints"`
		Masquerade bool `json:"masquerade"`
		Kernel     *struct {
			Verdict   string `json:"verdict"`
			Endpoints []struct {
				IP string `json:"ip"`
			} `json:"endpoints"`
		} `json:"kernel"`
		Drift []struct {
			Kind, Detail string
		} `json:"drift"`
	} `json:"results"`
}

// TestExplainLiveWithTheBinary runs the svcproxy daemon in IPVS mode on a
// dual-stack node from a --state file, and `svcproxy explain --live --mode
// ipvs -o json` for the Service's cluster IPs from a dual-stack pod (both
// its addresses: --from pod:IPv4,IPv6):
//
//   - the kernel agrees (exit 0), and the endpoints explain lists for each
//     family are exactly the servers real connections from that pod reach,
//     which see the pod's own address as explain says (no masquerade);
//   - one IPv4 real server deleted by hand with ipvsadm: exit 3, a
//     missing-endpoint drift naming it in the IPv4 result only, and the
//     kernel's endpoints explain lists are again the ones connections
//     reach (the other one only);
//   - the daemon restarted (its first sync lists the kernel and repairs
//     it): exit 0 again, and connections reach both servers.
func TestExplainLiveWithTheBinary(t *testing.T) {
	if _, err := os.Stat(svcproxyBin); err != nil {
		t.Fatalf("%s: %v (run hack/vm/run.sh with VM_WITH_SVCPROXY=1)", svcproxyBin, err)
	}
	start := time.Now()
	tp := newDualStackTopology(t)
	servers := map[string]string{} // address -> server name
	for _, s := range []struct{ name, ip4, ip6 string }{{"srv1", "10.244.1.10", srv1IP6}, {"srv2", "10.244.1.11", srv2IP6}} {
		ns := tp.addPod(t, s.name, s.ip4, s.ip6)
		startServer(t, ns, s.name, 8080)
		startServer6(t, ns, s.name, 8080)
		servers[s.ip4], servers[s.ip6] = s.name, s.name
	}
	const cliIP = "10.244.1.20"
	cli := tp.addPod(t, "cli", cliIP, cliIP6)
	dir := t.TempDir()
	state := filepath.Join(dir, "state.yaml")
	must(t, os.WriteFile(state, []byte(explainState), 0o644))
	flags := []string{"--mode=ipvs", "--state=" + state, "--hostname-override=node1", "--cluster-cidr=10.244.0.0/16," + clusterCIDR6}

	runs := 0
	daemon := func() *exec.Cmd {
		t.Helper()
		runs++
		logPath := filepath.Join(dir, fmt.Sprintf("svcproxy-%d.log", runs))
		log, err := os.Create(logPath)
		must(t, err)
		cmd := exec.Command(svcproxyBin, append(flags, "--min-sync-period=100ms", "--sync-period=1h",
			"--healthz-bind-address=", "--metrics-bind-address=", "-v=2")...)
		cmd.Stdout, cmd.Stderr = log, log
		must(t, inNS(tp.node, cmd.Start)) // started from the node's namespace, it lives there
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				out, _ := os.ReadFile(logPath)
				t.Logf("svcproxy --mode=ipvs log %d:\n%s", runs, out)
			}
		})
		return cmd
	}
	targets := []string{addr("10.96.1.10", 80), addr("fd00:10:96::10", 80)}
	// reached connects n times from cli to target and returns the servers'
	// addresses that answered, and the sources they saw.
	reached := func(target string, n int) (eps, sources []string) {
		t.Helper()
		for range n {
			a, err := dial(cli, "tcp", target)
			if err != nil {
				t.Fatalf("cli -> %s: %v", target, err)
			}
			for ip, name := range servers {
				if name == a.Server && is6(ip) == strings.HasPrefix(target, "[") && !slices.Contains(eps, ip) {
					eps = append(eps, ip)
				}
			}
			if !slices.Contains(sources, a.Source) {
				sources = append(sources, a.Source)
			}
		}
		slices.Sort(eps)
		return eps, sources
	}
	waitServing := func(what string) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for _, target := range targets {
			for {
				_, err := dial(cli, "tcp", target)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: cli -> %s never answered: %v", what, target, err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
		t.Logf("%s: serving after %v", what, time.Since(start).Round(100*time.Millisecond))
	}
	run := func(args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(svcproxyBin, append(append([]string{"explain"}, flags...), args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		began := time.Now()
		err := inNS(tp.node, cmd.Run)
		code := 0
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			code = ee.ExitCode()
		case err != nil:
			t.Fatal(err)
		}
		t.Logf("explain %s: exit %d in %v", strings.Join(args, " "), code, time.Since(began).Round(10*time.Millisecond))
		return code, out.String(), errOut.String()
	}
	explain := func() (int, explainJSON, string) {
		t.Helper()
		code, out, errOut := run("--live", "-o", "json", "--from", "pod:"+cliIP+","+cliIP6, "web.it:http")
		var x explainJSON
		if code == 0 || code == 3 {
			if err := json.Unmarshal([]byte(out), &x); err != nil {
				t.Fatalf("explain exit %d: %v:\n%s\nstderr:\n%s", code, err, out, errOut)
			}
		}
		return code, x, out + errOut
	}
	ips := func(eps []struct {
		IP   string `json:"ip"`
		Port int    `json:"port"`
	}) []string {
		var out []string
		for _, e := range eps {
			out = append(out, e.IP)
		}
		slices.Sort(out)
		return out
	}

	d := daemon()
	waitServing("first start")
	code, x, raw := explain()
	if code != 0 || x.Mode != "ipvs" || !x.Live || len(x.Results) != 2 {
		t.Fatalf("intact: exit %d, mode %q, live %v, %d results, want 0, ipvs, live, 2:\n%s", code, x.Mode, x.Live, len(x.Results), raw)
	}
	for i, r := range x.Results {
		if r.Destination != targets[i] || r.Verdict != "dnat" || len(r.Drift) != 0 {
			t.Errorf("result %d: %s %s, drift %v:\n%s", i, r.Destination, r.Verdict, r.Drift, raw)
		}
		eps, sources := reached(r.Destination, 12)
		if want := ips(r.Endpoints); !slices.Equal(eps, want) {
			t.Errorf("%s: connections reached %v, explain lists %v", r.Destination, eps, want)
		}
		// masquerade false: the servers see the pod's own address.
		if r.Masquerade || !slices.Equal(sources, []string{r.Source}) {
			t.Errorf("%s: masquerade %v, the servers saw %v, the pod is %s", r.Destination, r.Masquerade, sources, r.Source)
		}
	}

	// One IPv4 real server deleted by hand.
	var del bytes.Buffer
	ipvsadm := exec.Command("ipvsadm", "-d", "-t", "10.96.1.10:80", "-r", "10.244.1.11:8080")
	ipvsadm.Stdout, ipvsadm.Stderr = &del, &del
	if err := inNS(tp.node, ipvsadm.Run); err != nil {
		t.Fatalf("ipvsadm -d: %v: %s", err, del.String())
	}
	code, x, raw = explain()
	if code != 3 || len(x.Results) != 2 {
		t.Fatalf("a real server deleted: exit %d, %d results, want 3 and 2:\n%s", code, len(x.Results), raw)
	}
	r4, r6 := x.Results[0], x.Results[1]
	if len(r4.Drift) != 1 || r4.Drift[0].Kind != "missing-endpoint" || !strings.Contains(r4.Drift[0].Detail, "10.244.1.11:8080") {
		t.Errorf("IPv4 drift %v, want one missing-endpoint naming 10.244.1.11:8080:\n%s", r4.Drift, raw)
	}
	if len(r6.Drift) != 0 {
		t.Errorf("IPv6 drift %v, want none", r6.Drift)
	}
	var kernel []string
	if r4.Kernel != nil {
		for _, e := range r4.Kernel.Endpoints {
			kernel = append(kernel, e.IP)
		}
	}
	if eps, _ := reached(r4.Destination, 6); !slices.Equal(eps, kernel) || !slices.Equal(kernel, []string{"10.244.1.10"}) {
		t.Errorf("after the deletion connections reach %v, explain says the kernel has %v, want [10.244.1.10] both", eps, kernel)
	}
	// The same as text, and the node self-check: both say it too (and the
	// log shows what an operator sees).
	code, text, errOut := run("--live", "--from", "pod:"+cliIP+","+cliIP6, "web.it:http")
	if code != 3 || !strings.Contains(text, "missing-endpoint: endpoint 10.244.1.11:8080: missing in the kernel") {
		t.Errorf("text: exit %d:\n%s%s", code, text, errOut)
	}
	t.Logf("svcproxy explain --live --mode ipvs --from pod:%s,%s web.it:http\n%s", cliIP, cliIP6, text)
	code, text, errOut = run("--live", "--all")
	if code != 3 || !strings.Contains(text, "DRIFT  it/web:http/TCP IPv4") || !strings.Contains(text, "ok     it/web:http/TCP IPv6") {
		t.Errorf("--all: exit %d:\n%s%s", code, text, errOut)
	}
	t.Logf("svcproxy explain --live --all --mode ipvs\n%s", text)

	// The daemon's next sync: a restart, whose first sync lists the kernel.
	d.Process.Signal(syscall.SIGTERM)
	if err := d.Wait(); err != nil {
		t.Fatalf("svcproxy exited with %v after SIGTERM", err)
	}
	d = daemon()
	deadline := time.Now().Add(45 * time.Second)
	for {
		if code, x, raw = explain(); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a restart: exit %d, not 0 within 45 s:\n%s", code, raw)
		}
		time.Sleep(time.Second)
	}
	if eps, _ := reached(targets[0], 12); !slices.Equal(eps, ips(x.Results[0].Endpoints)) || len(eps) != 2 {
		t.Errorf("after the restart connections reach %v, explain lists %v", eps, ips(x.Results[0].Endpoints))
	}

	// An ipset entry deleted by hand (the daemon stopped, so that no sync
	// repairs it meanwhile): the filter now rejects the cluster IP as a
	// service address without that port; explain says so, exit 3, and
	// connections are indeed refused. The next start repairs it.
	d.Process.Signal(syscall.SIGTERM)
	if err := d.Wait(); err != nil {
		t.Fatalf("svcproxy exited with %v after SIGTERM", err)
	}
	var ipsetOut bytes.Buffer
	ipset := exec.Command("ipset", "del", ipvs.SetClusterIP, "10.96.1.10,tcp:80")
	ipset.Stdout, ipset.Stderr = &ipsetOut, &ipsetOut
	if err := inNS(tp.node, ipset.Run); err != nil {
		t.Fatalf("ipset del: %v: %s", err, ipsetOut.String())
	}
	code, x, raw = explain()
	if code != 3 || len(x.Results) != 2 || !strings.Contains(raw, "verdict") || !strings.Contains(raw, "reject") {
		t.Fatalf("an ipset entry deleted: exit %d, want 3 and a verdict drift to reject:\n%s", code, raw)
	}
	if _, err := dial(cli, "tcp", targets[0]); err == nil {
		t.Errorf("%s still answers without its %s entry: explain says it is rejected", targets[0], ipvs.SetClusterIP)
	}
	d = daemon()
	deadline = time.Now().Add(45 * time.Second)
	for {
		if code, _, raw = explain(); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the ipset entry's repair: exit %d, not 0 within 45 s:\n%s", code, raw)
		}
		time.Sleep(time.Second)
	}
	t.Logf("done in %v", time.Since(start).Round(100*time.Millisecond))
}
