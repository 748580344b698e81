package source

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// kubectlList is trimmed `kubectl get svc,endpointslices -A -o yaml` output.
const kubectlList = `apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2025-05-01T10:00:00Z"
    labels:
      app: web
    name: web
    namespace: default
    resourceVersion: "1234"
    uid: 4f1f7f64-8d0e-4c9b-9d7e-0d6c1b1f0a11
  spec:
    clusterIP: 10.96.0.20
    clusterIPs:
    - 10.96.0.20
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
    selector:
      app: web
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- apiVersion: v1
  kind: Service
  metadata:
    name: kube-dns
    namespace: kube-system
  spec:
    clusterIP: 10.96.0.10
    ports:
    - name: dns
      port: 53
      protocol: UDP
      targetPort: dns
    type: ClusterIP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.5
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-a
    targetRef:
      kind: Pod
      name: web-6d4b9c-x7k2p
      namespace: default
    zone: zone-a
  kind: EndpointSlice
  metadata:
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-abcde
    namespace: default
  ports:
  - name: http
    port: 8080
    protocol: TCP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.0.3
  kind: EndpointSlice
  metadata:
    labels:
      kubernetes.io/service-name: kube-dns
    name: kube-dns-x1
    namespace: kube-system
  ports:
  - name: dns
    port: 53
    protocol: UDP
kind: List
metadata:
  resourceVersion: ""
`

var kubectlNames = []string{
	"EndpointSlice default/web-abcde", "EndpointSlice kube-system/kube-dns-x1",
	"Service default/web", "Service kube-system/kube-dns",
}

func svcYAML(ns, name, ip string, port int) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\n"+
		"spec:\n  clusterIP: %s\n  ports:\n  - name: p\n    port: %d\n    protocol: TCP\n", name, ns, ip, port)
}

func sliceYAML(ns, name, svc, addr string) string {
	return fmt.Sprintf("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s\n  namespace: %s\n"+
		"  labels:\n    kubernetes.io/service-name: %s\naddressType: IPv4\nendpoints:\n- addresses: [%s]\n"+
		"ports:\n- name: p\n  port: 8080\n", name, ns, svc, addr)
}

func nodeYAML(name, zone string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Node\nmetadata:\n  name: %s\n  labels:\n    topology.kubernetes.io/zone: %s\n", name, zone)
}

// list wraps objects into a kubectl-style List.
func list(items ...string) string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: List\nitems:\n")
	for _, it := range items {
		for i, line := range strings.Split(strings.TrimRight(it, "\n"), "\n") {
			b.WriteString(map[bool]string{true: "- ", false: "  "}[i == 0] + line + "\n")
		}
	}
	return b.String()
}

func docs(ds ...string) string { return strings.Join(ds, "---\n") }

func toJSON(t *testing.T, y string) string {
	t.Helper()
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := json.Indent(&b, j, "", "    "); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// names lists the objects of st, sorted.
func names(st *State) []string {
	var out []string
	for k := range stateOf(st, fullDesc) {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	// Write and rename, as a careful writer would, so that the source never
	// reads a half-written file.
	if err := os.WriteFile(path+".tmp", []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func TestLoadFile(t *testing.T) {
	web := svcYAML("default", "web", "10.96.0.20", 80)
	tests := []struct {
		name     string
		data     string
		want     []string
		wantErr  string // substring of the error after the file name
		wantItem int
		wantName string
	}{
		{name: "kubectl list yaml", data: kubectlList, want: kubectlNames},
		{name: "kubectl list json", data: kubectlList, want: kubectlNames}, // converted below
		{
			name: "multi-document yaml",
			data: docs("# comment only\n", list(web, sliceYAML("default", "web-1", "web", "10.0.0.1")),
				svcYAML("ns2", "api", "10.96.0.30", 443), sliceYAML("ns2", "api-1", "api", "10.0.0.2"), nodeYAML("n1", "zone-a")),
			want: []string{"EndpointSlice default/web-1", "EndpointSlice ns2/api-1", "Node n1", "Service default/web", "Service ns2/api"},
		},
		{
			name: "other kinds skipped",
			data: list("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: default\nspec:\n  containers: []",
				web, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b"),
			want: []string{"Service default/web"},
		},
		{
			name: "typed list items without kind, namespace defaulted",
			data: "apiVersion: v1\nkind: ServiceList\nitems:\n- metadata:\n    name: web\n  spec:\n    clusterIP: 10.96.0.20\n",
			want: []string{"Service default/web"},
		},
		// An empty file is a write that did not happen, not an empty
		// cluster (that is an empty List): it used to remove every rule.
		{name: "empty file", data: "", wantErr: "the file is empty"},
		{name: "bad yaml", data: "kind: List\nitems:\n- kind: Service\n  metadata: {name: web\n", wantErr: "document 1: yaml: line 4: did not find expected ',' or '}'"},
		{name: "bad second document", data: docs(web, "kind: [\n"), wantErr: "document 2: yaml: line 1:"},
		{name: "bad json", data: `{"kind": "List", "items": [}`, wantErr: "document 1: yaml: did not find expected node content"},
		{
			name:     "ports is a string",
			data:     list(web, strings.Replace(svcYAML("default", "web2", "10.96.0.21", 80), "  ports:\n  - name: p\n    port: 80\n    protocol: TCP\n", "  ports: \"80\"\n", 1)),
			wantErr:  "json: cannot unmarshal string into Go struct field ServiceSpec.spec.ports of type []v1.ServicePort",
			wantItem: 2, wantName: "Service default/web2",
		},
		{
			name:     "item without kind",
			data:     docs(web, list(strings.Replace(web, "kind: Service\n", "", 1))),
			wantErr:  "object has no kind",
			wantItem: 2, wantName: "default/web",
		},
		{
			name:     "unsupported apiVersion",
			data:     list(strings.Replace(sliceYAML("default", "s", "web", "10.0.0.1"), "/v1", "/v1beta1", 1)),
			wantErr:  `unsupported apiVersion "discovery.k8s.io/v1beta1" for EndpointSlice, want "discovery.k8s.io/v1"`,
			wantItem: 1, wantName: "EndpointSlice default/s",
		},
		{name: "no name", data: "apiVersion: v1\nkind: Node\nmetadata: {}\n", wantErr: "metadata.name is missing", wantItem: 1, wantName: "Node"},
		{name: "duplicate", data: docs(web, web), wantErr: "duplicate object", wantItem: 2, wantName: "Service default/web"},
		{name: "not an object", data: "hello\n", wantErr: `document 1: not an object: "hello"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.yaml")
			if strings.Contains(tc.name, "json") && tc.wantErr == "" {
				tc.data = toJSON(t, tc.data)
			}
			writeFile(t, path, tc.data)
			st, err := LoadFile(path)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("LoadFile: %v", err)
				}
				if diff := cmp.Diff(tc.want, names(st)); diff != "" {
					t.Errorf("objects (-want +got):\n%s", diff)
				}
				return
			}
			var fe *FileError
			if !errors.As(err, &fe) {
				t.Fatalf("LoadFile error = %v, want a *FileError", err)
			}
			if fe.Path != path || fe.Item != tc.wantItem || fe.Name != tc.wantName {
				t.Errorf("FileError{Path: %q, Item: %d, Name: %q}, want {%q, %d, %q}", fe.Path, fe.Item, fe.Name, path, tc.wantItem, tc.wantName)
			}
			prefix := fmt.Sprintf("state file %q: ", path)
			if tc.wantItem > 0 {
				prefix += fmt.Sprintf("item %d (%s): ", tc.wantItem, tc.wantName)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, tc.wantErr) {
				t.Errorf("error = %q, want prefix %q and %q", msg, prefix, tc.wantErr)
			}
		})
	}
}

func TestLoadFileContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	writeFile(t, path, kubectlList)
	st, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	svc := st.Services[0]
	wantPorts := []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}
	if diff := cmp.Diff(wantPorts, svc.Spec.Ports); diff != "" || svc.Spec.ClusterIP != "10.96.0.20" {
		t.Errorf("web ports (-want +got):\n%s, clusterIP %s", diff, svc.Spec.ClusterIP)
	}
	ep := st.EndpointSlices[0].Endpoints[0]
	if ep.Addresses[0] != "10.244.1.5" || *ep.NodeName != "node-a" || *ep.Zone != "zone-a" || !*ep.Conditions.Ready {
		t.Errorf("web endpoint = %+v", ep)
	}
}

func TestFileSource(t *testing.T) {
	initial := list(
		svcYAML("default", "web", "10.96.0.20", 80), svcYAML("default", "dns", "10.96.0.10", 53),
		sliceYAML("default", "web-1", "web", "10.0.0.1"), sliceYAML("default", "dns-1", "dns", "10.0.0.9"),
		nodeYAML("n1", "zone-a"))
	updated := docs(
		list(svcYAML("default", "web", "10.96.0.20", 80), svcYAML("ns2", "api", "10.96.0.30", 443)),
		sliceYAML("default", "web-1", "web", "10.0.0.2"), sliceYAML("ns2", "api-1", "api", "10.0.0.3"),
		nodeYAML("n1", "zone-b"))
	changes := map[string]int{
		"delete Service": 1, "add Service": 1, "update Node": 1,
		"delete EndpointSlice": 1, "update EndpointSlice": 1, "add EndpointSlice": 1,
	}
	type step struct {
		data    string
		wantErr bool              // the reload fails and the state stays
		extra   map[string]string // expected objects not in data
	}
	tests := []struct {
		name       string
		steps      []step
		wantCounts map[string]int // events after the initial load
	}{
		{name: "remove, change and add", steps: []step{{data: updated}}, wantCounts: changes},
		{name: "broken file keeps the state", steps: []step{{data: "kind: List\nitems: [\n", wantErr: true}, {data: updated}}, wantCounts: changes},
		{name: "bad item keeps the state", steps: []step{{data: list("kind: Service"), wantErr: true}}, wantCounts: map[string]int{}},
		{name: "same content", steps: []step{{data: initial}}, wantCounts: map[string]int{}},
		{
			name: "node removed",
			steps: []step{{
				data:  strings.Replace(initial, "- apiVersion: v1\n  kind: Node", "- apiVersion: v1\n  kind: ConfigMap", 1),
				extra: map[string]string{"Node n1": fullDesc(removedNode("n1"))},
			}},
			wantCounts: map[string]int{"update Node": 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.yaml")
			writeFile(t, path, initial)
			want, err := LoadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			wantState := stateOf(want, fullDesc)

			r := newRecorder()
			defer r.check(t)
			src := NewFileSource(path, r, 10*time.Millisecond)
			reloaded := make(chan error, 10)
			src.testHook = func(err error) { reloaded <- err }
			synced := make(chan map[string]string, 1)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() { done <- src.Run(ctx, func() { synced <- r.state(fullDesc) }) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			if diff := cmp.Diff(wantState, <-synced); diff != "" {
				t.Fatalf("state at sync (-want +got):\n%s", diff)
			}
			initCounts := r.eventCounts()

			for i, s := range tc.steps {
				writeFile(t, path, s.data)
				select {
				case err := <-reloaded:
					if (err != nil) != s.wantErr {
						t.Fatalf("step %d: reload error %v, want error %v", i, err, s.wantErr)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("step %d: file not reloaded", i)
				}
				if !s.wantErr {
					st, err := LoadFile(path)
					if err != nil {
						t.Fatal(err)
					}
					wantState = stateOf(st, fullDesc)
					for k, v := range s.extra {
						wantState[k] = v
					}
				}
				if diff := cmp.Diff(wantState, r.state(fullDesc)); diff != "" {
					t.Fatalf("step %d: state (-want +got):\n%s", i, diff)
				}
			}
			counts := r.eventCounts()
			for k, n := range initCounts {
				if counts[k] -= n; counts[k] == 0 {
					delete(counts, k)
				}
			}
			if diff := cmp.Diff(tc.wantCounts, counts); diff != "" {
				t.Errorf("events after the initial load (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFileSourceInitialError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	writeFile(t, path, list(svcYAML("default", "web", "10.96.0.20", 80), "kind: Service"))
	r := newRecorder()
	err := NewFileSource(path, r, time.Millisecond).Run(context.Background(), func() { t.Error("synced called") })
	var fe *FileError
	if !errors.As(err, &fe) || fe.Item != 2 {
		t.Fatalf("Run error = %v, want a *FileError for item 2", err)
	}
	if got := r.state(fullDesc); len(got) != 0 {
		t.Errorf("handler got objects from a broken file: %v", got)
	}
}
