package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy"
)

// Interface is the kernel boundary of iptables mode: the only code that
// touches the host's rules. Methods are safe to call from one goroutine.
type Interface interface {
	// Restore feeds data (iptables-restore input, one or more tables) to
	// iptables-restore --noflush while holding the xtables lock. It is
	// atomic: on error nothing of data was applied.
	Restore(data []byte) error
	// EnsureJump inserts j at the top of its built-in chain unless an
	// identical rule already exists anywhere in that chain.
	EnsureJump(j Jump) error
	// DeleteJump removes every copy of j from its built-in chain; a
	// missing rule or chain is not an error.
	DeleteJump(j Jump) error
	// ListChains returns the names of all chains of table. It reads the
	// whole table back and is slow on big tables: svcproxy calls it once at
	// start, never on the sync path.
	ListChains(table string) ([]string, error)
	// ListRules returns the rules of one chain of table as iptables -S
	// prints them ("-A CHAIN args...", comments in double quotes). Like
	// ListChains it is for one-time use (taking over from kube-proxy),
	// never the sync path.
	ListRules(table, chain string) ([]string, error)
}

// Variant is an iptables backend: "nft" or "legacy".
type Variant string

// Backends.
const (
	VariantNFT    Variant = "nft"
	VariantLegacy Variant = "legacy"
)

// DetectVariant picks the iptables backend the host uses, the way
// kubernetes-sigs/iptables-wrappers does: if the legacy tables hold rules
// and the nft ones hold none (or fewer), the host uses legacy; otherwise
// nft, Debian's default. When only one variant is installed, that one.
func DetectVariant() Variant {
	_, errNFT := exec.LookPath("iptables-nft-save")
	_, errLegacy := exec.LookPath("iptables-legacy-save")
	switch {
	case errLegacy != nil:
		return VariantNFT
	case errNFT != nil:
		return VariantLegacy
	}
	// Reading a legacy table creates it: look at the list of the legacy
	// tables that exist first, so that a host without any is not left
	// with an empty one (and "iptables-legacy tables present" warnings).
	if names, err := os.ReadFile("/proc/thread-self/net/ip_tables_names"); err != nil || len(bytes.TrimSpace(names)) == 0 {
		return VariantNFT
	}
	if hintCount("iptables-legacy-save") > hintCount("iptables-nft-save") {
		return VariantLegacy
	}
	return VariantNFT
}

func hintCount(cmd string) int {
	// The mangle table is small everywhere; kubelet and kube-proxy leave
	// their hint chains there.
	out, err := exec.Command(cmd, "-t", "mangle").Output()
	if err != nil {
		return 0
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":KUBE-") || strings.HasPrefix(l, ":SVCP-") {
			n++
		}
	}
	return n
}

// Exec is the real Interface: it runs iptables-restore and iptables of one
// variant.
type Exec struct {
	variant Variant
	cmd     string // "iptables" or "ip6tables"
	ipt     *goipt.IPTables
}

var _ Interface = (*Exec)(nil)

// NewExec returns an Interface running the binaries of variant.
func NewExec(variant Variant) (*Exec, error) {
	ipt, err := goipt.New(goipt.Path(binary(variant, "")), goipt.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("iptables (%s): %w", variant, err)
	}
	return &Exec{variant: variant, cmd: "iptables", ipt: ipt}, nil
}

// NewExec6 returns an Interface running the ip6tables binaries of variant.
// svcproxy programs IPv4 only; this is for removing what upstream
// kube-proxy (dual-stack whenever ip6tables works) left in ip6tables.
func NewExec6(variant Variant) (*Exec, error) {
	path := "ip6tables-" + string(variant)
	ipt, err := goipt.New(goipt.IPFamily(goipt.ProtocolIPv6), goipt.Path(path), goipt.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("ip6tables (%s): %w", variant, err)
	}
	return &Exec{variant: variant, cmd: "ip6tables", ipt: ipt}, nil
}

// binary returns e.g. "iptables-nft-restore" for (nft, "-restore").
func binary(v Variant, suffix string) string { return "iptables-" + string(v) + suffix }

// binary returns e's command with suffix, e.g. "ip6tables-nft-save".
func (e *Exec) binary(suffix string) string { return e.cmd + "-" + string(e.variant) + suffix }

// Variant returns the backend in use.
func (e *Exec) Variant() Variant { return e.variant }

// Restore implements Interface.
func (e *Exec) Restore(data []byte) error {
	cmd := exec.Command(e.binary("-restore"), "--noflush", "--wait", "5")
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		klog.V(4).InfoS("iptables-restore failed", "input", string(data))
		return &proxy.RestoreError{Err: fmt.Errorf("%s: %w: %s%s", e.binary("-restore"), err, msg, lineContext(data, msg))}
	}
	return nil
}

// lineContext returns the input line an iptables-restore error message
// points at ("line N failed"), to make failures debuggable.
func lineContext(data []byte, msg string) string {
	var n int
	if i := strings.Index(msg, "line "); i >= 0 {
		fmt.Sscanf(msg[i+5:], "%d", &n)
	}
	if n <= 0 {
		return ""
	}
	lines := strings.Split(string(data), "\n")
	if n > len(lines) {
		return ""
	}
	return fmt.Sprintf(" (line %d: %q)", n, lines[n-1])
}

// EnsureJump implements Interface.
func (e *Exec) EnsureJump(j Jump) error {
	ok, err := e.ipt.Exists(j.Table, j.Chain, j.Args...)
	if err != nil {
		return fmt.Errorf("checking jump %s/%s: %w", j.Table, j.Chain, err)
	}
	if ok {
		return nil
	}
	if err := e.ipt.Insert(j.Table, j.Chain, 1, j.Args...); err != nil {
		return fmt.Errorf("inserting jump %s/%s: %w", j.Table, j.Chain, err)
	}
	return nil
}

// DeleteJump implements Interface.
func (e *Exec) DeleteJump(j Jump) error {
	for {
		ok, err := e.ipt.Exists(j.Table, j.Chain, j.Args...)
		if err != nil || !ok {
			// A missing built-in chain or table means nothing to delete.
			return nil
		}
		if err := e.ipt.Delete(j.Table, j.Chain, j.Args...); err != nil {
			return fmt.Errorf("deleting jump %s/%s: %w", j.Table, j.Chain, err)
		}
	}
}

// ListChains implements Interface.
func (e *Exec) ListChains(table string) ([]string, error) {
	out, err := exec.Command(e.binary("-save"), "-t", table).Output()
	if err != nil {
		return nil, fmt.Errorf("iptables-save -t %s: %w", table, err)
	}
	var chains []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, ":") {
			if f := strings.Fields(l[1:]); len(f) > 0 {
				chains = append(chains, f[0])
			}
		}
	}
	return chains, sc.Err()
}

// ListRules implements Interface.
func (e *Exec) ListRules(table, chain string) ([]string, error) {
	lines, err := e.ipt.List(table, chain)
	if err != nil {
		return nil, fmt.Errorf("listing %s/%s: %w", table, chain, err)
	}
	var rules []string
	for _, l := range lines {
		if strings.HasPrefix(l, "-A ") {
			rules = append(rules, l)
		}
	}
	return rules, nil
}
