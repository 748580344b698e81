package proxytest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// recorder is a testing.TB that records failures instead of failing.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Logf(string, ...any)       {}
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }
func (r *recorder) Fatalf(f string, a ...any) { r.Errorf(f, a...); runtime.Goexit() }
func (r *recorder) Fatal(a ...any)            { r.errs = append(r.errs, fmt.Sprint(a...)); runtime.Goexit() }

// record runs fn with a recorder in a goroutine of its own (Fatal ends it)
// and returns what failed, joined.
func record(t *testing.T, fn func(tb testing.TB)) string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return strings.Join(r.errs, "\n")
}

const nodeItem = `- {apiVersion: v1, kind: Node, metadata: {name: %s, labels: {%s}}}
`

func writeScenario(t *testing.T, dir, name string, nodes ...string) {
	t.Helper()
	body := "apiVersion: v1\nkind: List\nitems:\n"
	for _, n := range nodes {
		body += n
	}
	body += `- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: ns}
  spec:
    clusterIP: 10.96.0.10
    ports: [{name: http, port: 80, protocol: TCP}]
`
	if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestScenariosRefuse(t *testing.T) {
	this := fmt.Sprintf(nodeItem, "node1", ThisNodeLabel+`: "true"`)
	other := fmt.Sprintf(nodeItem, "node2", "a: b")
	thisToo := fmt.Sprintf(nodeItem, "node3", ThisNodeLabel+`: "true"`)
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, dir string)
		wantErr string
	}{
		{"no scenario", func(t *testing.T, dir string) {}, "no scenario"},
		{"no node of ours", func(t *testing.T, dir string) { writeScenario(t, dir, "a", other) }, "no Node carries the label"},
		{"two nodes of ours", func(t *testing.T, dir string) { writeScenario(t, dir, "a", this, thisToo) }, "both carry"},
		{"a file that does not load", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("kind: List\nitems: [{kind: Service}]\n"), 0o644)
		}, "a.yaml"},
		{"a stale golden file", func(t *testing.T, dir string) {
			writeScenario(t, dir, "a", this)
			os.WriteFile(filepath.Join(dir, "gone.ipvs.golden"), nil, 0o644)
		}, "golden file without a scenario gone.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			got := record(t, func(tb testing.TB) { Scenarios(tb, dir, "iptables", "ipvs") })
			if !strings.Contains(got, tc.wantErr) {
				t.Errorf("failures %q, want one containing %q", got, tc.wantErr)
			}
		})
	}

	dir := t.TempDir()
	writeScenario(t, dir, "b", other, this)
	writeScenario(t, dir, "a", this)
	var scs []Scenario
	if got := record(t, func(tb testing.TB) { scs = Scenarios(tb, dir, "iptables") }); got != "" {
		t.Fatal(got)
	}
	if len(scs) != 2 || scs[0].Name != "a" || scs[1].Node != "node1" || scs[1].Golden("ipvs") != filepath.Join(dir, "b.ipvs.golden") {
		t.Errorf("scenarios %+v", scs)
	}
}

func TestGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.golden")
	if got := record(t, func(tb testing.TB) { Golden(tb, path, "one\n", false) }); !strings.Contains(got, "no such file") {
		t.Errorf("missing golden file: %q", got)
	}
	if got := record(t, func(tb testing.TB) { Golden(tb, path, "one\n", true) }); got != "" {
		t.Errorf("-update: %q", got)
	}
	if b, _ := os.ReadFile(path); string(b) != "one\n" {
		t.Errorf("-update wrote %q", b)
	}
	if got := record(t, func(tb testing.TB) { Golden(tb, path, "one\n", false) }); got != "" {
		t.Errorf("same output: %q", got)
	}
	if got := record(t, func(tb testing.TB) { Golden(tb, path, "two\n", false) }); !strings.Contains(got, `"one\n"`) || !strings.Contains(got, `"two\n"`) {
		t.Errorf("other output: %q, want a diff", got)
	}
}

// TestSharedScenarios: the repository's scenarios cover what both modes'
// golden tests promise to cover, and each gives its node real service
// ports.
func TestSharedScenarios(t *testing.T) {
	scs := Scenarios(t, "../../testdata/scenarios", "iptables", "ipvs")
	var names []string
	for _, sc := range scs {
		names = append(names, sc.Name)
		if sc.Node != "node1" {
			t.Errorf("%s: node %q, want node1 (the address plan of both modes' tests)", sc.Name, sc.Node)
		}
		if len(sc.Snapshot(t).ServicePorts()) == 0 {
			t.Errorf("%s: no service port", sc.Name)
		}
		for _, mode := range []string{"iptables", "ipvs"} {
			if _, err := os.Stat(sc.Golden(mode)); err != nil {
				t.Errorf("%s: %v", sc.Name, err)
			}
		}
	}
	for _, want := range []string{"clusterip", "nodeport", "etp-local", "itp-local", "affinity", "loadbalancer-source-ranges",
		"external-ips", "no-endpoints", "terminating-only", "multiple-ports", "udp-sctp"} {
		if !slices.Contains(names, want) {
			t.Errorf("no scenario %s", want)
		}
	}
	protos := map[v1.Protocol]bool{}
	for _, sc := range scs {
		for _, sp := range sc.Snapshot(t).ServicePorts() {
			protos[sp.Protocol] = true
		}
	}
	if !protos[v1.ProtocolTCP] || !protos[v1.ProtocolUDP] || !protos[v1.ProtocolSCTP] {
		t.Errorf("protocols covered: %v, want TCP, UDP and SCTP", protos)
	}
}
