package healthz

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/proxy"
)

// NodeHandler returns a proxy.Handler that passes every event on to next and
// also hands this node's Node objects to s.SyncNode, so that /healthz fails
// while the node is being deleted. Put it between a source and the Tracker.
func (s *ProxyServer) NodeHandler(next proxy.Handler) proxy.Handler {
	return nodeHandler{next: next, s: s}
}

type nodeHandler struct {
	next proxy.Handler
	s    *ProxyServer
}

func (h nodeHandler) OnServiceUpdate(old, cur *v1.Service) { h.next.OnServiceUpdate(old, cur) }

func (h nodeHandler) OnEndpointSliceUpdate(old, cur *discovery.EndpointSlice) {
	h.next.OnEndpointSliceUpdate(old, cur)
}

func (h nodeHandler) OnNodeUpdate(node *v1.Node) {
	if node != nil {
		h.s.SyncNode(node)
	}
	h.next.OnNodeUpdate(node)
}
