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

// NewServer returns a server for h. Probes, load-balancer health checks and
// scrapes are tiny requests; a client that does not finish its headers must
// not hold a connection forever.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
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
