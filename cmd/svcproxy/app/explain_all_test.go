package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestExplainAll(t *testing.T) {
	example := append(common(exampleState), "--live", "--all")
	dual := []string{"--state", dualStackState, "--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs, "--live", "--all"}
	for _, tc := range []struct {
		name   string
		args   []string
		tamper func(t *testing.T, k *fakeKernel)
		code   int
		// lines the text must have (a prefix each), and its summary
		lines   []string
		summary string
		check   func(t *testing.T, rep *allReport)
	}{
		{
			name: "intact", args: example, code: explainOK,
			lines: []string{
				"ok     shop/web:http/TCP IPv4  cluster IP 10.96.100.20:80 DNAT 2 endpoints; node port 192.168.0.1:30080 DNAT 2 endpoints; external IP 192.0.2.50:80 DNAT 2 endpoints",
				"ok     blog/frontend:http/TCP IPv4  cluster IP 10.96.200.10:80 DNAT",
			},
			summary: "service ports checked on node1 (",
			check: func(t *testing.T, rep *allReport) {
				s := rep.Summary
				if s.Ports == 0 || s.Ports != s.IPv4 || s.Agree != s.Ports || s.Differ != 0 || s.NodeDrift != 0 || len(rep.Drift) != 0 {
					t.Errorf("summary %+v, node drift %v", s, rep.Drift)
				}
				for _, pc := range rep.Ports {
					if pc.Service != "blog/frontend" {
						continue
					}
					var vias []string
					for _, c := range pc.Checks {
						vias = append(vias, c.Via+" from "+c.Source)
					}
					want := []string{"cluster IP from 10.244.255.254", "node port from 192.0.2.254", "load-balancer IP from 198.51.100.254"} // in its source ranges
					if !slices.Equal(vias, want) {
						t.Errorf("blog/frontend checks %q, want %q", vias, want)
					}
				}
			},
		},
		{
			name: "one endpoint's DNAT rule deleted", args: example, code: explainDrift,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.deleteRule(t, false, "nat", k.chainWith(t, false, "nat", "shop/web:http -> 10.244.1.10:8080", "DNAT"), "10.244.1.10:8080")
			},
			lines: []string{
				"DRIFT  shop/web:http/TCP IPv4  cluster IP 10.96.100.20:80 DNAT 2 endpoints; node port",
				"         cluster IP 10.96.100.20:80: missing-endpoint: 10.244.1.10:8080 (p=0.5000 intended) is never reached",
				"         node port 192.168.0.1:30080: endpoint-probability: 10.244.2.10:8080: p=1.0000 in the kernel's rules, 0.5000 intended",
				"DRIFT  node IPv4: chain-rules: nat/SVCP-SVC-",
				"ok     shop/cart:",
			},
			summary: "1 differ; 1 difference in the node's jumps and chains",
		},
		{
			name: "a jump no check walks through deleted", args: example, code: explainDrift,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.deleteRule(t, false, "nat", "OUTPUT", "-j SVCP-SERVICES")
			},
			lines:   []string{"ok     shop/web:http/TCP IPv4", "DRIFT  node IPv4: missing-jump: nat/OUTPUT has no jump to SVCP-SERVICES"},
			summary: "0 differ; 1 difference in the node's jumps and chains",
		},
		{
			name: "kube-proxy's leftovers before ours", args: example, code: explainDrift,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.restore(t, false, "*filter\n:KUBE-FORWARD - [0:0]\n-I FORWARD -j KUBE-FORWARD\nCOMMIT\n")
			},
			lines:   []string{"DRIFT  node IPv4: kube-proxy-leftover: filter/FORWARD jumps to kube-proxy's KUBE-FORWARD before svcproxy's jump"},
			summary: "0 differ; 1 difference",
		},
		{
			name: "no ip6tables and no IPv6 service: nothing to say", args: example, code: explainOK,
			tamper:  func(t *testing.T, k *fakeKernel) { k.no6 = true },
			summary: "0 differ; the node's jumps and chains agree",
		},
		{
			name: "dual-stack intact", args: dual, code: explainOK,
			lines: []string{
				"ok     demo/web:http/TCP IPv6  cluster IP [fd00:10:96::a]:80 DNAT 2 endpoints",
				"ok     demo/lb:http/TCP IPv4  cluster IP 10.96.10.40:80 DNAT 2 endpoints; node port 192.168.0.1:30090 DNAT 2 endpoints; load-balancer IP 203.0.113.10:80 DNAT 2 endpoints",
				"ok     demo/lb6:http/TCP IPv4  cluster IP 10.96.10.50:80 DNAT 2 endpoints; node port 192.168.0.1:30091 DNAT 2 endpoints; load-balancer IP 203.0.113.11:80 DROP",
			},
			check: func(t *testing.T, rep *allReport) {
				if rep.Summary.IPv6 == 0 || rep.Summary.Agree != rep.Summary.Ports {
					t.Errorf("summary %+v", rep.Summary)
				}
				for _, pc := range rep.Ports {
					for _, c := range pc.Checks {
						// A client the source ranges admit.
						if pc.Service == "demo/lb" && c.Via == viaLBIP && !strings.HasPrefix(c.Source, "192.168.50.") && !strings.HasPrefix(c.Source, "2001:db8:50:") {
							t.Errorf("demo/lb's load-balancer IP checked from %s, outside its source ranges", c.Source)
						}
					}
				}
			},
		},
		{
			name: "dual-stack without ip6tables", args: dual, code: explainDrift,
			tamper: func(t *testing.T, k *fakeKernel) { k.no6 = true },
			lines: []string{
				"ok     demo/web:http/TCP IPv4",
				"DRIFT  demo/web:http/TCP IPv6  cluster IP [fd00:10:96::a]:80 DNAT 2 endpoints",
				"         cluster IP [fd00:10:96::a]:80: no-ip6tables: ip6tables does not work on this node",
			},
			summary: "the node's jumps and chains agree",
		},
		{
			name: "no node address of a family: its node ports are not checked", args: dual, code: explainOK,
			tamper: func(t *testing.T, k *fakeKernel) {
				k.addrs = []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fe80::1")}
			},
			lines: []string{"ok     demo/np:http/TCP IPv6  cluster IP [fd00:10:96::1e]:80 DNAT 2 endpoints; external IP", "note   node ports of IPv6 are not checked: no IPv6 address of this node"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKernel(t, tc.args...)
			if tc.tamper != nil {
				tc.tamper(t, k)
			}
			code, out, errOut := runLive(t, k, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s\nstdout:\n%s", code, tc.code, errOut, out)
			}
			lines := strings.Split(out, "\n")
			for _, l := range tc.lines {
				if !slices.ContainsFunc(lines, func(s string) bool { return strings.HasPrefix(s, l) }) {
					t.Errorf("no line starts with %q:\n%s", l, out)
				}
			}
			if last := lines[len(lines)-2]; !strings.Contains(last, tc.summary) {
				t.Errorf("summary %q lacks %q", last, tc.summary)
			}
			code, out, errOut = runLive(t, k, append(tc.args, "-o", "json")...)
			if code != tc.code {
				t.Fatalf("-o json: exit %d, want %d; stderr:\n%s", code, tc.code, errOut)
			}
			var rep allReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
			if rep.Ports == nil || rep.Drift == nil || rep.Notes == nil {
				t.Errorf("ports, drift and notes must be lists:\n%s", out)
			}
			if (rep.Summary.Differ > 0 || rep.Summary.NodeDrift > 0) != (tc.code == explainDrift) {
				t.Errorf("summary %+v with exit %d", rep.Summary, code)
			}
			if tc.check != nil {
				tc.check(t, &rep)
			}
		})
	}
}

func TestExplainAllErrors(t *testing.T) {
	example := append(common(exampleState), "--live", "--all")
	for _, tc := range []struct {
		name   string
		tamper func(k *fakeKernel)
		want   string
	}{
		{"iptables-save fails", func(k *fakeKernel) { k.saveErr = errors.New("iptables-nft-save: exit status 1") }, "reading this node's rules: iptables-nft-save: exit status 1"},
		{"ip6tables-save fails", func(k *fakeKernel) { k.err6 = errors.New("ip6tables-nft-save: exit status 4") }, "reading this node's rules: ip6tables-nft-save: exit status 4"},
		{"rules the tracer cannot walk", func(k *fakeKernel) {
			k.raw[false] = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:X - [0:0]\n-A POSTROUTING -j X\n-A X -p tcp -j DNAT --to-destination 10.244.1.1:80\nCOMMIT\n"
		}, "through the kernel's rules"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newKernel(t, example...)
			tc.tamper(k)
			code, out, errOut := runLive(t, k, example...)
			if code != explainUsage || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant %q", code, out, errOut, tc.want)
			}
		})
	}
	for _, o := range []string{"text", "json"} {
		k := newKernel(t, example...)
		var w brokenPipe
		var errOut bytes.Buffer
		code := runExplain(context.Background(), append(example, "-o", o), &w, &errOut, k.deps())
		if code != explainUsage || w.writes == 0 || !strings.Contains(errOut.String(), "broken pipe") {
			t.Errorf("-o %s: exit %d after %d writes, stderr:\n%s", o, code, w.writes, errOut.String())
		}
	}
}
