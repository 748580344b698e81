// Command testbed starts the e2e test bed (test/e2e/framework) with a small
// demo workload (test/e2e/demo) and keeps it up until SIGINT/SIGTERM, to
// try svcproxy by hand: a control plane, two nodes running svcproxy,
// CoreDNS, an outside client and the demo's pods, all in network
// namespaces of their own. It prints how to reach them, writes shell
// shortcuts for them (-env) and removes everything when stopped. Run it as
// root from the repository: hack/e2e.sh --up builds what it needs (kubectl
// included) and runs it; hack/e2e.sh --down stops it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/demo"
	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

func main() { os.Exit(run()) }

func run() int {
	envFile := flag.String("env", "", "Write shell shortcuts into the test bed (kubectl, explain, on, connect and the addresses) to this file once it is up; removed when it stops.")
	noDemo := flag.Bool("no-demo", false, "Start the bare test bed: kube-dns and kubernetes only, no demo workload.")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
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
	var d *demo.Demo
	if !*noDemo {
		t := time.Now()
		if d, err = demo.Start(ctx, c); err != nil {
			fmt.Fprintln(os.Stderr, "testbed: starting the demo:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e: started the demo: namespaces a and b, 5 pods, b/web, b/api, b/empty (%v)\n", time.Since(t).Round(time.Millisecond))
		defer func() {
			if err := d.Close(context.Background()); err != nil {
				fmt.Fprintln(os.Stderr, "testbed: removing the demo:", err)
			}
		}()
	}
	fmt.Print(summary(c, d, *envFile, time.Since(start)))
	// Last: hack/e2e.sh --up --detach takes the file for "up".
	if *envFile != "" {
		defer os.Remove(*envFile)
		tmp := *envFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(shortcuts(c, d)), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "testbed:", err)
			return 1
		}
		if err := os.Rename(tmp, *envFile); err != nil {
			fmt.Fprintln(os.Stderr, "testbed:", err)
			return 1
		}
	}
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "testbed: stopping")
	return 0
}

// summary is what the test bed prints once it is up.
func summary(c *framework.Cluster, d *demo.Demo, envFile string, took time.Duration) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	node1 := c.Nodes[0]
	p("\nThe test bed is up (%v). Ctrl-C (or sudo hack/e2e.sh --down) removes it.\n\n", took.Round(100*time.Millisecond))
	for _, n := range c.Nodes {
		p("  %-9s %-15s %-15s netns %s, svcproxy log %s\n", n.Name, n.IP, n.IP6, n.NetNS.Name, filepath.Join(c.LogDir, "svcproxy-"+n.Name+".log"))
	}
	p("  %-9s %-15s %-15s netns %s (the outside client: reaches the nodes' addresses only)\n", "outside", c.Client.IP, c.Client.IP6, c.Client.NetNS.Name)
	p("  %-9s %-15s %-15s %s on %s, behind kube-system/kube-dns %s\n", "CoreDNS", c.DNS.IP, c.DNS.IP6, c.DNS.Name, c.DNS.Node.Name, framework.DNSServiceIP)
	if d != nil {
		p("\nThe demo:\n")
		for _, pod := range d.Pods() {
			extra := ""
			if pod == d.Client {
				extra = ", resolv.conf: CoreDNS, search " + strings.Join(pod.SearchDomains(), " ")
			}
			p("  pod %-9s %-15s %-18s on %s, netns %s%s\n", pod.Name, pod.IP, pod.IP6, pod.Node.Name, pod.NetNS.Name, extra)
		}
		for _, s := range []struct {
			svc  *corev1.Service
			what string
		}{
			{d.WebSvc, fmt.Sprintf("node port %d; endpoints b/web-1 (%s), b/web-2, b/web-3 (%s)", demo.WebNodePort, d.Web[0].Node.Name, d.Web[1].Node.Name)},
			{d.APISvc, fmt.Sprintf("node port %d, externalTrafficPolicy Local; endpoint b/api-1 (%s)", demo.APINodePort, d.API.Node.Name)},
			{d.EmptySvc, "no endpoints"},
		} {
			p("  svc b/%-7s %-15s %-18s %s\n", s.svc.Name, s.svc.Spec.ClusterIPs[0], s.svc.Spec.ClusterIPs[len(s.svc.Spec.ClusterIPs)-1], s.what)
		}
		p("  (each Service: TCP and UDP %d to the pods' %d)\n", demo.ServicePort, framework.PodPort)
	}
	p("\nTry, as root from the repository (%s):\n\n", c.Options().RepoRoot)
	p("  # kubectl, as the admin, in the control plane's namespace (the API server listens there)\n")
	p("  ip netns exec %s %s --kubeconfig %s get svc,endpointslices -A\n", c.ControlPlane.NetNS.Name, c.Tool("kubectl"), c.AdminKubeconfig)
	if d != nil {
		p("\n  # a connection by name from the client pod: CoreDNS, then svcproxy's rules on %s\n", d.Client.Node.Name)
		p("  ip netns exec %s %s\n", d.Client.NetNS.Name, shellJoin(demo.ConnectCommand("web.b.svc.cluster.local", demo.ServicePort)))
		p("  ip netns exec %s getent ahosts web.b\n", d.Client.NetNS.Name)
		p("\n  # why it goes where it goes: svcproxy explain on %s, from the API server's state\n", node1.Name)
		p("  %s \\\n      --from pod:%s web.b.svc.cluster.local\n", shellJoin(demo.ExplainCommand(c, node1)), d.Client.IP)
		p("  (-o json for JSON; --from pod:%s for IPv6)\n", d.Client.IP6)
	}
	p("\n  # node1's rules\n")
	p("  ip netns exec %s iptables-save\n", node1.NetNS.Name)
	if envFile != "" {
		p("\nShortcuts for all of this, in a root shell: . %s\n", envFile)
		if d != nil {
			p("  kubectl get svc -A;  connect a/client web.b 80;  explain node1 --from pod:$CLIENT_IP web.b\n")
			p("  on node1 iptables-save;  connect outside $NODE2_IP $API_NODEPORT\n")
		} else {
			p("  kubectl get svc -A;  explain node1 --from node kubernetes.default;  on node1 iptables-save\n")
		}
	}
	p("README.md, \"Troubleshooting\", walks through the demo's stories.\n")
	return b.String()
}

// shortcuts is a bash file to source: variables with the test bed's
// addresses and functions that run commands inside it.
func shortcuts(c *framework.Cluster, d *demo.Demo) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Shortcuts into the svcproxy e2e test bed of `hack/e2e.sh --up` (test bed pid %d),\n", os.Getpid())
	p("# for bash in a root shell:  . %s\n", "<this file>")
	p("# Removed when the test bed stops.\n\n")
	hosts := map[string]string{"control-plane": c.ControlPlane.NetNS.Name, "cp": c.ControlPlane.NetNS.Name, "outside": c.Client.NetNS.Name}
	for _, n := range c.Nodes {
		hosts[n.Name] = n.NetNS.Name
		up := strings.ToUpper(n.Name)
		p("%s_IP=%s %s_IP6=%s\n", up, n.IP, up, n.IP6)
	}
	hosts[c.DNS.Name] = c.DNS.NetNS.Name
	p("OUTSIDE_IP=%s OUTSIDE_IP6=%s\n", c.Client.IP, c.Client.IP6)
	p("DNS_IP=%s\n", framework.DNSServiceIP)
	p("CLUSTER_CIDR=%s\n", framework.ClusterCIDRs)
	p("E2E_DIR=%s\n", shellQuote(c.Dir))
	if d != nil {
		for _, pod := range d.Pods() {
			hosts[pod.Name] = pod.NetNS.Name
		}
		p("CLIENT_IP=%s CLIENT_IP6=%s\n", d.Client.IP, d.Client.IP6)
		p("WEB_NODEPORT=%d API_NODEPORT=%d\n", demo.WebNodePort, demo.APINodePort)
	}
	names := make([]string, 0, len(hosts))
	for h := range hosts {
		names = append(names, h)
	}
	sort.Strings(names)
	p("declare -gA E2E_NETNS=(")
	for _, h := range names {
		p(" [%s]=%s", shellQuote(h), hosts[h])
	}
	p(" )\n\n")
	p("# on HOST CMD...: run CMD in HOST's network namespace (%s)\n", strings.Join(names, ", "))
	p(`on() {
	local ns=${E2E_NETNS[${1:-}]:-}
	if [[ -z $ns ]]; then echo "on: unknown host '${1:-}' (one of: ${!E2E_NETNS[*]})" >&2; return 2; fi
	shift
	ip netns exec "$ns" "$@"
}
`)
	p("# kubectl ARGS...: kubectl as the admin, in the control plane's namespace\n")
	p("kubectl() { ip netns exec %s %s --kubeconfig %s \"$@\"; }\n", c.ControlPlane.NetNS.Name, shellQuote(c.Tool("kubectl")), shellQuote(c.AdminKubeconfig))
	o := c.Options()
	p("# explain NODE ARGS...: svcproxy explain with NODE's flags, in NODE's namespace\n")
	p("explain() { local node=${1:?explain NODE ARGS...}; shift; on \"$node\" %s explain --kubeconfig %s --hostname-override \"$node\" --cluster-cidr %s %s\"$@\"; }\n",
		shellQuote(o.Svcproxy), shellQuote(c.ProxyKubeconfig), framework.ClusterCIDRs, shellJoinTrailing(o.SvcproxyArgs))
	p("# connect HOST NAME PORT: one TCP connection from HOST to NAME (resolved as HOST resolves it) and PORT;\n")
	p("# prints the backend's greeting (name=<ns>/<pod> src=<the address it saw>), gives up after 3 s\n")
	p("connect() { on \"${1:?connect HOST NAME PORT}\" timeout 3 bash -c 'exec 3<>\"/dev/tcp/$1/$2\" && head -1 <&3' connect \"${2:?}\" \"${3:?}\"; }\n")
	return b.String()
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:,=@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// shellJoinTrailing is shellJoin with a trailing space, "" for no words.
func shellJoinTrailing(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	return shellJoin(argv) + " "
}
