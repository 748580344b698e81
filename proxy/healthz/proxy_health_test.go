package healthz

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/svcproxy/svcproxy/proxy"
)

var t0 = time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)

const timeout = 60 * time.Second // 2 × a 30 s sync period

type step func(s *ProxyServer, clk *clocktesting.FakeClock)

func queued() step              { return func(s *ProxyServer, _ *clocktesting.FakeClock) { s.QueuedUpdate() } }
func updated() step             { return func(s *ProxyServer, _ *clocktesting.FakeClock) { s.Updated() } }
func wait(d time.Duration) step { return func(_ *ProxyServer, c *clocktesting.FakeClock) { c.Step(d) } }
func node(n *v1.Node) step      { return func(s *ProxyServer, _ *clocktesting.FakeClock) { s.SyncNode(n) } }
func sourceErr(err error) step {
	return func(s *ProxyServer, _ *clocktesting.FakeClock) { s.SetSourceError(err) }
}
func deleting(name string) *v1.Node {
	n := readyNode(name)
	n.DeletionTimestamp = &metav1.Time{Time: t0}
	return n
}
func readyNode(name string) *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}
func tainted(name, key string) *v1.Node {
	n := readyNode(name)
	n.Spec.Taints = []v1.Taint{{Key: key, Effect: v1.TaintEffectNoSchedule}}
	return n
}

func TestProxyHealth(t *testing.T) {
	tests := []struct {
		name        string
		steps       []step
		wantHealthz int
		wantLivez   int
		// wantLastUpdated is the lastUpdated of a 503 answer (a 200 says
		// the current time).
		wantLastUpdated time.Time
	}{
		{
			name:        "just started",
			wantHealthz: 200, wantLivez: 200,
		},
		{
			// Not ready, but alive: svcproxy may be waiting for the API
			// server's first complete view, which a restart cannot speed up.
			name:        "no sync within the timeout of start",
			steps:       []step{wait(timeout)},
			wantHealthz: 503, wantLivez: 200,
		},
		{
			name:        "changes waiting before the first sync",
			steps:       []step{queued(), wait(timeout)},
			wantHealthz: 503, wantLivez: 200,
		},
		{
			name:        "first sync just in time",
			steps:       []step{wait(timeout - time.Second), updated(), wait(time.Hour)},
			wantHealthz: 200, wantLivez: 200,
		},
		{
			name:        "idle for long after a sync stays healthy",
			steps:       []step{updated(), wait(24 * time.Hour)},
			wantHealthz: 200, wantLivez: 200,
		},
		{
			name:        "change waiting less than the timeout",
			steps:       []step{updated(), queued(), wait(timeout - time.Second)},
			wantHealthz: 200, wantLivez: 200,
		},
		{
			name:        "change waiting the timeout",
			steps:       []step{updated(), wait(time.Minute), queued(), wait(timeout)},
			wantHealthz: 503, wantLivez: 503,
			wantLastUpdated: t0,
		},
		{
			name:        "only the oldest waiting change counts",
			steps:       []step{updated(), queued(), wait(timeout / 2), queued(), wait(timeout / 2)},
			wantHealthz: 503, wantLivez: 503, wantLastUpdated: t0,
		},
		{
			name:        "a sync clears waiting changes",
			steps:       []step{updated(), queued(), wait(timeout * 2), updated(), wait(timeout - time.Second)},
			wantHealthz: 200, wantLivez: 200,
		},
		{
			name:        "node being deleted fails healthz only",
			steps:       []step{updated(), node(deleting("node1"))},
			wantHealthz: 503, wantLivez: 200, wantLastUpdated: t0,
		},
		{
			name:        "node tainted by the cluster autoscaler",
			steps:       []step{updated(), node(tainted("node1", ToBeDeletedTaint))},
			wantHealthz: 503, wantLivez: 200, wantLastUpdated: t0,
		},
		{
			name:        "other taints do not matter",
			steps:       []step{updated(), node(tainted("node1", "node.kubernetes.io/unreachable"))},
			wantHealthz: 200, wantLivez: 200,
		},
		{
			name:        "node deleted",
			steps:       []step{updated(), node(nil)},
			wantHealthz: 503, wantLivez: 200, wantLastUpdated: t0,
		},
		{
			name:        "node eligible again",
			steps:       []step{updated(), node(tainted("node1", ToBeDeletedTaint)), node(readyNode("node1"))},
			wantHealthz: 200, wantLivez: 200,
		},
		{
			name:        "source failing shorter than the timeout",
			steps:       []step{updated(), sourceErr(errors.New("connection refused")), wait(timeout - time.Second)},
			wantHealthz: 200, wantLivez: 200,
		},
		{
			// An API server outage: /healthz reports it, /livez does not
			// ask for a restart, which would not bring the API server back.
			name: "source failing for the timeout, syncs succeeding",
			steps: []step{updated(), sourceErr(errors.New("connection refused")), wait(timeout / 2),
				updated(), sourceErr(errors.New("still refused")), wait(timeout / 2)},
			wantHealthz: 503, wantLivez: 200, wantLastUpdated: t0.Add(timeout / 2),
		},
		{
			name:        "source failing for hours, no sync since",
			steps:       []step{updated(), sourceErr(errors.New("connection refused")), wait(24 * time.Hour)},
			wantHealthz: 503, wantLivez: 200, wantLastUpdated: t0,
		},
		{
			name:        "source failing before the first sync",
			steps:       []step{sourceErr(errors.New("connection refused")), queued(), wait(timeout)},
			wantHealthz: 503, wantLivez: 200,
		},
		{
			// A change seen before the outage that no sync ever
			// programmed: the proxy itself is stuck.
			name: "source failing and a change waiting the timeout",
			steps: []step{updated(), queued(), wait(time.Second), sourceErr(errors.New("connection refused")),
				wait(timeout - time.Second)},
			wantHealthz: 503, wantLivez: 503, wantLastUpdated: t0,
		},
		{
			name: "sync failing after it had succeeded, node being deleted",
			steps: []step{updated(), node(deleting("node1")), wait(time.Minute), queued(),
				wait(timeout)},
			wantHealthz: 503, wantLivez: 503, wantLastUpdated: t0,
		},
		{
			name:        "source back",
			steps:       []step{updated(), sourceErr(errors.New("connection refused")), wait(timeout * 3), sourceErr(nil)},
			wantHealthz: 200, wantLivez: 200,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(t0)
			counter := &codeCounter{}
			s := NewProxyServer(Config{Timeout: timeout, Clock: clk, Counter: counter})
			for _, st := range tc.steps {
				st(s, clk)
			}
			now := clk.Now()
			for _, path := range []string{"/healthz", "/livez"} {
				want := tc.wantHealthz
				if path == "/livez" {
					want = tc.wantLivez
				}
				rec := httptest.NewRecorder()
				s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
				if rec.Code != want {
					t.Errorf("%s: status %d, want %d; body %s", path, rec.Code, want, rec.Body)
				}
				if got := rec.Header().Get("Content-Type"); got != "application/json" {
					t.Errorf("%s: Content-Type %q", path, got)
				}
				if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
					t.Errorf("%s: X-Content-Type-Options %q", path, got)
				}
				var body map[string]any
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Fatalf("%s: body %q: %v", path, rec.Body, err)
				}
				wantLast := tc.wantLastUpdated
				if want == 200 {
					wantLast = now
				}
				if body["lastUpdated"] != wantLast.Format(time.RFC3339Nano) {
					t.Errorf("%s: lastUpdated %v, want %v", path, body["lastUpdated"], wantLast.Format(time.RFC3339Nano))
				}
				if body["currentTime"] != now.Format(time.RFC3339Nano) {
					t.Errorf("%s: currentTime %v, want %v", path, body["currentTime"], now)
				}
				_, hasEligible := body["nodeEligible"]
				if hasEligible != (path == "/healthz") {
					t.Errorf("%s: nodeEligible present = %v", path, hasEligible)
				}
			}
			wantCounts := map[string]int{"healthz": tc.wantHealthz, "livez": tc.wantLivez}
			if diff := cmp.Diff(map[string][]int{"healthz": {wantCounts["healthz"]}, "livez": {wantCounts["livez"]}}, counter.codes); diff != "" {
				t.Errorf("counted responses (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHealthzBody pins the JSON body to kube-proxy's field names and shape.
func TestHealthzBody(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	s := NewProxyServer(Config{Timeout: timeout, Clock: clk})
	s.Updated()
	clk.Step(time.Second)
	s.SyncNode(deleting("node1"))
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	want := `{"lastUpdated":"2026-05-01T08:00:00Z","currentTime":"2026-05-01T08:00:01Z","nodeEligible":false,"healthy":true,` +
		`"status":{"IPv4":{"lastUpdated":"2026-05-01T08:00:00Z","healthy":true}}}`
	if diff := cmp.Diff(want, rec.Body.String()); diff != "" {
		t.Errorf("body (-want +got):\n%s", diff)
	}
}

type codeCounter struct{ codes map[string][]int }

func (c *codeCounter) HealthzResponse(code int) { c.add("healthz", code) }
func (c *codeCounter) LivezResponse(code int)   { c.add("livez", code) }
func (c *codeCounter) add(k string, code int) {
	if c.codes == nil {
		c.codes = map[string][]int{}
	}
	c.codes[k] = append(c.codes[k], code)
}

func TestProxyServerRun(t *testing.T) {
	fl := newFakeListener()
	s := NewProxyServer(Config{BindAddress: "0.0.0.0:10256", Timeout: timeout, Listener: fl})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	waitFor(t, func() bool { return len(fl.addresses()) == 1 })
	if got := get(t, fl.client(), "http://0.0.0.0:10256/livez"); got.code != http.StatusOK {
		t.Errorf("/livez: %d %s", got.code, got.body)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if open := fl.addresses(); len(open) != 0 {
		t.Errorf("still listening on %v", open)
	}
}

func TestProxyServerRunListenError(t *testing.T) {
	fl := newFakeListener()
	fl.fail["127.0.0.1:10256"] = errors.New("address already in use")
	err := NewProxyServer(Config{BindAddress: "127.0.0.1:10256", Listener: fl}).Run(context.Background())
	if err == nil {
		t.Fatal("Run succeeded on a port in use")
	}
}

func TestDefaultBindAddress(t *testing.T) {
	fl := newFakeListener()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = NewProxyServer(Config{Listener: fl}).Run(ctx) }()
	waitFor(t, func() bool { return len(fl.addresses()) == 1 })
	if diff := cmp.Diff([]string{"0.0.0.0:10256"}, fl.addresses()); diff != "" {
		t.Errorf("listening on (-want +got):\n%s", diff)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type nodeRecorder struct {
	proxy.Handler
	nodes []string
}

func (r *nodeRecorder) OnNodeUpdate(n *v1.Node) { r.nodes = append(r.nodes, n.Name) }

func TestNodeHandler(t *testing.T) {
	s := NewProxyServer(Config{Timeout: timeout, Clock: clocktesting.NewFakeClock(t0)})
	next := &nodeRecorder{}
	h := s.NodeHandler(next)
	h.OnNodeUpdate(deleting("node1"))
	if s.NodeEligible() {
		t.Error("node being deleted is eligible")
	}
	h.OnNodeUpdate(readyNode("node1"))
	if !s.NodeEligible() {
		t.Error("node not eligible again")
	}
	if diff := cmp.Diff([]string{"node1", "node1"}, next.nodes); diff != "" {
		t.Errorf("passed on (-want +got):\n%s", diff)
	}
}

// The health-check node ports follow the rules, not the API server: an
// outage that fails /healthz must not make every node's load-balancer
// health check fail at once; a change stuck unsynced does.
func TestServicePortsIgnoreAnAPIOutage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
		want  bool
	}{
		{name: "synced", steps: []step{updated()}, want: true},
		{name: "API server away for long", steps: []step{updated(), sourceErr(errors.New("connection refused")), wait(timeout * 3)}, want: true},
		{name: "a change stuck", steps: []step{updated(), queued(), wait(timeout * 3)}, want: false},
		{name: "no first sync in time", steps: []step{queued(), wait(timeout * 3)}, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktesting.NewFakeClock(t0)
			s := NewProxyServer(Config{Timeout: timeout, Clock: clk})
			for _, st := range tc.steps {
				st(s, clk)
			}
			if got := s.ForServicePorts().IsHealthy(); got != tc.want {
				t.Errorf("service ports healthy %v, want %v (/healthz healthy %v)", got, tc.want, s.IsHealthy())
			}
		})
	}
}
