package proxytest

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/source"
)

// ThisNodeLabel marks, in a scenario file, the Node svcproxy runs on.
const ThisNodeLabel = "svcproxy.test/this-node"

// Scenario is one file of testdata/scenarios: cluster state as
// `kubectl get svc,endpointslices,nodes -A -o yaml` prints it (a List),
// read with the state-file loader svcproxy's --state uses. Exactly one of
// its Nodes carries the label ThisNodeLabel: the node svcproxy runs on.
// Every mode renders every scenario and compares the result with
// <name>.<mode>.golden next to it.
type Scenario struct {
	Name  string // file name without .yaml
	Path  string
	Node  string // the node svcproxy runs on
	State *source.State
}

// Scenarios loads every *.yaml of dir, sorted by name, failing the test on
// a file that does not load or does not name its node. It also fails on a
// golden file of a mode in modes whose scenario is gone: a stale golden
// file proves nothing.
func Scenarios(t testing.TB, dir string, modes ...string) []Scenario {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatalf("no scenario in %s", dir)
	}
	slices.Sort(paths)
	var out []Scenario
	names := map[string]bool{}
	for _, p := range paths {
		st, err := source.LoadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := Scenario{Name: strings.TrimSuffix(filepath.Base(p), ".yaml"), Path: p, State: st}
		for _, n := range st.Nodes {
			if _, ok := n.Labels[ThisNodeLabel]; ok {
				if sc.Node != "" {
					t.Fatalf("%s: nodes %s and %s both carry %s", p, sc.Node, n.Name, ThisNodeLabel)
				}
				sc.Node = n.Name
			}
		}
		if sc.Node == "" {
			t.Fatalf("%s: no Node carries the label %s: which node does svcproxy run on?", p, ThisNodeLabel)
		}
		names[sc.Name] = true
		out = append(out, sc)
	}
	for _, mode := range modes {
		goldens, err := filepath.Glob(filepath.Join(dir, "*."+mode+".golden"))
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range goldens {
			if name := strings.TrimSuffix(filepath.Base(g), "."+mode+".golden"); !names[name] {
				t.Errorf("%s: golden file without a scenario %s.yaml (delete it)", g, name)
			}
		}
	}
	return out
}

// Golden returns the golden file of the scenario for mode.
func (s Scenario) Golden(mode string) string {
	return filepath.Join(filepath.Dir(s.Path), s.Name+"."+mode+".golden")
}

// Snapshot feeds the scenario's Nodes, Services and EndpointSlices to a
// tracker for its node and returns the snapshot.
func (s Scenario) Snapshot(t testing.TB) *proxy.Snapshot {
	t.Helper()
	return StateSnapshot(t, s.State, s.Node)
}

// StateSnapshot feeds a loaded state file to a tracker for node (Nodes
// first, for the zone, then Services and EndpointSlices) and returns the
// snapshot.
func StateSnapshot(t testing.TB, st *source.State, node string) *proxy.Snapshot {
	t.Helper()
	tr := proxy.NewTracker(node, nil, nil)
	for _, n := range st.Nodes {
		tr.OnNodeUpdate(n)
	}
	for _, s := range st.Services {
		tr.OnServiceUpdate(nil, s)
	}
	for _, s := range st.EndpointSlices {
		tr.OnEndpointSliceUpdate(nil, s)
	}
	snap, _ := tr.Snapshot()
	return snap
}

// LoadStateSnapshot loads a state file (as --state does) and returns its
// snapshot for node.
func LoadStateSnapshot(t testing.TB, path, node string) *proxy.Snapshot {
	t.Helper()
	st, err := source.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return StateSnapshot(t, st, node)
}

// Golden compares got with the golden file path and fails the test with
// a diff when they differ. With update it writes got to path instead and
// logs whether that changed the file: a run with update compares nothing
// (the file is got by construction), so it proves nothing. CI never runs
// with it, and hack/test.sh fails when a test run leaves a golden file
// changed.
func Golden(t testing.TB, path, got string, update bool) {
	t.Helper()
	old, err := os.ReadFile(path)
	if update {
		if err == nil && string(old) == got {
			t.Logf("-update: %s is up to date", path)
			return
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("-update: wrote %s; nothing was compared, review the diff (git diff -- %s)", path, path)
		return
	}
	if err != nil {
		t.Fatalf("%v (create it with go test -run %s -update, then review it)", err, t.Name())
	}
	if d := cmp.Diff(string(old), got); d != "" {
		t.Errorf("output differs from %s (-want +got); if intended, go test -run '%s' -update and review the diff:\n%s", path, t.Name(), d)
	}
}
