//go:build vm

package vmtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/svcproxy/svcproxy/iptables"
)

// The tests of this file prove the IPv6 half of the test bed without IPVS
// mode's code: routing through the node (newDualStackTopology, addPod,
// startServer6, dial), ip6tables and ipset of the kind IPVS mode programs,
// and an IPv6 virtual server programmed with moby/ipvs.

// TestIPv6BedRouting: pods, the node and the outside client reach each
// other over IPv6, TCP and UDP, through the node without address
// translation; IPv4 works beside it, and an IPv6-only pod works too.
func TestIPv6BedRouting(t *testing.T) {
	tp := newDualStackTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10", srv1IP6)
	srv2 := tp.addPod(t, "srv2", srv2IP6) // IPv6 only
	cli := tp.addPod(t, "cli", "10.244.1.20", cliIP6)
	startServer(t, srv1, "srv1", 8080)
	startServer6(t, srv1, "srv1", 8080)
	startServer6(t, srv2, "srv2", 8080)
	startServer6(t, tp.node, "node", 8082)
	startServer6(t, tp.outside, "outside", 8083)

	for _, tc := range []struct {
		name, from, to string
		want           answer
	}{
		{"pod to pod", "cli", addr(srv1IP6, 8080), answer{"srv1", cliIP6}},
		{"pod to IPv6-only pod", "cli", addr(srv2IP6, 8080), answer{"srv2", cliIP6}},
		{"IPv6-only pod to pod", "srv2", addr(srv1IP6, 8080), answer{"srv1", srv2IP6}},
		{"outside to node", "outside", addr(nodeIP6, 8082), answer{"node", outsideIP6}},
		{"outside to pod", "outside", addr(srv1IP6, 8080), answer{"srv1", outsideIP6}},
		{"node to pod", "node", addr(srv1IP6, 8080), answer{"srv1", podGW6}},
		{"pod to outside", "cli", addr(outsideIP6, 8083), answer{"outside", cliIP6}},
		{"IPv4 beside", "cli", addr("10.244.1.10", 8080), answer{"srv1", "10.244.1.20"}},
	} {
		ns := map[string]nsHandle{"cli": cli, "srv2": srv2, "outside": tp.outside, "node": tp.node}[tc.from]
		for _, proto := range []string{"tcp", "udp"} {
			got, err := dial(ns, proto, tc.to)
			if err != nil || got != tc.want {
				t.Errorf("%s (%s %s): got %+v, %v; want %+v", tc.name, proto, tc.to, got, err, tc.want)
			}
		}
	}
}

// bed6IPSets and bed6Rules are a small ruleset of the kind IPVS mode
// feeds to ipset restore and ip6tables-restore --noflush: sets of
// hash:ip,port family inet6 matched dst,dst; REJECT of a service port
// without endpoints; DROP by address type; kube-proxy's masquerade
// marking (MARK, mark match, MASQUERADE) for clients outside the cluster
// CIDR; conntrack and comment matches.
const bed6IPSets = `create BED6-REJECT hash:ip,port family inet6
add BED6-REJECT fd00:10:244:1::10,tcp:8081
add BED6-REJECT fd00:10:244:1::10,udp:8081
create BED6-MASQ hash:ip,port family inet6
add BED6-MASQ fd00:10:244:1::10,tcp:8080
add BED6-MASQ fd00:10:244:1::10,udp:8080
`

const bed6Rules = `*filter
:BED6-FORWARD - [0:0]
:BED6-INPUT - [0:0]
-A FORWARD -m comment --comment "bed6: forward" -j BED6-FORWARD
-A INPUT -m comment --comment "bed6: input" -j BED6-INPUT
-A BED6-FORWARD -m conntrack --ctstate INVALID -j DROP
-A BED6-FORWARD -m comment --comment "bed6: no endpoints" -m set --match-set BED6-REJECT dst,dst -m conntrack --ctstate NEW -j REJECT
-A BED6-INPUT -p tcp -m tcp --dport 8082 -m addrtype --dst-type LOCAL -j DROP
COMMIT
*nat
:BED6-PREROUTING - [0:0]
:BED6-POSTROUTING - [0:0]
:BED6-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "bed6: services" -j BED6-PREROUTING
-A POSTROUTING -m comment --comment "bed6: postrouting" -j BED6-POSTROUTING
-A BED6-PREROUTING ! -s ` + clusterCIDR6 + ` -m set --match-set BED6-MASQ dst,dst -j BED6-MARK-MASQ
-A BED6-MARK-MASQ -j MARK --or-mark 0x4000
-A BED6-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A BED6-POSTROUTING -j MARK --xor-mark 0x4000
-A BED6-POSTROUTING -m comment --comment "bed6: masquerade" -j MASQUERADE
COMMIT
`

// TestIPv6BedIP6Tables: in the node namespace, ipset restore takes sets of
// family inet6 and ip6tables-restore --noflush takes rules matching them,
// and the rules work: REJECT refuses (TCP and UDP), DROP by addrtype
// drops, MASQUERADE gives an outside client's connection the node's
// address on the pod's link, and pods keep their own.
func TestIPv6BedIP6Tables(t *testing.T) {
	tp := newDualStackTopology(t)
	srv1 := tp.addPod(t, "srv1", srv1IP6)
	cli := tp.addPod(t, "cli", cliIP6)
	startServer6(t, srv1, "srv1", 8080)
	startServer6(t, srv1, "srv1", 8081)
	startServer6(t, tp.node, "node", 8082)

	// Before the rules everything answers.
	for _, c := range []struct {
		from nsHandle
		to   string
	}{{cli, addr(srv1IP6, 8081)}, {tp.outside, addr(nodeIP6, 8082)}} {
		if _, err := dial(c.from, "tcp", c.to); err != nil {
			t.Fatalf("before the rules, %s: %v", c.to, err)
		}
	}

	var variant iptables.Variant
	must(t, inNS(tp.node, func() error { variant = iptables.DetectVariant(); return nil }))
	t.Logf("iptables variant in the node namespace: %s", variant)
	feed(t, tp.node, bed6IPSets, "ipset", "restore")
	feed(t, tp.node, bed6Rules, "ip6tables-"+string(variant)+"-restore", "--noflush")
	saved := cmdOutput(t, tp.node, "ip6tables-"+string(variant)+"-save")
	for _, want := range []string{
		"--match-set BED6-REJECT dst,dst", "-j REJECT", "--match-set BED6-MASQ dst,dst",
		"-j MASQUERADE", "--dst-type LOCAL", "--ctstate INVALID", `"bed6: no endpoints"`,
	} {
		if !strings.Contains(saved, want) {
			t.Errorf("ip6tables-%s-save has no %q:\n%s", variant, want, saved)
		}
	}
	t.Logf("ipset list -t: %s", cmdOutput(t, tp.node, "ipset", "list", "-t", "BED6-MASQ"))
	t.Logf("kernel modules in use: %s", modulesInUse(t, "ip6t_REJECT", "nft_reject_ipv6", "nf_reject_ipv6", "ip6_tables", "ip6table_filter", "ip6table_nat", "nft_compat", "nft_chain_nat", "xt_set", "xt_MASQUERADE", "xt_addrtype"))

	for _, proto := range []string{"tcp", "udp"} {
		a, err := dial(cli, proto, addr(srv1IP6, 8081))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("REJECT, %s to [%s]:8081: got %+v, %v; want connection refused", proto, srv1IP6, a, err)
		}
		if got, err := dial(cli, proto, addr(srv1IP6, 8080)); err != nil || got != (answer{"srv1", cliIP6}) {
			t.Errorf("pod, %s: got %+v, %v; want its own address kept", proto, got, err)
		}
		if got, err := dial(tp.outside, proto, addr(srv1IP6, 8080)); err != nil || got != (answer{"srv1", podGW6}) {
			t.Errorf("outside client, %s: got %+v, %v; want masqueraded to %s", proto, got, err, podGW6)
		}
	}
	if a, err := dial(tp.outside, "tcp", addr(nodeIP6, 8082)); !isTimeout(err) {
		t.Errorf("DROP by addrtype, [%s]:8082: got %+v, %v; want a timeout", nodeIP6, a, err)
	}
}

// bedVIP6 is the service address of TestIPv6BedIPVS.
const bedVIP6 = "fd00:10:96::10"

// TestIPv6BedIPVS: an IPv6 virtual server programmed with moby/ipvs in the
// node namespace, the way kube-proxy's IPVS mode does (AddressFamily
// AF_INET6, Netmask 128: a prefix length for IPv6 where IPv4 has the mask
// 0xffffffff), with one masquerading IPv6 real server and the service
// address on a dummy link, takes connections from a pod and from the
// outside client to the pod behind it, TCP and UDP.
func TestIPv6BedIPVS(t *testing.T) {
	if !netip.MustParsePrefix(serviceCIDR6).Contains(netip.MustParseAddr(bedVIP6)) {
		t.Fatalf("%s outside the service CIDR %s", bedVIP6, serviceCIDR6)
	}
	tp := newDualStackTopology(t)
	srv1 := tp.addPod(t, "srv1", srv1IP6)
	cli := tp.addPod(t, "cli", cliIP6)
	startServer6(t, srv1, "srv1", 8080)

	hn := handle(t, tp.node)
	must(t, hn.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "bed6-vip"}}))
	dummy, err := hn.LinkByName("bed6-vip")
	must(t, err)
	t.Cleanup(func() { hn.LinkDel(dummy) })
	must(t, hn.LinkSetUp(dummy))
	must(t, hn.AddrAdd(dummy, nodad(bedVIP6+"/128")))
	waitLocal(t, hn, bedVIP6)

	var h *libipvs.Handle
	must(t, inNS(tp.node, func() error {
		var err error
		h, err = libipvs.New("") // its socket stays in the node namespace
		return err
	}))
	t.Cleanup(h.Close)
	for _, proto := range []uint16{syscall.IPPROTO_TCP, syscall.IPPROTO_UDP} {
		svc := &libipvs.Service{
			Address:       net.ParseIP(bedVIP6),
			Protocol:      proto,
			Port:          80,
			AddressFamily: syscall.AF_INET6,
			Netmask:       128,
			SchedName:     libipvs.RoundRobin,
		}
		must(t, h.NewService(svc))
		t.Cleanup(func() { h.DelService(svc) })
		must(t, h.NewDestination(svc, &libipvs.Destination{
			Address:         net.ParseIP(srv1IP6),
			Port:            8080,
			Weight:          1,
			ConnectionFlags: libipvs.ConnectionFlagMasq,
			AddressFamily:   syscall.AF_INET6,
		}))
	}

	// What the kernel holds, read back.
	svcs, err := h.GetServices()
	must(t, err)
	if len(svcs) != 2 {
		t.Fatalf("%d virtual servers, want 2", len(svcs))
	}
	for _, s := range svcs {
		if s.AddressFamily != syscall.AF_INET6 || s.Netmask != 128 || !s.Address.Equal(net.ParseIP(bedVIP6)) || s.Port != 80 {
			t.Errorf("virtual server read back: %+v", s)
		}
		dsts, err := h.GetDestinations(s)
		must(t, err)
		if len(dsts) != 1 || !dsts[0].Address.Equal(net.ParseIP(srv1IP6)) || dsts[0].Port != 8080 ||
			dsts[0].ConnectionFlags&libipvs.ConnectionFlagFwdMask != libipvs.ConnectionFlagMasq || dsts[0].AddressFamily != syscall.AF_INET6 {
			t.Errorf("real servers of %s read back: %+v", s.Address, dsts)
		}
	}
	t.Logf("ipvsadm -Ln:\n%s", cmdOutput(t, tp.node, "ipvsadm", "-Ln"))

	for _, c := range []struct {
		name   string
		from   nsHandle
		source string
	}{{"pod", cli, cliIP6}, {"outside client", tp.outside, outsideIP6}} {
		for _, proto := range []string{"tcp", "udp"} {
			got, err := dial(c.from, proto, addr(bedVIP6, 80))
			if want := (answer{"srv1", c.source}); err != nil || got != want {
				t.Errorf("%s, %s to [%s]:80: got %+v, %v; want %+v", c.name, proto, bedVIP6, got, err, want)
			}
		}
	}
}

// cmdOutput runs a command in ns and returns its output; failing is fatal.
func cmdOutput(t testing.TB, ns nsHandle, name string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	must(t, inNS(ns, func() error {
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %v: %w\n%s", name, args, err, out.String())
		}
		return nil
	}))
	return out.String()
}

// modulesInUse reports the named modules with their use counts from
// /proc/modules ("-" when not loaded).
func modulesInUse(t testing.TB, names ...string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/modules")
	must(t, err)
	refs := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 3 {
			refs[f[0]] = f[2]
		}
	}
	var out []string
	for _, n := range names {
		r, ok := refs[n]
		if !ok {
			r = "-"
		}
		out = append(out, n+"="+r)
	}
	return strings.Join(out, " ")
}
