package iptables_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The fixed wiring from the built-in chains.

// TestBehaviourJumpOrder: iptables.jumps is documented as "in the order the
// rules appear at the top of each built-in chain", and the firewall
// (REJECT/DROP of new flows) must come before the FORWARD accept of marked
// traffic, as in kube-proxy.
func TestBehaviourJumpOrder(t *testing.T) {
	e := newEnv(t)
	var problems []string
	for _, tbl := range []string{"filter", "nat"} {
		for _, builtin := range builtinOrder[tbl] {
			var want []string
			for _, j := range e.plan.Jumps {
				if j.Table == tbl && j.Chain == builtin {
					want = append(want, j.Args[len(j.Args)-1])
				}
			}
			var got []string
			for _, r := range e.fake.Rules(tbl, builtin) {
				f := strings.Fields(r)
				got = append(got, f[len(f)-1])
			}
			if diff := cmp.Diff(want, got); diff != "" {
				problems = append(problems, fmt.Sprintf("%s/%s jump order (-plan.Jumps +installed):\n%s", tbl, builtin, diff))
			}
		}
	}

	// What the order changes: a forwarded packet that already carries the
	// masquerade bit (another component marking with kube-proxy's 0x4000)
	// is accepted by SVCP-FORWARD before SVCP-FILTER can drop or reject it.
	lb := service("lb", "10.96.2.20", 80, loadBalancer("192.0.2.100", "198.51.100.0/24"))
	empty := service("empty", "10.96.0.20", 80)
	e = newEnv(t, lb, slice(lb, ready("10.244.2.20", otherNode)), empty, slice(empty))
	for _, tc := range []struct {
		name, dst string
		want      []string
	}{
		{"marked packet from a source outside loadBalancerSourceRanges", "192.0.2.100:80", dropped},
		{"marked packet to a service without endpoints", "10.96.0.20:80", rejected},
	} {
		p := packet(outsider, tc.dst, "tcp")
		p.Mark = 0x4000
		outs, err := e.fake.Trace(p)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, o := range outs {
			got = append(got, o.String())
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			problems = append(problems, fmt.Sprintf("%s (-want +got):\n%s", tc.name, diff))
		}
	}
	if len(problems) > 0 {
		t.Error("EnsureJump (and Plan.String) insert each jump at the top, so the jumps of one built-in chain end up in the reverse of their order in iptables.jumps:\n" + strings.Join(problems, "\n"))
	}
}

var builtinOrder = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}
