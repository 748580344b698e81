package framework

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
)

// scratchSeq numbers the scratch namespaces of CanonicalRules.
var scratchSeq atomic.Int64

// IPVSMode reports whether the test bed runs svcproxy in IPVS mode
// (E2E_SVCPROXY_ARGS=--mode=ipvs).
func (c *Cluster) IPVSMode() bool { return ipvsMode(c.proxyArgs(c.Nodes[0])) }

// Mode returns the mode the test bed runs svcproxy in: "iptables" (the
// default), "ipvs" or "nftables" (E2E_SVCPROXY_ARGS=--mode=...).
func (c *Cluster) Mode() string { return proxyMode(c.proxyArgs(c.Nodes[0])) }

// NFTablesMode reports whether the test bed runs svcproxy in nftables mode
// (E2E_SVCPROXY_ARGS=--mode=nftables).
func (c *Cluster) NFTablesMode() bool { return c.Mode() == "nftables" }

// NFTablesTable is the name of svcproxy's nftables table in each family
// (nftables.TableName).
const NFTablesTable = "svcproxy"

// NFTList returns `nft list table <family> <table>` in the namespace
// (family "ip" or "ip6"), "" when the table does not exist.
func (n *NetNS) NFTList(ctx context.Context, family, table string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.Name, "nft", "list", "table", family, table)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if strings.Contains(stderr.String(), "No such file or directory") {
			return "", nil
		}
		return "", fmt.Errorf("nft list table %s %s in %s: %w: %s", family, table, n.Name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// CanonicalNFT loads input (nft -f input, such as DryRun prints in
// nftables mode) into a scratch network namespace of the cluster's with
// the real nft and returns `nft list table ip svcproxy` and `nft list
// table ip6 svcproxy` there ("" for a table the input does not create):
// the tables as the kernel and nft spell them, comparable with a node's
// NFTList. The namespace is deleted before it returns.
func (c *Cluster) CanonicalNFT(ctx context.Context, input string) (v4, v6 string, err error) {
	ns, err := c.addNetNS(ctx, "scratch"+strconv.FormatInt(scratchSeq.Add(1), 10))
	if err != nil {
		return "", "", err
	}
	defer func() { _ = c.removeNetNS(context.WithoutCancel(ctx), ns) }()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("nft -f in scratch namespace %s: %w: %s", ns.Name, err, tail(strings.TrimSpace(string(out)), 20))
	}
	if v4, err = ns.NFTList(ctx, "ip", NFTablesTable); err != nil {
		return "", "", err
	}
	if v6, err = ns.NFTList(ctx, "ip6", NFTablesTable); err != nil {
		return "", "", err
	}
	return v4, v6, nil
}

// DryRun runs the svcproxy under test once with --dry-run and the flags of
// node n's svcproxy (the same kubeconfig, --hostname-override,
// --cluster-cidr and Options.SvcproxyArgs), and returns what it prints once
// it has listed the API server's objects: in iptables mode the
// iptables-restore --noflush input that programs an empty namespace as
// svcproxy would program n, jumps included; in IPVS mode the ipset,
// ipvsadm and iptables sections; in nftables mode the nft -f input of the
// ip svcproxy table and, with IPv6 Services, the ip6 one. It runs in the control plane's namespace
// (where the API server's address is local) and changes nothing there:
// --dry-run only renders.
func (c *Cluster) DryRun(ctx context.Context, n *Node) (string, error) {
	argv := append(c.proxyArgs(n), "--dry-run")
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.ControlPlane.NetNS.Name}, argv...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w; stderr:\n%s", strings.Join(argv, " "), err, tail(stderr.String(), 20))
	}
	return stdout.String(), nil
}

// IPTablesSave returns iptables-save of the namespace (its standard output
// only: the rules, with the tool's comment lines).
func (n *NetNS) IPTablesSave(ctx context.Context) (string, error) {
	return n.save(ctx, "iptables-save")
}

// save runs tool (iptables-save or ip6tables-save) in the namespace and
// returns its standard output.
func (n *NetNS) save(ctx context.Context, tool string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.Name, tool)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s in %s: %w: %s", tool, n.Name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// CanonicalRules loads restore (iptables-restore --noflush input, such as
// DryRun prints) into a scratch network namespace of the cluster's and
// returns that namespace's iptables-save: the rules as the kernel and
// iptables spell them, comparable line for line with a node's
// iptables-save. The namespace is deleted before it returns; nothing else
// is touched.
func (c *Cluster) CanonicalRules(ctx context.Context, restore string) (string, error) {
	return c.canonicalRules(ctx, restore, "iptables")
}

// canonicalRules is CanonicalRules with tool ("iptables" or "ip6tables").
func (c *Cluster) canonicalRules(ctx context.Context, restore, tool string) (string, error) {
	ns, err := c.addNetNS(ctx, "scratch"+strconv.FormatInt(scratchSeq.Add(1), 10))
	if err != nil {
		return "", err
	}
	defer func() { _ = c.removeNetNS(context.WithoutCancel(ctx), ns) }()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, tool+"-restore", "--noflush")
	cmd.Stdin = strings.NewReader(restore)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s-restore --noflush in scratch namespace %s: %w: %s", tool, ns.Name, err, strings.TrimSpace(string(out)))
	}
	return ns.save(ctx, tool+"-save")
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
