//go:build integration

// Package integration runs the real svcproxy binary against the real
// iptables-restore inside network namespaces it creates, and checks real
// TCP and UDP connections. It needs root.
package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"
)

var svcproxyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "svcproxy-it")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	svcproxyBin = filepath.Join(dir, "svcproxy")
	if out, err := exec.Command("go", "build", "-o", svcproxyBin, "../../cmd/svcproxy").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building svcproxy: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// stateTmpl is a kubectl-style state file; .Web lists web's endpoints.
var stateTmpl = template.Must(template.New("state").Parse(`apiVersion: v1
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
{{- range .Web}}
  - {addresses: [{{.}}], conditions: {ready: true}, nodeName: node1}
{{- end}}
- apiVersion: v1
  kind: Service
  metadata: {name: sticky, namespace: it}
  spec:
    clusterIP: 10.96.1.12
    sessionAffinity: ClientIP
    sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
    ports:
    - {name: http, port: 80, protocol: TCP}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: sticky-1, namespace: it, labels: {kubernetes.io/service-name: sticky}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
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
{{- if .Extra}}
- apiVersion: v1
  kind: Service
  metadata: {name: extra, namespace: it}
  spec:
    clusterIP: 10.96.1.15
    ports: [{name: http, port: 8000, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: extra-1, namespace: it, labels: {kubernetes.io/service-name: extra}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.1.11], conditions: {ready: true}, nodeName: node1}
{{- end}}
`))

type stateData struct {
	Web   []string
	Extra bool
}

func writeState(t *testing.T, path string, d stateData) {
	t.Helper()
	var b strings.Builder
	if err := stateTmpl.Execute(&b, d); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startProxy runs svcproxy in the node namespace and returns its process.
func startProxy(t *testing.T, tp *topology, state string) *exec.Cmd {
	t.Helper()
	return startProxyWith(t, tp, state, nil)
}

// eventually retries fn until it succeeds or the deadline passes.
func eventually(t *testing.T, what string, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// servers dials n times and returns how often each server answered and the
// set of source addresses the servers saw.
func servers(ns, proto, addr string, n int) (map[string]int, map[string]bool, error) {
	hits, sources := map[string]int{}, map[string]bool{}
	for i := 0; i < n; i++ {
		a, err := dial(ns, proto, addr, 2*time.Second)
		if err != nil {
			return hits, sources, fmt.Errorf("connection %d to %s/%s: %w", i, proto, addr, err)
		}
		hits[a.Server]++
		sources[a.Source] = true
	}
	return hits, sources, nil
}

func TestProxyEndToEnd(t *testing.T) {
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	srv2 := tp.addPod(t, "srv2", "10.244.1.11")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, srv2, "srv2", 8080)

	state := filepath.Join(t.TempDir(), "state.yaml")
	writeState(t, state, stateData{Web: []string{"10.244.1.10", "10.244.1.11"}})
	proxy := startProxy(t, tp, state)

	eventually(t, "first sync", 10*time.Second, func() error {
		_, err := dial(cli, "tcp", "10.96.1.10:80", time.Second)
		return err
	})

	t.Run("ClusterIP TCP from a pod reaches every endpoint, no masquerade", func(t *testing.T) {
		hits, sources, err := servers(cli, "tcp", "10.96.1.10:80", 40)
		if err != nil {
			t.Fatal(err)
		}
		if hits["srv1"] == 0 || hits["srv2"] == 0 {
			t.Errorf("endpoints reached: %v, want both", hits)
		}
		if len(sources) != 1 || !sources["10.244.1.20"] {
			t.Errorf("servers saw sources %v, want only the pod 10.244.1.20", sources)
		}
	})
	t.Run("ClusterIP UDP from a pod reaches every endpoint", func(t *testing.T) {
		hits, _, err := servers(cli, "udp", "10.96.1.10:80", 40)
		if err != nil {
			t.Fatal(err)
		}
		if hits["srv1"] == 0 || hits["srv2"] == 0 {
			t.Errorf("endpoints reached: %v, want both", hits)
		}
	})
	t.Run("NodePort from outside is masqueraded (externalTrafficPolicy Cluster)", func(t *testing.T) {
		for _, proto := range []string{"tcp", "udp"} {
			hits, sources, err := servers(tp.client, proto, "192.168.50.1:30080", 30)
			if err != nil {
				t.Fatal(err)
			}
			if hits["srv1"] == 0 || hits["srv2"] == 0 {
				t.Errorf("%s endpoints reached: %v, want both", proto, hits)
			}
			if sources["192.168.50.2"] {
				t.Errorf("%s: servers saw the client address %v; want it masqueraded", proto, sources)
			}
		}
	})
	t.Run("NodePort with externalTrafficPolicy Local keeps the client address, local endpoint only", func(t *testing.T) {
		hits, sources, err := servers(tp.client, "tcp", "192.168.50.1:30081", 20)
		if err != nil {
			t.Fatal(err)
		}
		if hits["srv1"] != 20 {
			t.Errorf("endpoints reached: %v, want only srv1 (the remote endpoint is not local)", hits)
		}
		if len(sources) != 1 || !sources["192.168.50.2"] {
			t.Errorf("servers saw %v, want the client's own address 192.168.50.2", sources)
		}
	})
	t.Run("session affinity sticks", func(t *testing.T) {
		hits, _, err := servers(cli, "tcp", "10.96.1.12:80", 20)
		if err != nil {
			t.Fatal(err)
		}
		if len(hits) != 1 {
			t.Errorf("ClientIP affinity: reached %v, want one endpoint every time", hits)
		}
	})
	t.Run("a service without endpoints is refused at once", func(t *testing.T) {
		for _, target := range []struct{ ns, addr string }{{cli, "10.96.1.13:80"}, {tp.client, "192.168.50.1:30083"}} {
			start := time.Now()
			_, err := dial(target.ns, "tcp", target.addr, 3*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: got %v, want connection refused", target.addr, err)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("%s: refusal took %v", target.addr, took)
			}
		}
	})
	t.Run("hairpin: a pod reaches itself through its service", func(t *testing.T) {
		hits, _, err := servers(srv1, "tcp", "10.96.1.10:80", 20)
		if err != nil {
			t.Fatal(err)
		}
		if hits["srv1"] == 0 {
			t.Errorf("srv1 never reached itself: %v", hits)
		}
	})
	t.Run("partial sync: endpoint removed and service added take effect", func(t *testing.T) {
		writeState(t, state, stateData{Web: []string{"10.244.1.11"}, Extra: true})
		eventually(t, "new service", 5*time.Second, func() error {
			_, err := dial(cli, "tcp", "10.96.1.15:8000", time.Second)
			return err
		})
		eventually(t, "endpoint removal", 5*time.Second, func() error {
			hits, _, err := servers(cli, "tcp", "10.96.1.10:80", 20)
			if err != nil {
				return err
			}
			if hits["srv1"] != 0 {
				return fmt.Errorf("srv1 still reached: %v", hits)
			}
			return nil
		})
	})
	t.Run("SIGTERM leaves the rules in place", func(t *testing.T) {
		proxy.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- proxy.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("svcproxy exited with %v after SIGTERM", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("svcproxy did not stop on SIGTERM")
		}
		if _, _, err := servers(cli, "tcp", "10.96.1.10:80", 10); err != nil {
			t.Errorf("after svcproxy stopped: %v", err)
		}
		if !strings.Contains(nsRun(t, tp.node, "iptables-save", "-t", "nat"), "SVCP-SERVICES") {
			t.Errorf("rules were removed on SIGTERM")
		}
	})
	t.Run("--cleanup removes everything of ours and nothing else", func(t *testing.T) {
		nsRun(t, tp.node, "iptables", "-t", "nat", "-N", "OTHER-CHAIN")
		nsRun(t, tp.node, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", "OTHER-CHAIN")
		nsRun(t, tp.node, svcproxyBin, "--cleanup")
		saved := nsRun(t, tp.node, "iptables-save")
		if strings.Contains(saved, "SVCP-") {
			t.Errorf("svcproxy --cleanup left rules behind:\n%s", saved)
		}
		if !strings.Contains(saved, "-A PREROUTING -j OTHER-CHAIN") {
			t.Errorf("svcproxy --cleanup removed another program's rule:\n%s", saved)
		}
		if _, err := dial(cli, "tcp", "10.96.1.10:80", time.Second); err == nil {
			t.Errorf("the ClusterIP still answers after --cleanup")
		}
	})
}

// TestDryRunOutputProgramsANamespace feeds the --dry-run output for a
// kubectl-shaped file full of odd cases (dual-stack with IPv6 first, an IPv6
// slice, an FQDN slice, a duplicate endpoint across slices, a slice without a
// service, another proxy's service, headless, ExternalName, an ipMode Proxy
// load balancer, only serving-terminating endpoints, a ConfigMap) to
// iptables-restore --noflush in an empty namespace, and checks real
// connections.
func TestDryRunOutputProgramsANamespace(t *testing.T) {
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	srv2 := tp.addPod(t, "srv2", "10.244.1.11")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, srv2, "srv2", 8080)

	dump, err := exec.Command(svcproxyBin, "--dry-run", "--state", "testdata/kubectl-odd.json",
		"--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16").Output()
	if err != nil {
		t.Fatalf("svcproxy --dry-run: %v", err)
	}
	// The file has a dual-stack Service: each family's section follows
	// the comment naming its command, and is fed to it as it stands.
	v4, v6, ok := strings.Cut(string(dump), "# ip6tables-restore --noflush\n")
	if !ok || !strings.HasPrefix(v4, "# iptables-restore --noflush\n") {
		t.Fatalf("the dump has no IPv4 and IPv6 sections:\n%s", dump)
	}
	for _, absent := range []string{"10.96.5.14", "198.18.0.77", "fd00", "10.244.1.99"} {
		if strings.Contains(v4, absent) {
			t.Errorf("the IPv4 section programs %s, which must be skipped", absent)
		}
	}
	if !strings.Contains(v6, "fd00:10:96::5a") || strings.Contains(v6, "10.96.5.10") {
		t.Errorf("the IPv6 section does not program the dual-stack Service's IPv6 ClusterIP alone:\n%s", v6)
	}
	for _, sec := range []struct{ cmd, text string }{{"iptables-restore", v4}, {"ip6tables-restore", v6}} {
		restore := exec.Command("ip", "netns", "exec", tp.node, sec.cmd, "--noflush")
		restore.Stdin = strings.NewReader(sec.text)
		if out, err := restore.CombinedOutput(); err != nil {
			t.Fatalf("%s --noflush of its section: %v\n%s", sec.cmd, err, out)
		}
	}

	hits, _, err := servers(cli, "tcp", "10.96.5.10:80", 30)
	if err != nil || hits["srv1"] == 0 || hits["srv2"] == 0 {
		t.Errorf("dual-stack service's IPv4 ClusterIP: %v %v, want both endpoints", hits, err)
	}
	hits, _, err = servers(tp.client, "tcp", "192.168.50.1:31500", 15)
	if err != nil || len(hits) != 1 {
		t.Errorf("affinity NodePort from outside: %v %v, want one endpoint every time", hits, err)
	}
	hits, _, err = servers(cli, "tcp", "10.96.5.16:80", 10)
	if err != nil || hits["srv2"] != 10 {
		t.Errorf("only serving-terminating endpoints: %v %v, want srv2 every time", hits, err)
	}
	for _, addr := range []string{"10.96.5.12:9000", "10.96.5.13:443"} {
		if _, err := dial(cli, "tcp", addr, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s (no usable endpoints): got %v, want connection refused", addr, err)
		}
	}
}

// httpGet fetches url from inside namespace ns.
func httpGet(ns, url string) (int, string, error) {
	var conn net.Conn
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			err := inNS(ns, func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// TestHealthAndMetrics: kube-proxy's /healthz and /livez on :10256 and its
// metric names on 127.0.0.1:10249, so existing probes and dashboards work.
func TestHealthAndMetrics(t *testing.T) {
	tp := newTopology(t)
	state := filepath.Join(t.TempDir(), "state.yaml")
	writeState(t, state, stateData{Web: []string{"10.244.1.10"}})
	startProxy(t, tp, state)
	eventually(t, "healthy", 10*time.Second, func() error {
		code, body, err := httpGet(tp.node, "http://192.168.50.1:10256/healthz")
		if err == nil && (code != 200 || !strings.Contains(body, "lastUpdated")) {
			err = fmt.Errorf("/healthz: %d %s", code, body)
		}
		return err
	})
	if code, _, err := httpGet(tp.node, "http://127.0.0.1:10256/livez"); err != nil || code != 200 {
		t.Errorf("/livez: %d %v", code, err)
	}
	// /healthz is 200 from the start (within its grace period): wait for
	// the first sync's figures.
	eventually(t, "metrics of the first sync", 10*time.Second, func() error {
		_, body, err := httpGet(tp.node, "http://127.0.0.1:10249/metrics")
		if err != nil {
			return err
		}
		for _, name := range []string{
			"kubeproxy_sync_proxy_rules_duration_seconds_count",
			"kubeproxy_sync_full_proxy_rules_duration_seconds_count",
			"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
			`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"}`,
			"kubeproxy_sync_proxy_rules_service_changes_total",
			"kubeproxy_sync_proxy_rules_endpoint_changes_total",
		} {
			if !strings.Contains(body, name) {
				return fmt.Errorf("/metrics lacks %s", name)
			}
		}
		return nil
	})
	if code, body, _ := httpGet(tp.node, "http://127.0.0.1:10249/proxyMode"); code != 200 || strings.TrimSpace(body) != "iptables" {
		t.Errorf("/proxyMode: %d %q", code, body)
	}
}
