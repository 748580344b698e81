package iptables_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// Syncer against the stateful Fake: what each sync sends, and that the
// Fake always ends up holding exactly the plan (env.sync checks that).

// restoreSummary lists the chains a Restore input declares (":X") and
// deletes ("-X X"), per table: "nat :A :B -X C".
func restoreSummary(in []byte) string {
	var parts []string
	for _, l := range strings.Split(string(in), "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			parts = append(parts, l[1:])
		case strings.HasPrefix(l, ":"):
			parts = append(parts, strings.Fields(l)[0])
		case strings.HasPrefix(l, "-X "):
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " ")
}

// newRestores returns the summaries of the Restore calls since n calls.
func newRestores(f *iptablestest.Fake, n int) []string {
	var out []string
	for _, in := range f.Restores()[n:] {
		out = append(out, restoreSummary(in))
	}
	return out
}

// twoServices: a, with an endpoint on each node, and b, on node2 only.
func twoServices() (a, b *v1.Service, aSlice, bSlice *discovery.EndpointSlice) {
	sa := service("a", "10.96.0.10", 80)
	sb := service("b", "10.96.0.11", 80)
	return sa, sb,
		slice(sa, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode)),
		slice(sb, ready("10.244.2.11", otherNode), ready("10.244.2.12", otherNode))
}

func TestSyncerFullSyncIsIdempotent(t *testing.T) {
	a, b, as, bs := twoServices()
	e := newEnv(t, a, b, as, bs)
	before := e.fake.Dump()
	res := e.sync(true)
	if !res.Full || res.ChainsDeleted != 0 {
		t.Errorf("second full sync: %+v", res)
	}
	if diff := cmp.Diff(before, e.fake.Dump()); diff != "" {
		t.Errorf("a second full sync changed the tables (-before +after):\n%s", diff)
	}
	// Jumps are not duplicated.
	for _, j := range e.plan.Jumps {
		n := 0
		for _, r := range e.fake.Rules(j.Table, j.Chain) {
			if strings.HasSuffix(r, "-j "+j.Args[len(j.Args)-1]) && strings.Contains(r, strings.Join(j.Args[:len(j.Args)-2], " ")) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s/%s holds %d copies of %q", j.Table, j.Chain, n, j.Args)
		}
	}
	// A sync with no change sends nothing.
	n := len(e.fake.Restores())
	if res := e.sync(false); res.Full || res.Restores != 0 || res.ChainsWritten != 0 {
		t.Errorf("sync without changes: %+v, inputs %q", res, newRestores(e.fake, n))
	}
}

func TestSyncerPartialSyncRewritesOnlyTheChangedService(t *testing.T) {
	a, b, as, bs := twoServices()
	e := newEnv(t, a, b, as, bs)
	svcB := chainFor(t, e.plan, "SVCP-SVC-", "b")
	n := len(e.fake.Restores())

	// b's second endpoint moves (still on node2: no hairpin change).
	e.add(slice(b, ready("10.244.2.11", otherNode), ready("10.244.2.13", otherNode)))
	res := e.sync(false)
	if res.Full || res.ChainsWritten != 1 || res.ChainsDeleted != 0 || res.Restores != 1 {
		t.Errorf("sync result %+v, want one chain written in one restore", res)
	}
	if diff := cmp.Diff([]string{"nat :" + svcB}, newRestores(e.fake, n)); diff != "" {
		t.Errorf("restores (-want +got):\n%s", diff)
	}
	e.checkFlows(t, []flow{
		{name: "b reaches the new endpoint", from: podHere, to: "10.96.0.11:80", want: reach(noMasq, "10.244.2.11:8080", "10.244.2.13:8080")},
		{name: "a is untouched", from: podHere, to: "10.96.0.10:80", want: reach(noMasq, "10.244.1.10:8080", "10.244.2.10:8080")},
	})
}

func TestSyncerDeletesChainsOfRemovedServices(t *testing.T) {
	a, _, as, _ := twoServices()
	lb := service("lb", "10.96.2.20", 80, loadBalancer("192.0.2.100", "198.51.100.0/24"), nodePort(30100), etpLocal)
	lbSlice := slice(lb, ready("10.244.1.20", thisNode), ready("10.244.2.20", otherNode))
	e := newEnv(t, a, as, lb, lbSlice)
	var lbChains []string
	for _, prefix := range []string{"SVCP-SVC-", "SVCP-SVL-", "SVCP-EXT-", "SVCP-FW-"} {
		lbChains = append(lbChains, chainFor(t, e.plan, prefix, "lb"))
	}
	n := len(e.fake.Restores())

	e.tracker.OnServiceUpdate(lb, nil)
	e.tracker.OnEndpointSliceUpdate(lbSlice, nil)
	res := e.sync(false) // checks that no chain of ours is left over
	if res.Full || res.ChainsDeleted != len(lbChains) {
		t.Errorf("sync result %+v, want %d chains deleted", res, len(lbChains))
	}
	got := newRestores(e.fake, n)
	for _, c := range lbChains {
		if !strings.Contains(strings.Join(got, "\n"), "-X "+c) {
			t.Errorf("no -X %s in the restores %q", c, got)
		}
	}
	e.checkFlows(t, []flow{
		{name: "removed LB IP", from: allowedSrc, to: "192.0.2.100:80", want: untouched},
		{name: "removed node port", from: outsider, to: "192.168.0.1:30100", want: untouched},
		{name: "removed cluster IP", from: podHere, to: "10.96.2.20:80", want: untouched},
		{name: "remaining service", from: podHere, to: "10.96.0.10:80", want: reach(noMasq, "10.244.1.10:8080", "10.244.2.10:8080")},
	})
}

func TestSyncerFailedRestoreForcesFullSync(t *testing.T) {
	a, b, as, bs := twoServices()
	e := newEnv(t, a, as, b, bs)
	e.add(slice(b, ready("10.244.2.11", otherNode)))
	snap, _ := e.tracker.Snapshot()
	plan := iptables.Render(snap, e.opts)
	e.fake.FailRestoreAt(len(e.fake.Restores()) + 1)
	if _, err := e.syncer.Sync(plan, false); !errors.Is(err, iptablestest.ErrInjected) {
		t.Fatalf("Sync: got %v, want the injected error", err)
	}
	e.fake.FailRestoreAt(0)

	// The next sync is full even though a partial one is asked for.
	res := e.sync(false)
	chains, _ := e.plan.Stats()
	if !res.Full || res.ChainsWritten != chains {
		t.Errorf("sync after a failure: %+v, want a full sync writing all %d chains", res, chains)
	}
	e.checkFlows(t, []flow{
		{name: "b has its new endpoints", from: podHere, to: "10.96.0.11:80", want: reach(noMasq, "10.244.2.11:8080")},
	})
}

func TestSyncerBatches(t *testing.T) {
	s := manyServicesScenario()
	e := newEnvWith(t, testOpts(), 3, s.objs...)
	inputs := e.fake.Restores()
	chains, _ := e.plan.Stats()
	if least := chains / 3; len(inputs) < least {
		t.Errorf("%d chains in batches of 3 took %d restores, want at least %d", chains, len(inputs), least)
	}
	for _, in := range inputs {
		if d := strings.Count(string(in), "\n:"); d > 3 {
			t.Errorf("a batch declares %d chains, want at most 3:\n%s", d, in)
		}
	}
	e.checkFlows(t, s.flows)

	// Removing half of the services deletes their chains in the last batch.
	for i := range 20 {
		e.tracker.OnServiceUpdate(s.objs[2*i].(*v1.Service), nil)
	}
	e.sync(false)
}

func TestSyncerRestartDeletesStaleChains(t *testing.T) {
	a, b, as, bs := twoServices()
	e := newEnv(t, a, as, b, bs)
	staleB := chainFor(t, e.plan, "SVCP-SVC-", "b")

	// svcproxy restarts; b was deleted while it was down.
	restarted := &env{t: t, tracker: proxy.NewTracker(thisNode, nil, nil), fake: e.fake, opts: e.opts, renderer: iptables.NewRenderer(e.opts)}
	restarted.syncer = iptables.NewSyncer(e.fake, 0)
	restarted.add(a, as)
	res := restarted.sync(false)
	if !res.Full || res.ChainsDeleted != 1 {
		t.Errorf("first sync after a restart: %+v, want full, deleting %s", res, staleB)
	}
	if slices.Contains(e.fake.Chains("nat"), staleB) {
		t.Errorf("%s survived the restart", staleB)
	}
}

// TestSyncerFailureMidTableKeepsTrackOfCreatedChains: when one batch of a
// table fails after earlier batches created new chains, those chains exist
// in the kernel and must be deleted once they leave the plan.
func TestSyncerFailureMidTableKeepsTrackOfCreatedChains(t *testing.T) {
	a, b, as, bs := twoServices()
	e := newEnvWith(t, testOpts(), 1, a, as)

	// Add b: its new chain goes in one batch, the dispatch chain in the
	// next, which fails.
	e.add(b, bs)
	snap, _ := e.tracker.Snapshot()
	plan := iptables.Render(snap, e.opts)
	svcB := chainFor(t, plan, "SVCP-SVC-", "b")
	e.fake.FailRestoreAt(len(e.fake.Restores()) + 2)
	if _, err := e.syncer.Sync(plan, false); !errors.Is(err, iptablestest.ErrInjected) {
		t.Fatalf("Sync: got %v, want the injected error", err)
	}
	e.fake.FailRestoreAt(0)
	if !slices.Contains(e.fake.Chains("nat"), svcB) {
		t.Fatalf("test setup: %s was not created by the first batch", svcB)
	}

	// b goes away again before the next sync.
	e.tracker.OnServiceUpdate(b, nil)
	snap, _ = e.tracker.Snapshot()
	plan = iptables.Render(snap, e.opts)
	if _, err := e.syncer.Sync(plan, false); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if slices.Contains(e.fake.Chains("nat"), svcB) {
		t.Errorf("Syncer leaks %s: chains created by the successful batches of a failed sync are not added to Syncer.known, so they are never deleted", svcB)
	}
}

// TestScenariosLoad programs every shared scenario (testdata/scenarios,
// whose rendering TestGoldenScenarios pins) into the strict fake kernel
// through the Syncer, and restores the plan's text (what the golden file
// holds, what --dry-run prints) as is into another: both must take it.
func TestScenariosLoad(t *testing.T) {
	for _, sc := range pt.Scenarios(t, "../testdata/scenarios", "iptables") {
		t.Run(sc.Name, func(t *testing.T) {
			plan := iptables.Render(sc.Snapshot(t), testOpts())
			fake := iptablestest.NewFake()
			if _, err := iptables.NewSyncer(fake, 0).Sync(plan, true); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			if err := iptablestest.NewFake().Restore([]byte(plan.String())); err != nil {
				t.Errorf("the rendered text does not restore: %v", err)
			}
		})
	}
}
