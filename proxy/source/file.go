// Package source feeds Services, EndpointSlices and Nodes to a proxy.Handler,
// either from a state file (kubectl output) or from the API server.
package source

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"

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
// EndpointSlices and Nodes are kept (stripped); other kinds are skipped with
// a log line. An empty file, a List without its kind and YAML whose last
// line has no newline are refused as truncated. All errors are *FileError.
// The State holds every object: a FileSource keeps much less.
func LoadFile(path string) (*State, error) {
	st := &State{}
	err := readState(path, func(obj any) {
		switch o := obj.(type) {
		case *v1.Service:
			st.Services = append(st.Services, o)
		case *discovery.EndpointSlice:
			st.EndpointSlices = append(st.EndpointSlices, o)
		case *v1.Node:
			st.Nodes = append(st.Nodes, o)
		}
	}, func() { *st = State{} })
	if err != nil {
		return nil, err
	}
	return st, nil
}

// FileSource feeds the content of a state file to a Handler and keeps
// following the file's changes.
type FileSource struct {
	path     string
	handler  proxy.Handler
	interval time.Duration

	loaded  bool
	cur     fileState   // what was sent of the loaded file
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
// error (a *FileError) nothing is sent and the previous state is kept: a
// file that is empty or cut short is an error too (LoadFile). Load must not
// be called concurrently with Run.
//
// The file is read as a stream; what is kept of it between loads is, per
// object, a hash of its stripped content (and a slice's service label and
// trigger time, for the old object of the next event). Only new and changed
// objects are held until the file has been read to its end.
func (s *FileSource) Load() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return &FileError{Path: s.path, Err: err}
	}
	return s.reload(fi)
}

func (s *FileSource) reload(fi os.FileInfo) error {
	s.seen, s.pending = fi, false
	next := newFileState()
	var changed []any // new or changed objects, in file order
	count := map[string]int{}
	emit := func(obj any) {
		count[fmt.Sprintf("%T", obj)]++
		if next.add(obj, s.cur) {
			changed = append(changed, obj)
		}
	}
	reset := func() {
		next, changed = newFileState(), nil
		clear(count)
	}
	if err := readState(s.path, emit, reset); err != nil {
		return err
	}
	events := s.cur.sendDiff(next, changed, s.handler)
	s.cur, s.loaded = next, true
	klog.InfoS("Loaded state file", "path", s.path, "services", count["*v1.Service"],
		"endpointSlices", count["*v1.EndpointSlice"], "nodes", count["*v1.Node"], "events", events)
	// Reading a big file leaves many times its size in garbage; give it
	// back now rather than keep the peak RSS.
	changed = nil
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
