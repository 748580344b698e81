package source

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// wholeDocuments is the state file parser before streaming, kept as the
// reference: every document converted whole.
func wholeDocuments(t *testing.T, data string) map[string]string {
	t.Helper()
	out := map[string]string{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(data)))
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			t.Fatalf("reference parser: %v", err)
		}
		var tm typeMeta
		if err := utiljson.Unmarshal(js, &tm); err != nil || tm.Kind == "" {
			continue
		}
		items := []json.RawMessage{js}
		kind := ""
		if strings.HasSuffix(tm.Kind, "List") {
			items, kind = tm.Items, strings.TrimSuffix(tm.Kind, "List")
		}
		for _, raw := range items {
			var meta struct {
				Kind string `json:"kind"`
			}
			_ = utiljson.Unmarshal(raw, &meta)
			k := meta.Kind
			if k == "" {
				k = kind
			}
			var obj any
			switch k {
			case "Service":
				obj = &v1.Service{}
			case "EndpointSlice":
				obj = &discovery.EndpointSlice{}
			case "Node":
				obj = &v1.Node{}
			default:
				continue
			}
			if err := utiljson.Unmarshal(raw, obj); err != nil {
				t.Fatalf("reference parser: %v", err)
			}
			Strip(obj)
			switch o := obj.(type) {
			case *v1.Service:
				if o.Namespace == "" {
					o.Namespace = "default"
				}
				out["Service "+o.Namespace+"/"+o.Name] = fullDesc(o)
			case *discovery.EndpointSlice:
				if o.Namespace == "" {
					o.Namespace = "default"
				}
				out["EndpointSlice "+o.Namespace+"/"+o.Name] = fullDesc(o)
			case *v1.Node:
				out["Node "+o.Name] = fullDesc(o)
			}
		}
	}
	return out
}

// TestLoadFileStreamsLikeWholeDocuments reads the same content in the
// layouts YAML and JSON allow, streamed, and compares with whole-document
// parsing.
func TestLoadFileStreamsLikeWholeDocuments(t *testing.T) {
	web := svcYAML("default", "web", "10.96.0.20", 80)
	annotated := strings.Replace(sliceYAML("shop", "api-1", "api", "10.0.0.7"), "  labels:\n",
		"  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"2026-11-20T09:12:01Z\"\n"+
			"    note: |\n      a block scalar\n\n      - that looks like an item\n  labels:\n", 1)
	indented := "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata:\n      name: a\n" +
		"    spec:\n      clusterIP: 10.96.0.40\n  # a comment between items\n\n  -   apiVersion: v1\n      kind: Service\n" +
		"      metadata: {name: b, namespace: x}\n      spec: {clusterIP: 10.96.0.41}\nmetadata:\n  resourceVersion: \"\"\n"
	tests := []struct {
		name string
		data string
	}{
		{"kubectl list", kubectlList},
		{"list with a block scalar and comments", list(web, annotated, nodeYAML("n1", "z1"))},
		{"indented sequence, comment and blank line between items", indented},
		{"kind before items", "kind: List\napiVersion: v1\nitems:\n" + strings.TrimPrefix(list(web), "apiVersion: v1\nkind: List\nitems:\n")},
		{"typed list, items without kind", "apiVersion: v1\nitems:\n- metadata:\n    name: web\n  spec:\n    clusterIP: 10.96.0.20\nkind: ServiceList\n"},
		{"multi-document", docs(list(web), annotated, "# only a comment\n", nodeYAML("n2", "z2"))},
		{"CRLF line ends", strings.ReplaceAll(kubectlList, "\n", "\r\n")},
		{"flow-style list", "{apiVersion: v1, kind: List, items: [{apiVersion: v1, kind: Service, metadata: {name: f}, spec: {clusterIP: 10.96.0.50}}]}\n"},
	}
	for _, tc := range tests {
		for _, format := range []string{"yaml", "json"} {
			if format == "json" && (strings.Contains(tc.name, "multi-document") || strings.Contains(tc.name, "CRLF")) {
				continue // one document per JSON value: nothing to convert
			}
			t.Run(tc.name+" "+format, func(t *testing.T) {
				data := tc.data
				if format == "json" {
					data = toJSON(t, data)
				}
				want := wholeDocuments(t, tc.data)
				if len(want) == 0 {
					t.Fatal("the reference parser found nothing")
				}
				path := filepath.Join(t.TempDir(), "state")
				writeFile(t, path, data)
				st, err := LoadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(want, stateOf(st, fullDesc)); d != "" {
					t.Errorf("objects (-whole documents +streamed):\n%s", d)
				}
			})
		}
	}
}

// A file cut short or empty is refused, like a malformed one: taken as it
// is, it would remove the rules of every service it no longer names.
func TestLoadFileTruncated(t *testing.T) {
	full := kubectlList
	cutAtLine := full[:strings.Index(full, "- addressType: IPv4")] // a whole number of lines, items complete, kind gone
	tests := []struct {
		name, data string
		wantErr    string // "": any *FileError
	}{
		{"empty", "", "the file is empty"},
		{"only white space and comments", "\n  \n# nothing\n---\n", "the file is empty"},
		{"cut at a line end inside the items", cutAtLine, "document 1: a list of items without a kind: is the file truncated?"},
		{"cut inside a line", full[:len(full)-40], ""},
		{"single objects, cut inside the last line into valid YAML", strings.TrimSuffix(docs(svcYAML("default", "web", "10.96.0.20", 80), svcYAML("default", "api", "10.96.0.21", 80)), "P\n"),
			"the last line has no newline: is the file truncated?"},
		{"JSON cut", toJSON(t, full)[:300], "document 1: yaml:"},
		{"items of a kind that is not a list", "kind: Service\nitems:\n- kind: Service\n  apiVersion: v1\n  metadata: {name: a}\n", `document 1: kind "Service" has a list of items`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state")
			writeFile(t, path, tc.data)
			_, err := LoadFile(path)
			var fe *FileError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("LoadFile = %v, want a *FileError with %q", err, tc.wantErr)
			}
		})
	}
}

// A big JSON file cut short is not read again as one YAML document (that
// takes dozens of times its size) to find the error.
func TestLoadFileBigJSONTruncated(t *testing.T) {
	var buf strings.Builder
	buf.WriteString(`{"apiVersion": "v1", "kind": "List", "items": [`)
	for i := 0; buf.Len() <= 2*jsonFallbackMax; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc-%d", "namespace": "ns"}, `+
			`"spec": {"clusterIP": "10.96.%d.%d", "ports": [{"name": "http", "port": 80}]}}`, i, i>>8&0xff, i&0xff)
	}
	buf.WriteString("]}\n")
	b := buf.String()
	if len(b) <= jsonFallbackMax {
		t.Fatalf("%d bytes: not big enough", len(b))
	}
	path := filepath.Join(t.TempDir(), "state.json")
	writeFile(t, path, b[:len(b)-len(b)/3])
	_, err := LoadFile(path)
	if err == nil || !strings.Contains(err.Error(), "document 1: unexpected EOF: is the file truncated?") {
		t.Errorf("LoadFile = %v", err)
	}
}

// Errors in an item far into a streamed List name the line of the whole
// document, as when the document was parsed whole.
func TestLoadFileErrorLines(t *testing.T) {
	var items []string
	for i := range 3 {
		items = append(items, svcYAML("default", fmt.Sprintf("s%d", i), "10.96.0.20", 80))
	}
	items = append(items, "apiVersion: v1\nkind: Service\nmetadata: {name: bad\nspec: {}")
	data := list(items...)
	path := filepath.Join(t.TempDir(), "state")
	writeFile(t, path, data)
	_, err := LoadFile(path)
	// The reference: the whole document's error.
	_, want := yaml.YAMLToJSONStrict([]byte(data))
	if err == nil || want == nil || !strings.HasSuffix(err.Error(), ": document 1: "+want.Error()) {
		t.Errorf("LoadFile = %v\nwant the whole document's error %v", err, want)
	}
	// Duplicate keys in the header, whose lines are not contiguous.
	data = "apiVersion: v1\nitems:\n- " + strings.ReplaceAll(strings.TrimSpace(items[0]), "\n", "\n  ") + "\nkind: List\nkind: List\n"
	writeFile(t, path, data)
	_, err = LoadFile(path)
	_, want = yaml.YAMLToJSONStrict([]byte(data))
	if err == nil || want == nil || !strings.HasSuffix(err.Error(), ": document 1: "+want.Error()) {
		t.Errorf("LoadFile = %v\nwant the whole document's error %v", err, want)
	}
}

// An empty or cut file on a reload keeps the state; at start it is an error.
func TestFileSourceRefusesTruncated(t *testing.T) {
	good := list(svcYAML("default", "web", "10.96.0.20", 80), sliceYAML("default", "web-1", "web", "10.0.0.1"))
	path := filepath.Join(t.TempDir(), "state.yaml")
	writeFile(t, path, "")
	if err := NewFileSource(path, newRecorder(), 0).Load(); err == nil {
		t.Fatal("an empty file at start: no error")
	}

	writeFile(t, path, good)
	r := newRecorder()
	defer r.check(t)
	src := NewFileSource(path, r, 10*time.Millisecond)
	reloaded := make(chan error, 10)
	src.testHook = func(err error) { reloaded <- err }
	// Load the good file before Run starts: Run loads it itself only if
	// not loaded yet, and could then read the bad file written below.
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- src.Run(ctx, nil) }()
	defer func() {
		cancel()
		<-done
	}()
	for _, bad := range []string{"", good[:len(good)/2]} {
		writeFile(t, path, bad)
		select {
		case err := <-reloaded:
			if err == nil {
				t.Fatalf("file %q: reloaded without an error", bad)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("not reloaded")
		}
		if got := r.state(briefDesc); len(got) != 2 {
			t.Errorf("state after a bad file: %v", got)
		}
	}
}

func (h *countingHandler) OnServiceUpdate(_, cur *v1.Service) {
	if cur != nil {
		h.services.Add(1)
	}
}

func (h *countingHandler) OnEndpointSliceUpdate(_, cur *discovery.EndpointSlice) {
	if cur != nil {
		h.slices.Add(1)
	}
}

func (h *countingHandler) OnNodeUpdate(*v1.Node) {}

// bigList returns a kubectl List of n Services with one EndpointSlice of 5
// endpoints each, as kubectl writes it (about 1.2 kB of YAML per service).
func bigList(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nitems:\n")
	for i := range n {
		ip := fmt.Sprintf("10.96.%d.%d", i>>8&0xff, i&0xff)
		fmt.Fprintf(&b, `- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2026-11-20T09:12:01Z"
    labels:
      app: svc-%[1]d
    name: svc-%[1]d
    namespace: ns-%[2]d
    resourceVersion: "%[3]d"
    uid: 4f1f7f64-8d0e-4c9b-9d7e-%012[1]d
  spec:
    clusterIP: %[4]s
    clusterIPs:
    - %[4]s
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
      app: svc-%[1]d
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
`, i, i%50, 1000+i, ip)
	}
	for i := range n {
		fmt.Fprintf(&b, `- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
`)
		for j := range 5 {
			fmt.Fprintf(&b, `  - addresses:
    - 10.%[1]d.%[2]d.%[3]d
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node%[4]d
    targetRef:
      kind: Pod
      name: svc-%[5]d-%[6]d
      namespace: ns-%[7]d
`, 128+(i*5+j)>>16, (i*5+j)>>8&0xff, (i*5+j)&0xff, (i*5+j)%100+1, i, j, i%50)
		}
		fmt.Fprintf(&b, `  kind: EndpointSlice
  metadata:
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: svc-%[1]d
    name: svc-%[1]d-abcde
    namespace: ns-%[2]d
    resourceVersion: "%[3]d"
  ports:
  - name: http
    port: 8080
    protocol: TCP
`, i, i%50, 50000+i)
	}
	b.WriteString("kind: List\nmetadata:\n  resourceVersion: \"\"\n")
	return b.String()
}

// countingHandler counts events and keeps nothing.
type countingHandler struct{ services, slices atomic.Int64 }
