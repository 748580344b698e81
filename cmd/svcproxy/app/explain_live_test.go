package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/iptables/trace"
	"github.com/svcproxy/svcproxy/proxy/config"
)

const (
	dualStackState = "../../../examples/dual-stack.yaml"
	dualStackCIDRs = "10.244.0.0/16,fd00:10:244::/56"
)

// fakeKernel is a node's kernel for explain --live: each family's rules
// in a stateful fake of iptables-restore, programmed by svcproxy's own
// Backend, plus what other programs add (foreign: iptables-restore input
// the strict fake would refuse — unknown modules and targets —, applied on
// top of the fake's rules as a real kernel would hold them).
type fakeKernel struct {
	ipt     map[bool]*iptablestest.Fake
	foreign map[bool][]string
	no6     bool  // ip6tables does not work
	saveErr error // iptables-save fails
	err6    error // ip6tables-save fails
	raw     map[bool]string
	addrs   []netip.Addr
	addrErr error
	saves   int
}

func (k *fakeKernel) Save(ipv6 bool) (string, error) {
	k.saves++
	switch {
	case k.saveErr != nil:
		return "", k.saveErr
	case ipv6 && k.err6 != nil:
		return "", k.err6
	case ipv6 && k.no6:
		return "", fmt.Errorf("%w: ip6tables (nft): exec: \"ip6tables-nft\": executable file not found in $PATH", errNoIP6tables)
	case k.raw[ipv6] != "":
		return k.raw[ipv6], nil
	}
	rs, err := trace.ParseLive(k.ipt[ipv6].Dump(), ipv6)
	if err != nil {
		return "", err
	}
	for _, f := range k.foreign[ipv6] {
		if rs, err = rs.Restore(f, nil); err != nil {
			return "", err
		}
	}
	return rs.Dump(), nil
}

// newKernel programs a fake kernel as the daemon would, with the flags of
// args (the state file and the rest of explain's flags).
func newKernel(t *testing.T, args ...string) *fakeKernel {
	t.Helper()
	o := config.Defaults()
	fs := newFlagSet(o)
	// explain's own flags, taken and ignored
	fs.String("from", "", "")
	fs.StringSlice("node-ip", nil, "")
	fs.StringP("namespace", "n", "", "")
	fs.StringP("output", "o", "", "")
	fs.Bool("live", false, "")
	fs.Bool("all", false, "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	cl, err := loadCluster(context.Background(), o, noAPI, true)
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKernel{ipt: map[bool]*iptablestest.Fake{false: iptablestest.NewFake(), true: iptablestest.NewFake6()},
		foreign: map[bool][]string{}, raw: map[bool]string{},
		addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("::1"),
			netip.MustParseAddr("2001:db8:50::1"), netip.MustParseAddr("fe80::1")}}
	be := iptables.NewDualStackBackend(k.ipt[false], o.IPTablesOptions(false), k.ipt[true], o.IPTablesOptions(true))
	if _, err := be.Sync(context.Background(), cl.snap, true); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *fakeKernel) deps() explainDeps {
	return explainDeps{newClient: noAPI, kernel: k, localAddrs: func() ([]netip.Addr, error) { return k.addrs, k.addrErr }}
}

// restore applies iptables-restore input to the fake (as a person with
// iptables would change the rules).
func (k *fakeKernel) restore(t *testing.T, ipv6 bool, data string) {
	t.Helper()
	if err := k.ipt[ipv6].Restore([]byte(data)); err != nil {
		t.Fatal(err)
	}
}

// chainWith returns the chain of table whose rules contain all of subs.
func (k *fakeKernel) chainWith(t *testing.T, ipv6 bool, table string, subs ...string) string {
	t.Helper()
	for _, c := range k.ipt[ipv6].Chains(table) {
		for _, r := range k.ipt[ipv6].Rules(table, c) {
			if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(r, s) }) {
				return c
			}
		}
	}
	t.Fatalf("no chain of %s has a rule with %q", table, subs)
	return ""
}

// deleteRule deletes the rules of a chain containing sub, by rewriting it.
func (k *fakeKernel) deleteRule(t *testing.T, ipv6 bool, table, chain, sub string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n-F %s\n", table, chain)
	n := 0
	for _, r := range k.ipt[ipv6].Rules(table, chain) {
		if strings.Contains(r, sub) {
			n++
			continue
		}
		fmt.Fprintf(&b, "-A %s %s\n", chain, r)
	}
	if n == 0 {
		t.Fatalf("%s/%s has no rule with %q", table, chain, sub)
	}
	b.WriteString("COMMIT\n")
	k.restore(t, ipv6, b.String())
}

func runLive(t *testing.T, k *fakeKernel, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := runExplain(context.Background(), args, &out, &errOut, k.deps())
	return code, out.String(), errOut.String()
}

// kinds returns "kind" of each drift item, with the details joined after.
// checkDriftJSON checks each result's drift kinds and kernel summary
// ("verdict n-endpoints", "" for none) and that details appear in the
// drift.
func checkDriftJSON(t *testing.T, x explanation, wantKinds [][]string, kernel, details []string) {
	t.Helper()
	var all string
	for i, r := range x.Results {
		ks, d := kinds(r.Drift)
		if !slices.Equal(ks, wantKinds[i]) {
			t.Errorf("result %d: drift %q, want %q:\n%s", i, ks, wantKinds[i], d)
		}
		if r.Drift == nil {
			t.Errorf("result %d: drift is null, want a list", i)
		}
		all += d + "\n"
		got := ""
		if r.Kernel != nil {
			got = fmt.Sprintf("%s %d", r.Kernel.Verdict, len(r.Kernel.Endpoints))
		}
		if got != kernel[i] {
			t.Errorf("result %d: kernel %q, want %q", i, got, kernel[i])
		}
	}
	for _, d := range details {
		if !strings.Contains(all, d) {
			t.Errorf("drift lacks %q:\n%s", d, all)
		}
	}
}

// checkDriftText checks the text output's exit code, that it has textHas,
// and that it names every drift kind.
func checkDriftText(t *testing.T, code, wantCode int, text string, textHas []string, wantKinds [][]string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("text: exit %d, want %d", code, wantCode)
	}
	for _, h := range textHas {
		if !strings.Contains(text, h) {
			t.Errorf("text lacks %q:\n%s", h, text)
		}
	}
	for _, ks := range wantKinds {
		for _, kd := range ks {
			if !strings.Contains(text, kd+": ") {
				t.Errorf("text lacks the drift %q:\n%s", kd, text)
			}
		}
	}
}

func kinds(ds []driftItem) ([]string, string) {
	var ks, details []string
	for _, d := range ds {
		ks = append(ks, d.Kind)
		details = append(details, d.Detail)
	}
	return ks, strings.Join(details, "\n")
}

func TestExplainLive(t *testing.T) {
	web := append(common(exampleState), "--live", "web.shop")
	svcChain := func(t *testing.T, k *fakeKernel) string {
		return k.chainWith(t, false, "nat", "shop/web:http -> 10.244.1.10:8080", "DNAT")
	}
	for _, tc := range []struct {
		name   string
		args   []string
		tamper func(t *testing.T, k *fakeKernel)
		// per result: the drift kinds, in order, and substrings of
		// their details
		kinds   [][]string
		details []string
		kernel  []string // per result: "verdict n-endpoints"
		textHas []string
	}{
		{
			name: "intact: the kernel agrees", args: web,
			kinds: [][]string{nil}, kernel: []string{"dnat 2"}, textHas: []string{"kernel    agrees: DNAT"},
		},
		{
			name: "one endpoint's DNAT rule deleted", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.deleteRule(t, false, "nat", svcChain(t, k), "10.244.1.10:8080")
			},
			kinds:   [][]string{{driftChainRules, driftMissingEP, driftProbability}},
			details: []string{"nat/SVCP-SVC-", "holds 2 rules in the kernel, 3 intended", "10.244.1.10:8080 (p=0.5000 intended) is never reached", "10.244.2.10:8080: p=1.0000 in the kernel's rules, 0.5000 intended"},
			kernel:  []string{"dnat 1"},
			textHas: []string{"kernel    DNAT\n", "10.244.2.10:8080  p=1.0000", "drift     chain-rules: ", "          missing-endpoint: "},
		},
		{
			name: "the last endpoint's DNAT rule deleted: half falls through", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.deleteRule(t, false, "nat", svcChain(t, k), "10.244.2.10:8080")
			},
			kinds:   [][]string{{driftChainRules, driftVerdict, driftMissingEP}},
			details: []string{"intended DNAT; the kernel's rules give DNAT p=0.5000, NO-MATCH p=0.5000"},
			kernel:  []string{"dnat 1"},
			textHas: []string{"kernel    DNAT p=0.5000, NO-MATCH p=0.5000"},
		},
		{
			name: "the jump from PREROUTING deleted", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.deleteRule(t, false, "nat", "PREROUTING", "-j SVCP-SERVICES")
			},
			kinds:   [][]string{{driftMissingJump, driftVerdict}},
			details: []string{"nat/PREROUTING has no jump to SVCP-SERVICES", "intended DNAT; the kernel's rules give NO-MATCH"},
			kernel:  []string{"no-match 0"},
		},
		{
			name: "a foreign DROP above our jump in FORWARD", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.restore(t, false, "*filter\n-I FORWARD -s 10.244.0.0/16 -j DROP\nCOMMIT\n")
			},
			kinds:   [][]string{{driftVerdict, driftForeign}},
			details: []string{"intended DNAT; the kernel's rules give DROP", "a foreign rule earlier in filter/FORWARD catches the packet first: -s 10.244.0.0/16 -j DROP"},
			kernel:  []string{"drop 0"},
		},
		{
			name: "a foreign DROP below ours in FORWARD catches it all the same", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.restore(t, false, "*filter\n-A FORWARD -j DROP\nCOMMIT\n")
			},
			kinds:   [][]string{{driftVerdict, driftForeign}},
			details: []string{"a foreign rule in filter/FORWARD catches the packet: -j DROP"},
			kernel:  []string{"drop 0"},
		},
		{
			name: "FORWARD's policy DROP (Docker's)", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.restore(t, false, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
			},
			kinds:   [][]string{{driftVerdict, driftForeignPolicy}},
			details: []string{"the policy of filter/FORWARD, DROP, decides the packet"},
			kernel:  []string{"drop 0"},
		},
		{
			name: "a foreign rule explain cannot evaluate, above our jump", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.foreign[false] = append(k.foreign[false], "*filter\n-I FORWARD 1 -m physdev --physdev-is-bridged -j DROP\nCOMMIT\n")
			},
			kinds:   [][]string{{driftForeignMay}},
			details: []string{"a foreign rule earlier in filter/FORWARD may catch the packet first: -m physdev --physdev-is-bridged -j DROP (explain cannot tell whether it matches)"},
			kernel:  []string{"dnat 2"},
		},
		{
			name: "other programs' rules that change nothing: no drift", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.foreign[false] = append(k.foreign[false],
					"*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -m rpfilter --invert -j DROP\n-A PREROUTING -p udp -m udp --dport 4789 -j CT --notrack\nCOMMIT\n",
					"*mangle\n-A POSTROUTING -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n-A FORWARD -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\nCOMMIT\n",
					"*filter\n:CNI-FORWARD - [0:0]\n-A FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD\n-A CNI-FORWARD -i cni0 -m limit --limit 5/min -j LOG --log-prefix \"cni: \"\n"+
						"-A CNI-FORWARD -o cni0 -m set --match-set cni-ok dst -j ACCEPT\n-A FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n",
					"*nat\n-A POSTROUTING -s 10.88.0.0/16 ! -d 10.88.0.0/16 -j MASQUERADE\nCOMMIT\n")
			},
			kinds: [][]string{nil}, kernel: []string{"dnat 2"},
		},
		{
			name: "a CNI masquerades what svcproxy does not", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.restore(t, false, "*nat\n-I POSTROUTING -s 10.244.0.0/16 -j MASQUERADE\nCOMMIT\n")
			},
			kinds:   [][]string{{driftMasquerade, driftMasquerade, driftForeign}},
			details: []string{"10.244.1.10:8080: no masquerade (the endpoint sees the source address) intended; the kernel's rules masquerade the connection", "a foreign rule earlier in nat/POSTROUTING catches the packet first: -s 10.244.0.0/16 -j MASQUERADE"},
			kernel:  []string{"dnat 2"},
		},
		{
			name: "kube-proxy's leftovers jumped to before ours DNAT to an old endpoint", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.restore(t, false, "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.100.20/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.9.9:8080\n"+
					"-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n")
			},
			kinds: [][]string{{driftLeftover, driftMissingEP, driftMissingEP, driftExtraEP, driftForeign}},
			details: []string{"nat/PREROUTING jumps to kube-proxy's KUBE-SERVICES before svcproxy's jump",
				"the kernel's rules DNAT to 10.244.9.9:8080 (p=1.0000), which is no endpoint of this port now", "a foreign rule in nat/KUBE-SERVICES catches the packet"},
			kernel: []string{"dnat 1"},
		},
		{
			name: "kube-proxy's leftovers after ours: harmless", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.restore(t, false, "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.100.20/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.9.9:8080\n"+
					"-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n")
			},
			kinds: [][]string{nil}, kernel: []string{"dnat 2"},
		},
		{
			name: "a target explain does not follow", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.foreign[false] = append(k.foreign[false], "*nat\n-I PREROUTING 1 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15001\nCOMMIT\n")
			},
			kinds:   [][]string{{driftVerdict, driftForeign}},
			details: []string{"intended DNAT; the kernel's rules give UNKNOWN", "earlier in nat/PREROUTING catches the packet first: -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15001 (its target is one explain does not follow)"},
			kernel:  []string{"unknown 0"},
		},
		{
			name: "no endpoints: the REJECT deleted", args: append(common(explainState), "--live", "gone.b"),
			tamper: func(t *testing.T, k *fakeKernel) {
				k.deleteRule(t, false, "filter", "SVCP-FILTER", "b/gone:")
			},
			kinds:   [][]string{{driftChainRules, driftVerdict}},
			details: []string{"filter/SVCP-FILTER holds", "intended REJECT; the kernel's rules give NO-MATCH"},
			kernel:  []string{"no-match 0"},
		},
		{
			name: "a node port from outside, our chain flushed", args: append(common(exampleState), "--live", "--from", "external:203.0.113.7", "192.168.0.1:30080"),
			tamper: func(t *testing.T, k *fakeKernel) {
				k.restore(t, false, "*nat\n-F SVCP-NODEPORTS\nCOMMIT\n")
			},
			kinds:   [][]string{{driftChainRules, driftVerdict}},
			details: []string{"nat/SVCP-NODEPORTS holds 0 rules in the kernel", "intended DNAT; the kernel's rules give NO-MATCH"},
			kernel:  []string{"no-match 0"},
		},
		{
			name: "a node port from outside, its masquerade mark deleted", args: append(common(exampleState), "--live", "--from", "external:203.0.113.7", "192.168.0.1:30080"),
			tamper: func(t *testing.T, k *fakeKernel) {
				k.deleteRule(t, false, "nat", k.chainWith(t, false, "nat", "--dport 30080", "MARK"), "MARK")
			},
			kinds:   [][]string{{driftChainRules, driftMasquerade, driftMasquerade}},
			details: []string{"10.244.1.10:8080: masquerade (the endpoint sees the node's address) intended; the kernel's rules keep the source address"},
			kernel:  []string{"dnat 2"},
		},
		{
			name: "a chain of ours deleted", args: web,
			tamper: func(t *testing.T, k *fakeKernel) {
				c := svcChain(t, k)
				k.raw[false] = strings.ReplaceAll(strings.ReplaceAll(k.ipt[false].Dump(), "-g "+c, "-j RETURN"), "\n:"+c+" - [0:0]", "")
				var keep []string
				for _, l := range strings.Split(k.raw[false], "\n") {
					if !strings.HasPrefix(l, "-A "+c+" ") {
						keep = append(keep, l)
					}
				}
				k.raw[false] = strings.Join(keep, "\n")
			},
			kinds:   [][]string{{driftMissingChain, driftVerdict}},
			details: []string{"svcproxy's chain nat/SVCP-SVC-", "is not in the kernel"},
			kernel:  []string{"no-match 0"},
		},
		{
			name: "dual-stack: both families agree", args: []string{"--state", dualStackState, "--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs, "--live", "web.demo:http"},
			kinds: [][]string{nil, nil}, kernel: []string{"dnat 2", "dnat 2"},
		},
		{
			name: "dual-stack: an IPv6 endpoint's rule deleted", args: []string{"--state", dualStackState, "--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs, "--live", "web.demo:http"},
			tamper: func(t *testing.T, k *fakeKernel) {
				k.deleteRule(t, true, "nat", k.chainWith(t, true, "nat", "demo/web:http", "--to-destination [fd00:10:244:1::10]:8080"), "fd00:10:244:1::10")
			},
			kinds:   [][]string{nil, {driftChainRules, driftMissingEP, driftProbability}},
			details: []string{"[fd00:10:244:1::10]:8080 (p=0.5000 intended) is never reached"},
			kernel:  []string{"dnat 2", "dnat 1"},
		},
		{
			name: "dual-stack without ip6tables", args: []string{"--state", dualStackState, "--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs, "--live", "web.demo:http"},
			tamper: func(t *testing.T, k *fakeKernel) { k.no6 = true },
			kinds:  [][]string{nil, {driftNoIP6tables}}, details: []string{"ip6tables does not work on this node: ip6tables (nft)", "svcproxy programs no IPv6 rules"},
			kernel: []string{"dnat 2", ""},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKernel(t, tc.args[:len(tc.args)-1]...)
			if tc.tamper != nil {
				tc.tamper(t, k)
			}
			wantCode := explainOK
			for _, ks := range tc.kinds {
				if len(ks) > 0 {
					wantCode = explainDrift
				}
			}
			code, out, errOut := runLive(t, k, append(tc.args, "-o", "json")...)
			if code != wantCode {
				t.Fatalf("-o json: exit %d, want %d; stderr:\n%s\nstdout:\n%s", code, wantCode, errOut, out)
			}
			var x explanation
			if err := json.Unmarshal([]byte(out), &x); err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
			if !x.Live || len(x.Results) != len(tc.kinds) {
				t.Fatalf("live %v, %d results, want %d:\n%s", x.Live, len(x.Results), len(tc.kinds), out)
			}
			checkDriftJSON(t, x, tc.kinds, tc.kernel, tc.details)
			code, text, _ := runLive(t, k, tc.args...)
			checkDriftText(t, code, wantCode, text, tc.textHas, tc.kinds)
		})
	}
}

// TestExplainLiveErrors: what keeps explain from reading or walking the
// kernel's rules is exit status 2, said on stderr.
func TestExplainLiveErrors(t *testing.T) {
	web := append(common(exampleState), "--live", "web.shop")
	for _, tc := range []struct {
		name   string
		tamper func(k *fakeKernel)
		want   string
	}{
		{"iptables-save fails", func(k *fakeKernel) { k.saveErr = errors.New("iptables-nft-save: exit status 1") }, "reading this node's rules: iptables-nft-save: exit status 1"},
		{"the addresses cannot be listed", func(k *fakeKernel) { k.addrErr = errors.New("netlink: permission denied") }, "reading this node's rules: this node's addresses: netlink: permission denied"},
		{"output iptables-save cannot have written", func(k *fakeKernel) { k.raw[false] = "*nat\n-A NOPE -j ACCEPT\nCOMMIT\n" }, `iptables-save output: iptables-restore: line 2 failed: "-A NOPE -j ACCEPT": chain "NOPE" does not exist`},
		{"rules the kernel would never have taken", func(k *fakeKernel) {
			k.raw[false] = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:X - [0:0]\n-A POSTROUTING -j X\n-A X -p tcp -j DNAT --to-destination 10.244.1.1:80\nCOMMIT\n"
		}, "through the kernel's rules: nat/X rule 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKernel(t, common(exampleState)...)
			tc.tamper(k)
			code, out, errOut := runLive(t, k, web...)
			if code != explainUsage || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d (want %d), stdout %q, stderr:\n%s\nwant %q", code, explainUsage, out, errOut, tc.want)
			}
		})
	}
	// A kernel read once serves every result.
	k := newKernel(t, common(exampleState)...)
	if code, _, errOut := runLive(t, k, append(common(exampleState), "--live", "kube-dns.kube-system")...); code != 0 || k.saves != 1 {
		t.Errorf("exit %d after %d reads of the kernel; stderr:\n%s", code, k.saves, errOut)
	}
	k.saveErr = errors.New("boom")
	if code, _, errOut := runLive(t, k, append(common(exampleState), "--live", "kube-dns.kube-system")...); code != explainUsage || k.saves != 2 {
		t.Errorf("a failed read: exit %d after %d reads; stderr:\n%s", code, k.saves, errOut)
	}
}

// TestExplainLiveFromNode: with --live, this namespace's addresses are the
// node's: --from node needs no --node-ip.
func TestExplainLiveFromNode(t *testing.T) {
	k := newKernel(t, common(exampleState)...)
	code, out, errOut := runLive(t, k, append(common(exampleState), "--live", "--from", "node", "web.shop")...)
	if code != 0 || !strings.Contains(out, "node1 itself (192.168.0.1)") || !strings.Contains(out, "kernel    agrees: DNAT") {
		t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

func TestHostAddrs(t *testing.T) {
	addrs, err := hostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(addrs, netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("hostAddrs() = %v, want 127.0.0.1 among them (lo)", addrs)
	}
}
