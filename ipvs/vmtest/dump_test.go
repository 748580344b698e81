//go:build vm

package vmtest

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// sections splits a Dump at its three section comments.
func sections(t testing.TB, dump string) (ipset, ipvsadm, ipt string) {
	t.Helper()
	var parts []string
	var cur strings.Builder
	for _, l := range strings.SplitAfter(dump, "\n") {
		if strings.HasPrefix(l, "# ipset save") || strings.HasPrefix(l, "# ipvsadm -Sn") || strings.HasPrefix(l, "# iptables-save") {
			if cur.Len() > 0 {
				parts = append(parts, cur.String())
			}
			cur.Reset()
		}
		cur.WriteString(l)
	}
	parts = append(parts, cur.String())
	if len(parts) != 3 {
		t.Fatalf("dump has %d sections, want 3:\n%s", len(parts), dump)
	}
	return parts[0], parts[1], parts[2]
}

// feed runs a command with stdin inside ns.
func feed(t testing.TB, ns nsHandle, input string, name string, args ...string) {
	t.Helper()
	must(t, inNS(ns, func() error {
		cmd := exec.Command(name, args...)
		cmd.Stdin = strings.NewReader(input)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %v: %w\n%s\ninput:\n%s", name, args, err, out.String(), input)
		}
		return nil
	}))
}

func dropComments(s string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			b.WriteString(l)
		}
	}
	return b.String()
}

// TestDumpRestores: each section of the --dry-run dump (comment lines
// included, except for ipvsadm) is accepted by the real ipset restore,
// ipvsadm -R and iptables-restore --noflush; what they program is what the
// Applier would (a full sync then only binds the addresses), so the dump's
// formats are the kernel's.
func TestDumpRestores(t *testing.T) {
	t.Run("odd cases", testDumpRestoresOdd)
	t.Run("500 services", func(t *testing.T) {
		svcs, slices := pt.Generate(500, 3)
		var objs []any
		for _, s := range svcs {
			objs = append(objs, s)
		}
		for _, s := range slices {
			objs = append(objs, s)
		}
		testDumpRestores(t, objs)
	})
}

func testDumpRestoresOdd(t *testing.T) {
	lb := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 31080
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24", "192.168.50.2/32", "0.0.0.0/0"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.10"}}
		s.Spec.ExternalIPs = []string{"192.0.2.50"}
	}
	objs := []any{
		pt.Service("it", "web", "10.96.1.10", "http", 80, nodePort(30080, false), clientIPAffinity(600)),
		pt.Slice("it", "web", "web-1", "http", 8080, pt.Ready("10.244.1.10", "node1"), pt.Ready("10.244.2.10", "node2")),
		pt.Service("it", "front", "10.96.1.20", "http", 80, lb),
		pt.Slice("it", "front", "front-1", "http", 8080, pt.Ready("10.244.1.30", "node1")),
		pt.Service("it", "empty", "10.96.1.13", "http", 80),
		pt.Service("it", "dns", "10.96.1.53", "dns", 53, udp),
	}
	testDumpRestores(t, objs)
}

func testDumpRestores(t *testing.T, objs []any) {
	tp := newTopology(t)
	p := newProxier(t, tp)
	plan := ipvs.Render(snapshot(t, objs...), p.opts)
	setsText, ipvsText, iptText := sections(t, plan.Dump())
	feed(t, tp.node, setsText, "ipset", "restore", "-exist")
	// ipvsadm -R has no comment syntax (a "#" becomes an argument): the
	// section's comment line goes, as the dump's header says.
	feed(t, tp.node, dropComments(ipvsText), "ipvsadm", "-R")
	var variant iptables.Variant
	must(t, inNS(tp.node, func() error { variant = iptables.DetectVariant(); return nil }))
	feed(t, tp.node, iptText, "iptables-"+string(variant)+"-restore", "--noflush")

	var st *ipvs.State
	must(t, inNS(tp.node, func() error {
		var err error
		st, err = ipvs.ListState(p.kernel, plan, p.opts)
		return err
	}))
	want := []string{"ip link add svcproxy-ipvs0 type dummy"}
	for _, a := range plan.Addresses {
		want = append(want, "ip addr add "+a.String()+"/32 dev svcproxy-ipvs0")
	}
	if d := cmp.Diff(want, ipvs.Diff(plan, st).Strings()); d != "" {
		t.Errorf("after restoring the dump, a sync would do more than bind addresses (-want +got):\n%s", d)
	}

	// The Applier agrees, and a second full sync changes nothing.
	res := p.sync(true, objs...)
	if res.Added != len(want) || res.Removed != 0 {
		t.Errorf("first sync: %+v, want %d additions and no removal", res, len(want))
	}
	res = p.sync(true, objs...)
	if res.Added != 0 || res.Removed != 0 || res.IPTables.ChainsWritten != 4 {
		t.Errorf("second full sync: %+v, want nothing changed (4 chains rewritten)", res)
	}
	// So does a restarted svcproxy: a new Kernel and Applier.
	restarted := newProxier(t, tp)
	if res := restarted.sync(false, objs...); res.Added != 0 || res.Removed != 0 {
		t.Errorf("first sync after a restart: %+v, want nothing changed", res)
	}
}
