//go:build integration

package integration

// nftables mode: the svcproxy binary with --mode nftables (and its
// --dry-run output, and the Syncer itself) programs the real nf_tables
// through the real nft in network namespaces the tests create; real
// connections are checked, over IPv4 and IPv6.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/nftables"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// nftMode are the flags of nftables mode.
var nftMode = []string{"--mode", "nftables"}

// hasTable reports whether our table of family exists in ns.
func hasTable(t *testing.T, ns, family string) bool {
	t.Helper()
	err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", family, nftables.TableName).Run()
	return err == nil
}

// TestNFTablesProxyEndToEnd is TestProxyEndToEnd in nftables mode: the
// binary programs the node through nft, and real TCP and UDP connections
// from pods, the node and an outside client take the paths every mode
// must give them.
func TestNFTablesProxyEndToEnd(t *testing.T) {
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	srv2 := tp.addPod(t, "srv2", "10.244.1.11")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, srv2, "srv2", 8080)

	state := filepath.Join(t.TempDir(), "state.yaml")
	writeState(t, state, stateData{Web: []string{"10.244.1.10", "10.244.1.11"}})
	proxy := startProxyWith(t, tp, state, nil, nftMode...)

	eventually(t, "first sync", 10*time.Second, func() error {
		_, err := dial(cli, "tcp", "10.96.1.10:80", time.Second)
		return err
	})
	if !hasTable(t, tp.node, "ip") {
		t.Fatalf("no table ip %s", nftables.TableName)
	}
	if out := nsRun(t, tp.node, "iptables-save"); strings.Contains(out, "SVCP-") {
		t.Errorf("nftables mode programmed iptables chains:\n%s", out)
	}

	t.Run("ClusterIP TCP from a pod reaches every endpoint, no masquerade", func(t *testing.T) {
		hits, sources, err := servers(cli, "tcp", "10.96.1.10:80", 40)
		if err != nil {
			t.Fatal(err)
		}
		if hits["srv1"] == 0 || hits["srv2"] == 0 {
			t.Errorf("endpoints reached: %v, want both", hits)
		}
		if len(sources) != 1 || !sources["10.244.1.20"] {
			t.Errorf("servers saw sources %v, want only the pod 10.244.1.20", sources)
		}
	})
	t.Run("ClusterIP UDP from a pod reaches every endpoint", func(t *testing.T) {
		hits, _, err := servers(cli, "udp", "10.96.1.10:80", 40)
		if err != nil {
			t.Fatal(err)
		}
		if hits["srv1"] == 0 || hits["srv2"] == 0 {
			t.Errorf("endpoints reached: %v, want both", hits)
		}
	})
	t.Run("the node itself reaches a ClusterIP, masqueraded", func(t *testing.T) {
		a, err := dial(tp.node, "tcp", "10.96.1.10:80", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if a.Source != "10.244.1.1" {
			t.Errorf("server saw %s, want the node's address toward the pod (10.244.1.1)", a.Source)
		}
	})
	t.Run("NodePort from outside is masqueraded (externalTrafficPolicy Cluster)", func(t *testing.T) {
		for _, proto := range []string{"tcp", "udp"} {
			hits, sources, err := servers(tp.client, proto, "192.168.50.1:30080", 30)
			if err != nil {
				t.Fatal(err)
			}
			if hits["srv1"] == 0 || hits["srv2"] == 0 {
				t.Errorf("%s endpoints reached: %v, want both", proto, hits)
			}
			if sources["192.168.50.2"] {
				t.Errorf("%s: servers saw the client address %v; want it masqueraded", proto, sources)
			}
		}
	})
	t.Run("NodePort with externalTrafficPolicy Local keeps the client address, local endpoint only", func(t *testing.T) {
		hits, sources, err := servers(tp.client, "tcp", "192.168.50.1:30081", 20)
		if err != nil {
			t.Fatal(err)
		}
		if hits["srv1"] != 20 {
			t.Errorf("endpoints reached: %v, want only srv1 (the remote endpoint is not local)", hits)
		}
		if len(sources) != 1 || !sources["192.168.50.2"] {
			t.Errorf("servers saw %v, want the client's own address 192.168.50.2", sources)
		}
	})
	t.Run("ETP Local: a pod reaches the NodePort through every endpoint", func(t *testing.T) {
		// The remote endpoint 10.244.2.50 has no route here: a pod's
		// connection goes to the cluster endpoints, so some fail; the
		// local one must be among those reached.
		hits := map[string]int{}
		for i := 0; i < 20; i++ {
			if a, err := dial(cli, "tcp", "192.168.50.1:30081", 300*time.Millisecond); err == nil {
				hits[a.Server]++
			}
		}
		if hits["srv1"] == 0 || hits["srv1"] == 20 {
			t.Errorf("pod to the ETP Local node port: %v, want srv1 only sometimes (the other endpoint is remote and unroutable here)", hits)
		}
	})
	t.Run("session affinity sticks", func(t *testing.T) {
		hits, _, err := servers(cli, "tcp", "10.96.1.12:80", 20)
		if err != nil {
			t.Fatal(err)
		}
		if len(hits) != 1 {
			t.Errorf("ClientIP affinity: reached %v, want one endpoint every time", hits)
		}
		out := nsRun(t, tp.node, "nft", "list", "table", "ip", nftables.TableName)
		if !strings.Contains(out, "10.244.1.20 expires") {
			t.Errorf("no affinity set holds the client 10.244.1.20:\n%s", out)
		}
	})
	t.Run("a service without endpoints is refused at once", func(t *testing.T) {
		for _, target := range []struct{ ns, addr string }{{cli, "10.96.1.13:80"}, {tp.client, "192.168.50.1:30083"}, {tp.node, "10.96.1.13:80"}} {
			start := time.Now()
			_, err := dial(target.ns, "tcp", target.addr, 3*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: got %v, want connection refused", target.addr, err)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("%s: refusal took %v", target.addr, took)
			}
		}
	})
	t.Run("hairpin: a pod reaches itself through its service", func(t *testing.T) {
		hits := map[string]int{}
		for i := 0; i < 20; i++ {
			a, err := dial(srv1, "tcp", "10.96.1.10:80", 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			hits[a.Server]++
			if a.Server == "srv1" && a.Source == "10.244.1.10" {
				t.Errorf("srv1 saw its own address: the hairpin was not masqueraded")
			}
		}
		if hits["srv1"] == 0 {
			t.Errorf("srv1 never reached itself: %v", hits)
		}
	})
	t.Run("partial sync: endpoint removed and service added take effect", func(t *testing.T) {
		full := metricValue(t, tp, "kubeproxy_sync_full_proxy_rules_duration_seconds_count")
		partial := metricValue(t, tp, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count")
		writeState(t, state, stateData{Web: []string{"10.244.1.11"}, Extra: true})
		eventually(t, "new service", 5*time.Second, func() error {
			_, err := dial(cli, "tcp", "10.96.1.15:8000", time.Second)
			return err
		})
		eventually(t, "endpoint removal", 5*time.Second, func() error {
			hits, _, err := servers(cli, "tcp", "10.96.1.10:80", 20)
			if err != nil {
				return err
			}
			if hits["srv1"] != 0 {
				return fmt.Errorf("srv1 still reached: %v", hits)
			}
			return nil
		})
		// Connections follow the ip table's transaction as soon as nft
		// commits it; the sync is counted only once Sync returned (nft
		// exited, the ip6 table's transaction done when that changed
		// too): wait for the count rather than read it at once.
		eventually(t, "the partial sync counted", 5*time.Second, func() error {
			if p := metricValue(t, tp, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count"); p <= partial {
				return fmt.Errorf("partial syncs: %v, then %v", partial, p)
			}
			return nil
		})
		if f := metricValue(t, tp, "kubeproxy_sync_full_proxy_rules_duration_seconds_count"); f != full {
			t.Errorf("full syncs went from %v to %v: the change was not applied by a partial sync", full, f)
		}
		if a, err := dial(srv1, "tcp", "10.96.1.10:80", time.Second); err != nil || a.Server != "srv2" {
			t.Errorf("after srv1 left web: %v %v, want srv2", a, err)
		}
	})
	t.Run("a flushed table is repaired", func(t *testing.T) {
		detected := metricValue(t, tp, "svcproxy_drift_detected_total")
		for _, damage := range [][]string{
			{"nft", "flush", "table", "ip", nftables.TableName},
			{"nft", "delete", "table", "ip", nftables.TableName},
			{"nft", "flush", "chain", "ip", nftables.TableName, "services"},
		} {
			nsRun(t, tp.node, damage...)
			start := time.Now()
			if _, err := dial(cli, "tcp", "10.96.1.10:80", 300*time.Millisecond); err == nil {
				t.Errorf("after %v: the ClusterIP still answers", damage)
			}
			took := timeToWork(t, cli, "tcp", "10.96.1.10:80", 5*time.Second)
			t.Logf("%v: repaired %v after the damage (%v after the check)", damage[1:], time.Since(start).Round(10*time.Millisecond), took.Round(10*time.Millisecond))
		}
		if d := metricValue(t, tp, "svcproxy_drift_detected_total"); d < detected+3 {
			t.Errorf("svcproxy_drift_detected_total %v, then %v: want 3 more", detected, d)
		}
	})
	t.Run("SIGTERM leaves the rules in place", func(t *testing.T) {
		proxy.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- proxy.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("svcproxy exited with %v after SIGTERM", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("svcproxy did not stop on SIGTERM")
		}
		if _, _, err := servers(cli, "tcp", "10.96.1.10:80", 10); err != nil {
			t.Errorf("after svcproxy stopped: %v", err)
		}
	})
	t.Run("--cleanup removes our tables and nothing else", func(t *testing.T) {
		nsRun(t, tp.node, "nft", "add", "table", "ip", "other")
		nsRun(t, tp.node, "nft", "add", "chain", "ip", "other", "c", "{ type filter hook input priority 0 ; }")
		nsRun(t, tp.node, svcproxyBin, "--cleanup")
		if hasTable(t, tp.node, "ip") || hasTable(t, tp.node, "ip6") {
			t.Errorf("svcproxy --cleanup left a table:\n%s", nsRun(t, tp.node, "nft", "list", "ruleset"))
		}
		if !strings.Contains(nsRun(t, tp.node, "nft", "list", "ruleset"), "table ip other") {
			t.Errorf("svcproxy --cleanup removed another table")
		}
		if _, err := dial(cli, "tcp", "10.96.1.10:80", time.Second); err == nil {
			t.Errorf("the ClusterIP still answers after --cleanup")
		}
	})
}

// TestNFTablesConntrackStaleUDPFlows: in nftables mode too, a long-lived
// UDP socket whose endpoint is removed moves to the new one (the daemon's
// conntrack cleanup, judged against the nftables rules).
func TestNFTablesConntrackStaleUDPFlows(t *testing.T) {
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	srv2 := tp.addPod(t, "srv2", "10.244.1.11")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, srv2, "srv2", 8080)

	state := filepath.Join(t.TempDir(), "state.yaml")
	write := func(ep string) {
		if err := os.WriteFile(state+".tmp", []byte(fmt.Sprintf(udpState, ep)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(state+".tmp", state); err != nil {
			t.Fatal(err)
		}
	}
	write("10.244.1.10")
	startProxyWith(t, tp, state, nil, nftMode...)

	var c net.Conn
	eventually(t, "first sync", 10*time.Second, func() error {
		return inNS(cli, func() error {
			var err error
			c, err = net.Dial("udp4", "10.96.1.53:53")
			return err
		})
	})
	defer c.Close()
	eventually(t, "srv1 answers on the long-lived socket", 10*time.Second, func() error {
		got, err := ask(c)
		if err == nil && got != "srv1" {
			err = fmt.Errorf("answered by %s", got)
		}
		return err
	})
	write("10.244.1.11")
	eventually(t, "new sockets reach srv2", 5*time.Second, func() error {
		a, err := dial(cli, "udp", "10.96.1.53:53", time.Second)
		if err == nil && a.Server != "srv2" {
			err = fmt.Errorf("answered by %s", a.Server)
		}
		return err
	})
	eventually(t, "the long-lived socket moves to srv2", 2*time.Second, func() error {
		got, err := ask(c)
		if err == nil && got != "srv2" {
			err = fmt.Errorf("still answered by %s", got)
		}
		return err
	})
}

// TestNFTablesDryRunProgramsANamespace feeds the --dry-run --mode nftables
// output of the kubectl-shaped file full of odd cases (see
// TestDryRunOutputProgramsANamespace) to nft -f in an empty namespace, and
// checks real connections.
func TestNFTablesDryRunProgramsANamespace(t *testing.T) {
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	srv2 := tp.addPod(t, "srv2", "10.244.1.11")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, srv2, "srv2", 8080)

	dump, err := exec.Command(svcproxyBin, "--dry-run", "--mode", "nftables", "--state", "testdata/kubectl-odd.json",
		"--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16").Output()
	if err != nil {
		t.Fatalf("svcproxy --dry-run --mode nftables: %v", err)
	}
	v4, v6, ok := strings.Cut(string(dump), "add table ip6 "+nftables.TableName)
	if !ok || !strings.HasPrefix(v4, "add table ip "+nftables.TableName) {
		t.Fatalf("the dump has no ip and ip6 tables:\n%s", dump)
	}
	for _, absent := range []string{"10.96.5.14", "198.18.0.77", "fd00", "10.244.1.99"} {
		if strings.Contains(v4, absent) {
			t.Errorf("the ip table programs %s, which must be skipped", absent)
		}
	}
	if !strings.Contains(v6, "fd00:10:96::5a") || strings.Contains(v6, "10.96.5.10") {
		t.Errorf("the ip6 table does not program the dual-stack Service's IPv6 ClusterIP alone:\n%s", v6)
	}
	nft := exec.Command("ip", "netns", "exec", tp.node, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(string(dump))
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft -f of the dump: %v\n%s", err, out)
	}

	hits, _, err := servers(cli, "tcp", "10.96.5.10:80", 30)
	if err != nil || hits["srv1"] == 0 || hits["srv2"] == 0 {
		t.Errorf("dual-stack service's IPv4 ClusterIP: %v %v, want both endpoints", hits, err)
	}
	hits, _, err = servers(tp.client, "tcp", "192.168.50.1:31500", 15)
	if err != nil || len(hits) != 1 {
		t.Errorf("affinity NodePort from outside: %v %v, want one endpoint every time", hits, err)
	}
	hits, _, err = servers(cli, "tcp", "10.96.5.16:80", 10)
	if err != nil || hits["srv2"] != 10 {
		t.Errorf("only serving-terminating endpoints: %v %v, want srv2 every time", hits, err)
	}
	for _, addr := range []string{"10.96.5.12:9000", "10.96.5.13:443"} {
		if _, err := dial(cli, "tcp", addr, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s (no usable endpoints): got %v, want connection refused", addr, err)
		}
	}
}

// TestNFTablesDualStack runs the binary in nftables mode on
// examples/dual-stack.yaml: every check of the dual-stack example over
// both families (masquerade, client address kept, REJECT, affinity,
// source ranges per family, hairpin), then a partial sync of IPv6
// endpoints with the conntrack cleanup of IPv6 UDP flows, drift repair of
// the ip6 table, and --cleanup of both tables.
func TestNFTablesDualStack(t *testing.T) {
	tp := newDualStackTopology(t)
	srv1, _, cli := tp.dsPods(t)
	state := filepath.Join(t.TempDir(), "state.yaml")
	dualStackState(t, state, nil)
	proxy := startDualStackProxy(t, tp, state, nftMode...)
	eventually(t, "first sync, both families", 10*time.Second, func() error {
		if _, err := dialNet(cli, "tcp4", "10.96.10.10:80", time.Second); err != nil {
			return err
		}
		_, err := dialNet(cli, "tcp6", "[fd00:10:96::a]:80", time.Second)
		return err
	})
	if !hasTable(t, tp.node, "ip") || !hasTable(t, tp.node, "ip6") {
		t.Fatalf("want tables ip and ip6 %s:\n%s", nftables.TableName, nsRun(t, tp.node, "nft", "list", "tables"))
	}

	checkDualStackExample(t, tp, srv1, cli)

	t.Run("health-check node port of the ETP Local LoadBalancer answers on each family", func(t *testing.T) {
		for _, f := range families {
			code, body, err := httpGet(tp.client, "http://"+hp(f.node, 30082)+"/")
			if err != nil || code != 200 || !strings.Contains(body, `"localEndpoints": 1`) {
				t.Errorf("%s: GET http://%s/: %d %q %v, want 200 with one local endpoint", f.name, hp(f.node, 30082), code, body, err)
			}
		}
	})

	t.Run("partial sync of IPv6 endpoints; conntrack cleanup of an IPv6 UDP flow; IPv4 untouched", func(t *testing.T) {
		long6 := pinnedUDP(t, cli, "udp6", "[fd00:10:96::a]:80", "srv1")
		longNP := pinnedUDP(t, tp.client, "udp6", "[2001:db8:50::1]:30080", "srv1")
		long4 := pinnedUDP(t, cli, "udp4", "10.96.10.10:80", "srv1")
		full := metricValue(t, tp.topology, "kubeproxy_sync_full_proxy_rules_duration_seconds_count")

		dualStackState(t, state, map[string][]string{"web": {"srv1"}, "np": {"srv1"}})
		eventually(t, "new IPv6 connections reach srv2 only", 5*time.Second, func() error {
			for _, network := range []string{"tcp6", "udp6"} {
				hits, _, err := serversNet(cli, network, "[fd00:10:96::a]:80", 20)
				if err != nil {
					return err
				}
				if hits["srv1"] != 0 {
					return fmt.Errorf("%s: srv1 still reached: %v", network, hits)
				}
			}
			return nil
		})
		for name, c := range map[string]net.Conn{"to the ClusterIP": long6, "from outside to the node port": longNP} {
			eventually(t, "the long-lived IPv6 socket "+name+" moves to srv2", 2*time.Second, func() error {
				got, err := ask(c)
				if err == nil && got != "srv2" {
					err = fmt.Errorf("still answered by %s", got)
				}
				return err
			})
		}
		if got, err := ask(long4); err != nil || got != "srv1" {
			t.Errorf("the long-lived IPv4 socket: %q %v, want srv1 still (its endpoint stays)", got, err)
		}
		if f := metricValue(t, tp.topology, "kubeproxy_sync_full_proxy_rules_duration_seconds_count"); f != full {
			t.Errorf("full syncs went from %v to %v: the change was not applied by a partial sync", full, f)
		}
	})

	t.Run("ip6 drift is repaired: a flushed or deleted table", func(t *testing.T) {
		for _, damage := range []string{"flush", "delete"} {
			nsRun(t, tp.node, "nft", damage, "table", "ip6", nftables.TableName)
			start := time.Now()
			if _, err := dialNet(cli, "tcp6", "[fd00:10:96::14]:80", 300*time.Millisecond); err == nil {
				t.Errorf("after %s: the IPv6 ClusterIP still answers", damage)
			}
			eventually(t, "repair", 8*time.Second, func() error {
				_, err := dialNet(cli, "tcp6", "[fd00:10:96::14]:80", 300*time.Millisecond)
				return err
			})
			t.Logf("%s table ip6: repaired after %v", damage, time.Since(start).Round(10*time.Millisecond))
			if _, _, err := serversNet(cli, "tcp4", "10.96.10.10:80", 5); err != nil {
				t.Errorf("IPv4 after IPv6 damage: %v", err)
			}
		}
	})

	t.Run("--cleanup removes both tables", func(t *testing.T) {
		proxy.Process.Signal(syscall.SIGTERM)
		proxy.Wait()
		nsRun(t, tp.node, svcproxyBin, "--cleanup")
		if hasTable(t, tp.node, "ip") || hasTable(t, tp.node, "ip6") {
			t.Errorf("after --cleanup:\n%s", nsRun(t, tp.node, "nft", "list", "ruleset"))
		}
	})
}

// TestNFTablesDualStackDryRunProgramsANamespace feeds the --dry-run --mode
// nftables output of examples/dual-stack.yaml (both tables in one input)
// to nft -f in an empty node namespace, and runs every check of the
// example over both families.
func TestNFTablesDualStackDryRunProgramsANamespace(t *testing.T) {
	tp := newDualStackTopology(t)
	srv1, _, cli := tp.dsPods(t)
	out, err := exec.Command(svcproxyBin, "--dry-run", "--mode", "nftables", "--state", dualStackExample,
		"--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs).Output()
	if err != nil {
		t.Fatalf("svcproxy --dry-run: %v", err)
	}
	nft := exec.Command("ip", "netns", "exec", tp.node, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(string(out))
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s", err, out)
	}
	checkDualStackExample(t, tp, srv1, cli)
}

// TestNFTablesModeSwitch: nftables mode removes iptables mode's chains
// after its first sync, and iptables mode removes nftables mode's tables;
// the service answers in each mode.
func TestNFTablesModeSwitch(t *testing.T) {
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	state := filepath.Join(t.TempDir(), "state.yaml")
	writeState(t, state, stateData{Web: []string{"10.244.1.10"}})

	stop := func(cmd *exec.Cmd) {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	ipt := startProxyWith(t, tp, state, nil)
	eventually(t, "iptables mode", 10*time.Second, func() error {
		_, err := dial(cli, "tcp", "10.96.1.10:80", time.Second)
		return err
	})
	stop(ipt)

	nft := startProxyWith(t, tp, state, nil, nftMode...)
	eventually(t, "nftables mode in, iptables mode's chains gone", 10*time.Second, func() error {
		if !hasTable(t, tp.node, "ip") {
			return errors.New("no nftables table yet")
		}
		if out := nsRun(t, tp.node, "iptables-save"); strings.Contains(out, "SVCP-") {
			return errors.New("iptables mode's chains are still there")
		}
		_, err := dial(cli, "tcp", "10.96.1.10:80", time.Second)
		return err
	})
	stop(nft)

	ipt = startProxyWith(t, tp, state, nil)
	eventually(t, "iptables mode again, nftables mode's tables gone", 10*time.Second, func() error {
		if hasTable(t, tp.node, "ip") || hasTable(t, tp.node, "ip6") {
			return errors.New("nftables mode's tables are still there")
		}
		if !strings.Contains(nsRun(t, tp.node, "iptables-save", "-t", "nat"), "SVCP-SERVICES") {
			return errors.New("no iptables rules yet")
		}
		_, err := dial(cli, "tcp", "10.96.1.10:80", time.Second)
		return err
	})
	stop(ipt)
}

// TestNFTablesGoldenFilesTakenByRealNFT: every golden file of nftables
// mode (the shared scenarios and the example), which the unit tests run
// on knftables' Fake, is taken by the real nft in an empty namespace.
func TestNFTablesGoldenFilesTakenByRealNFT(t *testing.T) {
	files, err := filepath.Glob("../../testdata/scenarios/*.nftables.golden")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	files = append(files, "../../nftables/testdata/example.golden")
	prefix := fmt.Sprintf("svcpn%d", os.Getpid())
	for i, f := range files {
		ns := addNS(t, fmt.Sprintf("%s-g%d", prefix, i))
		if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-f", f).CombinedOutput(); err != nil {
			t.Errorf("nft -f %s: %v\n%s", f, err, out)
		}
	}
}

// nftState returns the table of family in ns in a canonical form: objects
// sorted by kind and name, rules in chain order, set elements sorted, no
// handles. Two tables with the same content give the same text whatever
// order their objects were created in.
func nftState(t *testing.T, ns, family string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-j", "list", "table", family, nftables.TableName).Output()
	if err != nil {
		t.Fatalf("nft list table: %v", err)
	}
	var doc struct {
		Nftables []map[string]map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	var lines []string
	ruleIndex := map[string]int{}
	for _, o := range doc.Nftables {
		for kind, v := range o {
			if kind == "metainfo" {
				continue
			}
			delete(v, "handle")
			prefix := kind + " " + fmt.Sprint(v["name"])
			if kind == "rule" {
				chain := fmt.Sprint(v["chain"])
				prefix = fmt.Sprintf("rule %s #%03d", chain, ruleIndex[chain])
				ruleIndex[chain]++
			}
			if elems, ok := v["elem"].([]any); ok {
				var es []string
				for _, e := range elems {
					b, _ := json.Marshal(e)
					es = append(es, string(b))
				}
				slices.Sort(es)
				v["elem"] = es
			}
			b, _ := json.Marshal(v)
			lines = append(lines, prefix+" "+string(b))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestNFTablesRealSyncerRandomClusters drives the real Syncer (knftables
// over the real nft, the netlink Lister) with random clusters (odd ports,
// many endpoints, weird names, conflicts): a restarted svcproxy's full
// sync over the leftovers of the previous round, then a partial sync to
// another random cluster; once the stale chains had their delay, the
// kernel must hold exactly what nft -f of that cluster's --dry-run output
// gives in an empty namespace.
func TestNFTablesRealSyncerRandomClusters(t *testing.T) {
	tp := newTopology(t)
	ref := addNS(t, tp.prefix+"-ref")
	opts := nftables.DefaultOptions()
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	for i := 0; i < 30; i++ {
		a, b := pt.RandomSnapshot(seedBytes(i)), pt.RandomSnapshot(seedBytes(i+1000))
		var res nftables.SyncResult
		err := inNS(tp.node, func() error {
			nft, err := nftables.New(knftables.IPv4Family)
			if err != nil {
				return err
			}
			s := nftables.NewSyncer(nft, nftables.NewNetlinkLister(knftables.IPv4Family, nftables.TableName))
			// The stale chains' delay passes on a clock of the test's: the
			// real kernel then deletes them at once.
			now := time.Now()
			s.SetClock(func() time.Time { return now })
			r := nftables.NewRenderer(opts)
			if _, err := s.Sync(context.Background(), r.Render(a), true); err != nil {
				return fmt.Errorf("full sync: %w", err)
			}
			if res, err = s.Sync(context.Background(), r.Render(b), false); err != nil {
				return fmt.Errorf("partial sync: %w", err)
			}
			now = now.Add(nftables.StaleChainDelay)
			if _, err = s.Sync(context.Background(), r.Render(b), false); err != nil {
				return fmt.Errorf("stale chains: %w", err)
			}
			if why, err := s.CheckDrift(context.Background()); why != "" || err != nil {
				return fmt.Errorf("drift right after a sync: %q %v", why, err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		exec.Command("ip", "netns", "exec", ref, "nft", "delete", "table", "ip", nftables.TableName).Run()
		dump, err := nftables.DryRun(context.Background(), nftables.Render(b, opts))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("ip", "netns", "exec", ref, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(dump)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("round %d: nft -f of the --dry-run output: %v\n%s", i, err, out)
		}
		if d := cmp.Diff(nftState(t, ref, "ip"), nftState(t, tp.node, "ip")); d != "" {
			t.Fatalf("round %d: after a partial sync (%+v) the kernel holds another table than a fresh nft -f (-fresh +synced):\n%s", i, res, d)
		}
	}
}
