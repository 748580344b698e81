package framework

import (
	"context"
	"fmt"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// canaryNamespace holds the short-lived Services of WaitProxyReady.
const canaryNamespace = "e2e-canary"

// proxyReadyTimeout bounds how long a freshly started svcproxy may take
// until the node reaches the API server through the kubernetes Service.
const proxyReadyTimeout = 30 * time.Second

// proxyArgs are the flags of svcproxy on node n, as a DaemonSet would pass
// them, then Options.SvcproxyArgs.
func (c *Cluster) proxyArgs(n *Node) []string {
	args := []string{
		c.opts.Svcproxy,
		"--kubeconfig=" + c.ProxyKubeconfig,
		"--hostname-override=" + n.Name,
		"--cluster-cidr=" + ClusterCIDR,
		"--min-sync-period=100ms",
		// Short, so that the health test sees /healthz turn 503 after
		// 2 × sync period without the API server.
		"--sync-period=3s",
		"--v=2",
	}
	return append(args, c.opts.SvcproxyArgs...)
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
	p, err := c.start(n.NetNS, "svcproxy-"+n.Name, c.proxyArgs(n)...)
	if err != nil {
		return err
	}
	n.Proxy = p
	return nil
}

// WaitProxyReady waits until node n's svcproxy runs, has programmed the
// kubernetes Service (a TCP connection from the node to 10.96.0.1:443 gets
// through to the API server) and follows changes: a canary Service without
// endpoints, created now, is refused from the node. The second check is
// what tells a restarted svcproxy apart from the rules its predecessor left
// in place. Getting there needs the RBAC of deploy/rbac.yaml (svcproxy's
// informers sync first) and working ClusterIP rules.
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
	svc, err := svcs.Create(ctx, NewService(canaryNamespace, name, 80, corev1.ProtocolTCP), metav1.CreateOptions{})
	if err != nil {
		return err
	}
	defer func() { _ = svcs.Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{}) }()
	canary := ClusterAddr(svc)
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
