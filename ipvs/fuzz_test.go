package ipvs_test

import (
	"context"
	"net/netip"
	"testing"

	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/ipvs"
	ipvstest "github.com/svcproxy/svcproxy/ipvs/testing"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// FuzzApply: whatever the services look like, the plan is accepted by the
// stateful fakes (valid set entries for their types, no real server
// without its virtual server, valid iptables rules), the kernel then holds
// exactly the plan, and a partial sync to another random state leaves the
// kernel exactly as that state's plan says — every virtual server, ours or
// not by the ownership rules, is compared.
func FuzzApply(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("some seed bytes for a first random cluster"))
	f.Add([]byte{7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 200, 201, 202, 255, 0, 255, 0, 1, 1, 1, 1, 3, 3, 3})
	for i := 0; i < 20; i++ {
		seed := make([]byte, 64)
		for j := range seed {
			seed[j] = byte(i*31 + j*7)
		}
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := ipvs.DefaultOptions()
		opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
		opts.NodeAddresses = []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.1.1")}
		opts.GracefulTimeout = 0
		k, ipt := ipvstest.NewFake(), iptablestest.NewFake()
		if err := k.UseIPTables(ipt); err != nil {
			t.Fatal(err)
		}
		a := ipvs.NewApplier(k, ipt, opts, nil)
		plan := ipvs.Render(pt.RandomSnapshot(data), opts)
		if _, err := a.Sync(context.Background(), plan, false); err != nil {
			t.Fatalf("first sync: %v\nplan:\n%s", err, plan.Dump())
		}
		exactly(t, k, plan)
		half := len(data) / 2
		plan2 := ipvs.Render(pt.RandomSnapshot(append(append([]byte{}, data[half:]...), data[:half]...)), opts)
		if _, err := a.Sync(context.Background(), plan2, false); err != nil {
			t.Fatalf("partial sync: %v\nplan:\n%s", err, plan2.Dump())
		}
		exactly(t, k, plan2)
	})
}

// exactly checks that the fake holds plan and nothing else of the kinds
// IPVS mode manages.
func exactly(t *testing.T, k *ipvstest.Fake, plan *ipvs.Plan) {
	t.Helper()
	st := &ipvs.State{LinkExists: k.Link(plan.Interface) != ""}
	var err error
	if st.Addresses, err = k.ListAddresses(plan.Interface); err != nil {
		t.Fatal(err)
	}
	if st.Services, err = k.ListServices(); err != nil {
		t.Fatal(err)
	}
	if st.Sets, err = k.ListSets(); err != nil {
		t.Fatal(err)
	}
	if c := ipvs.Diff(plan, st); !c.Empty() {
		t.Fatalf("the kernel differs from the plan: %v", c.Strings())
	}
}
