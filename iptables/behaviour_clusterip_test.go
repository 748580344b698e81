package iptables_test

import (
	"strings"
	"testing"
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
		},
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
