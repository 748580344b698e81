package iptables

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"k8s.io/klog/v2"
)

// Upstream kube-proxy's iptables-mode chains (k8s.io/kubernetes
// pkg/proxy/iptables/proxier.go, v1.37.2, plus names older releases used)
// and its IPVS-mode ones (pkg/proxy/ipvs/proxier.go: the shared names plus
// KUBE-NODE-PORT, KUBE-SOURCE-RANGES-FIREWALL, KUBE-IPVS-FILTER and
// KUBE-IPVS-OUT-FILTER; KUBE-LOOP-BACK is an ipset there, not a chain).
// They reference kube-proxy's KUBE- ipsets, which ipvs.RemoveKubeProxy can
// destroy only once these chains are gone.
// KUBE-FIREWALL, KUBE-KUBELET-CANARY and KUBE-IPTABLES-HINT are kubelet's
// (kube-proxy creates a copy of KUBE-FIREWALL but never deletes it either)
// and are left alone, as is every chain not named here.
var (
	kubeProxyChains = []string{
		"KUBE-SERVICES",
		"KUBE-EXTERNAL-SERVICES",
		"KUBE-NODEPORTS",
		"KUBE-POSTROUTING",
		"KUBE-MARK-MASQ",
		"KUBE-MARK-DROP", // iptables mode before 1.25
		"KUBE-FORWARD",
		"KUBE-PROXY-FIREWALL",
		"KUBE-PROXY-CANARY", // also in mangle
		"KUBE-LOAD-BALANCER",
		// IPVS mode
		"KUBE-NODE-PORT",
		"KUBE-SOURCE-RANGES-FIREWALL",
		"KUBE-IPVS-FILTER",
		"KUBE-IPVS-OUT-FILTER",
	}
	kubeProxyChainPrefixes = []string{
		"KUBE-SVC-", // service port, cluster traffic policy
		"KUBE-SVL-", // service port, local traffic policy
		"KUBE-SEP-", // endpoint
		"KUBE-EXT-", // external traffic
		"KUBE-FW-",  // loadBalancerSourceRanges
		"KUBE-XLB-", // external traffic Local, before 1.24
	}
)

// IsKubeProxyChain reports whether name is one of the chains upstream
// kube-proxy's iptables mode creates.
func IsKubeProxyChain(name string) bool {
	if slices.Contains(kubeProxyChains, name) {
		return true
	}
	for _, p := range kubeProxyChainPrefixes {
		if strings.HasPrefix(name, p) && len(name) > len(p) {
			return true
		}
	}
	return false
}

// builtinChains are the built-in chains of each table RemoveKubeProxy
// looks at.
var builtinChains = map[string][]string{
	TableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	TableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle":    {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

// RemoveKubeProxy removes what upstream kube-proxy's iptables mode leaves
// behind, make-before-break style: call it only once svcproxy's own rules
// are in place. Per table (nat, filter, then mangle, where kube-proxy keeps
// only its canary chain), it first deletes every rule of a built-in chain
// that jumps (or goes) to a kube-proxy chain, so traffic stops entering
// them, then flushes and deletes all kube-proxy chains in one
// iptables-restore. A kube-proxy chain that another program's chain still
// jumps to is kept (with the chains it reaches), so that program's rules
// keep working; it is logged. removed counts deleted rules of built-in
// chains plus deleted chains. It is idempotent: with nothing left it
// changes nothing and returns 0.
//
// An error in any table, mangle included, is returned (and the removal
// retried after the next sync).
func RemoveKubeProxy(ipt Interface) (removed int, err error) {
	for _, table := range []string{TableNAT, TableFilter, "mangle"} {
		n, err := removeKubeProxyTable(ipt, table)
		removed += n
		if err != nil {
			return removed, fmt.Errorf("%s table: %w", table, err)
		}
	}
	return removed, nil
}

func removeKubeProxyTable(ipt Interface, table string) (removed int, err error) {
	chains, err := ipt.ListChains(table)
	if err != nil {
		return 0, err
	}
	builtin := builtinChains[table]
	var kube []string
	for _, c := range chains {
		if IsKubeProxyChain(c) {
			kube = append(kube, c)
		}
	}
	if len(kube) == 0 {
		// Built-in chains cannot hold a jump to a missing chain.
		return 0, nil
	}
	// Jumps from built-in chains go first, so that no new packet enters
	// kube-proxy's chains; svcproxy's jumps (to SVCP-*) stay.
	for _, c := range builtin {
		if !slices.Contains(chains, c) {
			continue
		}
		rules, err := ipt.ListRules(table, c)
		if err != nil {
			return removed, err
		}
		for _, r := range rules {
			args, target, err := parseRule(r)
			if err != nil {
				return removed, fmt.Errorf("%s/%s: %w", table, c, err)
			}
			if !IsKubeProxyChain(target) {
				continue
			}
			if err := ipt.DeleteJump(Jump{Table: table, Chain: c, Args: args}); err != nil {
				return removed, err
			}
			removed++
		}
	}
	// Chains of other programs (not built-in, not kube-proxy's) that jump
	// to a kube-proxy chain pin it. Their rules are read; kube-proxy's are
	// not (there may be thousands).
	keep := map[string]bool{}
	for _, c := range chains {
		if slices.Contains(builtin, c) || IsKubeProxyChain(c) {
			continue
		}
		rules, err := ipt.ListRules(table, c)
		if err != nil {
			return removed, err
		}
		for _, r := range rules {
			if _, target, err := parseRule(r); err == nil && IsKubeProxyChain(target) {
				if !keep[target] {
					klog.InfoS("Keeping a kube-proxy chain another chain still jumps to", "table", table, "chain", target, "from", c)
				}
				keep[target] = true
			}
		}
	}
	if len(keep) > 0 {
		// Keep what a kept chain reaches, too.
		var work []string
		for c := range keep {
			work = append(work, c)
		}
		for len(work) > 0 {
			c := work[len(work)-1]
			work = work[:len(work)-1]
			rules, err := ipt.ListRules(table, c)
			if err != nil {
				return removed, err
			}
			for _, r := range rules {
				if _, target, err := parseRule(r); err == nil && IsKubeProxyChain(target) && !keep[target] {
					keep[target] = true
					work = append(work, target)
				}
			}
		}
		kube = slices.DeleteFunc(kube, func(c string) bool { return keep[c] })
		if len(kube) == 0 {
			return removed, nil
		}
	}
	if err := ipt.Restore(removeChainsText(table, kube)); err != nil {
		return removed, fmt.Errorf("removing %d kube-proxy chains from %s: %w", len(kube), table, err)
	}
	return removed + len(kube), nil
}

// parseRule splits an "-A CHAIN args..." line as iptables -S prints it into
// the rule's arguments (unquoted) and its -j or -g target ("" if none).
func parseRule(line string) (args []string, target string, err error) {
	words, err := splitWords(line)
	if err != nil {
		return nil, "", err
	}
	if len(words) < 2 || (words[0] != "-A" && words[0] != "--append") {
		return nil, "", fmt.Errorf("not a rule: %q", line)
	}
	args = words[2:]
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-j", "--jump", "-g", "--goto":
			target = args[i+1]
		}
	}
	return args, target, nil
}

// splitWords splits s at blanks, honouring double quotes with backslash
// escapes, as iptables-save quotes comments.
func splitWords(s string) ([]string, error) {
	var out []string
	var b strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\'):
			i++
			b.WriteByte(s[i])
		case quoted && c == '"':
			quoted = false
		case quoted:
			b.WriteByte(c)
		case c == '"':
			quoted, inWord = true, true
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, b.String())
				b.Reset()
				inWord = false
			}
		default:
			b.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, errors.New("unbalanced quote")
	}
	if inWord {
		out = append(out, b.String())
	}
	return out, nil
}

// RemoveKubeProxyNFT deletes the tables upstream kube-proxy's nftables mode
// keeps everything in, "ip kube-proxy" and "ip6 kube-proxy" (or those of
// families, "ip" and "ip6"), if they exist.
// It runs the nft binary; without one it does nothing (kube-proxy itself
// talks netlink, so the tables may exist on a host without nft;
// deploy/Dockerfile installs nftables for this). It returns the number of
// tables deleted.
//
// It deletes each table by name and takes "No such file or directory" for
// absent: `nft list tables` would first read the whole ruleset, iptables-nft's
// tables included (1.9 s at 10,000 services), where a delete by name costs
// milliseconds.
func RemoveKubeProxyNFT(families ...string) (removed int, err error) {
	if len(families) == 0 {
		families = []string{"ip", "ip6"}
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		klog.V(2).InfoS("No nft binary: not looking for kube-proxy's nftables tables")
		return 0, nil
	}
	for _, family := range families {
		out, err := exec.Command(nft, "delete", "table", family, "kube-proxy").CombinedOutput()
		switch {
		case err == nil:
			removed++
		case strings.Contains(string(out), "No such file or directory"):
		default:
			return removed, fmt.Errorf("nft delete table %s kube-proxy: %w: %s", family, err, strings.TrimSpace(string(out)))
		}
	}
	return removed, nil
}
