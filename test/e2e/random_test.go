//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// Sizes of TestRandomChurn (repository issue 9: "1,000 random valid
// Services/EndpointSlices").
const (
	churnServices = 1000
	// churnOps is the number of random updates and deletes of the burst
	// (each one to three API writes).
	churnOps     = 2500
	churnWorkers = 8
	// churnTrickle is the number of operations of the last, small round.
	churnTrickle = 40
	// churnDefaultSeed is used unless E2E_CHURN_SEED is set: the run is
	// the same object stream every time (API-allocated ClusterIPs and
	// node ports, and the interleaving of the workers, are not).
	churnDefaultSeed = 20250109
)

var churnNamespaces = []string{"churn-a", "churn-b", "churn-c", "churn-d"}

// TestRandomChurn: 1,000 random valid Services with their EndpointSlices
// are written through the API server (odd ports, TCP/UDP/SCTP, ClusterIP,
// NodePort and LoadBalancer with status, IPv4, IPv6 and dual-stack of
// either primary family, external IPs and load-balancer IPs of both
// families, source ranges, externalTrafficPolicy and internalTrafficPolicy
// Local, ClientIP affinity, headless services, slices of the Service's
// families and of the other one, FQDN slices, endpoints ready, terminating
// or not serving, on either node, on unknown nodes or on none, up to 150
// in a slice), then a burst of random updates and deletes as fast as the
// API server takes them (endpoints added and removed, ports and protocols
// changed, policies, types and IP families flipped, slices deleted,
// services deleted and recreated), then a trickle of a few more. Meanwhile
// a pod on node1 opens a continuous stream of new connections to a steady
// dual-stack Service whose backends are on node1 and node2 (TCP and UDP
// over IPv4, TCP over IPv6): not one may fail. After each phase, once
// svcproxy has settled (its metrics: nothing queued for a second, and its
// last sync began after the last queued change), each node's svcproxy
// chains of both families — every SVCP- chain with its rules in order, and
// the jumps into them from the built-in chains — must equal what
// `svcproxy --dry-run` with the node's own flags renders from the API
// server's state at that moment, both spelled by iptables-save and
// ip6tables-save (the render is loaded into scratch namespaces and saved
// again). In nftables mode the same holds of the ip and ip6 svcproxy
// tables (every chain, set and map with its elements, affinity sets'
// clients aside), as nft lists them on the node and in a scratch namespace
// the render was loaded into.
func TestRandomChurn(t *testing.T) {
	seed := int64(churnDefaultSeed)
	if s := os.Getenv("E2E_CHURN_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("E2E_CHURN_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (set E2E_CHURN_SEED=%d to replay this object stream)", seed, seed)

	const steadyNS = "churn-steady"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, steadyNS, "client", node1)
	backends := []*framework.Pod{
		cluster.MustStartPod(t, steadyNS, "web-1", node1),
		cluster.MustStartPod(t, steadyNS, "web-2", node2),
	}
	steady := cluster.MustCreateService(t, framework.DualStack(framework.NewService(steadyNS, "steady", 80, corev1.ProtocolTCP, corev1.ProtocolUDP)))
	cluster.MustSetEndpoints(t, steady, backends...)
	cluster.MustWaitServing(t, steady)
	tcpAddr := framework.ClusterAddrOf(steady, corev1.ProtocolTCP)
	udpAddr := framework.ClusterAddrOf(steady, corev1.ProtocolUDP)
	// The steady Service is dual-stack: one more
	// stream over its IPv6 ClusterIP.
	tcp6Addr := framework.ClusterAddrFamily(steady, corev1.ProtocolTCP, corev1.IPv6Protocol)
	if tcp6Addr == "" {
		t.Fatalf("steady Service %s has no IPv6 ClusterIP: %v", steady.Name, steady.Spec.ClusterIPs)
	}
	waitAnswer(t, &client.Host, corev1.ProtocolTCP, tcpAddr, 10*time.Second)
	waitAnswer(t, &client.Host, corev1.ProtocolUDP, udpAddr, 10*time.Second)
	waitAnswer(t, &client.Host, corev1.ProtocolTCP, tcp6Addr, 10*time.Second)

	// As fast as the API server takes them: no client-side rate limit.
	cfg := rest.CopyConfig(cluster.RESTConfig)
	cfg.QPS, cfg.Burst = -1, 0
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, ns := range churnNamespaces {
		if err := cluster.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	ch := newChurn(kube, seed, t.Logf)
	t.Cleanup(func() { ch.cleanup(t) })

	// The stream: new connections one after the other, from the start
	// of the churn to its end.
	stop := make(chan struct{})
	var once sync.Once
	stopStream := func() { once.Do(func() { close(stop) }) }
	defer stopStream()
	streamStart := time.Now()
	tcpResults := prober(&client.Host, corev1.ProtocolTCP, tcpAddr, 2*time.Second, 10*time.Millisecond, stop)
	udpResults := prober(&client.Host, corev1.ProtocolUDP, udpAddr, 2*time.Second, 10*time.Millisecond, stop)
	tcp6Results := prober(&client.Host, corev1.ProtocolTCP, tcp6Addr, 2*time.Second, 10*time.Millisecond, stop)

	start := time.Now()
	ch.run(ctx, func(w *churnWorker) {
		for _, o := range w.objs {
			w.create(ctx, o)
		}
	})
	created := time.Since(start)
	live, eps := ch.census()
	t.Logf("created %d Services with %d EndpointSlices (%d endpoints in all) in %v: %s",
		live, ch.countSlices(), eps, created.Round(time.Millisecond), ch.stats.summary())
	checkRulesMatchRender(t, "after the creation of 1,000 Services")

	ch.stats.reset()
	start = time.Now()
	ch.run(ctx, func(w *churnWorker) {
		for i := 0; i < churnOps/churnWorkers; i++ {
			w.randomOp(ctx)
		}
	})
	burst := time.Since(start)
	live, eps = ch.census()
	t.Logf("burst of %d random operations in %v (%s); final state %d Services, %d EndpointSlices, %d endpoints",
		ch.stats.totalOps(), burst.Round(time.Millisecond), ch.stats.summary(), live, ch.countSlices(), eps)
	t.Logf("operations: %s", ch.stats.opsSummary())
	checkRulesMatchRender(t, "after the burst of updates and deletes")

	// A trickle: a few more changes, after which the last sync before the
	// comparison is most likely a partial one (the burst's is mostly the
	// periodic full sync).
	ch.stats.reset()
	ch.run(ctx, func(w *churnWorker) {
		for i := 0; i < churnTrickle/churnWorkers; i++ {
			w.randomOp(ctx)
		}
	})
	t.Logf("trickle of %d operations: %s", ch.stats.totalOps(), ch.stats.summary())
	checkRulesMatchRender(t, "after a trickle of changes")

	stopStream()
	streamTook := time.Since(streamStart)
	for _, res := range []struct {
		proto, addr string
		probes      []probe
	}{{"TCP", tcpAddr, <-tcpResults}, {"UDP", udpAddr, <-udpResults}, {"TCP", tcp6Addr, <-tcp6Results}} {
		var failed []string
		seen := map[string]int{}
		for _, p := range res.probes {
			if p.err != nil {
				failed = append(failed, fmt.Sprintf("%s (+%v): %v", p.at.Format("15:04:05.000"), p.at.Sub(streamStart).Round(time.Millisecond), p.err))
				continue
			}
			seen[p.reply.Name]++
		}
		t.Logf("steady %s stream %s from %s: %d connections in %v, %d failed; backends %v",
			res.proto, res.addr, client.Name, len(res.probes), streamTook.Round(time.Millisecond), len(failed), seen)
		if len(failed) > 0 {
			if len(failed) > 30 {
				failed = append(failed[:30], fmt.Sprintf("... and %d more", len(failed)-30))
			}
			t.Errorf("steady %s stream to %s: %d of %d connections failed during the churn:\n%s", res.proto, res.addr, len(failed), len(res.probes), strings.Join(failed, "\n"))
		}
		if len(res.probes) < 100 {
			t.Errorf("steady %s stream to %s: only %d connections were tried", res.proto, res.addr, len(res.probes))
		}
		expectBackends(t, "steady "+res.proto+" stream to "+res.addr, seen, backends...)
	}
	if n := ch.stats.rejectedCount(); n*20 > ch.stats.totalWrites()+n {
		t.Errorf("the API server refused %d writes (more than 5%%): the generator writes invalid objects; first refusals:\n%s", n, ch.stats.rejectionSample())
	}
}

// ---------------------------------------------------------------------
// Comparing a node's rules with a fresh render.

// checkRulesMatchRender waits until every node's svcproxy has settled,
// reads its rules at once, and compares them with what --dry-run renders
// from the API server (whose state no longer changes).
func checkRulesMatchRender(t *testing.T, when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type result struct {
		w      syncWatch
		live   ruleset
		during string
		err    error
	}
	results := make([]result, len(cluster.Nodes))
	var wg sync.WaitGroup
	for i, n := range cluster.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[i]
			if res.w, res.err = waitSettled(ctx, n, time.Second, 90*time.Second); res.err != nil {
				res.err = fmt.Errorf("svcproxy on %s did not settle: %w\nlog tail:\n%s", n.Name, res.err, n.Proxy.Tail(30))
				return
			}
			res.live, res.during, res.err = liveRules(ctx, n)
		}()
	}
	wg.Wait()
	for i, n := range cluster.Nodes {
		res := results[i]
		if res.err != nil {
			t.Errorf("%s: %v", when, res.err)
			continue
		}
		t.Logf("%s: svcproxy on %s settled: nothing queued for %v, and its last sync (%s) began after the last queued change",
			when, n.Name, res.w.quietFor.Round(time.Millisecond), res.w.last)
		compareNodeWithRender(ctx, t, n, when, res.w, res.live, res.during)
	}
}

// compareNodeWithRender compares n's live rules with a fresh render; on a
// difference it also waits for svcproxy's next full sync and compares
// again, to tell whether a full sync repairs it.
func compareNodeWithRender(ctx context.Context, t *testing.T, n *framework.Node, when string, w syncWatch, live ruleset, during string) {
	t.Helper()
	renderStart := time.Now()
	want, err := renderedRules(ctx, n)
	if err != nil {
		t.Errorf("%s: %v", when, err)
		return
	}
	renderTook := time.Since(renderStart)
	diff := diffRulesets(live, want)
	if diff == "" {
		t.Logf("%s: %s's rules equal a fresh render: %s (dry run and canonical forms %v); last sync before the comparison: %s%s",
			when, n.Name, live.summary(), renderTook.Round(time.Millisecond), w.last, during)
		return
	}
	t.Errorf("%s: %s's rules differ from a fresh render of the API server's state (node %d chains/%d rules, render %d chains/%d rules); last sync before the comparison: %s%s\n%s",
		when, n.Name, len(live.chains), live.rules(), len(want.chains), want.rules(), w.last, during, diff)
	// Does the next full sync repair it?
	before, err := scrapeMetrics(n)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	fullCount := before[fullSyncCount]
	err = framework.Eventually(ctx, 30*time.Second, func(context.Context) error {
		m, err := scrapeMetrics(n)
		if err != nil {
			return err
		}
		if m[fullSyncCount] <= fullCount {
			return fmt.Errorf("no full sync yet")
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: waiting for a full sync on %s: %v", when, n.Name, err)
		return
	}
	again, _, err := liveRules(ctx, n)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	if d := diffRulesets(again, want); d == "" {
		t.Errorf("%s: on %s the next full sync repaired the difference", when, n.Name)
	} else {
		t.Errorf("%s: on %s the next full sync did not repair the difference:\n%s", when, n.Name, d)
	}
}

// liveRules returns n's rules, and a note if a sync ended while they were
// read. In nftables mode n's svcproxy is paused (SIGSTOP, once no nft of
// its own runs) while its tables are listed, and resumed (SIGCONT):
// `nft list table` reads a table in several netlink dumps, not atomically,
// and a transaction committed meanwhile tears the listing (a chain's rules
// twice, chains missing). Here the periodic full sync (every 3 s, about
// 2.5 s at 1,000 Services) commits nearly all the time: two listings in a
// row of a settled node were never the same. The rules stay in place while
// it is paused.
func liveRules(ctx context.Context, n *framework.Node) (ruleset, string, error) {
	if !cluster.NFTablesMode() {
		return liveRulesOnce(ctx, n)
	}
	// Its metrics are read before and after the pause (a stopped process
	// does not answer).
	m0, err := scrapeMetrics(n)
	if err != nil {
		return ruleset{}, "", err
	}
	resume, err := pauseProxy(n)
	if err != nil {
		return ruleset{}, "", err
	}
	live, err := nftLiveRules(ctx, n)
	resume()
	if err != nil {
		return ruleset{}, "", err
	}
	m1, err := scrapeMetrics(n)
	if err != nil {
		return ruleset{}, "", err
	}
	note := ""
	if c0, c1 := m0[syncCount], m1[syncCount]; c1 != c0 {
		note = fmt.Sprintf(" (%v more syncs, %v of them full, ended around the paused listing)", c1-c0, m1[fullSyncCount]-m0[fullSyncCount])
	}
	return live, note, nil
}

// pauseProxy stops node n's svcproxy (SIGSTOP) and waits until none of its
// children (nft) runs any more; resume continues it (SIGCONT).
func pauseProxy(n *framework.Node) (resume func(), err error) {
	pid := n.Proxy.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("SIGSTOP svcproxy on %s: %w", n.Name, err)
	}
	resume = func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	deadline := time.Now().Add(20 * time.Second)
	for {
		// Running children; one that has exited stays a zombie until
		// svcproxy, stopped, reaps it.
		children := ""
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
			for _, child := range strings.Fields(string(b)) {
				stat, err := os.ReadFile("/proc/" + child + "/stat")
				if err != nil {
					continue // gone
				}
				// pid (comm) state ...: comm may hold spaces.
				if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
					continue
				}
				children += child + " "
			}
		}
		if children == "" {
			return resume, nil
		}
		if time.Now().After(deadline) {
			resume()
			return nil, fmt.Errorf("svcproxy on %s paused, but its children (%s) still run after 20s", n.Name, children)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// liveRulesOnce is liveRules in iptables and IPVS mode.
func liveRulesOnce(ctx context.Context, n *framework.Node) (ruleset, string, error) {
	m0, err := scrapeMetrics(n)
	if err != nil {
		return ruleset{}, "", err
	}
	save, err := n.NetNS.IPTablesSave(ctx)
	if err != nil {
		return ruleset{}, "", err
	}
	save6, err := n.NetNS.IP6TablesSave(ctx)
	if err != nil {
		return ruleset{}, "", err
	}
	live := parseRuleset("IPv4", save).merge(parseRuleset("IPv6", save6))
	m1, err := scrapeMetrics(n)
	if err != nil {
		return ruleset{}, "", err
	}
	note := ""
	if c0, c1 := m0[syncCount], m1[syncCount]; c1 != c0 {
		note = fmt.Sprintf(" (%v more syncs, %v of them full, ended while iptables-save ran)", c1-c0, m1[fullSyncCount]-m0[fullSyncCount])
	}
	return live, note, nil
}

// renderedRules returns what svcproxy --dry-run renders for n now, both
// families, in iptables-save's and ip6tables-save's spelling.
func renderedRules(ctx context.Context, n *framework.Node) (ruleset, error) {
	if cluster.NFTablesMode() {
		return nftRenderedRules(ctx, n)
	}
	text, err := cluster.DryRun(ctx, n)
	if err != nil {
		return ruleset{}, fmt.Errorf("dry run for %s: %w", n.Name, err)
	}
	var v4, v6 string
	if cluster.IPVSMode() {
		// Only the iptables sections are compared in IPVS mode (virtual
		// servers, ipsets and addresses are not).
		const marker4 = "# iptables-save (restore with: iptables-restore --noflush)\n"
		const marker6 = "# ip6tables-save (restore with: ip6tables-restore --noflush)\n"
		i := strings.Index(text, marker4)
		if i < 0 {
			return ruleset{}, fmt.Errorf("dry run for %s (IPVS mode): no iptables section", n.Name)
		}
		v4 = text[i+len(marker4):]
		if j := strings.Index(v4, marker6); j >= 0 {
			v4, v6 = v4[:j], v4[j+len(marker6):]
		}
	} else if v4, v6, err = framework.SplitDryRun(text); err != nil {
		return ruleset{}, fmt.Errorf("dry run for %s: %w", n.Name, err)
	}
	out := ruleset{chains: map[string][]string{}}
	if v4 != "" {
		canon, err := cluster.CanonicalRules(ctx, v4)
		if err != nil {
			return ruleset{}, fmt.Errorf("dry run for %s: %w", n.Name, err)
		}
		out = out.merge(parseRuleset("IPv4", canon))
	}
	if v6 != "" {
		canon, err := cluster.CanonicalRules6(ctx, v6)
		if err != nil {
			return ruleset{}, fmt.Errorf("dry run for %s: %w", n.Name, err)
		}
		out = out.merge(parseRuleset("IPv6", canon))
	}
	return out, nil
}

const (
	syncCount     = "kubeproxy_sync_proxy_rules_duration_seconds_count"
	syncSum       = "kubeproxy_sync_proxy_rules_duration_seconds_sum"
	fullSyncCount = "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
	syncFailures  = "svcproxy_sync_proxy_rules_failures_total"
	lastSynced    = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
	lastQueued    = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
)

// syncWatch follows a node's syncs through its metrics.
type syncWatch struct {
	// began is the latest time (unix seconds) before which the last
	// completed successful sync cannot have started: its end minus the
	// time all syncs completed since the previous scrape took.
	began float64
	// last describes that sync.
	last string
	// quietFor is how long nothing had been queued when it settled.
	quietFor time.Duration
}

// waitSettled waits until n's svcproxy has queued nothing for quiet and
// its last successful sync began after the last change was queued — so
// that sync saw every change. (kubeproxy_sync_proxy_rules_last_timestamp
// is when a sync ended: a change queued while a sync runs is older than
// that timestamp but not in that sync.)
func waitSettled(ctx context.Context, n *framework.Node, quiet, timeout time.Duration) (syncWatch, error) {
	var w syncWatch
	var prev map[string]float64
	err := framework.Eventually(ctx, timeout, func(context.Context) error {
		m, err := scrapeMetrics(n)
		if err != nil {
			return err
		}
		defer func() { prev = m }()
		if prev == nil {
			return fmt.Errorf("first scrape")
		}
		if done := m[syncCount] - prev[syncCount]; done > 0 {
			if m[syncFailures] != prev[syncFailures] {
				w.began, w.last = 0, fmt.Sprintf("%v failed", m[syncFailures]-prev[syncFailures])
			} else {
				took := m[syncSum] - prev[syncSum]
				w.began = m[lastSynced] - took
				kind := "partial"
				if m[fullSyncCount] > prev[fullSyncCount] {
					kind = "full"
				}
				w.last = fmt.Sprintf("%s, took %v", kind, time.Duration(took*float64(time.Second)).Round(time.Millisecond))
				if done > 1 {
					w.last = fmt.Sprintf("%v syncs between two scrapes, %v full, %v in all", done, m[fullSyncCount]-prev[fullSyncCount],
						time.Duration(took*float64(time.Second)).Round(time.Millisecond))
				}
			}
		}
		queued := m[lastQueued]
		now := float64(time.Now().UnixNano()) / 1e9
		switch {
		case w.began == 0:
			return fmt.Errorf("no successful sync seen yet (sync failures %v)", m[syncFailures])
		case w.began <= queued:
			return fmt.Errorf("last sync began at the latest %.3f, before the last queued change %.3f", w.began, queued)
		case now-queued < quiet.Seconds():
			return fmt.Errorf("last change queued %.3fs ago", now-queued)
		}
		w.quietFor = time.Duration((now - queued) * float64(time.Second))
		return nil
	})
	return w, err
}

// scrapeMetrics reads n's svcproxy metrics, each summed over its labels
// but ip_family, and the largest of its families.
func scrapeMetrics(n *framework.Node) (map[string]float64, error) {
	body, err := fetchMetrics(n)
	if err != nil {
		return nil, err
	}
	// Summed over labels but ip_family: the daemon records each sync's
	// figures under every family its backend programs (nftables mode
	// reports both), the same ones, so of those the largest is taken.
	perFamily := map[string]map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		name, labels, _ := strings.Cut(f[0], "{")
		family := ""
		if _, rest, ok := strings.Cut(labels, `ip_family="`); ok {
			family, _, _ = strings.Cut(rest, `"`)
		}
		if perFamily[name] == nil {
			perFamily[name] = map[string]float64{}
		}
		perFamily[name][family] += v
	}
	out := map[string]float64{}
	for name, byFamily := range perFamily {
		first := true
		for _, v := range byFamily {
			if first || v > out[name] {
				out[name] = v
			}
			first = false
		}
	}
	return out, nil
}

// fetchMetrics returns n's svcproxy metrics page (127.0.0.1:10249 inside
// the node).
func fetchMetrics(n *framework.Node) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.NetNS.DialContext}}
	resp, err := client.Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return "", fmt.Errorf("scraping %s's metrics: %w", n.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("scraping %s's metrics: %w", n.Name, err)
	}
	return string(body), nil
}

// ruleset is svcproxy's part of an iptables-save and an ip6tables-save:
// every SVCP- chain with its rules in order, by "family table/chain", and
// the rules of other chains that jump to one, sorted.
type ruleset struct {
	chains map[string][]string
	jumps  []string
}

func (r ruleset) rules() int {
	n := 0
	for _, rs := range r.chains {
		n += len(rs)
	}
	return n
}

// summary counts chains, rules and jumps per family.
func (r ruleset) summary() string {
	var parts []string
	for _, fam := range []string{"IPv4", "IPv6"} {
		chains, rules, jumps := 0, 0, 0
		for k, rs := range r.chains {
			if strings.HasPrefix(k, fam+" ") {
				chains++
				rules += len(rs)
			}
		}
		for _, j := range r.jumps {
			if strings.HasPrefix(j, fam+" ") {
				jumps++
			}
		}
		if cluster.NFTablesMode() {
			parts = append(parts, fmt.Sprintf("%s %d chains, sets and maps with %d rules and elements", fam, chains, rules))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d SVCP- chains with %d rules and %d jumps from built-in chains", fam, chains, rules, jumps))
	}
	return strings.Join(parts, "; ")
}

// merge returns r with o's chains and jumps added.
func (r ruleset) merge(o ruleset) ruleset {
	for k, v := range o.chains {
		r.chains[k] = v
	}
	r.jumps = append(r.jumps, o.jumps...)
	slices.Sort(r.jumps)
	return r
}

// parseRuleset reads the save output of family fam.
func parseRuleset(fam, save string) ruleset {
	r := ruleset{chains: map[string][]string{}}
	table := ""
	for _, line := range strings.Split(save, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line == "COMMIT":
		case line[0] == '*':
			table = fam + " " + line[1:]
		case line[0] == ':':
			name, _, _ := strings.Cut(line[1:], " ")
			if strings.HasPrefix(name, "SVCP-") {
				if _, ok := r.chains[table+"/"+name]; !ok {
					r.chains[table+"/"+name] = []string{}
				}
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if strings.HasPrefix(f[1], "SVCP-") {
				r.chains[table+"/"+f[1]] = append(r.chains[table+"/"+f[1]], line)
			} else if strings.Contains(line, " SVCP-") {
				r.jumps = append(r.jumps, table+": "+line)
			}
		}
	}
	slices.Sort(r.jumps)
	return r
}

// diffRulesets describes how live differs from want ("" if it does not).
func diffRulesets(live, want ruleset) string {
	var b strings.Builder
	const maxChains = 25
	shown := 0
	var keys []string
	for k := range live.chains {
		keys = append(keys, k)
	}
	for k := range want.chains {
		if _, ok := live.chains[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var onlyLive, onlyWant []string
	for _, k := range keys {
		l, inLive := live.chains[k]
		w, inWant := want.chains[k]
		switch {
		case !inWant:
			onlyLive = append(onlyLive, fmt.Sprintf("%s (%d rules)", k, len(l)))
		case !inLive:
			onlyWant = append(onlyWant, fmt.Sprintf("%s (%d rules)", k, len(w)))
		case !slices.Equal(l, w):
			if shown++; shown <= maxChains {
				fmt.Fprintf(&b, "chain %s differs (live %d rules, render %d):\n%s", k, len(l), len(w), lineDiff(l, w))
			}
		}
	}
	if shown > maxChains {
		fmt.Fprintf(&b, "... %d more chains differ\n", shown-maxChains)
	}
	if len(onlyLive) > 0 {
		fmt.Fprintf(&b, "%d chains only on the node: %s\n", len(onlyLive), strings.Join(firstN(onlyLive, 40), ", "))
	}
	if len(onlyWant) > 0 {
		fmt.Fprintf(&b, "%d chains only in the render: %s\n", len(onlyWant), strings.Join(firstN(onlyWant, 40), ", "))
	}
	if !slices.Equal(live.jumps, want.jumps) {
		fmt.Fprintf(&b, "jumps from built-in chains differ:\n%s", lineDiff(live.jumps, want.jumps))
	}
	return b.String()
}

// lineDiff lists the lines of l missing from w ("- ") and those of w
// missing from l ("+ "), as multisets, or says that only the order
// differs.
func lineDiff(l, w []string) string {
	count := map[string]int{}
	for _, s := range w {
		count[s]++
	}
	var minus, plus []string
	for _, s := range l {
		if count[s] > 0 {
			count[s]--
			continue
		}
		minus = append(minus, "  - node:   "+s)
	}
	count = map[string]int{}
	for _, s := range l {
		count[s]++
	}
	for _, s := range w {
		if count[s] > 0 {
			count[s]--
			continue
		}
		plus = append(plus, "  + render: "+s)
	}
	if len(minus) == 0 && len(plus) == 0 {
		var b strings.Builder
		b.WriteString("  same rules, different order:\n")
		for i := range l {
			if l[i] != w[i] {
				fmt.Fprintf(&b, "  first difference at rule %d:\n  - node:   %s\n  + render: %s\n", i+1, l[i], w[i])
				break
			}
		}
		return b.String()
	}
	out := append(firstN(minus, 12), firstN(plus, 12)...)
	return strings.Join(out, "\n") + "\n"
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("... and %d more", len(s)-n))
	}
	return s
}

// ---------------------------------------------------------------------
// The random objects.

// churnObj is one Service of the churn and its EndpointSlices, as last
// written (the API server's answers, with their resourceVersions).
type churnObj struct {
	ns, name string
	headless bool
	svc      *corev1.Service // nil while deleted
	slices   map[string]*discoveryv1.EndpointSlice
	sliceSeq int
}

type churn struct {
	kube    kubernetes.Interface
	workers []*churnWorker
	objs    []*churnObj
	stats   *churnStats
}

// churnWorker owns every churnWorkers-th object, so that each object's
// writes are sequential and never conflict.
type churnWorker struct {
	r     *rand.Rand
	kube  kubernetes.Interface
	objs  []*churnObj
	stats *churnStats
}

func newChurn(kube kubernetes.Interface, seed int64, logf func(string, ...any)) *churn {
	ch := &churn{kube: kube, stats: &churnStats{logf: logf}}
	ch.stats.reset()
	for i := 0; i < churnWorkers; i++ {
		ch.workers = append(ch.workers, &churnWorker{r: rand.New(rand.NewSource(seed + int64(i))), kube: kube, stats: ch.stats})
	}
	for i := 0; i < churnServices; i++ {
		o := &churnObj{
			ns:       churnNamespaces[i%len(churnNamespaces)],
			name:     fmt.Sprintf("s%04d", i),
			headless: i%50 == 7,
			slices:   map[string]*discoveryv1.EndpointSlice{},
		}
		ch.objs = append(ch.objs, o)
		w := ch.workers[i%churnWorkers]
		w.objs = append(w.objs, o)
	}
	return ch
}

// run runs fn on every worker at once and waits for them.
func (ch *churn) run(ctx context.Context, fn func(*churnWorker)) {
	var wg sync.WaitGroup
	for _, w := range ch.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(w)
		}()
	}
	wg.Wait()
}

// census counts the Services that exist and the endpoints of all slices.
func (ch *churn) census() (services, endpoints int) {
	for _, o := range ch.objs {
		if o.svc != nil {
			services++
		}
		for _, s := range o.slices {
			endpoints += len(s.Endpoints)
		}
	}
	return services, endpoints
}

func (ch *churn) countSlices() int {
	n := 0
	for _, o := range ch.objs {
		n += len(o.slices)
	}
	return n
}

// cleanup deletes every object of the churn.
func (ch *churn) cleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, ns := range churnNamespaces {
		err := ch.kube.DiscoveryV1().EndpointSlices(ns).DeleteCollection(ctx, metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: discoveryv1.LabelManagedBy + "=" + framework.ManagedBy})
		if err != nil {
			t.Errorf("deleting the EndpointSlices of %s: %v", ns, err)
		}
	}
	ch.run(ctx, func(w *churnWorker) {
		for _, o := range w.objs {
			if o.svc == nil {
				continue
			}
			if err := w.kube.CoreV1().Services(o.ns).Delete(ctx, o.name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("deleting service %s/%s: %v", o.ns, o.name, err)
			}
			o.svc = nil
		}
	})
}

// churnStats counts the writes and operations of all workers.
type churnStats struct {
	logf       func(string, ...any)
	mu         sync.Mutex
	writes     map[string]int
	ops        map[string]int
	rejected   int
	rejections []string
}

func (s *churnStats) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes, s.ops = map[string]int{}, map[string]int{}
}

func (s *churnStats) write(what string) {
	s.mu.Lock()
	s.writes[what]++
	s.mu.Unlock()
}

func (s *churnStats) op(what string) {
	s.mu.Lock()
	s.ops[what]++
	s.mu.Unlock()
}

func (s *churnStats) reject(what string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejected++
	if len(s.rejections) < 20 {
		s.rejections = append(s.rejections, what+": "+err.Error())
		s.logf("API server refused %s: %v", what, err)
	}
}

func (s *churnStats) totalWrites() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.writes {
		n += v
	}
	return n
}

func (s *churnStats) totalOps() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.ops {
		n += v
	}
	return n
}

func (s *churnStats) rejectedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejected
}

func (s *churnStats) rejectionSample() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.rejections, "\n")
}

func sortedCounts(m map[string]int) string {
	var keys []string
	total := 0
	for k, v := range m {
		keys = append(keys, k)
		total += v
	}
	slices.Sort(keys)
	parts := []string{fmt.Sprintf("%d in all", total)}
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func (s *churnStats) summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("API writes: %s; refused so far %d", sortedCounts(s.writes), s.rejected)
}

func (s *churnStats) opsSummary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sortedCounts(s.ops)
}

// ok counts a write, or a refusal.
func (w *churnWorker) ok(what string, o *churnObj, err error) bool {
	if err == nil {
		w.stats.write(what)
		return true
	}
	w.stats.reject(what+" "+o.ns+"/"+o.name, err)
	return false
}

// create creates o's Service and some EndpointSlices.
func (w *churnWorker) create(ctx context.Context, o *churnObj) {
	if !w.createService(ctx, o, w.genService(o)) {
		return
	}
	n := 0
	switch x := w.r.Intn(100); {
	case x < 10:
	case x < 70:
		n = 1
	case x < 95:
		n = 2
	default:
		n = 3
	}
	for i := 0; i < n; i++ {
		w.writeSlice(ctx, o, w.genSlice(o, w.newSliceName(o)))
	}
}

// changeFamilies upgrades a single-stack Service to dual-stack or
// downgrades a dual-stack one to its primary family (the primary family
// cannot change).
func (w *churnWorker) changeFamilies(svc *corev1.Service) {
	s := &svc.Spec
	if len(s.IPFamilies) < 2 {
		s.IPFamilyPolicy = ptr.To([]corev1.IPFamilyPolicy{corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicyRequireDualStack}[w.r.Intn(2)])
		return
	}
	s.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicySingleStack)
	s.IPFamilies = s.IPFamilies[:1]
	if len(s.ClusterIPs) > 1 {
		s.ClusterIPs = s.ClusterIPs[:1]
	}
}

func (w *churnWorker) newSliceName(o *churnObj) string {
	o.sliceSeq++
	return fmt.Sprintf("%s-e%d", o.name, o.sliceSeq)
}

func (w *churnWorker) createService(ctx context.Context, o *churnObj, svc *corev1.Service) bool {
	created, err := w.kube.CoreV1().Services(o.ns).Create(ctx, svc, metav1.CreateOptions{})
	if !w.ok("service create", o, err) {
		return false
	}
	o.svc = created
	if created.Spec.Type == corev1.ServiceTypeLoadBalancer {
		w.setLBStatus(ctx, o)
	}
	return true
}

// updateService writes svc (a modified copy of o.svc).
func (w *churnWorker) updateService(ctx context.Context, o *churnObj, svc *corev1.Service) bool {
	normalize(o, svc)
	updated, err := w.kube.CoreV1().Services(o.ns).Update(ctx, svc, metav1.UpdateOptions{})
	if !w.ok("service update", o, err) {
		if apierrors.IsConflict(err) {
			if cur, err := w.kube.CoreV1().Services(o.ns).Get(ctx, o.name, metav1.GetOptions{}); err == nil {
				o.svc = cur
			}
		}
		return false
	}
	o.svc = updated
	if updated.Spec.Type == corev1.ServiceTypeLoadBalancer && len(updated.Status.LoadBalancer.Ingress) == 0 {
		w.setLBStatus(ctx, o)
	}
	return true
}

// setLBStatus gives a LoadBalancer Service one or two ingress addresses
// (documentation addresses: nothing is ever sent to them).
func (w *churnWorker) setLBStatus(ctx context.Context, o *churnObj) {
	svc := o.svc.DeepCopy()
	svc.Status.LoadBalancer.Ingress = nil
	for i := 0; i < 1+w.r.Intn(2); i++ {
		ip := fmt.Sprintf("198.51.100.%d", 1+w.r.Intn(254))
		if w.r.Intn(3) == 0 {
			ip = fmt.Sprintf("2001:db8:1b::%x", 1+w.r.Intn(254))
		}
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	if len(svc.Status.LoadBalancer.Ingress) == 2 && svc.Status.LoadBalancer.Ingress[0].IP == svc.Status.LoadBalancer.Ingress[1].IP {
		svc.Status.LoadBalancer.Ingress = svc.Status.LoadBalancer.Ingress[:1]
	}
	updated, err := w.kube.CoreV1().Services(o.ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{})
	if w.ok("service status", o, err) {
		o.svc = updated
	}
}

func (w *churnWorker) deleteService(ctx context.Context, o *churnObj) {
	err := w.kube.CoreV1().Services(o.ns).Delete(ctx, o.name, metav1.DeleteOptions{})
	if w.ok("service delete", o, err) || apierrors.IsNotFound(err) {
		o.svc = nil
	}
}

// writeSlice creates slice or updates the one of that name.
func (w *churnWorker) writeSlice(ctx context.Context, o *churnObj, slice *discoveryv1.EndpointSlice) {
	api := w.kube.DiscoveryV1().EndpointSlices(o.ns)
	if cur, ok := o.slices[slice.Name]; ok {
		slice.ResourceVersion = cur.ResourceVersion
		updated, err := api.Update(ctx, slice, metav1.UpdateOptions{})
		if w.ok("slice update", o, err) {
			o.slices[slice.Name] = updated
		}
		return
	}
	created, err := api.Create(ctx, slice, metav1.CreateOptions{})
	if w.ok("slice create", o, err) {
		o.slices[slice.Name] = created
	}
}

func (w *churnWorker) deleteSlice(ctx context.Context, o *churnObj, name string) {
	err := w.kube.DiscoveryV1().EndpointSlices(o.ns).Delete(ctx, name, metav1.DeleteOptions{})
	if w.ok("slice delete", o, err) || apierrors.IsNotFound(err) {
		delete(o.slices, name)
	}
}

func (w *churnWorker) sliceNames(o *churnObj) []string {
	var names []string
	for n := range o.slices {
		names = append(names, n)
	}
	slices.Sort(names) // map order is random: keep the stream deterministic
	return names
}

// randomOp applies one random update or delete to one of w's objects.
func (w *churnWorker) randomOp(ctx context.Context) {
	o := w.objs[w.r.Intn(len(w.objs))]
	if o.svc == nil {
		w.stats.op("recreate deleted service")
		if len(o.slices) > 0 && w.r.Intn(2) == 0 {
			for _, n := range w.sliceNames(o) {
				w.deleteSlice(ctx, o, n)
			}
		}
		w.create(ctx, o)
		return
	}
	names := w.sliceNames(o)
	switch x := w.r.Intn(100); {
	case x < 30:
		w.stats.op("change endpoints")
		if len(names) == 0 {
			w.writeSlice(ctx, o, w.genSlice(o, w.newSliceName(o)))
			return
		}
		slice := o.slices[names[w.r.Intn(len(names))]].DeepCopy()
		if w.r.Intn(5) == 0 {
			fresh := w.genSlice(o, slice.Name)
			if fresh.AddressType != slice.AddressType { // immutable
				fresh.AddressType, fresh.Endpoints = slice.AddressType, slice.Endpoints
				w.mutateEndpoints(fresh)
			}
			slice = fresh
		} else {
			w.mutateEndpoints(slice)
		}
		w.writeSlice(ctx, o, slice)
	case x < 36:
		w.stats.op("add slice")
		w.writeSlice(ctx, o, w.genSlice(o, w.newSliceName(o)))
	case x < 40:
		w.stats.op("delete slice")
		if len(names) > 0 {
			w.deleteSlice(ctx, o, names[w.r.Intn(len(names))])
		}
	case x < 52:
		w.stats.op("change ports")
		svc := o.svc.DeepCopy()
		w.mutatePorts(svc)
		if !w.updateService(ctx, o, svc) {
			return
		}
		if w.r.Intn(10) < 7 {
			for _, n := range names {
				slice := o.slices[n].DeepCopy()
				slice.Ports = w.slicePorts(o.svc)
				w.writeSlice(ctx, o, slice)
			}
		}
	case x < 65:
		svc := o.svc.DeepCopy()
		w.stats.op("flip " + w.flipPolicy(o, svc))
		w.updateService(ctx, o, svc)
	case x < 70:
		w.stats.op("change IP families")
		svc := o.svc.DeepCopy()
		w.changeFamilies(svc)
		if w.updateService(ctx, o, svc) && len(o.svc.Spec.IPFamilies) > 1 && w.r.Intn(2) == 0 {
			// The new family's endpoints, as the controller would add.
			slice := w.genSlice(o, w.newSliceName(o))
			if slice.AddressType == discoveryv1.AddressTypeIPv4 || slice.AddressType == discoveryv1.AddressTypeIPv6 {
				w.writeSlice(ctx, o, slice)
			}
		}
	case x < 78:
		w.stats.op("change type")
		if o.headless {
			return
		}
		svc := o.svc.DeepCopy()
		types := []corev1.ServiceType{corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer}
		svc.Spec.Type = types[w.r.Intn(len(types))]
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer && svc.Spec.AllocateLoadBalancerNodePorts == nil {
			svc.Spec.AllocateLoadBalancerNodePorts = ptr.To(w.r.Intn(5) > 0)
		}
		if w.r.Intn(2) == 0 {
			svc.Spec.ExternalTrafficPolicy = randETP(w.r)
		}
		w.updateService(ctx, o, svc)
	case x < 82:
		w.stats.op("change load balancer status")
		if o.svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			w.setLBStatus(ctx, o)
		}
	case x < 90:
		w.stats.op("delete and recreate service")
		w.deleteService(ctx, o)
		for _, n := range names {
			w.deleteSlice(ctx, o, n)
		}
		w.create(ctx, o)
	case x < 94:
		w.stats.op("delete all slices")
		for _, n := range names {
			w.deleteSlice(ctx, o, n)
		}
	default:
		w.stats.op("delete service")
		w.deleteService(ctx, o)
		if w.r.Intn(2) == 0 { // else its slices stay, orphaned
			for _, n := range names {
				w.deleteSlice(ctx, o, n)
			}
		}
	}
}

// ---------------------------------------------------------------------
// Generators: valid objects only.

var oddPorts = []int32{1, 2, 7, 21, 22, 53, 80, 111, 443, 1023, 1024, 2049, 3306, 6443, 8080, 9153,
	10249, 10250, 10256, 30000, 32767, 32768, 49151, 65534, 65535}

func randPort(r *rand.Rand) int32 {
	if r.Intn(2) == 0 {
		return oddPorts[r.Intn(len(oddPorts))]
	}
	return int32(1 + r.Intn(65535))
}

func randProto(r *rand.Rand) corev1.Protocol {
	switch x := r.Intn(10); {
	case x < 5:
		return corev1.ProtocolTCP
	case x < 8:
		return corev1.ProtocolUDP
	default:
		return corev1.ProtocolSCTP
	}
}

func randETP(r *rand.Rand) corev1.ServiceExternalTrafficPolicy {
	if r.Intn(10) < 4 {
		return corev1.ServiceExternalTrafficPolicyLocal
	}
	return corev1.ServiceExternalTrafficPolicyCluster
}

func randITP(r *rand.Rand) *corev1.ServiceInternalTrafficPolicy {
	if r.Intn(10) < 3 {
		return ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	}
	return ptr.To(corev1.ServiceInternalTrafficPolicyCluster)
}

var targetPortNames = []string{"http", "dns", "metrics", "tp-a1", "grpc-web", "x"}

// genPort returns a service port; its name is set by namePorts.
func genPort(r *rand.Rand) corev1.ServicePort {
	p := corev1.ServicePort{Protocol: randProto(r), Port: randPort(r)}
	if r.Intn(10) < 7 {
		p.TargetPort = intstr.FromInt32(randPort(r))
	} else {
		p.TargetPort = intstr.FromString(targetPortNames[r.Intn(len(targetPortNames))])
	}
	return p
}

func hasPort(ports []corev1.ServicePort, p corev1.ServicePort) bool {
	return slices.ContainsFunc(ports, func(q corev1.ServicePort) bool { return q.Port == p.Port && q.Protocol == p.Protocol })
}

func genPorts(r *rand.Rand) []corev1.ServicePort {
	n := 1
	switch x := r.Intn(100); {
	case x < 55:
	case x < 80:
		n = 2
	case x < 95:
		n = 3
	default:
		n = 4 + r.Intn(5)
	}
	var ports []corev1.ServicePort
	for len(ports) < n {
		if p := genPort(r); !hasPort(ports, p) {
			ports = append(ports, p)
		}
	}
	namePorts(r, ports)
	return ports
}

// namePorts names ports (a name is required when there are several, and
// optional for one).
func namePorts(r *rand.Rand, ports []corev1.ServicePort) {
	for i := range ports {
		ports[i].Name = fmt.Sprintf("p%d-%s", i, strings.ToLower(string(ports[i].Protocol)))
	}
	if len(ports) == 1 && r.Intn(2) == 0 {
		ports[0].Name = ""
	}
}

func (w *churnWorker) genService(o *churnObj) *corev1.Service {
	r := w.r
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: o.name, Namespace: o.ns,
		Labels: map[string]string{"e2e.svcproxy.io/churn": "true"}}}
	switch x := r.Intn(100); {
	case o.headless:
		svc.Spec.Type = corev1.ServiceTypeClusterIP
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	case x < 50:
		svc.Spec.Type = corev1.ServiceTypeClusterIP
	case x < 80:
		svc.Spec.Type = corev1.ServiceTypeNodePort
	default:
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		svc.Spec.AllocateLoadBalancerNodePorts = ptr.To(r.Intn(5) > 0)
	}
	switch x := r.Intn(100); {
	case x < 55: // the default: single-stack, the primary family (IPv4)
	case x < 65:
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicySingleStack)
		svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	case x < 80:
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyPreferDualStack)
	default:
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
		if r.Intn(3) == 0 { // IPv6 primary
			svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
		}
	}
	svc.Spec.Ports = genPorts(r)
	svc.Spec.ExternalTrafficPolicy = randETP(r)
	svc.Spec.InternalTrafficPolicy = randITP(r)
	if r.Intn(10) < 3 {
		setAffinity(r, svc)
	}
	if !o.headless && r.Intn(100) < 15 {
		svc.Spec.ExternalIPs = genExternalIPs(r)
	}
	if r.Intn(10) < 3 {
		svc.Spec.LoadBalancerSourceRanges = genSourceRanges(r)
	}
	normalize(o, svc)
	return svc
}

func setAffinity(r *rand.Rand, svc *corev1.Service) {
	timeouts := []int32{1, 10, 180, 10800, 86400, int32(1 + r.Intn(86400))}
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{
		TimeoutSeconds: ptr.To(timeouts[r.Intn(len(timeouts))])}}
}

func genExternalIPs(r *rand.Rand) []string {
	gen := func() string {
		if r.Intn(3) == 0 {
			return fmt.Sprintf("2001:db8:e::%x", 1+r.Intn(254))
		}
		return fmt.Sprintf("203.0.113.%d", 1+r.Intn(254))
	}
	ips := []string{gen()}
	if r.Intn(3) == 0 {
		if ip := gen(); ip != ips[0] {
			ips = append(ips, ip)
		}
	}
	return ips
}

func genSourceRanges(r *rand.Rand) []string {
	all := []string{"192.0.2.0/24", "198.51.100.128/25", "10.0.0.0/8", "192.168.77.100/32", "0.0.0.0/0",
		"2001:db8::/32", "fd00:77::/64", "::/0"}
	n := 1 + r.Intn(3)
	r.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all[:n]
}

// normalize makes svc valid for its type: what a user editing a Service
// has to clear or set by hand.
func normalize(o *churnObj, svc *corev1.Service) {
	s := &svc.Spec
	if o.headless {
		s.Type = corev1.ServiceTypeClusterIP
		s.ExternalIPs = nil
	}
	external := s.Type == corev1.ServiceTypeNodePort || s.Type == corev1.ServiceTypeLoadBalancer || len(s.ExternalIPs) > 0
	if !external {
		s.ExternalTrafficPolicy = ""
	} else if s.ExternalTrafficPolicy == "" {
		s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
	if s.Type == corev1.ServiceTypeClusterIP {
		for i := range s.Ports {
			s.Ports[i].NodePort = 0
		}
	}
	if s.Type != corev1.ServiceTypeLoadBalancer {
		s.LoadBalancerSourceRanges = nil
		s.AllocateLoadBalancerNodePorts = nil
		s.LoadBalancerClass = nil
	} else if s.AllocateLoadBalancerNodePorts == nil {
		s.AllocateLoadBalancerNodePorts = ptr.To(true)
	}
	if s.Type != corev1.ServiceTypeLoadBalancer || s.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		s.HealthCheckNodePort = 0
	}
	if s.SessionAffinity != corev1.ServiceAffinityClientIP {
		s.SessionAffinity = corev1.ServiceAffinityNone
		s.SessionAffinityConfig = nil
	}
}

// mutatePorts changes svc's ports: all new, one port number, one more or
// one fewer. Ports that stay keep their node ports.
func (w *churnWorker) mutatePorts(svc *corev1.Service) {
	r := w.r
	ports := svc.Spec.Ports
	switch x := r.Intn(100); {
	case x < 30:
		ports = genPorts(r)
	case x < 70:
		i := r.Intn(len(ports))
		p := ports[i]
		p.Port = randPort(r)
		if r.Intn(3) == 0 {
			p.Protocol = randProto(r)
		}
		if !hasPort(ports, p) {
			ports[i] = p
		}
	case x < 85:
		if p := genPort(r); !hasPort(ports, p) {
			ports = append(ports, p)
			namePorts(r, ports)
		}
	default:
		if len(ports) > 1 {
			i := r.Intn(len(ports))
			ports = append(ports[:i:i], ports[i+1:]...)
		}
	}
	svc.Spec.Ports = ports
}

// flipPolicy flips one setting of svc and returns its name.
func (w *churnWorker) flipPolicy(o *churnObj, svc *corev1.Service) string {
	r := w.r
	s := &svc.Spec
	switch x := r.Intn(6); {
	case x == 0:
		if s.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
			s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		} else {
			s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}
		return "externalTrafficPolicy"
	case x == 1:
		if s.InternalTrafficPolicy != nil && *s.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal {
			s.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyCluster)
		} else {
			s.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		}
		return "internalTrafficPolicy"
	case x == 2:
		if s.SessionAffinity == corev1.ServiceAffinityClientIP && r.Intn(2) == 0 {
			s.SessionAffinity = corev1.ServiceAffinityNone
		} else {
			setAffinity(r, svc)
		}
		return "sessionAffinity"
	case x == 3 && !o.headless:
		if len(s.ExternalIPs) > 0 && r.Intn(2) == 0 {
			s.ExternalIPs = nil
		} else {
			s.ExternalIPs = genExternalIPs(r)
		}
		return "externalIPs"
	case x == 4:
		if len(s.LoadBalancerSourceRanges) > 0 && r.Intn(2) == 0 {
			s.LoadBalancerSourceRanges = nil
		} else {
			s.LoadBalancerSourceRanges = genSourceRanges(r)
		}
		return "loadBalancerSourceRanges"
	default:
		if s.Type == corev1.ServiceTypeLoadBalancer {
			s.AllocateLoadBalancerNodePorts = ptr.To(s.AllocateLoadBalancerNodePorts == nil || !*s.AllocateLoadBalancerNodePorts)
		}
		return "allocateLoadBalancerNodePorts"
	}
}

// slicePorts returns slice ports for svc's ports: most of them, by name
// and protocol, with random endpoint port numbers, sometimes one that
// matches no service port.
func (w *churnWorker) slicePorts(svc *corev1.Service) []discoveryv1.EndpointPort {
	r := w.r
	var out []discoveryv1.EndpointPort
	for _, p := range svc.Spec.Ports {
		if r.Intn(100) < 92 {
			out = append(out, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Protocol: ptr.To(p.Protocol), Port: ptr.To(randPort(r))})
		}
	}
	if r.Intn(100) < 4 {
		out = append(out, discoveryv1.EndpointPort{Name: ptr.To("extra"), Protocol: ptr.To(randProto(r)), Port: ptr.To(randPort(r))})
	}
	return out
}

func (w *churnWorker) genSlice(o *churnObj, name string) *discoveryv1.EndpointSlice {
	r := w.r
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: o.name,
			discoveryv1.LabelManagedBy:   framework.ManagedBy,
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{},
	}
	// A family of the Service's (the EndpointSlice controller writes one
	// slice per family), sometimes the other one or FQDN (ignored).
	families := []corev1.IPFamily{corev1.IPv4Protocol}
	if o.svc != nil && len(o.svc.Spec.IPFamilies) > 0 {
		families = o.svc.Spec.IPFamilies
	}
	family := families[r.Intn(len(families))]
	switch x := r.Intn(100); {
	case x < 95:
	case x < 98:
		family = map[corev1.IPFamily]corev1.IPFamily{corev1.IPv4Protocol: corev1.IPv6Protocol, corev1.IPv6Protocol: corev1.IPv4Protocol}[family]
	default:
		family = ""
	}
	switch family {
	case corev1.IPv4Protocol:
	case corev1.IPv6Protocol:
		slice.AddressType = discoveryv1.AddressTypeIPv6
	default:
		slice.AddressType = discoveryv1.AddressTypeFQDN
	}
	if o.svc != nil {
		slice.Ports = w.slicePorts(o.svc)
	}
	n := 0
	switch x := r.Intn(100); {
	case x < 15:
	case x < 60:
		n = 1 + r.Intn(4)
	case x < 95:
		n = 5 + r.Intn(16)
	default:
		n = 50 + r.Intn(101) // many endpoints
	}
	used := map[string]bool{}
	for len(slice.Endpoints) < n {
		if ep := w.genEndpoint(slice.AddressType); !used[ep.Addresses[0]] {
			used[ep.Addresses[0]] = true
			slice.Endpoints = append(slice.Endpoints, ep)
		}
	}
	// Sometimes an address that another slice of the service has too (a
	// pod moving between slices).
	if slice.AddressType != discoveryv1.AddressTypeFQDN && r.Intn(100) < 5 {
		for _, other := range w.sliceNames(o) {
			if s := o.slices[other]; s.AddressType == slice.AddressType && len(s.Endpoints) > 0 {
				ep := s.Endpoints[r.Intn(len(s.Endpoints))]
				if !used[ep.Addresses[0]] {
					slice.Endpoints = append(slice.Endpoints, *ep.DeepCopy())
				}
				break
			}
		}
	}
	return slice
}

// genEndpoint returns an endpoint on node1 (10.244.1.x), node2
// (10.244.2.x), a node that does not exist or none. Nothing is ever sent
// to these addresses: only the steady Service's endpoints are real pods.
func (w *churnWorker) genEndpoint(at discoveryv1.AddressType) discoveryv1.Endpoint {
	r := w.r
	var ep discoveryv1.Endpoint
	node, third := "", 4
	switch x := r.Intn(100); {
	case x < 40:
		node, third = "node1", 1
	case x < 80:
		node, third = "node2", 2
	case x < 90:
		node, third = "node7", 7
	}
	if node != "" {
		ep.NodeName = ptr.To(node)
	}
	host := 2 + r.Intn(250)
	switch at {
	case discoveryv1.AddressTypeIPv6:
		ep.Addresses = []string{fmt.Sprintf("fd00:10:244:%d::%x", third, host)}
	case discoveryv1.AddressTypeFQDN:
		ep.Addresses = []string{fmt.Sprintf("ep-%d-%d.example.test", third, host)}
	default:
		ep.Addresses = []string{fmt.Sprintf("10.244.%d.%d", third, host)}
	}
	switch x := r.Intn(100); {
	case x < 70:
		ep.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}
	case x < 80:
		ep.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
	case x < 88:
		ep.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	case x < 93:
		ep.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}
	default:
		// No conditions at all: ready, as the API documents.
	}
	if r.Intn(10) < 3 {
		ep.Zone = ptr.To([]string{"zone-a", "zone-b"}[r.Intn(2)])
		if r.Intn(3) == 0 {
			ep.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: *ep.Zone}}}
		}
	}
	return ep
}

// mutateEndpoints removes some endpoints, adds some and flips the
// conditions of some.
func (w *churnWorker) mutateEndpoints(slice *discoveryv1.EndpointSlice) {
	r := w.r
	for k := r.Intn(4); k > 0 && len(slice.Endpoints) > 0; k-- {
		i := r.Intn(len(slice.Endpoints))
		slice.Endpoints = append(slice.Endpoints[:i:i], slice.Endpoints[i+1:]...)
	}
	used := map[string]bool{}
	for _, ep := range slice.Endpoints {
		used[ep.Addresses[0]] = true
	}
	for k := r.Intn(5); k > 0; k-- {
		if ep := w.genEndpoint(slice.AddressType); !used[ep.Addresses[0]] {
			used[ep.Addresses[0]] = true
			slice.Endpoints = append(slice.Endpoints, ep)
		}
	}
	for k := r.Intn(3); k > 0 && len(slice.Endpoints) > 0; k-- {
		c := &slice.Endpoints[r.Intn(len(slice.Endpoints))].Conditions
		ready := c.Ready == nil || *c.Ready
		c.Ready, c.Serving, c.Terminating = ptr.To(!ready), ptr.To(!ready || r.Intn(2) == 0), ptr.To(ready && r.Intn(2) == 0)
	}
	if slice.Endpoints == nil {
		slice.Endpoints = []discoveryv1.Endpoint{}
	}
}
