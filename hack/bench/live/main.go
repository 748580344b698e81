// Command live measures svcproxy and upstream kube-proxy against a real API
// server: it starts the e2e test bed's control plane (test/e2e/framework:
// etcd and kube-apiserver in a network namespace of their own, one node
// namespace per proxy measured), creates N Services × E endpoints through
// the API server, then runs each proxy in turn, alone, in its own node
// namespace and reports:
//
//   - the time from its start until its first sync of the rules completed,
//     and that sync's duration (kubeproxy_sync_proxy_rules_* metrics);
//   - the network programming latency of one endpoint change (the
//     EndpointSlice's last-change-trigger-time annotation, set to the time
//     of the update, to the rules being in: kubeproxy_network_programming_
//     duration_seconds, its exact sum), the median of -changes changes;
//   - its resident memory (VmRSS) -settle after the first sync and after
//     the changes, and its high-water mark (VmHWM) at the end.
//
// hack/bench/live.sh builds everything and runs it as root. Nothing outside
// the framework's network namespaces is changed; every process is stopped
// by its PID; the namespaces and files are removed at the end, also on
// SIGINT/SIGTERM.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// proxy is one program to measure.
type proxy struct {
	name string   // in the report
	env  []string // added to its environment
	argv func(c *framework.Cluster, n *framework.Node) []string
	// rules counts the rules in the node that contain s (a check that the
	// metrics tell the truth).
	rules func(ctx context.Context, n *framework.Node, s string) int
}

const metricsAddr = "127.0.0.1:10249"

func main() { os.Exit(run()) }

func run() int {
	services := flag.Int("services", 10000, "number of Services")
	endpoints := flag.Int("endpoints", 5, "endpoints per Service")
	changes := flag.Int("changes", 5, "endpoint changes after the first sync")
	settle := flag.Duration("settle", 5*time.Second, "wait before reading RSS after the first sync and after the changes")
	svcproxy := flag.String("svcproxy", "", "svcproxy binary to measure (also the test bed's)")
	before := flag.String("before", "", "another svcproxy binary to measure, reported as svcproxy (before)")
	quiet := flag.Duration("quiet", 20*time.Second, "wait after creating the objects, before the first proxy starts")
	also := flag.String("also", "", "more svcproxy binaries to measure: label=path,...")
	kubeProxyModes := flag.String("kube-proxy-modes", "iptables,nftables", "upstream kube-proxy modes to measure (comma-separated; empty for none)")
	timeout := flag.Duration("timeout", 30*time.Minute, "how long one proxy may take to sync or to apply a change")
	svcproxyEnv := flag.String("svcproxy-env", "", "environment of svcproxy (both builds), e.g. GOGC=50 (comma-separated)")
	flag.Parse()
	if *svcproxy == "" {
		fmt.Fprintln(os.Stderr, "live: -svcproxy is required")
		return 2
	}

	var env []string
	if *svcproxyEnv != "" {
		env = strings.Split(*svcproxyEnv, ",")
	}
	var proxies []proxy
	proxies = append(proxies, svcproxyOf("svcproxy", *svcproxy, env))
	if *before != "" {
		proxies = append(proxies, svcproxyOf("svcproxy (before)", *before, env))
	}
	if *also != "" {
		for _, lp := range strings.Split(*also, ",") {
			label, path, ok := strings.Cut(lp, "=")
			if !ok {
				fmt.Fprintf(os.Stderr, "live: -also %q: want label=path\n", lp)
				return 2
			}
			proxies = append(proxies, svcproxyOf("svcproxy ("+label+")", path, env))
		}
	}
	for _, m := range strings.Split(*kubeProxyModes, ",") {
		if m = strings.TrimSpace(m); m != "" {
			proxies = append(proxies, kubeProxyOf(m))
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
	}
	opts := framework.DefaultOptions()
	opts.Svcproxy = *svcproxy
	opts.Nodes = len(proxies)
	opts.Logf = logf
	c, err := framework.Start(ctx, opts)
	if err != nil {
		logf("live: starting the test bed: %v", err)
		return 1
	}
	defer func() {
		if err := c.Close(); err != nil {
			logf("live: cleaning up: %v", err)
		}
	}()
	// The test bed runs svcproxy on every node: stop them, and remove
	// their rules, before the measured proxies start.
	for _, n := range c.Nodes {
		if err := c.StopProxy(ctx, n, true); err != nil {
			logf("live: stopping the test bed's svcproxy on %s: %v", n.Name, err)
			return 1
		}
	}

	start := time.Now()
	bench, err := createObjects(ctx, c, *services, *endpoints)
	if err != nil {
		logf("live: creating objects: %v", err)
		return 1
	}
	logf("live: created %d Services and EndpointSlices × %d endpoints in %v", *services, *endpoints, time.Since(start).Round(time.Millisecond))
	// Let the API server, etcd and CoreDNS finish with the creates before
	// the first proxy is timed.
	sleep(ctx, *quiet)

	var results []result
	code := 0
	for i, p := range proxies {
		r, err := measure(ctx, c, c.Nodes[i], p, bench, *changes, *settle, *timeout, logf)
		if err != nil {
			// Report what was measured and go on: upstream kube-proxy's
			// iptables mode may not finish its first sync in time.
			logf("live: %s: %v", p.name, err)
			r.failed = err.Error()
			if i := strings.IndexByte(r.failed, ';'); i > 0 {
				r.failed = r.failed[:i]
			}
			code = 1
		}
		results = append(results, r)
		if ctx.Err() != nil {
			return 1
		}
	}
	fmt.Printf("\n%d services × %d endpoints, kube-apiserver %s\n\n", *services, *endpoints, kubeVersion(c))
	fmt.Println("| proxy | start → first sync done | first sync | 1 endpoint change (median of " + strconv.Itoa(*changes) + ") | RSS after first sync | RSS after changes | peak RSS (VmHWM) |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range results {
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", r.name, secs(r.toFirstSync), secs(r.firstSync),
			millis(r.change), mib(r.rssSynced), mib(r.rssChanged), mib(r.hwm))
		if r.failed != "" {
			fmt.Printf("|   ↳ %s | | | | | | |\n", r.failed)
		}
	}
	return code
}

func svcproxyOf(name, path string, env []string) proxy {
	if len(env) > 0 {
		name += " " + strings.Join(env, " ")
	}
	return proxy{
		name: name,
		env:  env,
		argv: func(c *framework.Cluster, n *framework.Node) []string {
			return []string{path,
				"--kubeconfig=" + c.AdminKubeconfig,
				"--hostname-override=" + n.Name,
				"--cluster-cidr=" + framework.ClusterCIDR,
				"--min-sync-period=100ms",
				"--metrics-bind-address=" + metricsAddr,
				"--v=2",
			}
		},
		rules: iptablesRules,
	}
}

func kubeProxyOf(mode string) proxy {
	p := proxy{
		name: "kube-proxy v1.37.2 " + mode,
		argv: func(c *framework.Cluster, n *framework.Node) []string {
			return []string{c.Tool("kube-proxy"),
				"--kubeconfig=" + c.AdminKubeconfig,
				"--hostname-override=" + n.Name,
				"--cluster-cidr=" + framework.ClusterCIDR,
				"--proxy-mode=" + mode,
				"--metrics-bind-address=" + metricsAddr,
				"--healthz-bind-address=127.0.0.1:10256",
				// Leave the conntrack sysctls alone (some are not per
				// namespace), as the e2e framework does.
				"--conntrack-max-per-core=0",
				"--conntrack-tcp-timeout-established=0",
				"--conntrack-tcp-timeout-close-wait=0",
				// The same minimum sync period as svcproxy's above (it
				// applies to nftables mode too).
				"--iptables-min-sync-period=100ms",
				"--v=2",
			}
		},
		rules: iptablesRules,
	}
	if mode == "nftables" {
		p.rules = func(ctx context.Context, n *framework.Node, s string) int {
			out, err := n.NetNS.Exec(ctx, "nft", "list", "table", "ip", "kube-proxy")
			if err != nil {
				return -1
			}
			return strings.Count(out, s)
		}
	}
	return p
}

func iptablesRules(ctx context.Context, n *framework.Node, s string) int {
	out, err := n.NetNS.Exec(ctx, "iptables-save", "-t", "nat")
	if err != nil {
		return -1
	}
	return strings.Count(out, s)
}

// benchObjects are the created objects, by index.
type benchObjects struct {
	client kubernetes.Interface
	slices []*discovery.EndpointSlice
}

// createObjects creates n Services with e endpoints each in 50 namespaces,
// as proxytest.Generate lays them out: every 10th a NodePort, endpoints on
// node1..node100 (node1 has 1% of them), pod IPs from 10.128.0.1 on. The
// API server allocates ClusterIPs and node ports.
func createObjects(ctx context.Context, c *framework.Cluster, n, e int) (*benchObjects, error) {
	cfg := rest.CopyConfig(c.RESTConfig)
	cfg.QPS = -1 // no client-side rate limit: 16 workers in parallel
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	for i := 0; i < 50 && i < n; i++ {
		if err := c.EnsureNamespace(ctx, fmt.Sprintf("ns-%d", i)); err != nil {
			return nil, err
		}
	}
	b := &benchObjects{client: client, slices: make([]*discovery.EndpointSlice, n)}
	var next atomic.Int64
	var done atomic.Int64
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				s, err := createOne(ctx, client, i, e)
				if err != nil {
					errs <- err
					return
				}
				b.slices[i] = s
				if d := done.Add(1); d%2000 == 0 {
					fmt.Fprintf(os.Stderr, "live: %d/%d services created\n", d, n)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return b, ctx.Err()
}

func createOne(ctx context.Context, client kubernetes.Interface, i, e int) (*discovery.EndpointSlice, error) {
	ns, name := fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("svc-%d", i)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if i%10 == 0 && i/10 < 2700 {
		svc.Spec.Type = corev1.ServiceTypeNodePort
	}
	if _, err := client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating Service %s/%s: %w", ns, name, err)
	}
	slice := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-abcde", Labels: map[string]string{
			discovery.LabelServiceName: name,
			discovery.LabelManagedBy:   "svcproxy-bench",
		}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for j := 0; j < e; j++ {
		pod := uint32(10<<24|128<<16) + uint32(i*e+j) + 1
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{
			Addresses:  []string{ipString(pod)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(fmt.Sprintf("node%d", (i*e+j)%100+1)),
		})
	}
	created, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = client.DiscoveryV1().EndpointSlices(ns).Get(ctx, slice.Name, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("creating EndpointSlice %s/%s: %w", ns, slice.Name, err)
	}
	return created, nil
}

func ipString(a uint32) string {
	return fmt.Sprintf("%d.%d.%d.%d", a>>24, a>>16&0xff, a>>8&0xff, a&0xff)
}

// changeSeq numbers the endpoint changes of the whole run: every change
// moves an endpoint to a fresh address.
var changeSeq int

// change moves the first endpoint of the middle service's slice to a new
// address, with the trigger time set to now, and returns the address.
func (b *benchObjects) change(ctx context.Context) (string, error) {
	i := len(b.slices) / 2
	s := b.slices[i].DeepCopy()
	changeSeq++
	addr := ipString(uint32(10<<24|250<<16) + uint32(changeSeq))
	s.Endpoints[0].Addresses = []string{addr}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations["endpoints.kubernetes.io/last-change-trigger-time"] = time.Now().Format(time.RFC3339Nano)
	updated, err := b.client.DiscoveryV1().EndpointSlices(s.Namespace).Update(ctx, s, metav1.UpdateOptions{})
	if err != nil {
		return "", err
	}
	b.slices[i] = updated
	return addr, nil
}

type result struct {
	name                   string
	failed                 string  // what went wrong; the figures not measured are 0
	toFirstSync, firstSync float64 // seconds
	change                 float64 // seconds
	rssSynced, rssChanged  int64   // KiB
	hwm                    int64
}

// measure runs p on node n and measures it.
func measure(ctx context.Context, c *framework.Cluster, n *framework.Node, p proxy, b *benchObjects,
	changes int, settle, timeout time.Duration, logf func(string, ...any)) (result, error) {
	r := result{name: p.name}
	logPath := filepath.Join(c.LogDir, "bench-"+n.Name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return r, err
	}
	defer logFile.Close()
	argv := p.argv(c, n)
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NetNS.Name}, argv...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), p.env...)
	// ip netns exec execs in place: the PID is the proxy's. It dies with
	// this program.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return r, err
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	defer stopPID(pid, exited)
	logf("live: %s started on %s (pid %d): %s", p.name, n.Name, pid, strings.Join(argv, " "))

	m := &metricsClient{http: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.NetNS.DialContext}}}
	failed := func(err error) (result, error) {
		r.hwm = rss(pid, "VmHWM")
		return r, fmt.Errorf("%w after %v; last lines of %s:\n%s", err, time.Since(started).Round(time.Second), logPath, tail(logPath, 15))
	}

	// The first sync.
	var first metrics
	err = waitFor(ctx, timeout, exited, 100*time.Millisecond, func() (bool, error) {
		mm, err := m.get(ctx)
		if err != nil {
			return false, nil // not serving yet
		}
		if mm.count("kubeproxy_sync_proxy_rules_duration_seconds") >= 1 && mm.value("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0 {
			first = mm
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return failed(fmt.Errorf("first sync: %w", err))
	}
	last := first.value("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
	r.toFirstSync = last - float64(started.UnixNano())/1e9
	if n := first.count("kubeproxy_sync_proxy_rules_duration_seconds"); n == 1 {
		r.firstSync = first.sum("kubeproxy_sync_proxy_rules_duration_seconds")
	} else {
		r.firstSync = math.NaN() // more than one sync before we looked
	}
	logf("live: %s: first sync done %.2fs after start, took %.2fs; RSS %s", p.name, r.toFirstSync, r.firstSync, mib(rss(pid, "VmRSS")))
	sleep(ctx, settle)
	r.rssSynced = rss(pid, "VmRSS")

	// Endpoint changes, one at a time.
	var latencies []float64
	var addr string
	for i := 0; i < changes; i++ {
		before, err := m.get(ctx)
		if err != nil {
			return failed(err)
		}
		n0, s0 := before.count("kubeproxy_network_programming_duration_seconds"), before.sum("kubeproxy_network_programming_duration_seconds")
		if addr, err = b.change(ctx); err != nil {
			return failed(fmt.Errorf("updating the EndpointSlice: %w", err))
		}
		// Polled at 10/s: a scrape makes garbage, and a proxy is not
		// scraped 50 times a second in real life. The latency is the
		// histogram's exact sum, not the time the poll noticed.
		var after metrics
		err = waitFor(ctx, timeout, exited, 100*time.Millisecond, func() (bool, error) {
			mm, err := m.get(ctx)
			if err != nil {
				return false, err
			}
			after = mm
			return mm.count("kubeproxy_network_programming_duration_seconds") > n0, nil
		})
		if err != nil {
			return failed(fmt.Errorf("endpoint change %d: %w", i+1, err))
		}
		dn := after.count("kubeproxy_network_programming_duration_seconds") - n0
		l := (after.sum("kubeproxy_network_programming_duration_seconds") - s0) / float64(dn)
		latencies = append(latencies, l)
		logf("live: %s: endpoint change %d applied, network programming latency %.0f ms", p.name, i+1, l*1000)
		sleep(ctx, time.Second)
	}
	if len(latencies) > 0 {
		slices.Sort(latencies)
		r.change = latencies[len(latencies)/2]
		if got := p.rules(ctx, n, addr); got <= 0 {
			return failed(fmt.Errorf("the metrics say the last change is in, but no rule of the node holds %s (%d)", addr, got))
		}
	}
	sleep(ctx, settle)
	r.rssChanged = rss(pid, "VmRSS")
	r.hwm = rss(pid, "VmHWM")
	logf("live: %s: RSS after the first sync %s, after %d changes %s (anonymous %s, file %s), peak %s", p.name, mib(r.rssSynced), changes,
		mib(r.rssChanged), mib(rss(pid, "RssAnon")), mib(rss(pid, "RssFile")), mib(r.hwm))
	return r, ctx.Err()
}

// stopPID stops a process this program started: SIGTERM, SIGKILL after 10 s.
func stopPID(pid int, exited <-chan struct{}) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
		return
	case <-time.After(10 * time.Second):
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	<-exited
}

func waitFor(ctx context.Context, timeout time.Duration, exited <-chan struct{}, every time.Duration, fn func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(every)
	defer t.Stop()
	var last error
	for {
		ok, err := fn()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-exited:
			return errors.New("the proxy exited")
		case <-t.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// rss returns a /proc/PID/status memory field (VmRSS, VmHWM) in KiB.
func rss(pid int, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), field+":"); ok {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return -1
}

// metrics are the samples of a Prometheus text exposition by name, the
// IPv4 series of one name added up (histograms have no other labels here).
type metrics map[string]float64

func (m metrics) value(name string) float64 { return m[name] }
func (m metrics) count(name string) float64 { return m[name+"_count"] }
func (m metrics) sum(name string) float64   { return m[name+"_sum"] }

type metricsClient struct{ http *http.Client }

func (c *metricsClient) get(ctx context.Context) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	out := metrics{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		if strings.Contains(name, `ip_family="IPv6"`) {
			continue // kube-proxy in nftables mode runs an IPv6 proxier too
		}
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		out[name] += v
	}
	return out, s.Err()
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func kubeVersion(c *framework.Cluster) string {
	v, err := c.Kube.Discovery().ServerVersion()
	if err != nil {
		return "?"
	}
	return v.GitVersion
}

func secs(s float64) string {
	if math.IsNaN(s) || s == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f s", s)
}

func millis(s float64) string {
	if s == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f ms", s*1000)
}

func mib(kib int64) string {
	if kib <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f MiB", float64(kib)/1024)
}
