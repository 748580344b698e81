//go:build integration

package integration

import (
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
)

// TestRemoveKubeProxyNFT: the tables of kube-proxy's nftables mode (ip
// and ip6 kube-proxy) go, other tables (another family's kube-proxy
// table included) stay; a second run finds nothing.
func TestRemoveKubeProxyNFT(t *testing.T) {
	ns := addNS(t, "svcp-it-takeover-nft")
	for _, cmd := range []string{
		"add table ip kube-proxy",
		"add chain ip kube-proxy services { type nat hook prerouting priority -100 ; }",
		"add rule ip kube-proxy services ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.5:8080",
		"add table ip6 kube-proxy",
		"add table inet kube-proxy",
		"add table ip other",
	} {
		nsRun(t, ns, append([]string{"nft"}, strings.Fields(cmd)...)...)
	}
	var removed int
	var err error
	if e := inNS(ns, func() error { removed, err = iptables.RemoveKubeProxyNFT(); return nil }); e != nil {
		t.Fatal(e)
	}
	if err != nil || removed != 2 {
		t.Fatalf("RemoveKubeProxyNFT = %d, %v; want 2, nil", removed, err)
	}
	got := strings.TrimSpace(nsRun(t, ns, "nft", "list", "tables"))
	if want := "table inet kube-proxy\ntable ip other"; got != want {
		t.Errorf("tables left:\n%s\nwant\n%s", got, want)
	}
	if e := inNS(ns, func() error { removed, err = iptables.RemoveKubeProxyNFT(); return nil }); e != nil {
		t.Fatal(e)
	}
	if err != nil || removed != 0 {
		t.Errorf("second run = %d, %v; want 0, nil", removed, err)
	}
}

// TestRemoveKubeProxyRealIPTables: RemoveKubeProxy through the real
// iptables (nft variant) and ip6tables: jumps with quoted comments are
// found and deleted, kube-proxy's chains (mangle's canary included) go,
// kubelet's KUBE-FIREWALL and another program's rules stay.
func TestRemoveKubeProxyRealIPTables(t *testing.T) {
	ns := addNS(t, "svcp-it-takeover-ipt")
	state := `*mangle
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -s 10.244.0.0/16 -j ACCEPT
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-7EJNTS7AENER2WX5 - [0:0]
:KUBE-SEP-AB2LRLAE6QCDUFAX - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-AB2LRLAE6QCDUFAX -p tcp -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SVC-7EJNTS7AENER2WX5 -j KUBE-SEP-AB2LRLAE6QCDUFAX
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-7EJNTS7AENER2WX5
COMMIT
`
	state6 := strings.NewReplacer("10.244.0.0/16", "fd00:10:244::/48", "10.96.0.10/32", "fd00:10:96::a/128", "10.244.1.5:8080", "[fd00:10:244:1::5]:8080").Replace(state)
	for _, c := range []struct{ restore, save, state string }{
		{"iptables-nft-restore", "iptables-nft-save", state},
		{"ip6tables-nft-restore", "ip6tables-nft-save", state6},
	} {
		t.Run(c.save, func(t *testing.T) {
			cmd := "printf '%s' \"$1\" | ip netns exec " + ns + " " + c.restore
			run(t, "sh", "-c", cmd, "sh", c.state)
			var removed int
			var err error
			if e := inNS(ns, func() error {
				ipt, err2 := iptables.NewExec(iptables.VariantNFT)
				if strings.HasPrefix(c.save, "ip6") {
					ipt, err2 = iptables.NewExec6(iptables.VariantNFT)
				}
				if err2 != nil {
					return err2
				}
				removed, err = iptables.RemoveKubeProxy(ipt)
				return nil
			}); e != nil {
				t.Fatal(e)
			}
			// Jumps: filter FORWARD and OUTPUT, nat PREROUTING and OUTPUT;
			// chains: filter 2, nat 4, mangle 1.
			if want := 2 + 2 + 2 + 4 + 1; err != nil || removed != want {
				t.Errorf("RemoveKubeProxy = %d, %v; want %d, nil", removed, err, want)
			}
			save := nsRun(t, ns, c.save)
			for _, l := range strings.Split(save, "\n") {
				if strings.HasPrefix(l, ":KUBE-") && !strings.HasPrefix(l, ":KUBE-FIREWALL ") && !strings.HasPrefix(l, ":KUBE-KUBELET-CANARY ") {
					t.Errorf("left: %s", l)
				}
				if strings.HasPrefix(l, "-A") && strings.Contains(l, "KUBE-") && l != "-A INPUT -j KUBE-FIREWALL" {
					t.Errorf("rule left: %s", l)
				}
			}
			for _, want := range []string{":KUBE-FIREWALL ", ":KUBE-KUBELET-CANARY ", "-A INPUT -j KUBE-FIREWALL", "-j MASQUERADE", "-j ACCEPT"} {
				if !strings.Contains(save, want) {
					t.Errorf("lost %q", want)
				}
			}
			if t.Failed() {
				t.Logf("%s:\n%s", c.save, save)
			}
			var again int
			if e := inNS(ns, func() error {
				ipt, _ := iptables.NewExec(iptables.VariantNFT)
				if strings.HasPrefix(c.save, "ip6") {
					ipt, _ = iptables.NewExec6(iptables.VariantNFT)
				}
				again, err = iptables.RemoveKubeProxy(ipt)
				return nil
			}); e != nil {
				t.Fatal(e)
			}
			if err != nil || again != 0 {
				t.Errorf("second run = %d, %v; want 0, nil", again, err)
			}
		})
	}
}
