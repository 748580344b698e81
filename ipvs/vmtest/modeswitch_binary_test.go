//go:build vm

package vmtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
)

// svcproxyBin is put in the VM by hack/vm/run.sh (VM_WITH_SVCPROXY=1).
const svcproxyBin = "/usr/local/bin/svcproxy"

const switchState = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: it}
  spec:
    clusterIP: 10.96.1.10
    ports: [{name: http, port: 80, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: it, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.1.10], conditions: {ready: true}, nodeName: node1}
  - {addresses: [10.244.1.11], conditions: {ready: true}, nodeName: node1}
`

// TestModeSwitchWithTheBinary runs the svcproxy program itself on the node,
// as an operator switching --mode on a live node would: iptables, then
// (process stopped, restarted with --mode=ipvs) IPVS, then iptables again,
// under a stream of new connections to a ClusterIP. Each new process
// installs its mode first and removes the other's after its first sync: no
// connection may fail, and nothing of the previous mode may be left.
func TestModeSwitchWithTheBinary(t *testing.T) {
	if _, err := os.Stat(svcproxyBin); err != nil {
		t.Fatalf("%s: %v (run hack/vm/run.sh with VM_WITH_SVCPROXY=1)", svcproxyBin, err)
	}
	tp := newTopology(t)
	for _, n := range []struct{ name, ip string }{{"srv1", "10.244.1.10"}, {"srv2", "10.244.1.11"}} {
		startServer(t, tp.addPod(t, n.name, n.ip), n.name, 8080)
	}
	cli := tp.addPod(t, "cli", "10.244.1.20")
	p := newProxier(t, tp) // only to look at the kernel
	dir := t.TempDir()
	state := filepath.Join(dir, "state.yaml")
	must(t, os.WriteFile(state, []byte(switchState), 0o644))

	run := 0
	start := func(mode string) *exec.Cmd {
		t.Helper()
		run++
		log, err := os.Create(filepath.Join(dir, mode+"-"+string(rune('0'+run))+".log"))
		must(t, err)
		cmd := exec.Command(svcproxyBin, "--mode="+mode, "--state="+state, "--hostname-override=node1",
			"--cluster-cidr=10.244.0.0/16", "--min-sync-period=100ms", "--healthz-bind-address=", "--metrics-bind-address=", "-v=2")
		cmd.Stdout, cmd.Stderr = log, log
		// Started from a thread inside the node's namespace, the process
		// lives there.
		must(t, inNS(tp.node, cmd.Start))
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				out, _ := os.ReadFile(log.Name())
				t.Logf("svcproxy --mode=%s log:\n%s", mode, out)
			}
		})
		return cmd
	}
	stop := func(cmd *exec.Cmd) {
		t.Helper()
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("svcproxy exited with %v after SIGTERM", err)
		}
	}
	// The VM has ip6tables: each mode programs both families, and a
	// switch must remove the other mode's chains from both.
	var ipt6 iptables.Interface
	must(t, inNS(tp.node, func() error {
		var err error
		ipt6, err = iptables.NewExec6(iptables.DetectVariant())
		return err
	}))
	chains := func() (out []string) {
		must(t, inNS(tp.node, func() error {
			for _, ipt := range []iptables.Interface{p.ipt, ipt6} {
				for _, tbl := range []string{iptables.TableFilter, iptables.TableNAT} {
					cs, err := ipt.ListChains(tbl)
					if err != nil {
						return err
					}
					for _, c := range cs {
						if strings.HasPrefix(c, iptables.ChainPrefix) {
							out = append(out, c)
						}
					}
				}
			}
			return nil
		}))
		return out
	}
	has6 := func(owned func(string) bool) bool {
		var found bool
		must(t, inNS(tp.node, func() error {
			cs, err := ipt6.ListChains(iptables.TableNAT)
			found = slices.ContainsFunc(cs, owned)
			return err
		}))
		return found
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		// Under TCG the binary's first sync and the other mode's removal
		// take 8-15 s each with ip6tables in the VM (both families).
		deadline := time.Now().Add(60 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after 60s; chains %v", what, chains())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	iptablesModeGone := func() bool {
		for _, c := range chains() {
			if iptables.IsOwnedChain(c) {
				return false
			}
		}
		return true
	}
	ipvsModeGone := func() bool {
		for _, c := range chains() {
			if ipvs.IsOwnedChain(c) {
				return false
			}
		}
		return len(p.services()) == 0
	}

	proc := start("iptables")
	waitFor("iptables mode serving", func() bool { _, err := dial(cli, "tcp", "10.96.1.10:80"); return err == nil })

	var (
		mu               sync.Mutex
		attempts, failed int
		firstErr         error
	)
	streamStop, streamDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(streamDone)
		for {
			select {
			case <-streamStop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			_, err := dial(cli, "tcp", "10.96.1.10:80")
			mu.Lock()
			attempts++
			if err != nil {
				failed++
				if firstErr == nil {
					firstErr = err
				}
			}
			mu.Unlock()
		}
	}()
	time.Sleep(300 * time.Millisecond)

	waitFor("iptables mode's IPv6 chains", func() bool { return has6(iptables.IsOwnedChain) })
	stop(proc)
	proc = start("ipvs")
	waitFor("ipvs mode removing iptables mode's chains", iptablesModeGone)
	if !has6(ipvs.IsOwnedChain) {
		t.Errorf("IPVS mode has no IPv6 chain: %v", chains())
	}
	time.Sleep(300 * time.Millisecond)

	stop(proc)
	proc = start("iptables")
	waitFor("iptables mode removing ipvs mode's objects", ipvsModeGone)
	time.Sleep(300 * time.Millisecond)
	close(streamStop)
	<-streamDone
	stop(proc)

	must(t, inNS(tp.node, func() error {
		if _, err := p.kernel.ListAddresses(ipvs.DummyInterface); !ipvs.IsNotFound(err) {
			t.Errorf("back in iptables mode: %s left", ipvs.DummyInterface)
		}
		sets, err := p.kernel.ListSets()
		for _, s := range sets {
			t.Errorf("back in iptables mode: ipset %s left", s.Name)
		}
		return err
	}))
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d connections during iptables -> ipvs -> iptables, %d failed", attempts, failed)
	if attempts < 50 || failed != 0 {
		t.Errorf("%d of %d connections failed (first: %v), want none of at least 50", failed, attempts, firstErr)
	}
}
