package iptables_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	ipvstest "github.com/svcproxy/svcproxy/ipvs/testing"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// kubeProxyState is what upstream kube-proxy v1.37 in iptables mode
// programs for one ClusterIP service with one endpoint and a NodePort (as
// iptables-save prints it, trimmed), plus kubelet's KUBE-FIREWALL (which
// kube-proxy also creates) and another program's chains, one of them
// jumping to KUBE-MARK-MASQ.
const kubeProxyState = `*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
:CNI-FORWARD - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -j CNI-FORWARD
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A CNI-FORWARD -s 10.244.0.0/16 -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-EXT-7EJNTS7AENER2WX5 - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SEP-AB2LRLAE6QCDUFAX - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-7EJNTS7AENER2WX5 - [0:0]
:OTHER-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE
-A KUBE-EXT-7EJNTS7AENER2WX5 -m comment --comment "masquerade traffic for default/web external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-7EJNTS7AENER2WX5 -j KUBE-SVC-7EJNTS7AENER2WX5
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web" -m tcp --dport 30080 -j KUBE-EXT-7EJNTS7AENER2WX5
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-AB2LRLAE6QCDUFAX -s 10.244.1.5/32 -m comment --comment "default/web" -j KUBE-MARK-MASQ
-A KUBE-SEP-AB2LRLAE6QCDUFAX -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-7EJNTS7AENER2WX5
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-7EJNTS7AENER2WX5 ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-7EJNTS7AENER2WX5 -m comment --comment "default/web -> 10.244.1.5:8080" -j KUBE-SEP-AB2LRLAE6QCDUFAX
COMMIT
`

func TestRemoveKubeProxy(t *testing.T) {
	fake := iptablestest.NewFake()
	// svcproxy's own rules are in place first (make before break).
	snap := pt.RandomSnapshot([]byte("takeover from kube-proxy, with a few services"))
	if _, err := iptables.NewSyncer(fake, 0).Sync(iptables.Render(snap, iptables.DefaultOptions()), true); err != nil {
		t.Fatal(err)
	}
	if err := fake.Restore([]byte(kubeProxyState)); err != nil {
		t.Fatal(err)
	}
	// Another program jumps to KUBE-MARK-MASQ: that chain must stay.
	if err := fake.Restore([]byte("*nat\n-A OTHER-MASQ -j KUBE-MARK-MASQ\n-A POSTROUTING -j OTHER-MASQ\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	ours := func() string {
		var b strings.Builder
		for _, l := range strings.Split(fake.Dump(), "\n") {
			if strings.Contains(l, iptables.ChainPrefix) {
				b.WriteString(l + "\n")
			}
		}
		return b.String()
	}
	before := ours()

	removed, err := iptables.RemoveKubeProxy(fake)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, table := range []string{"filter", "nat"} {
		for _, c := range fake.Chains(table) {
			if strings.HasPrefix(c, "KUBE-") {
				left = append(left, table+"/"+c)
			}
		}
	}
	if want := []string{"filter/KUBE-FIREWALL", "nat/KUBE-MARK-MASQ"}; !slices.Equal(left, want) {
		t.Errorf("KUBE- chains left: %v, want %v\n%s", left, want, fake.Dump())
	}
	// filter: 9 jumps to kube-proxy chains (not the 2 to KUBE-FIREWALL),
	// 6 chains; nat: 3 jumps, 7 chains (not KUBE-MARK-MASQ).
	if want := 9 + 6 + 3 + 7; removed != want {
		t.Errorf("removed = %d, want %d", removed, want)
	}
	for table, chains := range map[string][]string{"filter": {"INPUT", "FORWARD", "OUTPUT"}, "nat": {"PREROUTING", "OUTPUT", "POSTROUTING"}} {
		for _, c := range chains {
			for _, r := range fake.Rules(table, c) {
				if strings.Contains(r, "KUBE-") && !strings.HasSuffix(r, "-j KUBE-FIREWALL") {
					t.Errorf("%s/%s still has %q", table, c, r)
				}
			}
		}
	}
	for _, want := range []struct{ table, chain, rule string }{
		{"filter", "FORWARD", "-j CNI-FORWARD"},
		{"filter", "CNI-FORWARD", "-s 10.244.0.0/16 -j ACCEPT"},
		{"nat", "POSTROUTING", "-s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE"},
		{"nat", "POSTROUTING", "-j OTHER-MASQ"},
		{"nat", "OTHER-MASQ", "-j KUBE-MARK-MASQ"},
		{"nat", "KUBE-MARK-MASQ", "-j MARK --set-xmark 0x4000/0x4000"},
	} {
		if !slices.Contains(fake.Rules(want.table, want.chain), want.rule) {
			t.Errorf("%s/%s lost %q: %v", want.table, want.chain, want.rule, fake.Rules(want.table, want.chain))
		}
	}
	if after := ours(); after != before {
		t.Errorf("svcproxy's rules changed:\n%s\nwant\n%s", after, before)
	}

	// Idempotent: a second run finds nothing and restores nothing.
	dump, restores := fake.Dump(), fake.RestoreCount()
	removed, err = iptables.RemoveKubeProxy(fake)
	if err != nil || removed != 0 {
		t.Errorf("second run: removed %d, err %v", removed, err)
	}
	if fake.Dump() != dump || fake.RestoreCount() != restores {
		t.Errorf("second run changed the tables")
	}
}

func TestRemoveKubeProxyNothingThere(t *testing.T) {
	fake := iptablestest.NewFake()
	if err := fake.Restore([]byte("*filter\n:KUBE-FIREWALL - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	removed, err := iptables.RemoveKubeProxy(fake)
	if err != nil || removed != 0 || fake.Dump() != dump || fake.RestoreCount() != 1 {
		t.Errorf("removed %d, err %v, restores %d; tables changed: %v", removed, err, fake.RestoreCount(), fake.Dump() != dump)
	}
}

func TestIsKubeProxyChain(t *testing.T) {
	for name, want := range map[string]bool{
		"KUBE-SERVICES": true, "KUBE-SVC-7EJNTS7AENER2WX5": true, "KUBE-SEP-AB2LRLAE6QCDUFAX": true,
		"KUBE-SVL-X": true, "KUBE-EXT-X": true, "KUBE-FW-X": true, "KUBE-PROXY-CANARY": true,
		"KUBE-MARK-MASQ": true, "KUBE-MARK-DROP": true, "KUBE-POSTROUTING": true,
		"KUBE-NODE-PORT": true, "KUBE-IPVS-FILTER": true, "KUBE-IPVS-OUT-FILTER": true, "KUBE-SOURCE-RANGES-FIREWALL": true,
		"KUBE-LOOP-BACK": false,
		"KUBE-FIREWALL":  false, "KUBE-KUBELET-CANARY": false, "KUBE-IPTABLES-HINT": false,
		"KUBE-SVC-": false, "SVCP-SERVICES": false, "CNI-FORWARD": false, "KUBE-ROUTER-INPUT": false,
	} {
		if got := iptables.IsKubeProxyChain(name); got != want {
			t.Errorf("IsKubeProxyChain(%q) = %v, want %v", name, got, want)
		}
	}
}

// kubeProxyIPVSState is what upstream kube-proxy v1.37 in IPVS mode
// programs (iptables-save, trimmed): its rules match its ipsets, which can
// be destroyed only once every chain here is gone.
const kubeProxyIPVSState = `*filter
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
COMMIT
*nat
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
`

// kubeProxySets are the ipsets kubeProxyIPVSState uses.
const kubeProxySets = `create KUBE-LOAD-BALANCER hash:ip,port
create KUBE-CLUSTER-IP hash:ip,port
create KUBE-IPVS-IPS hash:ip
create KUBE-HEALTH-CHECK-NODE-PORT bitmap:port range 0-65535
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
create KUBE-LOOP-BACK hash:ip,port,ip
`

func TestRemoveKubeProxyIPVSMode(t *testing.T) {
	// The iptables rules and the ipsets they match live in one fake
	// kernel: a set cannot go while a rule uses it.
	sets := ipvstest.NewFake()
	fake := iptablestest.NewFake()
	if err := sets.UseIPTables(fake); err != nil {
		t.Fatal(err)
	}
	if err := sets.RestoreSets([]byte(kubeProxySets)); err != nil {
		t.Fatal(err)
	}
	if err := fake.Restore([]byte(kubeProxyIPVSState)); err != nil {
		t.Fatal(err)
	}
	if err := sets.RestoreSets([]byte("destroy KUBE-CLUSTER-IP\n")); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("destroying a set kube-proxy's rules use: got %v, want a refusal", err)
	}
	removed, err := iptables.RemoveKubeProxy(fake)
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"filter", "nat"} {
		for _, c := range fake.Chains(table) {
			if strings.HasPrefix(c, "KUBE-") {
				t.Errorf("%s/%s left", table, c)
			}
			for _, r := range fake.Rules(table, c) {
				if strings.Contains(r, "KUBE-") {
					t.Errorf("%s/%s still has %q", table, c, r)
				}
			}
		}
	}
	// filter: 6 jumps, 6 chains; nat: 3 jumps, 5 chains.
	if want := 6 + 6 + 3 + 5; removed != want {
		t.Errorf("removed = %d, want %d", removed, want)
	}
	// No rule uses kube-proxy's sets any more: IPVS mode's takeover can
	// destroy them.
	var destroy strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(kubeProxySets), "\n") {
		destroy.WriteString("destroy " + strings.Fields(l)[1] + "\n")
	}
	if err := sets.RestoreSets([]byte(destroy.String())); err != nil {
		t.Errorf("destroying kube-proxy's sets after RemoveKubeProxy: %v", err)
	}
}

// kube-proxy keeps a canary chain in mangle too; kubelet's hint chain there
// stays.
func TestRemoveKubeProxyMangle(t *testing.T) {
	fake := iptablestest.NewFake()
	if err := fake.Restore([]byte("*mangle\n:KUBE-PROXY-CANARY - [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	removed, err := iptables.RemoveKubeProxy(fake)
	if err != nil || removed != 1 {
		t.Fatalf("RemoveKubeProxy = %d, %v; want 1, nil", removed, err)
	}
	chains, err := fake.ListChains("mangle")
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(chains, "KUBE-PROXY-CANARY") || !slices.Contains(chains, "KUBE-IPTABLES-HINT") {
		t.Errorf("mangle chains %v: want kube-proxy's canary gone, kubelet's hint kept", chains)
	}
}
