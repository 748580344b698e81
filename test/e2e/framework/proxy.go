package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// canaryNamespace holds the short-lived Services of WaitProxyReady.
const canaryNamespace = "e2e-canary"

// proxyReadyTimeout bounds how long a freshly started svcproxy may take
// until the node reaches the API server through the kubernetes Service.
const proxyReadyTimeout = 30 * time.Second

// proxyArgs are the flags of svcproxy on node n, as a DaemonSet would pass
// them, then Options.SvcproxyArgs, then the node's own ProxyArgs.
func (c *Cluster) proxyArgs(n *Node) []string {
	args := []string{
		c.opts.Svcproxy,
		"--kubeconfig=" + c.ProxyKubeconfig,
		"--hostname-override=" + n.Name,
		"--cluster-cidr=" + ClusterCIDRs,
		"--min-sync-period=100ms",
		// Short, so that the health test sees /healthz turn 503 after
		// 2 × sync period without the API server.
		"--sync-period=3s",
		"--v=2",
	}
	args = append(args, c.opts.SvcproxyArgs...)
	return append(args, n.ProxyArgs...)
}

func (c *Cluster) startProxies(ctx context.Context) error {
	for _, n := range c.Nodes {
		if err := c.startProxy(n); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		if err := c.WaitProxyReady(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) startProxy(n *Node) error {
	argv := c.proxyArgs(n)
	if ipvsMode(argv) {
		// deploy/README.md: IPVS mode's container is privileged (it
		// writes sysctls), that is full root.
		c.logf("svcproxy on %s: --mode=ipvs, run privileged (full root), as deploy/README.md prescribes", n.Name)
	} else {
		sc, err := loadContainerSecurity(filepath.Join(c.opts.RepoRoot, "deploy", "svcproxy.yaml"))
		if err != nil {
			return err
		}
		argv = sc.wrap(argv)
	}
	p, err := c.start(n.NetNS, "svcproxy-"+n.Name, argv...)
	if err != nil {
		return err
	}
	n.Proxy = p
	return nil
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

// ipvsMode reports whether svcproxy's flags ask for IPVS mode.
func ipvsMode(argv []string) bool { return proxyMode(argv) == "ipvs" }

// proxyMode returns the mode svcproxy's flags ask for (the last --mode or
// --proxy-mode): "iptables" (the default), "ipvs" or "nftables".
func proxyMode(argv []string) string {
	mode := "iptables"
	for i, a := range argv {
		for _, flag := range []string{"--mode", "--proxy-mode"} {
			if v, ok := strings.CutPrefix(a, flag+"="); ok {
				mode = v
			} else if a == flag && i+1 < len(argv) {
				mode = argv[i+1]
			}
		}
	}
	return mode
}

// containerSecurity is how the shipped DaemonSet runs svcproxy's container
// (deploy/svcproxy.yaml), reduced to what the test bed reproduces around a
// process: its user, its capabilities and its read-only root filesystem.
type containerSecurity struct {
	uid            int64
	caps           []string // "net_admin", as setpriv spells them
	noNewPrivs     bool     // allowPrivilegeEscalation: false
	readOnlyRootFS bool
	// writable are the files the container gets read-write from the host
	// (hostPath mounts), which stay writable in a read-only root.
	writable []string
}

// loadContainerSecurity reads the security context of the svcproxy
// container of the DaemonSet in path. It fails on what it cannot reproduce
// (a privileged container, capabilities kept rather than dropped), so that
// the e2e suite never runs svcproxy with other privileges than the manifest
// gives it without saying so.
func loadContainerSecurity(path string) (containerSecurity, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return containerSecurity{}, err
	}
	var ds *appsv1.DaemonSet
	for _, doc := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(data), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return containerSecurity{}, fmt.Errorf("%s: %w", path, err)
		}
		if tm.Kind == "DaemonSet" {
			ds = &appsv1.DaemonSet{}
			if err := yaml.Unmarshal([]byte(doc), ds); err != nil {
				return containerSecurity{}, fmt.Errorf("%s: DaemonSet: %w", path, err)
			}
		}
	}
	if ds == nil {
		return containerSecurity{}, fmt.Errorf("%s: no DaemonSet", path)
	}
	spec := ds.Spec.Template.Spec
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "svcproxy" })
	if i < 0 {
		return containerSecurity{}, fmt.Errorf("%s: no svcproxy container", path)
	}
	ctr := spec.Containers[i]
	sc := ctr.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		return containerSecurity{}, fmt.Errorf("%s: the svcproxy container has no securityContext.capabilities", path)
	}
	if sc.Privileged != nil && *sc.Privileged {
		return containerSecurity{}, fmt.Errorf("%s: the svcproxy container is privileged; the e2e suite reproduces dropped capabilities only", path)
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		return containerSecurity{}, fmt.Errorf("%s: capabilities.drop is %v, not [ALL]: the runtime's default set is not reproduced", path, sc.Capabilities.Drop)
	}
	out := containerSecurity{
		noNewPrivs:     sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		readOnlyRootFS: sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem,
	}
	// The image (deploy/Dockerfile) has no USER: root, unless overridden.
	if spec.SecurityContext != nil && spec.SecurityContext.RunAsUser != nil {
		out.uid = *spec.SecurityContext.RunAsUser
	}
	if sc.RunAsUser != nil {
		out.uid = *sc.RunAsUser
	}
	for _, cp := range sc.Capabilities.Add {
		out.caps = append(out.caps, strings.ToLower(strings.TrimPrefix(string(cp), "CAP_")))
	}
	hostPath := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPath[v.Name] = v.HostPath.Path
		}
	}
	for _, vm := range ctr.VolumeMounts {
		if p, ok := hostPath[vm.Name]; ok && !vm.ReadOnly {
			if p != vm.MountPath {
				return containerSecurity{}, fmt.Errorf("%s: hostPath %s mounted at %s: the test bed runs on the host's paths", path, p, vm.MountPath)
			}
			out.writable = append(out.writable, p)
		}
	}
	return out, nil
}

// wrap returns argv run the way the container runs it, inside the node's
// network namespace (startProcess puts it there):
//
//   - in a mount namespace of its own whose root filesystem, /sys and
//     /proc/sys are read-only (a container's /proc/sys and /sys are, and
//     with readOnlyRootFilesystem its root too), but for the read-write
//     host paths of the manifest (/run/xtables.lock); the remounts stay in
//     that namespace;
//   - as its uid, with exactly the manifest's capabilities: the bounding
//     set is the added capabilities, the inheritable and ambient sets are
//     empty, so that a root process has them (and its children, such as
//     iptables-restore, too) and nothing else, as under a container
//     runtime after drop: [ALL];
//   - with no_new_privs for allowPrivilegeEscalation: false.
//
// unshare, sh and setpriv each exec the next, so that the PID the
// framework holds is svcproxy's.
func (sc containerSecurity) wrap(argv []string) []string {
	caps := "-all"
	for _, cp := range sc.caps {
		caps += ",+" + cp
	}
	priv := []string{"setpriv",
		fmt.Sprintf("--reuid=%d", sc.uid), fmt.Sprintf("--regid=%d", sc.uid), "--clear-groups",
		"--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=" + caps}
	if sc.noNewPrivs {
		priv = append(priv, "--no-new-privs")
	}
	priv = append(append(priv, "--"), argv...)
	// $1... are the writable paths, then "--", then the command.
	script := "set -eu\n" +
		`while [ "$1" != -- ]; do [ -e "$1" ] || : >>"$1"; mount --bind "$1" "$1"; shift; done; shift` + "\n" +
		"mount --bind /proc/sys /proc/sys\n" +
		"mount -o remount,bind,ro /proc/sys\n" +
		"mount -o remount,bind,ro /sys\n"
	if sc.readOnlyRootFS {
		script += "mount -o remount,bind,ro /\n"
	}
	script += `exec "$@"`
	out := []string{"unshare", "--mount", "--propagation=private", "--", "sh", "-c", script, "svcproxy-container"}
	out = append(out, sc.writable...)
	out = append(out, "--")
	return append(out, priv...)
}

// WaitProxyReady waits until node n's svcproxy runs, has programmed the
// kubernetes Service (a TCP connection from the node to 10.96.0.1:443 gets
// through to the API server) and follows changes: a canary Service without
// endpoints, created now, is refused from the node. The second check is
// what tells a restarted svcproxy apart from the rules its predecessor left
// in place. Getting there needs the RBAC of deploy/rbac.yaml (svcproxy's
// informers sync first) and working ClusterIP rules. In iptables mode the
// canary is dual-stack and must be refused over both families (IPv4 TCP,
// IPv6 UDP: an IPv6 TCP connect is failed only at the SYN retransmit):
// svcproxy programs IPv6 too; so in nftables mode. IPVS mode programs IPv4
// only, so there it is an IPv4 Service.
func (c *Cluster) WaitProxyReady(ctx context.Context, n *Node) error {
	addr := net.JoinHostPort(KubernetesServiceIP, "443")
	err := poll(ctx, proxyReadyTimeout, n.Proxy, func() error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		conn, err := n.NetNS.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if err != nil {
		return fmt.Errorf("svcproxy on %s: %s never became reachable from the node: %w", n.Name, addr, err)
	}

	if err := c.EnsureNamespace(ctx, canaryNamespace); err != nil {
		return err
	}
	c.mu.Lock()
	c.canarySeq++
	name := fmt.Sprintf("canary-%s-%d", n.Name, c.canarySeq)
	c.mu.Unlock()
	svcs := c.Kube.CoreV1().Services(canaryNamespace)
	dualStack := !ipvsMode(c.proxyArgs(n))
	want := NewService(canaryNamespace, name, 80, corev1.ProtocolTCP)
	if dualStack {
		want = DualStack(NewService(canaryNamespace, name, 80, corev1.ProtocolTCP, corev1.ProtocolUDP))
	}
	svc, err := svcs.Create(ctx, want, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	defer func() { _ = svcs.Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{}) }()
	canary := ClusterAddrFamily(svc, corev1.ProtocolTCP, corev1.IPv4Protocol)
	err = poll(ctx, proxyReadyTimeout, n.Proxy, func() error {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := n.TCP(ctx, canary)
		switch {
		case IsRefused(err):
			return nil
		case err == nil:
			return fmt.Errorf("canary %s (no endpoints) answered", canary)
		default:
			return err
		}
	})
	if err != nil {
		return fmt.Errorf("svcproxy on %s does not follow changes: canary Service %s/%s (%s, no endpoints) never refused: %w", n.Name, canaryNamespace, name, canary, err)
	}
	if dualStack {
		canary6 := ClusterAddrFamily(svc, corev1.ProtocolUDP, corev1.IPv6Protocol)
		err = poll(ctx, proxyReadyTimeout, n.Proxy, func() error {
			ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			_, err := n.UDP(ctx, canary6)
			switch {
			// The node's own datagram, rejected in OUTPUT: EPERM.
			case IsRefused(err) || errors.Is(err, syscall.EPERM):
				return nil
			case err == nil:
				return fmt.Errorf("canary %s (no endpoints) answered", canary6)
			default:
				return err
			}
		})
		if err != nil {
			return fmt.Errorf("svcproxy on %s does not program IPv6: canary Service %s/%s (%s, no endpoints) never refused: %w", n.Name, canaryNamespace, name, canary6, err)
		}
	}
	return c.checkProxyPrivileges(n)
}

// capBits are the capabilities a manifest may add, by setpriv's name.
var capBits = map[string]int{
	"net_admin": unix.CAP_NET_ADMIN, "net_raw": unix.CAP_NET_RAW, "net_bind_service": unix.CAP_NET_BIND_SERVICE,
	"sys_admin": unix.CAP_SYS_ADMIN, "sys_module": unix.CAP_SYS_MODULE, "sys_resource": unix.CAP_SYS_RESOURCE,
}

// checkProxyPrivileges checks that node n's running svcproxy has exactly
// the privileges of the shipped DaemonSet (see wrap): what proves that the
// tests ran it so, rather than as full root.
func (c *Cluster) checkProxyPrivileges(n *Node) error {
	if ipvsMode(c.proxyArgs(n)) {
		return nil
	}
	sc, err := loadContainerSecurity(filepath.Join(c.opts.RepoRoot, "deploy", "svcproxy.yaml"))
	if err != nil {
		return err
	}
	var want uint64
	for _, cp := range sc.caps {
		bit, ok := capBits[cp]
		if !ok {
			return fmt.Errorf("capability %q of deploy/svcproxy.yaml: unknown to the framework (add it to capBits)", cp)
		}
		want |= 1 << bit
	}
	pid := n.Proxy.PID()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fmt.Errorf("svcproxy on %s: %w", n.Name, err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	var problems []string
	check := func(field string, want uint64) {
		got, err := strconv.ParseUint(fields[field], 16, 64)
		if err != nil || got != want {
			problems = append(problems, fmt.Sprintf("%s %s, want %016x", field, fields[field], want))
		}
	}
	check("CapEff", want)
	check("CapPrm", want)
	check("CapBnd", want)
	check("CapInh", 0)
	check("CapAmb", 0)
	if uid := strings.Fields(fields["Uid"]); len(uid) == 0 || uid[0] != strconv.FormatInt(sc.uid, 10) {
		problems = append(problems, fmt.Sprintf("Uid %s, want %d", fields["Uid"], sc.uid))
	}
	if sc.noNewPrivs && fields["NoNewPrivs"] != "1" {
		problems = append(problems, "NoNewPrivs "+fields["NoNewPrivs"]+", want 1")
	}
	if sc.readOnlyRootFS {
		mountinfo, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if err != nil {
			return fmt.Errorf("svcproxy on %s: %w", n.Name, err)
		}
		rootRO := false
		for _, line := range strings.Split(string(mountinfo), "\n") {
			// ID parent major:minor root mountpoint options ...
			if f := strings.Fields(line); len(f) > 5 && f[4] == "/" {
				rootRO = slices.Contains(strings.Split(f[5], ","), "ro")
			}
		}
		if !rootRO {
			problems = append(problems, "root filesystem writable")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("svcproxy on %s (pid %d) does not run with the privileges of deploy/svcproxy.yaml: %s", n.Name, pid, strings.Join(problems, "; "))
	}
	return nil
}

// RestartProxy stops node n's svcproxy — with SIGTERM, or SIGKILL when
// crash is set — starts a new one and waits until it is ready. svcproxy
// leaves its rules in place when it stops, so traffic keeps flowing
// meanwhile.
func (c *Cluster) RestartProxy(ctx context.Context, n *Node, crash bool) error {
	var err error
	if crash {
		err = n.Proxy.Kill()
	} else {
		err = n.Proxy.Stop(10 * time.Second)
	}
	if err != nil {
		return err
	}
	if exited, status := n.Proxy.Exited(); exited && status != nil && !crash {
		return fmt.Errorf("svcproxy on %s did not exit cleanly on SIGTERM: %v; log %s:\n%s", n.Name, status, n.Proxy.LogPath, n.Proxy.Tail(20))
	}
	if err := c.startProxy(n); err != nil {
		return err
	}
	return c.WaitProxyReady(ctx, n)
}
