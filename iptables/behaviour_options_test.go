package iptables_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/svcproxy/svcproxy/iptables"
)

// Render options that change behaviour. Addresses: see the plan in
// behaviour_setup_test.go.

func TestBehaviourOptions(t *testing.T) {
	web := service("web", "10.96.0.10", 80, nodePort(30010))
	local := service("np-local", "10.96.1.20", 80, nodePort(30020), etpLocal)
	objs := []any{
		web, slice(web, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode)),
		local, slice(local, ready("10.244.1.20", thisNode), ready("10.244.2.20", otherNode)),
	}
	webEPs := []string{"10.244.1.10:8080", "10.244.2.10:8080"}

	masqAll := testOpts()
	masqAll.MasqueradeAll = true
	noCIDR := iptables.DefaultOptions()
	nodePortAddrs := testOpts()
	nodePortAddrs.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24")}
	noRandomFully := testOpts()
	noRandomFully.RandomFully = false
	otherBit := testOpts()
	otherBit.MasqueradeBit = 3

	for _, tc := range []struct {
		name  string
		opts  iptables.Options
		flows []flow
	}{
		{
			name: "masquerade all",
			opts: masqAll,
			flows: []flow{
				{name: "pod to cluster IP is masqueraded", from: podHere, to: "10.96.0.10:80", want: reach(masq, webEPs...)},
				{name: "node to cluster IP is masqueraded", from: node, to: "10.96.0.10:80", want: reach(masq, webEPs...)},
			},
		},
		{
			name: "no cluster CIDR",
			opts: noCIDR,
			flows: []flow{
				{name: "node to cluster IP is not masqueraded", from: node, to: "10.96.0.10:80", want: reach(noMasq, webEPs...)},
				{name: "outside client to cluster IP is not masqueraded", from: outsider, to: "10.96.0.10:80", want: reach(noMasq, webEPs...)},
				// Without a cluster CIDR pods cannot be told apart from
				// outside clients: no short-circuit.
				{name: "pod to a local-policy node port gets local endpoints only", from: podHere, to: "192.168.0.1:30020", want: reach(noMasq, "10.244.1.20:8080")},
				{name: "node to a local-policy node port still short-circuits", from: node, to: "192.168.0.1:30020", want: reach(masq, "10.244.1.20:8080", "10.244.2.20:8080")},
			},
		},
		{
			name: "node port addresses",
			opts: nodePortAddrs,
			flows: []flow{
				{name: "node port on an address in the list", from: outsider, to: "192.168.0.1:30010", want: reach(masq, webEPs...)},
				{name: "node port on a local address not in the list", from: outsider, to: "172.16.0.1:30010", want: untouched},
				{name: "node to its own node port", from: node, to: "192.168.0.1:30010", want: reach(masq, webEPs...)},
			},
		},
		{
			name: "no --random-fully",
			opts: noRandomFully,
			flows: []flow{
				{name: "still masqueraded", from: outsider, to: "192.168.0.1:30010", want: reach(masq, webEPs...)},
			},
		},
		{
			name: "another masquerade bit",
			opts: otherBit,
			flows: []flow{
				{name: "node port", from: outsider, to: "192.168.0.1:30010", want: reach(masq, webEPs...)},
				{name: "cluster IP from a pod", from: podHere, to: "10.96.0.10:80", want: reach(noMasq, webEPs...)},
				{name: "cluster IP from the node", from: node, to: "10.96.0.10:80", want: reach(masq, webEPs...)},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvWith(t, tc.opts, 0, objs...)
			e.checkFlows(t, tc.flows)
		})
	}
}

// TestBehaviourTwoClusterCIDRs: --cluster-cidr takes a list. A pod in any
// of the CIDRs is inside the cluster: not masqueraded on its way to a
// cluster IP, and short-circuited on its way to a local-policy node port.
func TestBehaviourTwoClusterCIDRs(t *testing.T) {
	opts := testOpts()
	opts.ClusterCIDRs = append(opts.ClusterCIDRs, netip.MustParsePrefix("10.245.0.0/16"))
	web := service("web", "10.96.0.10", 80)
	local := service("np-local", "10.96.1.20", 80, nodePort(30020), etpLocal)
	e := newEnvWith(t, opts, 0,
		web, slice(web, ready("10.244.1.10", thisNode), ready("10.244.2.10", otherNode)),
		local, slice(local, ready("10.244.1.20", thisNode), ready("10.244.2.20", otherNode)),
	)
	podInSecondCIDR := client{"pod in the second CIDR", "10.245.1.5", false}
	var problems []string
	for _, tc := range []flow{
		{name: "pod in the first CIDR to a cluster IP", from: podHere, to: "10.96.0.10:80", want: reach(noMasq, "10.244.1.10:8080", "10.244.2.10:8080")},
		{name: "pod in the second CIDR to a cluster IP", from: podInSecondCIDR, to: "10.96.0.10:80", want: reach(noMasq, "10.244.1.10:8080", "10.244.2.10:8080")},
		{name: "node to a cluster IP", from: node, to: "10.96.0.10:80", want: reach(masq, "10.244.1.10:8080", "10.244.2.10:8080")},
		{name: "pod in the second CIDR to a local-policy node port", from: podInSecondCIDR, to: "192.168.0.1:30020", want: reach(noMasq, "10.244.1.20:8080", "10.244.2.20:8080")},
	} {
		got := e.trace(t, tc.from, tc.to, tc.proto)
		if diff := cmp.Diff(slices.Sorted(slices.Values(tc.want)), got); diff != "" {
			problems = append(problems, fmt.Sprintf("%s (-want +got):\n%s", tc.name, diff))
		}
	}
	if len(problems) > 0 {
		t.Error("with several ClusterCIDRs, endpointChain emits one \"! -s <cidr> -j MARK\" rule per CIDR; a pod in one CIDR is outside the others and gets masqueraded:\n" + strings.Join(problems, "\n"))
	}
}
