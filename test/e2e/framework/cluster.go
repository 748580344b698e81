package framework

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// NamePrefix starts the name of everything the framework creates on the
// machine (network namespaces, temporary directories), followed by the test
// process's PID and a dash.
const NamePrefix = "svcpe2e-"

// Options configure a test bed. Empty fields take the defaults that
// DefaultOptions fills in.
type Options struct {
	// RepoRoot is the svcproxy repository (found from the working
	// directory).
	RepoRoot string
	// ToolsBin holds etcd, kube-apiserver and coredns as hack/tools/build.sh
	// builds them. Env E2E_TOOLS_BIN; default <repo>/.cache/tools/bin.
	ToolsBin string
	// Svcproxy is the binary under test. Env SVCPROXY_BIN; default
	// <repo>/bin/svcproxy.
	Svcproxy string
	// SvcproxyArgs are extra flags for every svcproxy, after the
	// framework's own (so they win). Env E2E_SVCPROXY_ARGS, space-separated,
	// for example "--mode=ipvs".
	SvcproxyArgs []string
	// RBACManifest is the ServiceAccount, ClusterRole and binding the
	// proxies run with. Default <repo>/deploy/rbac.yaml.
	RBACManifest string
	// Nodes is the number of nodes (default 2).
	Nodes int
	// Logf receives progress messages (default: none).
	Logf func(format string, args ...any)
}

// DefaultOptions returns the options taken from the environment.
func DefaultOptions() Options {
	o := Options{ToolsBin: os.Getenv("E2E_TOOLS_BIN"), Svcproxy: os.Getenv("SVCPROXY_BIN")}
	o.SvcproxyArgs = strings.Fields(os.Getenv("E2E_SVCPROXY_ARGS"))
	return o
}

func (o *Options) complete() error {
	if o.RepoRoot == "" {
		root, err := findRepoRoot()
		if err != nil {
			return err
		}
		o.RepoRoot = root
	}
	if o.ToolsBin == "" {
		o.ToolsBin = filepath.Join(o.RepoRoot, ".cache", "tools", "bin")
	}
	if o.Svcproxy == "" {
		o.Svcproxy = filepath.Join(o.RepoRoot, "bin", "svcproxy")
	}
	if o.RBACManifest == "" {
		o.RBACManifest = filepath.Join(o.RepoRoot, "deploy", "rbac.yaml")
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Nodes < 1 || o.Nodes > 9 {
		return fmt.Errorf("nodes %d: want 1 to 9", o.Nodes)
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return nil
}

// findRepoRoot walks up from the working directory to the directory whose
// go.mod declares svcproxy's module.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/svcproxy/svcproxy\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the svcproxy repository (no go.mod of github.com/svcproxy/svcproxy above the working directory)")
		}
		dir = parent
	}
}

// Cluster is a running test bed: a control plane, nodes with svcproxy, an
// outside client and CoreDNS, all in network namespaces of its own.
type Cluster struct {
	// Prefix starts the names of the cluster's network namespaces.
	Prefix string
	// Dir holds the cluster's files (kubeconfigs, certificates, etcd data)
	// and LogDir the processes' logs.
	Dir, LogDir string

	// Underlay is the namespace of the switch between the hosts.
	Underlay *NetNS
	// APIServer is the kube-apiserver process (tests may pause it).
	APIServer *Process
	// ControlPlane runs etcd and kube-apiserver.
	ControlPlane *Host
	// Nodes run svcproxy; Nodes[i] is node<i+1>.
	Nodes []*Node
	// Client is the outside client on the underlay.
	Client *Host
	// DNS is the CoreDNS pod behind kube-system/kube-dns.
	DNS *Pod

	// RESTConfig is an admin's client configuration (it dials inside the
	// control plane's namespace) and Kube its clientset.
	RESTConfig *rest.Config
	Kube       kubernetes.Interface
	// AdminKubeconfig and ProxyKubeconfig are kubeconfig files for the
	// admin and for svcproxy (the ServiceAccount of deploy/rbac.yaml).
	AdminKubeconfig, ProxyKubeconfig string

	opts      Options
	pki       *pki
	podserver string // the built podserver binary

	mu        sync.Mutex
	netns     []*NetNS   // in creation order
	processes []*Process // in start order
	podSeq    int
	canarySeq int
	dnsSeq    int

	dnsService *corev1.Service // kube-system/kube-dns
	dnsConf    string          // the Corefile
	closeOnce  sync.Once
	closeErr   error
}

// Start builds a test bed: network namespaces, etcd and kube-apiserver with
// RBAC, svcproxy on every node with the ServiceAccount of deploy/rbac.yaml,
// and CoreDNS. On error everything already created is removed again.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if err := opts.complete(); err != nil {
		return nil, err
	}
	if err := checkPrerequisites(opts); err != nil {
		return nil, err
	}
	prefix := NamePrefix + strconv.Itoa(os.Getpid()) + "-"
	sweepStale(ctx, NamePrefix, opts.Logf)
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Prefix: prefix, Dir: dir, LogDir: filepath.Join(dir, "logs"), opts: opts}
	defer func() {
		if err != nil {
			if opts.Logf != nil {
				c.DumpLogs(logWriter{opts.Logf}, 40)
			}
			err = errors.Join(err, c.Close())
			c = nil
		}
	}()
	if err := os.MkdirAll(c.LogDir, 0o755); err != nil {
		return c, err
	}
	logf := opts.Logf
	start := time.Now()
	step := func(what string, fn func(context.Context) error) error {
		t := time.Now()
		if err := fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		logf("e2e: %s (%v)", what, time.Since(t).Round(time.Millisecond))
		return nil
	}
	if err := step("built podserver", c.buildPodserver); err != nil {
		return c, err
	}
	if err := step("created the network", c.buildNetwork); err != nil {
		return c, err
	}
	if err := step("started etcd and kube-apiserver", c.startControlPlane); err != nil {
		return c, err
	}
	if err := step("applied "+filepath.Base(opts.RBACManifest)+" and wrote the proxies' kubeconfig", c.setUpProxyCredentials); err != nil {
		return c, err
	}
	if err := step("registered the nodes", c.registerNodes); err != nil {
		return c, err
	}
	if err := step("started svcproxy on every node", c.startProxies); err != nil {
		return c, err
	}
	if err := step("started CoreDNS behind kube-dns "+DNSServiceIP, c.startDNS); err != nil {
		return c, err
	}
	logf("e2e: test bed up in %v: %s (by hand: ip netns exec %s %s --kubeconfig %s ...)",
		time.Since(start).Round(time.Millisecond), c.Dir, c.ControlPlane.NetNS.Name, c.Tool("kubectl"), c.AdminKubeconfig)
	return c, nil
}

// New starts a test bed for one test and removes it when the test ends.
// Failing to start fails the test: an e2e test is never skipped.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	c, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("starting the e2e test bed: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs(logWriter{t.Logf}, 40)
		}
		if err := c.Close(); err != nil {
			t.Errorf("cleaning up the test bed: %v", err)
		}
	})
	return c
}

func checkPrerequisites(o Options) error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("must run as root (network namespaces, iptables)"))
	}
	for _, cmd := range []string{"ip", "bridge", "sysctl", "iptables", "iptables-restore", "ip6tables", "ip6tables-restore", "go"} {
		if _, err := exec.LookPath(cmd); err != nil {
			errs = append(errs, fmt.Errorf("%s is not installed (apt-get install -y iproute2 iptables procps; go from go.dev)", cmd))
		}
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "coredns", "kube-proxy"} {
		if !isExecutable(filepath.Join(o.ToolsBin, tool)) {
			errs = append(errs, fmt.Errorf("%s is missing: run hack/tools/build.sh (or set E2E_TOOLS_BIN)", filepath.Join(o.ToolsBin, tool)))
		}
	}
	if !isExecutable(o.Svcproxy) {
		errs = append(errs, fmt.Errorf("svcproxy binary %s is missing: go build -o bin/svcproxy ./cmd/svcproxy (or set SVCPROXY_BIN)", o.Svcproxy))
	}
	if _, err := os.Stat(o.RBACManifest); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// Options returns the test bed's options as completed by Start (the
// svcproxy binary under test, its extra flags, the tools' directory, the
// repository).
func (c *Cluster) Options() Options { return c.opts }

// Tool is the path of a binary built by hack/tools/build.sh: etcd,
// kube-apiserver, coredns, kubectl.
func (c *Cluster) Tool(name string) string { return filepath.Join(c.opts.ToolsBin, name) }

func (c *Cluster) path(name string) string { return filepath.Join(c.Dir, name) }

// buildPodserver builds test/e2e/podserver into the cluster's directory.
func (c *Cluster) buildPodserver(ctx context.Context) error {
	c.podserver = c.path("podserver")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", c.podserver, "./test/e2e/podserver")
	cmd.Dir = c.opts.RepoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./test/e2e/podserver: %w: %s", err, out)
	}
	return nil
}

// addNetNS creates the cluster's namespace <prefix><name> and remembers it
// for Close.
func (c *Cluster) addNetNS(ctx context.Context, name string) (*NetNS, error) {
	ns, err := addNetNS(ctx, c.Prefix+name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.netns = append(c.netns, ns)
	c.mu.Unlock()
	return ns, nil
}

// removeNetNS deletes a namespace of the cluster before Close.
func (c *Cluster) removeNetNS(ctx context.Context, ns *NetNS) error {
	c.mu.Lock()
	for i, n := range c.netns {
		if n == ns {
			c.netns = append(c.netns[:i], c.netns[i+1:]...)
			break
		}
	}
	c.mu.Unlock()
	return ns.delete(ctx)
}

// start starts a process in ns and remembers it for Close.
func (c *Cluster) start(ns *NetNS, name string, argv ...string) (*Process, error) {
	p, err := startProcess(ns, c.LogDir, name, argv...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.processes = append(c.processes, p)
	c.mu.Unlock()
	return p, nil
}

func (c *Cluster) buildNetwork(ctx context.Context) error {
	if err := c.buildUnderlay(ctx); err != nil {
		return err
	}
	for i := 1; i <= c.opts.Nodes; i++ {
		n, err := c.addNode(ctx, i)
		if err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, n)
	}
	if err := c.linkNodes(ctx); err != nil {
		return err
	}
	if err := c.addControlPlaneHost(ctx); err != nil {
		return err
	}
	return c.addClient(ctx)
}

// registerNodes creates a Node object per node, as a kubelet would (no
// kubelet runs): svcproxy watches its own Node.
func (c *Cluster) registerNodes(ctx context.Context) error {
	for _, n := range c.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
				"kubernetes.io/hostname": n.Name,
				"kubernetes.io/os":       "linux",
			}},
			Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String(), n.PodCIDR6.String()}},
		}
		created, err := c.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		created.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.IP.String()},
			{Type: corev1.NodeInternalIP, Address: n.IP6.String()},
			{Type: corev1.NodeHostName, Address: n.Name},
		}
		created.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			Reason: "E2E", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		if _, err := c.Kube.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// Close stops every process the cluster started (by PID: SIGTERM, then
// SIGKILL), deletes its network namespaces and its directory. It is safe to
// call more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var errs []error
		c.mu.Lock()
		procs := append([]*Process(nil), c.processes...)
		nss := append([]*NetNS(nil), c.netns...)
		c.mu.Unlock()
		// Clients before servers: proxies and pods, then the API server,
		// then etcd.
		for i := len(procs) - 1; i >= 0; i-- {
			if err := procs[i].Stop(5 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		for i := len(nss) - 1; i >= 0; i-- {
			if err := nss[i].delete(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		if keep := os.Getenv("E2E_KEEP_DIR"); keep != "" {
			c.opts.Logf("e2e: E2E_KEEP_DIR set: leaving %s", c.Dir)
		} else if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// Crashed returns the processes that exited on their own (svcproxy, the
// control plane, CoreDNS, a pod): each is a failure of the run, whether or
// not a test noticed.
func (c *Cluster) Crashed() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Process
	for _, p := range c.processes {
		if p.Unexpected() {
			out = append(out, p)
		}
	}
	return out
}

// DumpLogs writes the last lines of every process's log and each node's
// iptables rules to w: what one needs to see after a failure (the files
// themselves go with the cluster's directory).
func (c *Cluster) DumpLogs(w io.Writer, lines int) {
	c.mu.Lock()
	procs := append([]*Process(nil), c.processes...)
	c.mu.Unlock()
	for _, p := range procs {
		state := "running"
		if exited, err := p.Exited(); exited {
			state = exitStatus(err)
		}
		fmt.Fprintf(w, "----- %s (pid %d, %s), last %d lines of %s:\n%s\n", p.Name, p.PID(), state, lines, p.LogPath, p.Tail(lines))
	}
	for _, n := range c.Nodes {
		for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
			out, err := n.NetNS.Exec(context.Background(), cmd)
			if err != nil {
				out = err.Error()
			}
			fmt.Fprintf(w, "----- %s on %s:\n%s\n", cmd, n.Name, out)
		}
	}
}

// logWriter turns a Logf into an io.Writer.
type logWriter struct{ logf func(string, ...any) }

func (l logWriter) Write(b []byte) (int, error) {
	l.logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// Main runs the tests of a package against one shared test bed, for
// TestMain: it starts the cluster, hands it to set, runs the tests, dumps
// the logs if any failed and cleans up, also on SIGINT/SIGTERM. A test bed
// that does not start fails the run (exit 1); it is never a skip.
func Main(m *testing.M, opts Options, set func(*Cluster)) int {
	if opts.Logf == nil {
		opts.Logf = func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, format+"\n", args...)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signalNotify(sigs)
	var cluster *Cluster
	var cmu sync.Mutex
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "e2e: %v: cleaning up\n", s)
			cancel()
			cmu.Lock()
			if cluster != nil {
				_ = cluster.Close()
			}
			cmu.Unlock()
			os.Exit(1)
		case <-ctx.Done():
		}
	}()
	c, err := Start(ctx, opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: starting the test bed: %v\n", err)
		return 1
	}
	cmu.Lock()
	cluster = c
	cmu.Unlock()
	set(c)
	code := m.Run()
	for _, p := range c.Crashed() {
		_, err := p.Exited()
		fmt.Fprintf(os.Stderr, "e2e: FAIL: %s (pid %d) exited on its own: %v\n", p.Name, p.PID(), exitStatus(err))
		code = 1
	}
	if code != 0 {
		c.DumpLogs(os.Stderr, 60)
	}
	if err := c.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: cleaning up: %v\n", err)
		code = 1
	}
	return code
}

func signalNotify(ch chan os.Signal) { signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM) }
