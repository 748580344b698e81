package healthz

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
)

// fakeListener is a Listener of in-memory listeners, one per address, that
// tests reach with client(). It refuses an address already open (like the
// kernel) and any address in fail.
type fakeListener struct {
	mu   sync.Mutex
	open map[string]*memListener
	fail map[string]error
}

func newFakeListener() *fakeListener {
	return &fakeListener{open: map[string]*memListener{}, fail: map[string]error{}}
}

func (f *fakeListener) Listen(_ context.Context, network, address string) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[address]; err != nil {
		return nil, err
	}
	if f.open[address] != nil {
		return nil, fmt.Errorf("listen %s %s: address already in use", network, address)
	}
	l := &memListener{addr: address, conns: make(chan net.Conn), closed: make(chan struct{})}
	l.onClose = func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.open[address] == l {
			delete(f.open, address)
		}
	}
	f.open[address] = l
	return l, nil
}

// addresses returns the open addresses, sorted.
func (f *fakeListener) addresses() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for a := range f.open {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

func (f *fakeListener) dial(address string) (net.Conn, error) {
	f.mu.Lock()
	l := f.open[address]
	f.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("dial %s: connection refused", address)
	}
	return l.dial()
}

// client returns an HTTP client whose connections go to f's listeners.
func (f *fakeListener) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(_ context.Context, _, address string) (net.Conn, error) {
			return f.dial(address)
		},
	}}
}

type memListener struct {
	addr    string
	conns   chan net.Conn
	closed  chan struct{}
	once    sync.Once
	onClose func()
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.onClose()
	})
	return nil
}

func (l *memListener) Addr() net.Addr { return fakeAddr(l.addr) }

func (l *memListener) dial() (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.closed:
		return nil, errors.New("connection refused")
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// response is what a test checks of an HTTP answer.
type response struct {
	code    int
	headers map[string]string
	body    string
}

func get(t *testing.T, c *http.Client, url string, headers ...string) response {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	r := response{code: resp.StatusCode, body: string(body), headers: map[string]string{}}
	for _, h := range headers {
		r.headers[h] = resp.Header.Get(h)
	}
	return r
}
