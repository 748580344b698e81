package iptables_test

import "testing"

// NodePort services: cluster IPs 10.96.1.x, node ports 300x0. See the
// address plan in behaviour_setup_test.go.

func TestBehaviourNodePort(t *testing.T) { nodePortScenario().run(t) }

func nodePortScenario() scenario {
	cluster := service("np-cluster", "10.96.1.10", 80, nodePort(30010))
	local := service("np-local", "10.96.1.20", 80, nodePort(30020), etpLocal)
	remoteOnly := service("np-remote", "10.96.1.30", 80, nodePort(30030), etpLocal)
	empty := service("np-empty", "10.96.1.40", 80, nodePort(30040))
	udpNP := service("np-udp", "10.96.1.50", 53, udp, nodePort(30010)) // same number as np-cluster, other protocol
	clusterEPs := []string{"10.244.1.10:8080", "10.244.2.10:8080"}
	localEPs := []string{"10.244.1.20:8080", "10.244.2.20:8080"}
	remoteEPs := []string{"10.244.2.30:8080", "10.244.2.31:8080"}
	return scenario{objs: []any{
		cluster, slice(cluster, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode)),
		local, slice(local, ready("10.244.1.20", thisNode), ready("10.244.2.20", otherNode)),
		remoteOnly, slice(remoteOnly, ready("10.244.2.30", otherNode), ready("10.244.2.31", otherNode)),
		empty, slice(empty),
		udpNP, slice(udpNP, ready("10.244.2.50", otherNode)),
	}, flows: []flow{
		// externalTrafficPolicy Cluster: everyone is masqueraded, every endpoint.
		{name: "cluster policy: outside client", from: outsider, to: "192.168.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: pod on node1", from: podHere, to: "192.168.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: pod on node2", from: podThere, to: "192.168.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: node", from: node, to: "192.168.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "cluster policy: cluster IP still works", from: podHere, to: "10.96.1.10:80", want: reach(noMasq, clusterEPs...)},
		{name: "cluster policy: node port on the second local address", from: outsider, to: "172.16.0.1:30010", want: reach(masq, clusterEPs...)},
		{name: "no node ports on localhost", from: node, to: "127.0.0.1:30010", want: untouched},
		{name: "another node's node port is forwarded untouched", from: podHere, to: "192.168.0.2:30010", want: untouched},
		{name: "same number, other protocol", from: outsider, to: "192.168.0.1:30010", proto: "udp", want: reach(masq, "10.244.2.50:8080")},
		{name: "unused node port", from: outsider, to: "192.168.0.1:30011", want: untouched},

		// externalTrafficPolicy Local: outside clients keep their source
		// and reach this node's endpoints only; pods and the node itself
		// are short-circuited to every endpoint.
		{name: "local policy: outside client keeps its source", from: outsider, to: "192.168.0.1:30020", want: reach(noMasq, "10.244.1.20:8080")},
		{name: "local policy: pod on node1 short-circuits", from: podHere, to: "192.168.0.1:30020", want: reach(noMasq, localEPs...)},
		{name: "local policy: pod on node2 short-circuits", from: podThere, to: "192.168.0.1:30020", want: reach(noMasq, localEPs...)},
		{name: "local policy: node short-circuits, masqueraded", from: node, to: "192.168.0.1:30020", want: reach(masq, localEPs...)},

		{name: "local policy, no local endpoint: outside client dropped", from: outsider, to: "192.168.0.1:30030", want: dropped},
		{name: "local policy, no local endpoint: pod short-circuits", from: podHere, to: "192.168.0.1:30030", want: reach(noMasq, remoteEPs...)},
		{name: "local policy, no local endpoint: node short-circuits", from: node, to: "192.168.0.1:30030", want: reach(masq, remoteEPs...)},

		{name: "no endpoints: outside client rejected", from: outsider, to: "192.168.0.1:30040", want: rejected},
		{name: "no endpoints: pod rejected", from: podHere, to: "192.168.0.1:30040", want: rejected},
		{name: "no endpoints: node rejected", from: node, to: "192.168.0.1:30040", want: rejected},
		{name: "no endpoints: cluster IP rejected", from: podHere, to: "10.96.1.40:80", want: rejected},
	}}
}
