//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// attemptTimeout bounds each try while waiting for new rules: a try whose
// first packet beat the rules hangs on its conntrack entry, so it is
// abandoned and a new one (new source port) is made.
const attemptTimeout = 500 * time.Millisecond

// waitAnswer retries a request from h to addr until a backend answers or
// timeout passes, and returns the answer. It logs how long that took if
// the first try failed.
func waitAnswer(t *testing.T, h *framework.Host, proto corev1.Protocol, addr string, timeout time.Duration) framework.Reply {
	t.Helper()
	start, failed := time.Now(), 0
	var first error
	var reply framework.Reply
	err := framework.Eventually(context.Background(), timeout, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
		r, err := h.Request(ctx, proto, addr)
		if err != nil {
			if failed++; first == nil {
				first = err
			}
			return err
		}
		reply = r
		return nil
	})
	if err != nil {
		t.Fatalf("%s %s from %s: no answer within %v (%d tries; first error: %v; last: %v)", proto, addr, h.Name, timeout, failed, first, err)
	}
	if failed > 0 {
		t.Logf("%s %s from %s: first answer after %v and %d failed tries (first error: %v)", proto, addr, h.Name, time.Since(start).Round(time.Millisecond), failed, first)
	}
	return reply
}

// tally makes n requests from h to addr and counts the answers per backend
// and per source address seen. Every request must be answered.
func tally(t *testing.T, h *framework.Host, proto corev1.Protocol, addr string, n int) (byBackend map[string]int, bySource map[netip.Addr]int) {
	t.Helper()
	byBackend, bySource = map[string]int{}, map[netip.Addr]int{}
	for i := 0; i < n; i++ {
		r, err := h.Request(context.Background(), proto, addr)
		if err != nil {
			t.Fatalf("request %d of %d, %s %s from %s: %v", i+1, n, proto, addr, h.Name, err)
		}
		byBackend[r.Name]++
		bySource[r.Src.Addr()]++
	}
	return byBackend, bySource
}

// expectBackends fails unless the answers came from exactly the pods want.
func expectBackends(t *testing.T, what string, got map[string]int, want ...*framework.Pod) {
	t.Helper()
	var names []string
	for _, p := range want {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	var seen []string
	for n := range got {
		seen = append(seen, n)
	}
	slices.Sort(seen)
	if !slices.Equal(seen, names) {
		t.Errorf("%s: answers came from %v (%v), want exactly %v", what, seen, got, names)
	}
}

// expectSources fails unless every answer saw source address want.
func expectSources(t *testing.T, what string, got map[netip.Addr]int, want netip.Addr) {
	t.Helper()
	for src, n := range got {
		if src != want {
			t.Errorf("%s: %d answers saw source %v, want %v", what, n, src, want)
		}
	}
}

// expectNoAnswer fails if a request from h to addr gets an answer.
func expectNoAnswer(t *testing.T, h *framework.Host, proto corev1.Protocol, addr string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := h.Request(ctx, proto, addr)
	if err == nil {
		t.Errorf("%s %s from %s: answered by %s (source %v), want no answer", proto, addr, h.Name, r.Name, r.Src)
	}
	return err
}

func names(pods ...*framework.Pod) string {
	var s []string
	for _, p := range pods {
		s = append(s, fmt.Sprintf("%s@%s(%s)", p.Name, p.Node.Name, p.IP))
	}
	return strings.Join(s, " ")
}

// liftICMPRateLimit sets net.ipv4.icmp_ratelimit to 0 on every node until
// the test ends. The kernel rate-limits the ICMP errors that a REJECT rule
// sends, per client host: a burst of 6, then one a second. Past that, a
// refused TCP connect takes a SYN retransmit (1s) to be refused and a UDP
// one times out. Tests that are refused many times in a row from one client
// lift the limit: what they check is that the proxy rejects, not the
// kernel's limiter.
func liftICMPRateLimit(t *testing.T) {
	t.Helper()
	// The per-destination limit, and the namespace-wide one (1000/s with a
	// burst of 50 by default): both would delay or swallow the ICMP
	// errors that REJECT sends. Inside the node namespaces only.
	settings := []struct{ key, value string }{
		{"net.ipv4.icmp_ratelimit", "0"},
		{"net.ipv4.icmp_msgs_per_sec", "1000000"},
		{"net.ipv4.icmp_msgs_burst", "1000000"},
	}
	ctx := context.Background()
	for _, n := range cluster.Nodes {
		for _, s := range settings {
			old, err := n.NetNS.SysctlValue(ctx, s.key)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.NetNS.Sysctl(ctx, s.key, s.value); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := n.NetNS.Sysctl(ctx, s.key, old); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

// scrapeHistogram reads a histogram's _sum and _count from the svcproxy of
// node (its metrics server listens on 127.0.0.1:10249 inside the node).
func scrapeHistogram(t *testing.T, node *framework.Node, name string) (sum, count float64) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: node.NetNS.DialContext}}
	resp, err := client.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatalf("scraping %s's metrics: %v", node.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(f[0], name+"_sum"):
			sum += v
		case strings.HasPrefix(f[0], name+"_count"):
			count += v
		}
	}
	return sum, count
}
