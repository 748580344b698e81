package ipvs_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/ipvs"
	ipvstest "github.com/svcproxy/svcproxy/ipvs/testing"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// A chain of IPVS mode that this version no longer renders (left by an
// older version) goes at the next sync; iptables mode's chains stay.
func TestBackendDeletesStaleIPVSChainsOnly(t *testing.T) {
	k, ipt := ipvstest.NewFake(), iptablestest.NewFake()
	if err := ipt.UseSets(k); err != nil {
		t.Fatal(err)
	}
	if err := ipt.Restore([]byte("*nat\n:SVCP-IPVS-OLD - [0:0]\n:" + iptables.ServicesChain + " - [0:0]\n-A SVCP-IPVS-OLD -j RETURN\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	be := ipvs.NewBackend(k, ipt, options())
	snap := snapshot(t, pt.Service("ns", "web", "10.96.0.20", "http", 80), pt.Slice("ns", "web", "web-1", "http", 80, pt.Ready("10.244.1.5", "node2")))
	for _, full := range []bool{true, false} {
		res, err := be.Sync(context.Background(), snap, full)
		if err != nil {
			t.Fatal(err)
		}
		if res.Chains == 0 || res.Rules["nat"] == 0 {
			t.Errorf("result counts no chain or rule: %+v", res)
		}
	}
	chains, err := ipt.ListChains(iptables.TableNAT)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(chains, "SVCP-IPVS-OLD") {
		t.Errorf("stale SVCP-IPVS-OLD survived the sync: %v", chains)
	}
	if !slices.Contains(chains, iptables.ServicesChain) {
		t.Errorf("iptables mode's %s was deleted by IPVS mode: %v", iptables.ServicesChain, chains)
	}
}

func TestBackendCheckDrift(t *testing.T) {
	k, ipt := ipvstest.NewFake(), iptablestest.NewFake()
	if err := ipt.UseSets(k); err != nil {
		t.Fatal(err)
	}
	be := ipvs.NewBackend(k, ipt, options())
	ctx := context.Background()
	snap := snapshot(t, pt.Service("ns", "web", "10.96.0.20", "http", 80), pt.Slice("ns", "web", "web-1", "http", 80, pt.Ready("10.244.1.5", "node2")))
	if _, err := be.Sync(ctx, snap, true); err != nil {
		t.Fatal(err)
	}
	if why, err := be.CheckDrift(ctx); why != "" || err != nil {
		t.Fatalf("after a sync: %q, %v; want no drift", why, err)
	}
	if err := k.DeleteLink(ipvs.DummyInterface); err != nil {
		t.Fatal(err)
	}
	if why, err := be.CheckDrift(ctx); err != nil || why != "link svcproxy-ipvs0 is missing" {
		t.Fatalf("after the link went: %q, %v; want it missing", why, err)
	}
	if _, err := be.Sync(ctx, snap, true); err != nil {
		t.Fatal(err)
	}
	if why, err := be.CheckDrift(ctx); why != "" || err != nil {
		t.Errorf("after a full sync: %q, %v; want no drift", why, err)
	}
}

// TestIPv6Unusable: IPv6 service addresses are judged usable only where
// the kernel has IPv6 and it is not disabled.
func TestIPv6Unusable(t *testing.T) {
	k := ipvstest.NewFake()
	if why := ipvs.IPv6Unusable(k); why != "" {
		t.Errorf("default fake: %q, want usable", why)
	}
	if err := k.SetSysctl("net/ipv6/conf/all/disable_ipv6", "1"); err != nil {
		t.Fatal(err)
	}
	if why := ipvs.IPv6Unusable(k); !strings.Contains(why, "disable_ipv6=1") {
		t.Errorf("disabled: %q", why)
	}
	k.FailNext("Sysctl", errors.New("no such file or directory"))
	if why := ipvs.IPv6Unusable(k); !strings.Contains(why, "no IPv6") {
		t.Errorf("no /proc/sys/net/ipv6: %q", why)
	}
}

// TestBackendFollowsNodeAddresses: with WithHostAddresses every full sync
// lists the node's addresses: an address that appears (an IPv6 address
// from a router advertisement) gets its node ports, one that goes loses
// them, a partial sync does not list, and a failed listing keeps the
// addresses known.
func TestBackendFollowsNodeAddresses(t *testing.T) {
	k, ipt := ipvstest.NewFake(), iptablestest.NewFake()
	if err := ipt.UseSets(k); err != nil {
		t.Fatal(err)
	}
	opts := options() // node address 192.168.0.1
	a1, a2 := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.2")
	node := []netip.Addr{a1}
	var listErr error
	lists := 0
	be := ipvs.NewBackend(k, ipt, opts).WithHostAddresses(func() ([]netip.Addr, []netip.Addr, error) {
		lists++
		return slices.Clone(node), slices.Clone(node), listErr
	})
	ctx := context.Background()
	snap := snapshot(t, pt.Service("ns", "web", "10.96.0.20", "http", 80, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	}), pt.Slice("ns", "web", "web-1", "http", 80, pt.Ready("10.244.1.5", "node2")))
	nodePorts := func() (out []string) {
		svcs, err := k.ListServices()
		if err != nil {
			t.Fatal(err)
		}
		for _, vs := range svcs {
			if vs.Port == 30080 {
				out = append(out, vs.Address.String())
			}
		}
		slices.Sort(out)
		return out
	}
	sync := func(full bool) {
		t.Helper()
		if _, err := be.Sync(ctx, snap, full); err != nil {
			t.Fatal(err)
		}
	}
	sync(true)
	node = []netip.Addr{a1, a2}
	sync(false)
	if got := nodePorts(); !slices.Equal(got, []string{"192.168.0.1"}) || lists != 1 {
		t.Errorf("after a partial sync: node ports on %v, %d listings; want 192.168.0.1 only, 1 listing", got, lists)
	}
	sync(true)
	if got := nodePorts(); !slices.Equal(got, []string{"192.168.0.1", "192.168.0.2"}) {
		t.Errorf("after an address appeared: node ports on %v", got)
	}
	node = []netip.Addr{a2}
	sync(true)
	if got := nodePorts(); !slices.Equal(got, []string{"192.168.0.2"}) {
		t.Errorf("after an address went: node ports on %v, want 192.168.0.2 only", got)
	}
	listErr, node = errors.New("netlink: interrupted"), nil
	sync(true)
	if got := nodePorts(); !slices.Equal(got, []string{"192.168.0.2"}) {
		t.Errorf("after a failed listing: node ports on %v, want the known 192.168.0.2", got)
	}
}
