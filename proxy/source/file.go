// Package source feeds Services, EndpointSlices and Nodes to a proxy.Handler,
// either from a state file (kubectl output) or from the API server.
package source

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/proxy"
)

// State is the content of a state file.
type State struct {
	Services       []*v1.Service
	EndpointSlices []*discovery.EndpointSlice
	Nodes          []*v1.Node
}

// FileError reports a state file that cannot be read or parsed. Item is the
// 1-based position of the offending object in the file (counting the items
// of every List and every single-object document), or 0 when the error is
// not about one object. Name describes the object ("Service default/web")
// when known.
type FileError struct {
	Path string
	Item int
	Name string
	Err  error
}

// Error implements error.
func (e *FileError) Error() string {
	msg := fmt.Sprintf("state file %q", e.Path)
	if e.Item > 0 {
		msg += fmt.Sprintf(": item %d", e.Item)
		if e.Name != "" {
			msg += " (" + e.Name + ")"
		}
	}
	return msg + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *FileError) Unwrap() error { return e.Err }

// LoadFile reads a state file: the output of
// `kubectl get svc,endpointslices -A -o yaml` (or -o json), i.e. a List, or
// multi-document YAML whose documents are Lists or single objects. Services,
// EndpointSlices and Nodes are kept; other kinds are skipped with a log
// line. All errors are *FileError.
func LoadFile(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &FileError{Path: path, Err: err}
	}
	return parseState(path, data)
}

type typeMeta struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Items      []json.RawMessage `json:"items"`
}

// parseState decodes every document of data into a State.
func parseState(path string, data []byte) (*State, error) {
	docs, err := splitDocuments(data)
	if err != nil {
		return nil, &FileError{Path: path, Err: err}
	}
	st := &State{}
	seen := map[string]bool{}
	item := 0
	for i, doc := range docs {
		if doc[0] != '{' {
			return nil, &FileError{Path: path, Err: fmt.Errorf("document %d: not an object: %.40s", i+1, doc)}
		}
		var tm typeMeta
		if err := utiljson.Unmarshal(doc, &tm); err != nil {
			return nil, &FileError{Path: path, Err: fmt.Errorf("document %d: %w", i+1, err)}
		}
		if tm.Kind != "List" && !strings.HasSuffix(tm.Kind, "List") {
			item++
			if err := st.add(path, item, doc, "", "", seen); err != nil {
				return nil, err
			}
			continue
		}
		// Items of a typed list (ServiceList) may omit their kind.
		kind := strings.TrimSuffix(tm.Kind, "List")
		for _, raw := range tm.Items {
			item++
			if err := st.add(path, item, raw, kind, tm.APIVersion, seen); err != nil {
				return nil, err
			}
		}
	}
	return st, nil
}

// splitDocuments returns the JSON form of every non-empty document in data,
// which is either a stream of JSON values or multi-document YAML.
func splitDocuments(data []byte) ([]json.RawMessage, error) {
	if docs, ok := splitJSON(data); ok {
		return docs, nil
	}
	var docs []json.RawMessage
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if err == io.EOF {
			return docs, nil
		} else if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		if s := string(bytes.TrimSpace(js)); s == "null" || s == "" {
			continue // empty document or only comments
		}
		docs = append(docs, js)
	}
}

// splitJSON returns the values of a stream of JSON objects; it fails on
// anything else, which is then parsed as YAML (with better error messages).
func splitJSON(data []byte) ([]json.RawMessage, bool) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, false
	}
	var docs []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	for {
		var doc json.RawMessage
		if err := dec.Decode(&doc); err == io.EOF {
			return docs, true
		} else if err != nil || len(doc) == 0 || doc[0] != '{' {
			return nil, false
		}
		docs = append(docs, doc)
	}
}

// add decodes one object and appends it to st. kind and apiVersion are the
// defaults for an object that has none (items of a typed list).
func (st *State) add(path string, item int, raw []byte, kind, apiVersion string, seen map[string]bool) error {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	metaErr := utiljson.Unmarshal(raw, &meta) // best effort: names the object in errors
	if meta.Kind != "" {
		kind, apiVersion = meta.Kind, meta.APIVersion
	} else if meta.APIVersion != "" {
		apiVersion = meta.APIVersion
	}
	name, ns := meta.Metadata.Name, meta.Metadata.Namespace
	if ns == "" && kind != "Node" {
		ns = v1.NamespaceDefault
	}
	desc := describe(kind, ns, name)
	fail := func(err error) error { return &FileError{Path: path, Item: item, Name: desc, Err: err} }

	var obj any
	var wantVersion string
	switch kind {
	case "Service":
		obj, wantVersion = &v1.Service{}, "v1"
	case "EndpointSlice":
		obj, wantVersion = &discovery.EndpointSlice{}, discovery.SchemeGroupVersion.String()
	case "Node":
		obj, wantVersion = &v1.Node{}, "v1"
	case "":
		if metaErr != nil {
			return fail(metaErr)
		}
		return fail(errors.New("object has no kind"))
	default:
		klog.InfoS("Skipping object of unsupported kind in state file", "path", path, "item", item, "object", desc)
		return nil
	}
	if apiVersion != wantVersion {
		return fail(fmt.Errorf("unsupported apiVersion %q for %s, want %q", apiVersion, kind, wantVersion))
	}
	if err := utiljson.Unmarshal(raw, obj); err != nil {
		return fail(err)
	}
	if name == "" {
		return fail(errors.New("metadata.name is missing"))
	}
	key := desc
	if seen[key] {
		return fail(errors.New("duplicate object"))
	}
	seen[key] = true
	Strip(obj)
	switch o := obj.(type) {
	case *v1.Service:
		o.Namespace = ns
		st.Services = append(st.Services, o)
	case *discovery.EndpointSlice:
		o.Namespace = ns
		st.EndpointSlices = append(st.EndpointSlices, o)
	case *v1.Node:
		st.Nodes = append(st.Nodes, o)
	}
	return nil
}

// describe formats an object as "Kind namespace/name", leaving out what is
// not known.
func describe(kind, ns, name string) string {
	id := name
	if ns != "" && name != "" {
		id = ns + "/" + name
	}
	return strings.TrimSpace(kind + " " + id)
}

// FileSource feeds the content of a state file to a Handler and keeps
// following the file's changes.
type FileSource struct {
	path     string
	handler  proxy.Handler
	interval time.Duration

	loaded  bool
	cur     fileIndex
	hash    [sha256.Size]byte
	seen    os.FileInfo // the file as last observed by Stat
	pending bool        // seen differs from the loaded file
	statErr bool        // the last Stat failed (logged once)

	// testHook, if set, is called after every reload attempt.
	testHook func(error)
}

// NewFileSource returns a source for the state file path that reports to h
// and, once running, checks the file for changes every pollInterval (never
// when pollInterval <= 0).
func NewFileSource(path string, h proxy.Handler, pollInterval time.Duration) *FileSource {
	return &FileSource{path: path, handler: h, interval: pollInterval}
}

// Load reads the file and sends the handler the differences from the
// previously loaded content: every object as an add on the first call. On
// error (a *FileError) nothing is sent and the previous state is kept. Load
// must not be called concurrently with Run.
func (s *FileSource) Load() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return &FileError{Path: s.path, Err: err}
	}
	return s.reload(fi)
}

func (s *FileSource) reload(fi os.FileInfo) error {
	s.seen, s.pending = fi, false
	data, err := os.ReadFile(s.path)
	if err != nil {
		return &FileError{Path: s.path, Err: err}
	}
	hash := sha256.Sum256(data)
	if s.loaded && hash == s.hash {
		return nil
	}
	st, err := parseState(s.path, data)
	if err != nil {
		return err
	}
	next := newFileIndex(st)
	events := s.cur.sendDiff(next, s.handler)
	s.cur, s.hash, s.loaded = next, hash, true
	klog.InfoS("Loaded state file", "path", s.path, "services", len(st.Services),
		"endpointSlices", len(st.EndpointSlices), "nodes", len(st.Nodes), "events", events)
	// Parsing a big file (YAML to JSON to typed objects) leaves many times
	// its size in garbage; give it back now rather than keep the peak RSS.
	data = nil
	debug.FreeOSMemory()
	return nil
}

// Run loads the file unless Load already succeeded, returning the error if
// that fails, then calls synced (if not nil) and follows the file until ctx
// is done. A changed file is reloaded once it has been stable for one poll
// interval, so that a file being written is not read half-way; a reload
// that fails is logged and the previous state kept. Run returns nil when ctx
// is done.
func (s *FileSource) Run(ctx context.Context, synced func()) error {
	if !s.loaded {
		if err := s.Load(); err != nil {
			return err
		}
	}
	if synced != nil {
		synced()
	}
	if s.interval <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.poll()
		}
	}
}

// poll checks the file once.
func (s *FileSource) poll() {
	fi, err := os.Stat(s.path)
	if err != nil {
		if !s.statErr {
			klog.ErrorS(err, "Cannot read state file, keeping the previous state", "path", s.path)
		}
		s.statErr, s.seen = true, nil
		return
	}
	s.statErr = false
	if s.seen == nil || !os.SameFile(fi, s.seen) || !fi.ModTime().Equal(s.seen.ModTime()) || fi.Size() != s.seen.Size() {
		s.seen, s.pending = fi, true // wait until it is stable
		return
	}
	if !s.pending {
		return
	}
	err = s.reload(fi)
	if err != nil {
		klog.ErrorS(err, "Cannot reload state file, keeping the previous state", "path", s.path)
	}
	if s.testHook != nil {
		s.testHook(err)
	}
}
