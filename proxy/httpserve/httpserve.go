// Package httpserve runs svcproxy's small HTTP servers (health, health-check
// node ports, metrics) with the same timeouts and shutdown.
package httpserve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// The timeouts of every server NewServer returns. Probes, load-balancer
// health checks and scrapes are small GET requests with small answers; no
// client may hold a connection (and its goroutine) for long:
const (
	// ReadHeaderTimeout bounds the wait for a request's headers.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds the reading of a whole request.
	ReadTimeout = 30 * time.Second
	// WriteTimeout bounds the time from the end of the request headers
	// to the end of the answer (a client that does not read it).
	WriteTimeout = 60 * time.Second
	// IdleTimeout closes a kept-alive connection that has had no request
	// for this long (load balancers' health checkers and Prometheus keep
	// connections open between requests).
	IdleTimeout = 90 * time.Second
)

// NewServer returns a server for h with the timeouts above.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
	}
}

// Serve serves srv on l until ctx is done, then shuts srv down (5 s grace).
// It returns nil after a shutdown, or the error that stopped Serve.
func Serve(ctx context.Context, srv *http.Server, l net.Listener) error {
	stopped := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
		case <-stopped:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(l)
	close(stopped)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
