package iptables_test

import "testing"

// ExternalIPs (192.0.2.1x) and LoadBalancer IPs (192.0.2.10x); cluster IPs
// 10.96.2.x. See the address plan in behaviour_setup_test.go.

func TestBehaviourExternalIP(t *testing.T) { externalIPScenario().run(t) }

func externalIPScenario() scenario {
	cluster := service("ext", "10.96.2.10", 80, externalIPs("192.0.2.10"))
	local := service("ext-local", "10.96.2.11", 80, externalIPs("192.0.2.11"), etpLocal)
	remoteOnly := service("ext-remote", "10.96.2.12", 80, externalIPs("192.0.2.12"), etpLocal)
	empty := service("ext-empty", "10.96.2.13", 80, externalIPs("192.0.2.13"))
	clusterEPs := []string{"10.244.1.10:8080", "10.244.2.10:8080"}
	localEPs := []string{"10.244.1.11:8080", "10.244.2.11:8080"}
	return scenario{objs: []any{
		cluster, slice(cluster, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode)),
		local, slice(local, ready("10.244.1.11", thisNode), ready("10.244.2.11", otherNode)),
		remoteOnly, slice(remoteOnly, ready("10.244.2.12", otherNode)),
		empty, slice(empty),
	}, flows: []flow{
		{name: "cluster policy: outside client", from: outsider, to: "192.0.2.10:80", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: pod", from: podHere, to: "192.0.2.10:80", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: node", from: node, to: "192.0.2.10:80", want: reach(masq, clusterEPs...)},
		{name: "other port of an external IP", from: outsider, to: "192.0.2.10:81", want: untouched},

		{name: "local policy: outside client keeps its source", from: outsider, to: "192.0.2.11:80", want: reach(noMasq, "10.244.1.11:8080")},
		{name: "local policy: pod short-circuits", from: podHere, to: "192.0.2.11:80", want: reach(noMasq, localEPs...)},
		{name: "local policy: node short-circuits, masqueraded", from: node, to: "192.0.2.11:80", want: reach(masq, localEPs...)},

		{name: "local policy, no local endpoint: outside client dropped", from: outsider, to: "192.0.2.12:80", want: dropped},
		{name: "local policy, no local endpoint: pod short-circuits", from: podHere, to: "192.0.2.12:80", want: reach(noMasq, "10.244.2.12:8080")},

		{name: "no endpoints: rejected", from: outsider, to: "192.0.2.13:80", want: rejected},
	}}
}

func TestBehaviourLoadBalancer(t *testing.T) { loadBalancerScenario().run(t) }

func loadBalancerScenario() scenario {
	fw := service("lb", "10.96.2.20", 80, loadBalancer("192.0.2.100", "198.51.100.0/24"), nodePort(30100))
	open := service("lb-open", "10.96.2.21", 80, loadBalancer("192.0.2.101"), etpLocal)
	fwLocal := service("lb-fw-local", "10.96.2.22", 80, loadBalancer("192.0.2.102", "198.51.100.0/24"), etpLocal)
	empty := service("lb-empty", "10.96.2.23", 80, loadBalancer("192.0.2.103"))
	fwEPs := []string{"10.244.1.20:8080", "10.244.2.20:8080"}
	return scenario{objs: []any{
		fw, slice(fw, ready("10.244.1.20", thisNode), ready("10.244.2.20", otherNode)),
		open, slice(open, ready("10.244.1.21", thisNode), ready("10.244.2.21", otherNode)),
		fwLocal, slice(fwLocal, ready("10.244.1.22", thisNode), ready("10.244.2.22", otherNode)),
		empty, slice(empty),
	}, flows: []flow{
		{name: "source ranges: allowed client", from: allowedSrc, to: "192.0.2.100:80", want: reach(masq, fwEPs...)},
		{name: "source ranges: other client dropped", from: outsider, to: "192.0.2.100:80", want: dropped},
		{name: "source ranges: pod outside the ranges dropped", from: podHere, to: "192.0.2.100:80", want: dropped},
		{name: "source ranges do not apply to the node port", from: outsider, to: "192.168.0.1:30100", want: reach(masq, fwEPs...)},
		{name: "source ranges do not apply to the cluster IP", from: podHere, to: "10.96.2.20:80", want: reach(noMasq, fwEPs...)},

		{name: "no ranges, local policy: outside client keeps its source", from: outsider, to: "192.0.2.101:80", want: reach(noMasq, "10.244.1.21:8080")},
		{name: "no ranges, local policy: pod short-circuits", from: podHere, to: "192.0.2.101:80", want: reach(noMasq, "10.244.1.21:8080", "10.244.2.21:8080")},

		{name: "ranges, local policy: allowed client", from: allowedSrc, to: "192.0.2.102:80", want: reach(noMasq, "10.244.1.22:8080")},
		{name: "ranges, local policy: other client dropped", from: outsider, to: "192.0.2.102:80", want: dropped},

		{name: "no endpoints: rejected", from: outsider, to: "192.0.2.103:80", want: rejected},
	}}
}
