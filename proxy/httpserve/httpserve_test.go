package httpserve

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestNewServerTimeouts(t *testing.T) {
	srv := NewServer(http.NotFoundHandler())
	for name, got := range map[string]time.Duration{
		"ReadHeaderTimeout": srv.ReadHeaderTimeout,
		"ReadTimeout":       srv.ReadTimeout,
		"WriteTimeout":      srv.WriteTimeout,
		"IdleTimeout":       srv.IdleTimeout,
	} {
		if got <= 0 {
			t.Errorf("%s is %v: no timeout", name, got)
		}
	}
	if srv.IdleTimeout != IdleTimeout {
		t.Errorf("IdleTimeout %v, want %v", srv.IdleTimeout, IdleTimeout)
	}
}

// serve runs srv on a loopback port until the test ends and returns the
// address.
func serve(t *testing.T, srv *http.Server) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no IPv4 loopback: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, srv, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// closedWithin reports whether the server closes c within d.
func closedWithin(t *testing.T, r io.Reader, c net.Conn, d time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true // EOF or reset: closed by the server
}

// TestIdleConnectionClosed: a kept-alive connection with no further request
// is closed after IdleTimeout (shortened here), and a connection that never
// finishes its headers after ReadHeaderTimeout.
func TestIdleConnectionClosed(t *testing.T) {
	srv := NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	srv.IdleTimeout = 300 * time.Millisecond
	srv.ReadHeaderTimeout = 300 * time.Millisecond
	addr := serve(t, srv)

	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" || resp.Close {
		t.Fatalf("answer %d %q, close %v: want a kept-alive 200", resp.StatusCode, body, resp.Close)
	}
	start := time.Now()
	if !closedWithin(t, br, c, 5*time.Second) {
		t.Error("idle kept-alive connection not closed within 5s")
	}
	t.Logf("idle connection closed after %v", time.Since(start).Round(time.Millisecond))

	slow, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "GET / HTTP/1.1\r\nHost: x\r\n"); err != nil { // headers not finished
		t.Fatal(err)
	}
	if !closedWithin(t, slow, slow, 5*time.Second) {
		t.Error("connection with unfinished headers not closed within 5s")
	}
}

func TestServeStopsWithContext(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no IPv4 loopback: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, NewServer(http.NotFoundHandler()), l) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Serve returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := net.DialTimeout("tcp4", l.Addr().String(), time.Second); err == nil {
		t.Error("still listening after Serve returned")
	}
}

func TestServeListenerError(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no IPv4 loopback: %v", err)
	}
	l.Close()
	err = Serve(context.Background(), NewServer(http.NotFoundHandler()), l)
	if err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Serve on a closed listener: %v, want its error", err)
	}
}
