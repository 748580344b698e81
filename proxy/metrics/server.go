package metrics

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy/httpserve"
)

// NewRegistry returns a registry holding the Go runtime and process
// collectors (go_*, process_*), as kube-proxy's /metrics has them; pass it to
// New and to NewServer.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Server is the HTTP server on --metrics-bind-address. Like kube-proxy's it
// serves /metrics, /healthz (always "ok": the process is up) and /proxyMode.
type Server struct {
	addr    string
	handler http.Handler
}

// NewServer returns a server for addr ("host:port") exposing what g gathers;
// mode is the answer to /proxyMode. It does not listen until Run.
func NewServer(addr string, g prometheus.Gatherer, mode string) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(g))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = io.WriteString(w, mode)
	})
	return &Server{addr: addr, handler: mux}
}

// Handler returns the server's HTTP handler (all of its paths).
func (s *Server) Handler() http.Handler { return s.handler }

// Run listens on the address and serves until ctx is done; it returns nil
// then, or the error that stopped it (for example the port in use).
func (s *Server) Run(ctx context.Context) error {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("metrics server: %w", err)
	}
	klog.FromContext(ctx).Info("Serving metrics", "address", l.Addr().String())
	return httpserve.Serve(ctx, httpserve.NewServer(s.handler), l)
}
