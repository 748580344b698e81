package iptables_test

import (
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// FuzzRender: whatever the services look like, the rules svcproxy renders
// are accepted by a stateful iptables-restore (valid syntax, no jump to a
// missing chain), a partial sync from one random state to another is too,
// and the ruleset keeps the 16-jump limit of nf_tables. The integration
// suite feeds the same snapshots to the real iptables-restore --test.
func FuzzRender(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("some seed bytes for a first random cluster"))
	f.Add([]byte{7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 200, 201, 202, 255, 0, 255, 0, 1, 1, 1, 1, 3, 3, 3})
	f.Add([]byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"))
	for i := 0; i < 20; i++ {
		seed := make([]byte, 64)
		for j := range seed {
			seed[j] = byte(i*31 + j*7)
		}
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := iptables.DefaultOptions()
		opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
		fake := iptablestest.NewFake()
		syncer := iptables.NewSyncer(fake, 7) // small batches: exercise the batch ordering
		r := iptables.NewRenderer(opts)
		plan := r.Render(pt.RandomSnapshot(data))
		if _, err := syncer.Sync(plan, true); err != nil {
			t.Fatalf("full sync rejected: %v\nplan:\n%s", err, plan)
		}
		// Then move to another random state with a partial sync.
		half := len(data) / 2
		plan2 := r.Render(pt.RandomSnapshot(append(append([]byte{}, data[half:]...), data[:half]...)))
		if _, err := syncer.Sync(plan2, false); err != nil {
			t.Fatalf("partial sync rejected: %v\nplan:\n%s", err, plan2)
		}
		if got, want := fake.Dump(), fakeAfter(t, plan2); got != want {
			t.Fatalf("partial sync left a different ruleset than a full sync of the same plan\npartial:\n%s\nfull:\n%s", got, want)
		}
	})
}

// fakeAfter returns the fake's dump after a full sync of plan into an empty
// fake.
func fakeAfter(t *testing.T, plan *iptables.Plan) string {
	t.Helper()
	fake := iptablestest.NewFake()
	if _, err := iptables.NewSyncer(fake, 0).Sync(plan, true); err != nil {
		t.Fatalf("full sync rejected: %v", err)
	}
	return fake.Dump()
}
