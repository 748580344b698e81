//go:build vm

package vmtest

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
)

// kubeProxyIPVSRules6 is kubeProxyIPVSRules for ip6tables: kube-proxy's
// IPv6 ipsets are named KUBE-6-….
const kubeProxyIPVSRules6 = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m set --match-set KUBE-6-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-SERVICES ! -s fd00:10:244::/56 -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
*filter
:KUBE-IPVS-FILTER - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A KUBE-IPVS-FILTER -m set --match-set KUBE-6-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-6-IPVS-IPS dst -j REJECT
COMMIT
`

// TestTakeOverFromKubeProxyIPVSDualStack: the svcproxy binary in IPVS mode
// takes a dual-stack node over from upstream kube-proxy's IPVS mode (its
// kube-ipvs0 with both cluster IPs, its virtual servers of both families
// to a pod the state no longer has, its inet and inet6 ipsets, and its
// iptables and ip6tables chains) under a stream of new IPv4 and IPv6
// connections: none fails (make before break, per family), the cluster IPs
// end up served by the state's endpoints only, and nothing of kube-proxy is
// left in either family.
func TestTakeOverFromKubeProxyIPVSDualStack(t *testing.T) {
	if _, err := os.Stat(svcproxyBin); err != nil {
		t.Fatalf("%s: %v (run hack/vm/run.sh with VM_WITH_SVCPROXY=1)", svcproxyBin, err)
	}
	tp := newDualStackTopology(t)
	for _, n := range []struct{ name, ip4, ip6 string }{
		{"srv1", "10.244.1.10", srv1IP6}, {"srv2", "10.244.1.11", srv2IP6}, {"kp", "10.244.1.30", "fd00:10:244:1::30"},
	} {
		pod := tp.addPod(t, n.name, n.ip4, n.ip6)
		startServer(t, pod, n.name, 8080)
		startServer6(t, pod, n.name, 8080)
	}
	cli := tp.addPod(t, "cli", "10.244.1.20", cliIP6)
	p := newProxier6(t, tp) // only to act on the kernel
	vips := []netip.Addr{netip.MustParseAddr("10.96.1.10"), netip.MustParseAddr("fd00:10:96::10")}
	kps := []netip.Addr{netip.MustParseAddr("10.244.1.30"), netip.MustParseAddr("fd00:10:244:1::30")}
	var ipt6 iptables.Interface
	must(t, inNS(tp.node, func() error {
		var err error
		ipt6, err = iptables.NewExec6(iptables.DetectVariant())
		return err
	}))

	// kube-proxy's leftovers, both families.
	must(t, inNS(tp.node, func() error {
		k := p.kernel
		if err := k.EnsureDummy(ipvs.KubeProxyDummyInterface); err != nil {
			return err
		}
		for i, vip := range vips {
			if err := k.AddAddress(ipvs.KubeProxyDummyInterface, vip); err != nil {
				return err
			}
			key := ipvs.ServiceKey{Address: vip, Protocol: v1.ProtocolTCP, Port: 80}
			if err := k.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"}); err != nil {
				return err
			}
			if err := k.AddDestination(key, &ipvs.RealServer{Address: kps[i], Port: 8080, Weight: 1}); err != nil {
				return err
			}
		}
		if err := k.SetSysctl("net/ipv4/vs/conntrack", "1"); err != nil {
			return err
		}
		if err := k.RestoreSets([]byte("create KUBE-CLUSTER-IP hash:ip,port\nadd KUBE-CLUSTER-IP 10.96.1.10,tcp:80\n" +
			"create KUBE-LOOP-BACK hash:ip,port,ip\nadd KUBE-LOOP-BACK 10.244.1.30,tcp:8080,10.244.1.30\n" +
			"create KUBE-IPVS-IPS hash:ip\nadd KUBE-IPVS-IPS 10.96.1.10\n" +
			"create KUBE-6-CLUSTER-IP hash:ip,port family inet6\nadd KUBE-6-CLUSTER-IP fd00:10:96::10,tcp:80\n" +
			"create KUBE-6-LOOP-BACK hash:ip,port,ip family inet6\nadd KUBE-6-LOOP-BACK fd00:10:244:1::30,tcp:8080,fd00:10:244:1::30\n" +
			"create KUBE-6-IPVS-IPS hash:ip family inet6\nadd KUBE-6-IPVS-IPS fd00:10:96::10\n")); err != nil {
			return err
		}
		if err := p.ipt.Restore([]byte(kubeProxyIPVSRules)); err != nil {
			return err
		}
		return ipt6.Restore([]byte(kubeProxyIPVSRules6))
	}))
	waitLocal(t, handle(t, tp.node), "fd00:10:96::10")
	targets := []string{addr("10.96.1.10", 80), addr("fd00:10:96::10", 80)}
	for _, target := range targets {
		if a, err := dial(cli, "tcp", target); err != nil || a.Server != "kp" {
			t.Fatalf("kube-proxy's leftovers do not serve %s: %+v, %v", target, a, err)
		}
	}

	// A stream of new connections to both cluster IPs from now on.
	var stop atomic.Bool
	var mu sync.Mutex
	var total int
	var failures []string
	var wg sync.WaitGroup
	for _, target := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				_, err := dial(cli, "tcp", target)
				mu.Lock()
				total++
				if err != nil {
					failures = append(failures, target+": "+err.Error())
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}

	dir := t.TempDir()
	state := filepath.Join(dir, "state.yaml")
	must(t, os.WriteFile(state, []byte(explainState), 0o644))
	logf, err := os.Create(filepath.Join(dir, "svcproxy.log"))
	must(t, err)
	cmd := exec.Command(svcproxyBin, "--mode=ipvs", "--state="+state, "--hostname-override=node1",
		"--cluster-cidr=10.244.0.0/16,"+clusterCIDR6, "--min-sync-period=100ms", "--healthz-bind-address=", "--metrics-bind-address=", "-v=2")
	cmd.Stdout, cmd.Stderr = logf, logf
	must(t, inNS(tp.node, cmd.Start))
	t.Cleanup(func() {
		stop.Store(true)
		wg.Wait()
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("svcproxy --mode=ipvs log:\n%s", out)
		}
	})

	// kube-proxy's objects, as "what" strings; none once svcproxy is done.
	kubeLeft := func() (left []string) {
		t.Helper()
		must(t, inNS(tp.node, func() error {
			if _, err := p.kernel.ListAddresses(ipvs.KubeProxyDummyInterface); err == nil {
				left = append(left, "link "+ipvs.KubeProxyDummyInterface)
			}
			svcs, err := p.kernel.ListServices()
			if err != nil {
				return err
			}
			for _, vs := range svcs {
				if slices.ContainsFunc(vs.Destinations, func(rs *ipvs.RealServer) bool { return slices.Contains(kps, rs.Address) }) {
					left = append(left, "kube-proxy's real server in "+vs.ServiceKey.String())
				}
			}
			sets, err := p.kernel.ListSets()
			if err != nil {
				return err
			}
			for _, s := range sets {
				if strings.HasPrefix(s.Name, "KUBE-") {
					left = append(left, "ipset "+s.Name)
				}
			}
			for fam, ipt := range map[string]iptables.Interface{"IPv4": p.ipt, "IPv6": ipt6} {
				for _, tbl := range []string{iptables.TableFilter, iptables.TableNAT} {
					cs, err := ipt.ListChains(tbl)
					if err != nil {
						return err
					}
					for _, c := range cs {
						if strings.HasPrefix(c, "KUBE-") {
							left = append(left, fam+" chain "+tbl+"/"+c)
						}
					}
				}
			}
			return nil
		}))
		return left
	}
	// Under TCG the first sync of both families and the removal take
	// 10-25 s each on a busy host: a generous bound, not a figure.
	deadline := time.Now().Add(120 * time.Second)
	for left := kubeLeft(); len(left) > 0; left = kubeLeft() {
		if time.Now().After(deadline) {
			t.Fatalf("kube-proxy's leftovers still there after 120s: %v", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second) // the stream goes on a little after the takeover
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	t.Logf("%d connections during the takeover, %d failed", total, len(failures))
	if len(failures) > 0 {
		t.Errorf("%d of %d connections failed during the takeover, e.g. %v", len(failures), total, failures[:min(5, len(failures))])
	}
	mu.Unlock()

	// Both cluster IPs are served by the state's endpoints only.
	for _, target := range targets {
		seen := map[string]int{}
		for i := 0; i < 12; i++ {
			a, err := dial(cli, "tcp", target)
			if err != nil {
				t.Fatalf("connection %d to %s: %v", i, target, err)
			}
			seen[a.Server]++
		}
		if seen["kp"] != 0 || seen["srv1"] == 0 || seen["srv2"] == 0 {
			t.Errorf("answers from %s by server: %v, want srv1 and srv2 only", target, seen)
		}
	}
	// Ours stay, in both families.
	must(t, inNS(tp.node, func() error {
		addrs, err := p.kernel.ListAddresses(ipvs.DummyInterface)
		if err != nil {
			return err
		}
		for _, vip := range vips {
			if !slices.Contains(addrs, vip) {
				t.Errorf("%s lacks %s: %v", ipvs.DummyInterface, vip, addrs)
			}
		}
		for _, ipt := range []iptables.Interface{p.ipt, ipt6} {
			cs, err := ipt.ListChains(iptables.TableNAT)
			if err != nil {
				return err
			}
			if !slices.Contains(cs, ipvs.ServicesChain) {
				t.Errorf("our chain %s is gone: %v", ipvs.ServicesChain, cs)
			}
		}
		return nil
	}))
}
