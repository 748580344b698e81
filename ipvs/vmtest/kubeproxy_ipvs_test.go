//go:build vm

package vmtest

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
)

// kubeProxyIPVSRules is a trimmed copy of what upstream kube-proxy's IPVS
// mode programs: rules matching its ipsets, jumped to from the built-in
// chains. Its nat KUBE-SERVICES ACCEPTs cluster IP traffic, so nothing
// after it in PREROUTING sees those packets while it is there.
const kubeProxyIPVSRules = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
*filter
:KUBE-IPVS-FILTER - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT
COMMIT
`

// TestTakeOverFromKubeProxyIPVS runs the svcproxy binary on a node that
// upstream kube-proxy ran on in IPVS mode: kube-ipvs0 with the service's
// ClusterIP, kube-proxy's virtual server for it (to a pod svcproxy's state
// no longer has) and a stale node-port one, its ipsets and the chains that
// reference them. In either mode of ours the ClusterIP must end up served
// by the state's endpoints only, and everything of kube-proxy must go,
// while svcproxy's own state stays.
func TestTakeOverFromKubeProxyIPVS(t *testing.T) {
	if _, err := os.Stat(svcproxyBin); err != nil {
		t.Fatalf("%s: %v (run hack/vm/run.sh with VM_WITH_SVCPROXY=1)", svcproxyBin, err)
	}
	for _, mode := range []string{"iptables", "ipvs"} {
		t.Run(mode, func(t *testing.T) { testTakeOverFromKubeProxyIPVS(t, mode) })
	}
}

func testTakeOverFromKubeProxyIPVS(t *testing.T, mode string) {
	tp := newTopology(t)
	for _, n := range []struct{ name, ip string }{{"srv1", "10.244.1.10"}, {"srv2", "10.244.1.11"}, {"kp", "10.244.1.30"}} {
		startServer(t, tp.addPod(t, n.name, n.ip), n.name, 8080)
	}
	cli := tp.addPod(t, "cli", "10.244.1.20")
	p := newProxier(t, tp) // only to act on the kernel
	clusterIP := netip.MustParseAddr("10.96.1.10")
	kpKey := ipvs.ServiceKey{Address: clusterIP, Protocol: v1.ProtocolTCP, Port: 80}
	nodePortKey := ipvs.ServiceKey{Address: netip.MustParseAddr(nodeIP), Protocol: v1.ProtocolTCP, Port: 30080}
	// Not kube-proxy's: neither on kube-ipvs0 nor a node port.
	foreignKey := ipvs.ServiceKey{Address: netip.MustParseAddr("192.0.2.1"), Protocol: v1.ProtocolTCP, Port: 80}
	kp := &ipvs.RealServer{Address: netip.MustParseAddr("10.244.1.30"), Port: 8080, Weight: 1}

	// kube-proxy's leftovers.
	must(t, inNS(tp.node, func() error {
		k := p.kernel
		if err := k.EnsureDummy(ipvs.KubeProxyDummyInterface); err != nil {
			return err
		}
		if err := k.AddAddress(ipvs.KubeProxyDummyInterface, clusterIP); err != nil {
			return err
		}
		for _, key := range []ipvs.ServiceKey{kpKey, nodePortKey, foreignKey} {
			if err := k.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"}); err != nil {
				return err
			}
			if err := k.AddDestination(key, kp); err != nil {
				return err
			}
		}
		if err := k.SetSysctl("net/ipv4/vs/conntrack", "1"); err != nil {
			return err
		}
		if err := k.RestoreSets([]byte("create KUBE-CLUSTER-IP hash:ip,port\nadd KUBE-CLUSTER-IP 10.96.1.10,tcp:80\n" +
			"create KUBE-LOOP-BACK hash:ip,port,ip\nadd KUBE-LOOP-BACK 10.244.1.30,tcp:8080,10.244.1.30\n" +
			"create KUBE-IPVS-IPS hash:ip\nadd KUBE-IPVS-IPS 10.96.1.10\n")); err != nil {
			return err
		}
		return p.ipt.Restore([]byte(kubeProxyIPVSRules))
	}))
	// kube-proxy's state works before svcproxy starts.
	if a, err := dial(cli, "tcp", "10.96.1.10:80"); err != nil || a.Server != "kp" {
		t.Fatalf("kube-proxy's leftovers do not serve: %+v, %v", a, err)
	}

	dir := t.TempDir()
	state := filepath.Join(dir, "state.yaml")
	must(t, os.WriteFile(state, []byte(switchState), 0o644))
	logf, err := os.Create(filepath.Join(dir, "svcproxy.log"))
	must(t, err)
	cmd := exec.Command(svcproxyBin, "--mode="+mode, "--state="+state, "--hostname-override=node1",
		"--cluster-cidr=10.244.0.0/16", "--min-sync-period=100ms", "--healthz-bind-address=", "--metrics-bind-address=", "-v=2")
	cmd.Stdout, cmd.Stderr = logf, logf
	must(t, inNS(tp.node, cmd.Start))
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("svcproxy --mode=%s log:\n%s", mode, out)
		}
	})

	type kernelState struct {
		link   bool
		svcs   []*ipvs.VirtualServer
		sets   []string
		chains []string // table/chain
	}
	look := func() (s kernelState) {
		t.Helper()
		must(t, inNS(tp.node, func() error {
			_, err := p.kernel.ListAddresses(ipvs.KubeProxyDummyInterface)
			s.link = err == nil
			if s.svcs, err = p.kernel.ListServices(); err != nil {
				return err
			}
			sets, err := p.kernel.ListSets()
			if err != nil {
				return err
			}
			for _, x := range sets {
				s.sets = append(s.sets, x.Name)
			}
			for _, tbl := range []string{iptables.TableFilter, iptables.TableNAT} {
				cs, err := p.ipt.ListChains(tbl)
				if err != nil {
					return err
				}
				for _, c := range cs {
					s.chains = append(s.chains, tbl+"/"+c)
				}
			}
			return nil
		}))
		return s
	}
	kubeLeft := func(s kernelState) (left []string) {
		if s.link {
			left = append(left, "link "+ipvs.KubeProxyDummyInterface)
		}
		for _, vs := range s.svcs {
			if vs.ServiceKey == nodePortKey || (vs.ServiceKey == kpKey && slices.ContainsFunc(vs.Destinations, func(rs *ipvs.RealServer) bool { return rs.Address == kp.Address })) {
				left = append(left, "virtual server "+vs.ServiceKey.String())
			}
		}
		for _, n := range s.sets {
			if strings.HasPrefix(n, "KUBE-") {
				left = append(left, "ipset "+n)
			}
		}
		for _, c := range s.chains {
			if strings.Contains(c, "/KUBE-") {
				left = append(left, "chain "+c)
			}
		}
		return left
	}
	deadline := time.Now().Add(20 * time.Second)
	var s kernelState
	for {
		s = look()
		if len(kubeLeft(s)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy's leftovers still there after 20s: %v", kubeLeft(s))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The ClusterIP is served by the state's endpoints only.
	seen := map[string]int{}
	for i := 0; i < 20; i++ {
		a, err := dial(cli, "tcp", "10.96.1.10:80")
		if err != nil {
			t.Fatalf("connection %d to the ClusterIP: %v", i, err)
		}
		seen[a.Server]++
	}
	if seen["kp"] != 0 || seen["srv1"] == 0 || seen["srv2"] == 0 {
		t.Errorf("answers by server: %v, want srv1 and srv2 only", seen)
	}

	// svcproxy's own state, and the foreign virtual server, stay.
	hasSvc := func(k ipvs.ServiceKey) bool {
		return slices.ContainsFunc(s.svcs, func(vs *ipvs.VirtualServer) bool { return vs.ServiceKey == k })
	}
	if !hasSvc(foreignKey) {
		t.Errorf("the foreign virtual server %s was removed", foreignKey)
	}
	var ours []string
	for _, c := range s.chains {
		if strings.Contains(c, "/"+iptables.ChainPrefix) {
			ours = append(ours, c)
		}
	}
	switch mode {
	case "iptables":
		if !slices.ContainsFunc(ours, func(c string) bool { return !ipvs.IsOwnedChain(strings.SplitN(c, "/", 2)[1]) }) {
			t.Errorf("no iptables-mode chain of ours: %v", s.chains)
		}
		if hasSvc(kpKey) {
			t.Errorf("virtual server %s left in iptables mode", kpKey)
		}
	case "ipvs":
		if !hasSvc(kpKey) {
			t.Errorf("our virtual server %s is gone", kpKey)
		}
		if !slices.Contains(s.sets, ipvs.SetClusterIP) {
			t.Errorf("our ipset %s is gone: %v", ipvs.SetClusterIP, s.sets)
		}
		if !slices.Contains(ours, iptables.TableNAT+"/"+ipvs.ServicesChain) {
			t.Errorf("our chain %s is gone: %v", ipvs.ServicesChain, ours)
		}
		must(t, inNS(tp.node, func() error {
			addrs, err := p.kernel.ListAddresses(ipvs.DummyInterface)
			if err == nil && !slices.Contains(addrs, clusterIP) {
				err = fmt.Errorf("%s has %v, not %s", ipvs.DummyInterface, addrs, clusterIP)
			}
			return err
		}))
	}
	logf.Sync()
	out, _ := os.ReadFile(logf.Name())
	if !strings.Contains(string(out), `"Removed leftovers" what="kube-proxy's IPVS-mode objects"`) {
		t.Errorf("svcproxy did not log the removal:\n%s", out)
	}
}
