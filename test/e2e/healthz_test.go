//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// TestHealthzFollowsTheAPIServer: a node's /healthz (what a load balancer or
// the DaemonSet's readiness probe sees) turns 503 when svcproxy has not been
// able to reach the API server for longer than 2 × --sync-period (3 s here),
// and back to 200 once it can again. /livez (the liveness probe) stays 200
// all along, well past the point where /healthz failed: a restart would not
// bring the API server back, and svcproxy itself is fine. The rules stay in
// place meanwhile (a Service keeps answering through a 60 s outage), and a
// change made once the API server is back is applied within 2 s.
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

	// A Service whose rules must stay while the API server is away, and
	// whose change made right after it returns must be applied within 2 s.
	const ns = "outage"
	clientPod := cluster.MustStartPod(t, ns, "client", node)
	before := cluster.MustStartPod(t, ns, "before", node)
	after := cluster.MustStartPod(t, ns, "after", cluster.Nodes[1])
	svc := cluster.MustCreateService(t, framework.NewService(ns, "web", 80, corev1.ProtocolTCP))
	addr := framework.ClusterAddr(svc)
	cluster.MustSetEndpoints(t, svc, before)
	cluster.MustWaitServing(t, svc)
	servedBy := func(want *framework.Pod) error {
		// Generous: the rules are in place, but the machine is busy.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		r, err := clientPod.Request(ctx, corev1.ProtocolTCP, addr)
		if err != nil {
			return err
		}
		if r.Name != want.Namespace+"/"+want.PodName {
			return fmt.Errorf("answered by %s, want %s/%s", r.Name, want.Namespace, want.PodName)
		}
		return nil
	}

	if err := cluster.APIServer.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
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
	// Paused for 60 s in all: many health timeouts (6 s) and periodic
	// full syncs (3 s), /healthz 503 and /livez 200 throughout, and the
	// Service keeps working on the rules in place.
	for end := pausedAt.Add(60 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		checkLivez()
		if code, err := status("/healthz"); err != nil || code != http.StatusServiceUnavailable {
			t.Errorf("/healthz %d (%v) with the API server still paused, want 503", code, err)
		}
		if err := servedBy(before); err != nil {
			t.Errorf("the Service failed with the API server paused: %v", err)
		}
	}
	t.Logf("/livez checked %d times while the API server was paused", livezChecks)
	resume()
	// A change made as soon as the API server answers again.
	changed := time.Now()
	var updated time.Time
	if err := framework.Eventually(context.Background(), 30*time.Second, func(ctx context.Context) error {
		var err error
		updated, err = cluster.SetEndpoints(ctx, svc, after)
		return err
	}); err != nil {
		t.Fatalf("the API server did not take a change after it resumed: %v", err)
	}
	t.Logf("the API server took the change %v after it resumed", updated.Sub(changed).Round(100*time.Millisecond))
	if err := framework.Eventually(context.Background(), 10*time.Second, func(context.Context) error { return servedBy(after) }); err != nil {
		t.Fatalf("the change made after the outage was not applied within 10 s: %v", err)
	}
	applied := time.Since(updated)
	t.Logf("the change made after a 60 s outage was applied %v after the API server took it", applied.Round(100*time.Millisecond))
	if applied > 2*time.Second {
		t.Errorf("the change was applied %v after the API server took it, want within 2 s", applied)
	}
	took = waitStatus(http.StatusOK, 20*time.Second, false)
	t.Logf("/healthz back to 200 %v after the API server resumed", took.Round(100*time.Millisecond))
	for _, path := range []string{"/healthz", "/livez"} {
		if code, err := status(path); err != nil || code != http.StatusOK {
			t.Errorf("%s: %d %v", path, code, err)
		}
	}
}
