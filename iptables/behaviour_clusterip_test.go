package iptables_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Cluster IPs: 10.96.0.x. See the address plan in behaviour_setup_test.go.

func TestBehaviourClusterIP(t *testing.T) { clusterIPScenario().run(t) }

func clusterIPScenario() scenario {
	web := service("web", "10.96.0.10", 80)
	dns := service("dns", "10.96.0.11", 53, udp)
	all := []string{"10.244.1.10:8080", "10.244.2.10:8080", "10.244.2.11:8080"}
	return scenario{objs: []any{
		web, slice(web, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode), ready("10.244.2.11", otherNode)),
		dns, slice(dns, ready("10.244.1.11", thisNode), ready("10.244.2.12", otherNode)),
	}, flows: []flow{
		{name: "pod on node1 reaches every endpoint", from: podHere, to: "10.96.0.10:80", want: reach(noMasq, all...)},
		{name: "pod on node2 reaches every endpoint", from: podThere, to: "10.96.0.10:80", want: reach(noMasq, all...)},
		{name: "node reaches every endpoint, masqueraded", from: node, to: "10.96.0.10:80", want: reach(masq, all...)},
		{name: "outside client reaches every endpoint, masqueraded", from: outsider, to: "10.96.0.10:80", want: reach(masq, all...)},
		{name: "udp service from a pod", from: podHere, to: "10.96.0.11:53", proto: "udp", want: reach(noMasq, "10.244.1.11:8080", "10.244.2.12:8080")},
		{name: "udp service from the node", from: node, to: "10.96.0.11:53", proto: "udp", want: reach(masq, "10.244.1.11:8080", "10.244.2.12:8080")},
		{name: "wrong protocol is not a service", from: podHere, to: "10.96.0.11:53", proto: "tcp", want: untouched},
		{name: "wrong port is not a service", from: podHere, to: "10.96.0.10:81", want: untouched},
		{name: "unallocated cluster IP is not a service", from: podHere, to: "10.96.0.99:80", want: untouched},
		{name: "node port of a ClusterIP service does not exist", from: outsider, to: "192.168.0.1:80", want: untouched},
		{name: "traffic to the node passes", from: outsider, to: "192.168.0.1:22", want: untouched},
		{name: "pod to pod passes", from: podHere, to: "10.244.2.10:8080", want: untouched},
	}}
}

func TestBehaviourNoEndpoints(t *testing.T) { noEndpointsScenario().run(t) }

func noEndpointsScenario() scenario {
	empty := service("empty", "10.96.0.20", 80)
	notReady := service("not-ready", "10.96.0.21", 80)
	noSlice := service("no-slice", "10.96.0.22", 80)
	var flows []flow
	for _, c := range []client{podHere, podThere, node, outsider} {
		flows = append(flows,
			flow{name: c.name + " to service without endpoints", from: c, to: "10.96.0.20:80", want: rejected},
			flow{name: c.name + " to service without serving endpoints", from: c, to: "10.96.0.21:80", want: rejected},
			flow{name: c.name + " to service without slices", from: c, to: "10.96.0.22:80", want: rejected},
		)
	}
	flows = append(flows, flow{name: "other port of the same IP", from: podHere, to: "10.96.0.20:81", want: untouched})
	return scenario{objs: []any{
		empty, slice(empty),
		notReady, slice(notReady, notServing("10.244.1.21", thisNode), ep{ip: "10.244.2.21", node: otherNode}),
		noSlice,
	}, flows: flows}
}

func TestBehaviourInternalTrafficPolicyLocal(t *testing.T) { itpLocalScenario().run(t) }

func itpLocalScenario() scenario {
	local := service("itp", "10.96.0.30", 80, itpLocal)
	remote := service("itp-remote", "10.96.0.31", 80, itpLocal)
	// internalTrafficPolicy Local does not restrict external traffic.
	remoteNP := service("itp-remote-np", "10.96.0.32", 80, itpLocal, nodePort(30032))
	return scenario{objs: []any{
		local, slice(local, ready("10.244.1.30", thisNode), ready("10.244.2.30", otherNode)),
		remote, slice(remote, ready("10.244.2.31", otherNode), ready("10.244.2.32", otherNode)),
		remoteNP, slice(remoteNP, ready("10.244.2.33", otherNode)),
	}, flows: []flow{
		{name: "pod on node1 reaches only the local endpoint", from: podHere, to: "10.96.0.30:80", want: reach(noMasq, "10.244.1.30:8080")},
		{name: "node reaches only the local endpoint, masqueraded", from: node, to: "10.96.0.30:80", want: reach(masq, "10.244.1.30:8080")},
		{name: "pod on node1, no local endpoint: drop", from: podHere, to: "10.96.0.31:80", want: dropped},
		{name: "node, no local endpoint: drop", from: node, to: "10.96.0.31:80", want: dropped},
		{name: "outside, no local endpoint: drop", from: outsider, to: "10.96.0.31:80", want: dropped},
		{name: "no local endpoint, cluster IP of a node port service: drop", from: podHere, to: "10.96.0.32:80", want: dropped},
		{name: "no local endpoint, node port still reaches the cluster", from: outsider, to: "192.168.0.1:30032", want: reach(masq, "10.244.2.33:8080")},
		{name: "no local endpoint, node port from a pod", from: podHere, to: "192.168.0.1:30032", want: reach(masq, "10.244.2.33:8080")},
	}}
}

func TestBehaviourTerminatingFallback(t *testing.T) { terminatingScenario().run(t) }

func terminatingScenario() scenario {
	term := service("term", "10.96.0.40", 80)
	mixed := service("mixed", "10.96.0.41", 80)
	termLocal := service("term-local", "10.96.0.42", 80, itpLocal)
	return scenario{objs: []any{
		term, slice(term, terminating("10.244.1.40", thisNode), terminating("10.244.2.40", otherNode), notServing("10.244.2.41", otherNode)),
		mixed, slice(mixed, ready("10.244.2.42", otherNode), terminating("10.244.1.42", thisNode)),
		termLocal, slice(termLocal, terminating("10.244.1.43", thisNode), ready("10.244.2.43", otherNode)),
	}, flows: []flow{
		{name: "only serving-terminating endpoints: still reachable", from: podHere, to: "10.96.0.40:80", want: reach(noMasq, "10.244.1.40:8080", "10.244.2.40:8080")},
		{name: "ready endpoints win over terminating ones", from: podHere, to: "10.96.0.41:80", want: reach(noMasq, "10.244.2.42:8080")},
		{name: "local policy falls back to the local terminating endpoint", from: podHere, to: "10.96.0.42:80", want: reach(noMasq, "10.244.1.43:8080")},
	}}
}

func TestBehaviourSessionAffinity(t *testing.T) { affinityScenario().run(t) }

func affinityScenario() scenario {
	sticky := service("sticky", "10.96.0.50", 80, affinity(600))
	// A first connection (empty xt_recent lists) may go anywhere.
	all := []string{"10.244.1.50:8080", "10.244.2.50:8080", "10.244.2.51:8080"}
	return scenario{
		objs: []any{sticky, slice(sticky, ready("10.244.1.50", thisNode), ready("10.244.2.50", otherNode), ready("10.244.2.51", otherNode))},
		flows: []flow{
			{name: "first connection from a pod", from: podHere, to: "10.96.0.50:80", want: reach(noMasq, all...)},
			{name: "first connection from the node", from: node, to: "10.96.0.50:80", want: reach(masq, all...)},
		},
		check: func(t *testing.T, e *env) {
			// Each endpoint is looked up in, and recorded into, its own list.
			svc := chainFor(t, e.plan, "SVCP-SVC-", "sticky")
			var updates, sets int
			for _, r := range e.fake.Rules("nat", svc) {
				if strings.Contains(r, "-m recent") && strings.Contains(r, "--update --seconds 600 --reap") {
					updates++
				}
				if strings.Contains(r, "-m recent") && strings.Contains(r, " --set ") {
					sets++
				}
			}
			if updates != 3 || sets != 3 {
				t.Errorf("%s: got %d recent --update and %d recent --set rules, want 3 and 3:\n%s", svc, updates, sets, strings.Join(e.fake.Rules("nat", svc), "\n"))
			}
			paths, err := e.fake.Explain(packet(podHere, "10.96.0.50:80", "tcp"))
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range paths {
				if !strings.Contains(strings.Join(p.Steps, "\n"), "--set") {
					t.Errorf("path to %v does not record the client in a recent list:\n%s", p.DNAT, p)
				}
			}
			checkAffinityHits(t, e, "10.96.0.50:80", all)
		},
	}
}

// checkAffinityHits connects for real (the connection's recent --set is
// kept by the Fake) and checks ClientIP affinity: the next connection from
// the same client goes to the endpoint the first one's DNAT chose, and
// only there, whatever the random split would say; other clients are
// still balanced over every endpoint; after the timeout (600 s) the client
// is balanced again, so the next round starts afresh.
func checkAffinityHits(t *testing.T, e *env, svc string, eps []string) {
	t.Helper()
	firsts := map[string]bool{}
	// Picks spread over [0, 1): each endpoint comes first once.
	for i := range eps {
		pick := (float64(i) + 0.5) / float64(len(eps))
		first := e.connect(t, podHere, svc, "", pick)
		firsts[first] = true
		for _, again := range []float64{0, 0.5, 0.999} {
			if got := e.connect(t, podHere, svc, "", again); got != first {
				t.Errorf("pick %.2f: first connection went to %s, a later one (pick %.3f) to %s", pick, first, again, got)
			}
		}
		if diff := cmp.Diff(reach(noMasq, first), e.trace(t, podHere, svc, "")); diff != "" {
			t.Errorf("after a connection to %s, the client's next connections (-want +got):\n%s", first, diff)
		}
		// The client stays in its list, but in no other endpoint's.
		for _, other := range []client{podThere, node} {
			want := reach(other == node, eps...)
			if diff := cmp.Diff(want, e.trace(t, other, svc, "")); diff != "" {
				t.Errorf("%s is load-balanced while %s is sticky (-want +got):\n%s", other.name, podHere.name, diff)
			}
			e.checkBalanced(t, packet(other, svc, "tcp"))
		}
		// Within the timeout a hit refreshes the entry (--update): 599 s
		// after the last connection, it still holds.
		e.fake.AdvanceClock(599 * time.Second)
		if diff := cmp.Diff(reach(noMasq, first), e.trace(t, podHere, svc, "")); diff != "" {
			t.Errorf("599 s later (-want +got):\n%s", diff)
		}
		e.fake.AdvanceClock(2 * time.Second)
		if diff := cmp.Diff(reach(noMasq, eps...), e.trace(t, podHere, svc, "")); diff != "" {
			t.Errorf("601 s later, affinity must have expired (-want +got):\n%s", diff)
		}
	}
	if len(firsts) != len(eps) {
		t.Errorf("first connections went to %v only, want each of %v once", firsts, eps)
	}
}

// TestBehaviourSessionAffinityAcrossSyncs: the xt_recent lists live as
// long as a rule uses them. A full resync, and a partial one after an
// endpoint change, keep the client with its endpoint, also when the Syncer
// splits its work into one-chain batches; the list of an endpoint that is
// gone goes with its rules, and its clients are balanced over the others.
func TestBehaviourSessionAffinityAcrossSyncs(t *testing.T) {
	for _, batch := range []int{0, 1} {
		t.Run(fmt.Sprintf("batchChains=%d", batch), func(t *testing.T) { affinityAcrossSyncs(t, batch) })
	}
}

func affinityAcrossSyncs(t *testing.T, batch int) {
	sticky := service("sticky", "10.96.0.50", 80, affinity(600))
	eps := []ep{ready("10.244.1.50", thisNode), ready("10.244.2.50", otherNode), ready("10.244.2.51", otherNode)}
	e := newEnvWith(t, testOpts(), batch, sticky, slice(sticky, eps...))
	first := e.connect(t, podHere, "10.96.0.50:80", "", 0.5)
	sticks := func(step string) {
		t.Helper()
		if diff := cmp.Diff(reach(noMasq, first), e.trace(t, podHere, "10.96.0.50:80", "")); diff != "" {
			t.Errorf("%s: the client lost its endpoint (-want +got):\n%s", step, diff)
		}
	}
	sticks("first connection")
	e.sync(true)
	sticks("after a full resync")
	var rest []ep
	for _, x := range eps {
		if x.ip+":8080" != first {
			rest = append(rest, x)
		}
	}
	e.add(slice(sticky, append(slices.Clone(eps), ready("10.244.2.52", otherNode))...))
	e.sync(false)
	sticks("after another endpoint came")
	lists := len(e.fake.RecentLists())
	e.add(slice(sticky, rest...))
	e.sync(false)
	if got := len(e.fake.RecentLists()); got != 2 || lists != 4 {
		t.Errorf("recent lists: %d with 4 endpoints, %d with 2; want one per endpoint", lists, got)
	}
	want := reach(noMasq, rest[0].ip+":8080", rest[1].ip+":8080")
	if diff := cmp.Diff(want, e.trace(t, podHere, "10.96.0.50:80", "")); diff != "" {
		t.Errorf("after its endpoint went, the client (-want +got):\n%s", diff)
	}
}

func TestBehaviourHairpin(t *testing.T) { hairpinScenario().run(t) }

func hairpinScenario() scenario {
	// The client pod 10.244.1.5 is itself an endpoint of the service.
	hp := service("hairpin", "10.96.0.60", 80)
	return scenario{objs: []any{hp, slice(hp, ready(podHere.ip, thisNode), ready("10.244.2.60", otherNode))}, flows: []flow{
		{
			name: "pod reaching itself through its service is masqueraded",
			from: podHere, to: "10.96.0.60:80",
			want: append(reach(masq, "10.244.1.5:8080"), reach(noMasq, "10.244.2.60:8080")...),
		},
		{name: "other pods are not masqueraded", from: podThere, to: "10.96.0.60:80", want: reach(noMasq, "10.244.1.5:8080", "10.244.2.60:8080")},
	}}
}
