package healthz

import (
	"context"
	"net"
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
