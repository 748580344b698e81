package source

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"
)

// A state file is read as a stream, one List item at a time: a List's
// items are converted and decoded one by one, and only what the caller
// keeps of them stays. Reading a 10,000-service kubectl List as one YAML
// document used to take 660 MiB.
//
// JSON (a stream of objects, as kubectl -o json writes) is tokenized with
// encoding/json: the "items" array of a top-level object is decoded item by
// item. YAML is split into documents at "---" lines, as
// k8s.io/apimachinery's YAMLReader does, and a document's top-level
// "items:" block sequence into its entries by indentation; every entry,
// and the rest of the document (its "header": apiVersion, kind, metadata),
// is converted on its own. A document without such a sequence is converted
// whole, as before.

// jsonFallbackMax is the largest file that is read again as YAML when it is
// not a stream of JSON objects (YAML gives the better error message, and
// takes flow-style YAML): converting one big YAML document takes dozens of
// times its size.
const jsonFallbackMax = 4 << 20

// stateReader reads one state file, handing every Service, EndpointSlice
// and Node to emit.
type stateReader struct {
	path string
	emit func(obj any)

	item  int // items read so far, in file order
	docs  int // documents with content
	dupes map[string]bool
}

// readState reads path. reset is called before the file is read again from
// the start (once at most: JSON that turns out not to be); everything emit
// was given before is void then.
func readState(path string, emit func(obj any), reset func()) error {
	f, err := os.Open(path)
	if err != nil {
		return &FileError{Path: path, Err: err}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return &FileError{Path: path, Err: err}
	}
	newReader := func() *stateReader {
		return &stateReader{path: path, emit: emit, dupes: map[string]bool{}}
	}
	br := bufio.NewReaderSize(f, 64<<10)
	first, err := firstByte(br)
	if err != nil {
		return &FileError{Path: path, Err: err}
	}
	var r *stateReader
	if first == '{' {
		r = newReader()
		jerr := r.readJSON(br)
		var fe *FileError
		if jerr == nil || errors.As(jerr, &fe) {
			return r.finish(jerr)
		}
		// Not a stream of JSON objects.
		if fi.Size() > jsonFallbackMax {
			if errors.Is(jerr, io.ErrUnexpectedEOF) {
				jerr = fmt.Errorf("%w: is the file truncated?", jerr)
			}
			return &FileError{Path: path, Err: fmt.Errorf("document %d: %w", r.docs+1, jerr)}
		}
		reset()
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return &FileError{Path: path, Err: err}
		}
		br.Reset(f)
	}
	r = newReader()
	endsInNewline, err := r.readYAML(br)
	if err == nil && r.docs > 0 && !endsInNewline {
		err = &FileError{Path: path, Err: errors.New("the last line has no newline: is the file truncated? (kubectl, editors and svcproxy's examples end files with one)")}
	}
	return r.finish(err)
}

// finish returns err, or an error if the file held nothing at all.
func (r *stateReader) finish(err error) error {
	if err == nil && r.docs == 0 {
		// kubectl writes an empty List for an empty cluster; an empty
		// file is a write that did not happen (or was cut short), not
		// a cluster without services.
		err = &FileError{Path: r.path, Err: errors.New("the file is empty: is it truncated? (an empty cluster is an empty List)")}
	}
	return err
}

// firstByte returns the first byte of r that is not white space, without
// consuming anything; 0 for none.
func firstByte(r *bufio.Reader) (byte, error) {
	for n := 1; ; n++ {
		b, err := r.Peek(n)
		if len(b) < n {
			if err == io.EOF || err == bufio.ErrBufferFull {
				return 0, nil
			}
			return 0, err
		}
		switch c := b[n-1]; c {
		case ' ', '\t', '\r', '\n':
		default:
			return c, nil
		}
	}
}

// document is one top-level object of the file as it is read: its
// header (every top-level field but a streamed "items") and the items
// that could not be decoded yet, for want of the List's kind.
type document struct {
	n        int
	streamed bool // its items were read one by one
	deferred []deferredItem
}

type deferredItem struct {
	item int
	raw  []byte
}

// listItem handles the JSON of one item of document d: decoded now when it
// names its kind, kept until the List's own kind is known otherwise.
func (r *stateReader) listItem(d *document, raw []byte) error {
	r.item++
	var tm struct {
		Kind string `json:"kind"`
	}
	if err := utiljson.Unmarshal(raw, &tm); err != nil || tm.Kind == "" {
		d.deferred = append(d.deferred, deferredItem{r.item, raw})
		return nil
	}
	return r.add(r.item, raw, "", "")
}

// endDocument handles the header of document d (its JSON; empty or "null"
// for an empty document).
func (r *stateReader) endDocument(d *document, header []byte) error {
	if s := string(bytes.TrimSpace(header)); s == "null" || s == "" {
		if !d.streamed {
			return nil // empty document or only comments
		}
		header = []byte("{}")
	}
	r.docs++
	if header[0] != '{' {
		return &FileError{Path: r.path, Err: fmt.Errorf("document %d: not an object: %.40s", d.n, header)}
	}
	var tm typeMeta
	if err := utiljson.Unmarshal(header, &tm); err != nil {
		return &FileError{Path: r.path, Err: fmt.Errorf("document %d: %w", d.n, err)}
	}
	isList := tm.Kind == "List" || strings.HasSuffix(tm.Kind, "List")
	if d.streamed {
		switch {
		case tm.Kind == "":
			return &FileError{Path: r.path, Err: fmt.Errorf("document %d: a list of items without a kind: is the file truncated?", d.n)}
		case !isList:
			return &FileError{Path: r.path, Err: fmt.Errorf("document %d: kind %q has a list of items", d.n, tm.Kind)}
		}
	}
	if !isList {
		r.item++
		return r.add(r.item, header, "", "")
	}
	// Items of a typed list (ServiceList) may omit their kind.
	kind := strings.TrimSuffix(tm.Kind, "List")
	for _, it := range d.deferred {
		if err := r.add(it.item, it.raw, kind, tm.APIVersion); err != nil {
			return err
		}
	}
	for _, raw := range tm.Items {
		r.item++
		if err := r.add(r.item, raw, kind, tm.APIVersion); err != nil {
			return err
		}
	}
	return nil
}

type typeMeta struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Items      []json.RawMessage `json:"items"`
}

// readJSON reads a stream of JSON objects. An error that is not a
// *FileError means the input is not such a stream.
func (r *stateReader) readJSON(in io.Reader) error {
	dec := json.NewDecoder(in)
	for n := 1; ; n++ {
		t, err := dec.Token()
		if err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if t != json.Delim('{') {
			return errors.New("not an object")
		}
		d := &document{n: n}
		var header bytes.Buffer
		header.WriteByte('{')
		for dec.More() {
			t, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := t.(string)
			if key == "items" && !d.streamed {
				if err := r.jsonItems(dec, d, &header); err != nil {
					return err
				}
				continue
			}
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return err
			}
			writeField(&header, key, raw)
		}
		if _, err := dec.Token(); err != nil { // '}'
			return err
		}
		header.WriteByte('}')
		if err := r.endDocument(d, header.Bytes()); err != nil {
			return err
		}
	}
}

// jsonItems reads the value of an "items" field: an array is read item by
// item, anything else goes to the header.
func (r *stateReader) jsonItems(dec *json.Decoder, d *document, header *bytes.Buffer) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t != json.Delim('[') {
		if _, ok := t.(json.Delim); ok {
			return errors.New("items is neither an array nor a scalar")
		}
		raw, err := json.Marshal(t)
		if err != nil {
			return err
		}
		writeField(header, "items", raw)
		return nil
	}
	d.streamed = true
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if err := r.listItem(d, raw); err != nil {
			return err
		}
	}
	_, err = dec.Token() // ']'
	return err
}

func writeField(b *bytes.Buffer, key string, raw []byte) {
	if b.Len() > 1 {
		b.WriteByte(',')
	}
	k, _ := json.Marshal(key)
	b.Write(k)
	b.WriteByte(':')
	b.Write(raw)
}

// yamlDoc collects one YAML document: header lines (with their line
// numbers in the document) and the entry of its items sequence being read.
type yamlDoc struct {
	document
	lines  int // lines of the document so far
	header bytes.Buffer
	hlines []int // document line of every header line

	// The items sequence: state, the column of its dashes, the entry
	// being read and its first line.
	state     int
	col       int
	entry     bytes.Buffer
	entryLine int
}

const (
	inHeader = iota
	afterItemsKey
	inItems
)

// readYAML reads multi-document YAML. It reports whether the last line
// ended with a newline.
func (r *stateReader) readYAML(in *bufio.Reader) (bool, error) {
	var d *yamlDoc
	n := 0
	newline := true
	var line []byte
	for {
		var err error
		line, err = readLine(in, line[:0])
		if len(line) == 0 && err == io.EOF {
			break
		} else if err != nil && err != io.EOF {
			return false, &FileError{Path: r.path, Err: err}
		}
		newline = err == nil
		if rest, ok := bytes.CutPrefix(line, []byte("---")); ok {
			// A document separator; only a comment may follow.
			if trimmed := strings.TrimSpace(string(rest)); trimmed != "" && trimmed[0] != '#' {
				return false, &FileError{Path: r.path, Err: fmt.Errorf("document %d: invalid Yaml document separator: %s", n+1, trimmed)}
			}
			if d != nil {
				if err := r.endYAMLDocument(d); err != nil {
					return false, err
				}
				d = nil
			}
			continue
		}
		if d == nil {
			n++
			d = &yamlDoc{document: document{n: n}}
		}
		if err := r.yamlLine(d, line); err != nil {
			return false, err
		}
	}
	if d != nil {
		if err := r.endYAMLDocument(d); err != nil {
			return false, err
		}
	}
	return newline, nil
}

// readLine appends the next line of in, without its newline, to buf. The
// error is io.EOF for a last line without a newline.
func readLine(in *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		chunk, err := in.ReadSlice('\n')
		buf = append(buf, chunk...)
		switch err {
		case bufio.ErrBufferFull:
			continue
		case nil:
			return bytes.TrimSuffix(buf[:len(buf)-1], []byte("\r")), nil
		default:
			return buf, err
		}
	}
}

var itemsKey = regexp.MustCompile(`^items:[ \t]*(#.*)?$`)

// yamlLine files one line of document d.
func (r *stateReader) yamlLine(d *yamlDoc, line []byte) error {
	d.lines++
	indent := len(line) - len(bytes.TrimLeft(line, " "))
	blank := indent == len(line) || line[indent] == '#'
	dash := !blank && line[indent] == '-' && (len(line) == indent+1 || line[indent+1] == ' ')
	switch d.state {
	case afterItemsKey:
		switch {
		case blank:
			return nil
		case dash:
			d.state, d.col, d.streamed = inItems, indent, true
			return r.startEntry(d, line)
		}
		d.state = inHeader // items is not a block sequence
	case inItems:
		switch {
		case blank || indent > d.col:
			d.entry.Write(line)
			d.entry.WriteByte('\n')
			return nil
		case dash && indent == d.col:
			if err := r.endEntry(d); err != nil {
				return err
			}
			return r.startEntry(d, line)
		}
		if err := r.endEntry(d); err != nil {
			return err
		}
		d.state = inHeader
	}
	if indent == 0 && !d.streamed && itemsKey.Match(line) {
		d.state = afterItemsKey
	}
	d.header.Write(line)
	d.header.WriteByte('\n')
	d.hlines = append(d.hlines, d.lines)
	return nil
}

// startEntry begins a sequence entry: its dash becomes a space, so that the
// entry is a block mapping indented by col+2.
func (r *stateReader) startEntry(d *yamlDoc, line []byte) error {
	d.entry.Reset()
	d.entryLine = d.lines
	d.entry.Write(line[:d.col])
	d.entry.WriteByte(' ')
	d.entry.Write(line[d.col+1:])
	d.entry.WriteByte('\n')
	return nil
}

func (r *stateReader) endEntry(d *yamlDoc) error {
	js, err := yaml.YAMLToJSONStrict(d.entry.Bytes())
	if err != nil {
		first := d.entryLine
		return &FileError{Path: r.path, Err: fmt.Errorf("document %d: %w", d.n, shiftLines(err, func(l int) int { return l + first - 1 }))}
	}
	d.entry.Reset()
	return r.listItem(&d.document, js)
}

func (r *stateReader) endYAMLDocument(d *yamlDoc) error {
	if d.state == inItems {
		if err := r.endEntry(d); err != nil {
			return err
		}
	}
	js, err := yaml.YAMLToJSONStrict(d.header.Bytes())
	if err != nil {
		return &FileError{Path: r.path, Err: fmt.Errorf("document %d: %w", d.n, shiftLines(err, func(l int) int {
			if l >= 1 && l <= len(d.hlines) {
				return d.hlines[l-1]
			}
			return l
		}))}
	}
	return r.endDocument(&d.document, js)
}

var yamlLineRef = regexp.MustCompile(`\bline (\d+)`)

// shiftLines rewrites the line numbers of a YAML error about a part of a
// document into lines of the whole document.
func shiftLines(err error, line func(int) int) error {
	msg := yamlLineRef.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, _ := strconv.Atoi(strings.TrimPrefix(m, "line "))
		return "line " + strconv.Itoa(line(n))
	})
	return errors.New(msg)
}

// add decodes one object and emits it. kind and apiVersion are the
// defaults for an object that has none (items of a typed list).
func (r *stateReader) add(item int, raw []byte, kind, apiVersion string) error {
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
	fail := func(err error) error { return &FileError{Path: r.path, Item: item, Name: desc, Err: err} }

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
		klog.InfoS("Skipping object of unsupported kind in state file", "path", r.path, "item", item, "object", desc)
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
	if r.dupes[desc] {
		return fail(errors.New("duplicate object"))
	}
	r.dupes[desc] = true
	Strip(obj)
	switch o := obj.(type) {
	case *v1.Service:
		o.Namespace = ns
	case *discovery.EndpointSlice:
		o.Namespace = ns
	}
	r.emit(obj)
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
