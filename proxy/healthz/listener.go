package healthz

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Listener opens listening sockets. NetListener is the real one; tests use a
// fake that hands out in-memory listeners.
type Listener interface {
	// Listen listens on address ("host:port") of network ("tcp", "tcp4").
	Listen(ctx context.Context, network, address string) (net.Listener, error)
}

// NetListener is a Listener on the host's network stack.
type NetListener struct{}

var _ Listener = NetListener{}

// Listen implements Listener.
func (NetListener) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var lc net.ListenConfig
	return lc.Listen(ctx, network, address)
}

func newHTTPServer(h http.Handler) *http.Server {
	// Probes and load balancer health checks are tiny requests; a client
	// that does not finish its headers must not hold a connection forever.
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
}

// serveUntilDone serves srv on l until ctx is done, then shuts srv down.
// It returns nil after a shutdown, or the error that stopped Serve.
func serveUntilDone(ctx context.Context, srv *http.Server, l net.Listener) error {
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
