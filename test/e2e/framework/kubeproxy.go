package framework

import (
	"context"
	"fmt"
	"time"
)

// Ports of upstream kube-proxy in the test bed, away from svcproxy's.
const (
	KubeProxyHealthzPort = 10356
	KubeProxyMetricsPort = 10349
)

// StopProxy stops node n's svcproxy (SIGTERM; it leaves its rules) and,
// with cleanup, runs svcproxy --cleanup in the node, which removes them.
func (c *Cluster) StopProxy(ctx context.Context, n *Node, cleanup bool) error {
	if err := n.Proxy.Stop(10 * time.Second); err != nil {
		return err
	}
	if !cleanup {
		return nil
	}
	if out, err := n.NetNS.Exec(ctx, c.opts.Svcproxy, "--cleanup"); err != nil {
		return fmt.Errorf("svcproxy --cleanup on %s: %w: %s", n.Name, err, out)
	}
	return nil
}

// StartProxy starts svcproxy on node n, with the framework's flags, and
// waits until it is ready (WaitProxyReady).
func (c *Cluster) StartProxy(ctx context.Context, n *Node) error {
	if err := c.startProxy(n); err != nil {
		return err
	}
	return c.WaitProxyReady(ctx, n)
}

// StartKubeProxy starts upstream kube-proxy (hack/tools/build.sh
// kube-proxy) on node n in iptables mode, dual-stack (both cluster CIDRs;
// it programs IPv6 with ip6tables as well), with the admin kubeconfig and
// args appended. Stop it with Process.Stop; Close kills it like every
// other process of the cluster.
func (c *Cluster) StartKubeProxy(n *Node, args ...string) (*Process, error) {
	argv := append([]string{
		c.Tool("kube-proxy"),
		"--kubeconfig=" + c.AdminKubeconfig,
		"--hostname-override=" + n.Name,
		"--cluster-cidr=" + ClusterCIDRs,
		"--proxy-mode=iptables",
		fmt.Sprintf("--healthz-bind-address=0.0.0.0:%d", KubeProxyHealthzPort),
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", KubeProxyMetricsPort),
		// Leave the conntrack sysctls alone (some are not per namespace).
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--iptables-min-sync-period=100ms",
		"--v=2",
	}, args...)
	return c.start(n.NetNS, "kube-proxy-"+n.Name, argv...)
}
