//go:build e2e

package e2e

import (
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestHealthzFollowsTheAPIServer: a node's /healthz (what a load balancer or
// the DaemonSet's readiness probe sees) turns 503 when svcproxy has not been
// able to reach the API server for longer than 2 × --sync-period (3 s here),
// and back to 200 once it can again. The rules stay in place meanwhile.
func TestHealthzFollowsTheAPIServer(t *testing.T) {
	node := cluster.Nodes[0]
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: node.NetNS.DialContext}}
	status := func() (int, error) {
		resp, err := client.Get("http://" + node.IP.String() + ":10256/healthz")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	waitStatus := func(want int, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		var last int
		var err error
		for time.Since(start) < within {
			if last, err = status(); err == nil && last == want {
				return time.Since(start)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("/healthz on %s: %d (%v) after %v, want %d", node.Name, last, err, within, want)
		return 0
	}
	waitStatus(http.StatusOK, 10*time.Second)

	if err := cluster.APIServer.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			cluster.APIServer.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	took := waitStatus(http.StatusServiceUnavailable, 20*time.Second)
	t.Logf("/healthz went 503 %v after the API server stopped answering", took.Round(100*time.Millisecond))
	if took < 6*time.Second {
		t.Errorf("/healthz went 503 after %v, before 2 × sync period (6s)", took)
	}
	resume()
	took = waitStatus(http.StatusOK, 20*time.Second)
	t.Logf("/healthz back to 200 %v after the API server resumed", took.Round(100*time.Millisecond))
	if code, err := status(); err != nil || code != http.StatusOK {
		t.Errorf("%d %v", code, err)
	}
}
