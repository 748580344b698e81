// Command testbed starts the e2e test bed (test/e2e/framework) and keeps it
// up until SIGINT/SIGTERM, to try svcproxy by hand: a control plane, two
// nodes running svcproxy, CoreDNS and an outside client, all in network
// namespaces of their own. It prints how to reach them and removes
// everything when stopped. Run it as root from the repository: hack/e2e.sh
// --up builds what it needs (kubectl included) and runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := framework.DefaultOptions()
	opts.Logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	c, err := framework.Start(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testbed:", err)
		return 1
	}
	defer func() {
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "testbed: cleaning up:", err)
		}
	}()
	cp := c.ControlPlane.NetNS.Name
	fmt.Printf(`
The test bed is up. Ctrl-C removes it.

  kubectl:   ip netns exec %[1]s %[11]s --kubeconfig %[2]s get svc -A
  svcproxy:  %[3]s (logs in %[4]s)
  nodes:     %[5]s
  client:    ip netns exec %[6]s ...   (192.168.77.100; reaches the nodes' addresses)
  CoreDNS:   %[7]s (%[8]s) behind kube-dns %[9]s

A shell on node1 (its iptables, conntrack, svcproxy's view):
  ip netns exec %[10]s bash
`, cp, c.AdminKubeconfig, c.ProxyKubeconfig, c.LogDir, nodeList(c), c.Client.NetNS.Name,
		c.DNS.Name, c.DNS.IP, framework.DNSServiceIP, c.Nodes[0].NetNS.Name, c.Tool("kubectl"))
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "testbed: stopping")
	return 0
}

func nodeList(c *framework.Cluster) string {
	s := ""
	for _, n := range c.Nodes {
		s += fmt.Sprintf("%s=%s (netns %s)  ", n.Name, n.IP, n.NetNS.Name)
	}
	return s
}
