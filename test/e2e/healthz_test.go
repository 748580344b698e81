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
// and back to 200 once it can again. /livez (the liveness probe) stays 200
// all along, well past the point where /healthz failed: a restart would not
// bring the API server back, and svcproxy itself is fine. The rules stay in
// place meanwhile.
func TestHealthzFollowsTheAPIServer(t *testing.T) {
	node := cluster.Nodes[0]
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: node.NetNS.DialContext}}
	status := func(path string) (int, error) {
		resp, err := client.Get("http://" + node.IP.String() + ":10256" + path)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	// livezChecks counts the /livez answers seen while the API server was
	// paused; every one must be 200.
	livezChecks := 0
	checkLivez := func() {
		t.Helper()
		code, err := status("/livez")
		livezChecks++
		if err != nil || code != http.StatusOK {
			t.Errorf("/livez on %s: %d (%v) with the API server paused, want 200: a liveness probe would restart svcproxy", node.Name, code, err)
		}
	}
	waitStatus := func(want int, within time.Duration, paused bool) time.Duration {
		t.Helper()
		start := time.Now()
		var last int
		var err error
		for time.Since(start) < within {
			if paused {
				checkLivez()
			}
			if last, err = status("/healthz"); err == nil && last == want {
				return time.Since(start)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("/healthz on %s: %d (%v) after %v, want %d", node.Name, last, err, within, want)
		return 0
	}
	waitStatus(http.StatusOK, 10*time.Second, false)
	if code, err := status("/livez"); err != nil || code != http.StatusOK {
		t.Fatalf("/livez before the API server paused: %d %v", code, err)
	}

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
	took := waitStatus(http.StatusServiceUnavailable, 20*time.Second, true)
	t.Logf("/healthz went 503 %v after the API server stopped answering", took.Round(100*time.Millisecond))
	if took < 6*time.Second {
		t.Errorf("/healthz went 503 after %v, before 2 × sync period (6s)", took)
	}
	// Paused for as long again and more: several health timeouts (6 s)
	// and periodic full syncs (3 s), /healthz 503 and /livez 200 throughout.
	for end := time.Now().Add(12 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		checkLivez()
		if code, err := status("/healthz"); err != nil || code != http.StatusServiceUnavailable {
			t.Errorf("/healthz %d (%v) with the API server still paused, want 503", code, err)
		}
	}
	t.Logf("/livez checked %d times while the API server was paused", livezChecks)
	resume()
	took = waitStatus(http.StatusOK, 20*time.Second, false)
	t.Logf("/healthz back to 200 %v after the API server resumed", took.Round(100*time.Millisecond))
	for _, path := range []string{"/healthz", "/livez"} {
		if code, err := status(path); err != nil || code != http.StatusOK {
			t.Errorf("%s: %d %v", path, code, err)
		}
	}
}
