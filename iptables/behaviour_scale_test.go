package iptables_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// Many services: the dispatch and node-port trees get several levels, and
// every service must still be reachable through them.

func TestBehaviourManyServices(t *testing.T) { manyServicesScenario().run(t) }

func manyServicesScenario() scenario {
	var objs []any
	var flows []flow
	for i := range 40 {
		// Half in 10.96.3.x, half in 10.96.131.x: the address tree splits
		// at /20 first, then inside each half.
		ip := fmt.Sprintf("10.96.3.%d", i+1)
		if i >= 20 {
			ip = fmt.Sprintf("10.96.131.%d", i+1)
		}
		np := int32(30000 + 7*i)
		svc := service(fmt.Sprintf("svc%02d", i), ip, 80, nodePort(np))
		ep1, ep2 := fmt.Sprintf("10.244.1.%d", 100+i), fmt.Sprintf("10.244.2.%d", 100+i)
		objs = append(objs, svc, slice(svc, ready(ep1, thisNode), ready(ep2, otherNode)))
		eps := []string{ep1 + ":8080", ep2 + ":8080"}
		flows = append(flows,
			flow{name: svc.Name + " cluster IP", from: podHere, to: ip + ":80", want: reach(noMasq, eps...)},
			flow{name: svc.Name + " node port", from: outsider, to: fmt.Sprintf("192.168.0.1:%d", np), want: reach(masq, eps...)},
		)
	}
	flows = append(flows,
		flow{name: "unallocated IP between services", from: podHere, to: "10.96.3.200:80", want: untouched},
		flow{name: "unallocated node port between services", from: outsider, to: "192.168.0.1:30001", want: untouched},
	)
	return scenario{objs: objs, flows: flows, check: checkTrees}
}

// checkTrees asserts that the Fake holds a dispatch tree of several levels
// and a node-port tree.
func checkTrees(t *testing.T, e *env) {
	var tree, nested, npTree int
	for _, c := range ownedChains(e.fake, "nat") {
		switch {
		case strings.HasPrefix(c, "SVCP-T-"):
			tree++
			for _, r := range e.fake.Rules("nat", c) {
				if strings.Contains(r, "-g SVCP-T-") {
					nested++
				}
			}
		case strings.HasPrefix(c, "SVCP-NP-"):
			npTree++
		}
	}
	if tree == 0 || nested == 0 || npTree == 0 {
		t.Errorf("want a dispatch tree of several levels and a node-port tree; got %d SVCP-T-* chains (%d jumps between them), %d SVCP-NP-* chains:\n%s",
			tree, nested, npTree, e.fake.Dump())
	}
}

// TestBehaviourDeepDispatchTree builds the deepest address tree Render can
// make: at every nibble more than leafSize keys share the prefix so far, and
// the innermost key holds enough rules to get a /32 chain of its own. The
// tracer fails any path nesting more than MaxDepth chains.
func TestBehaviourDeepDispatchTree(t *testing.T) { deepTreeScenario().run(t) }

func deepTreeScenario() scenario {
	base := netip.MustParseAddr("10.96.200.1")
	b := base.As4()
	baseKey := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	var objs []any
	var flows []flow
	add := func(name string, key uint32) {
		ip := netip.AddrFrom4([4]byte{byte(key >> 24), byte(key >> 16), byte(key >> 8), byte(key)}).String()
		svc := service(name, ip, 80)
		ep := fmt.Sprintf("10.244.2.%d", len(objs)/2+1)
		objs = append(objs, svc, slice(svc, ready(ep, otherNode)))
		flows = append(flows, flow{name: name, from: podHere, to: ip + ":80", want: reach(noMasq, ep+":8080")})
	}
	for nibble := range 8 {
		for v := uint32(1); v <= 8; v++ {
			add(fmt.Sprintf("n%d-v%d", nibble, v), baseKey^v<<(28-4*nibble))
		}
	}
	// The innermost key is the IP of a load balancer with source ranges
	// and local policy (dispatch -> tree -> FW -> EXT -> SVL), with three
	// ports so that its /32 gets a chain of its own.
	deep := service("deep", "10.96.5.5", 80, loadBalancer(base.String(), "198.51.100.0/24"), etpLocal)
	deep.Spec.Ports = append(deep.Spec.Ports,
		v1.ServicePort{Name: "b", Port: 81, Protocol: v1.ProtocolTCP},
		v1.ServicePort{Name: "c", Port: 82, Protocol: v1.ProtocolTCP})
	objs = append(objs, deep, slice(deep, ready("10.244.1.104", thisNode), ready("10.244.2.104", otherNode)))
	flows = append(flows,
		flow{name: "deep LB IP, allowed client", from: allowedSrc, to: base.String() + ":80", want: reach(noMasq, "10.244.1.104:8080")},
		flow{name: "deep LB IP, other client", from: outsider, to: base.String() + ":80", want: dropped},
	)
	return scenario{objs: objs, flows: flows, check: func(t *testing.T, e *env) {
		paths, err := e.fake.Explain(packet(allowedSrc, base.String()+":80", "tcp"))
		if err != nil {
			t.Fatal(err)
		}
		levels := 0
		for _, s := range paths[0].Steps {
			if strings.Contains(s, " -g SVCP-T-") {
				levels++
			}
		}
		if levels != 8 {
			t.Errorf("want a path through 8 nested tree chains (/4 to /32), got %d:\n%s", levels, paths[0])
		}
	}}
}
