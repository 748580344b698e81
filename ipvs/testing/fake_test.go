package ipvstest

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/ipvs"
)

var (
	key  = ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.0.1"), Protocol: v1.ProtocolTCP, Port: 443}
	rs   = &ipvs.RealServer{Address: netip.MustParseAddr("10.244.1.10"), Port: 6443, Weight: 1}
	key6 = ipvs.ServiceKey{Address: netip.MustParseAddr("fd00:10:96::1"), Protocol: v1.ProtocolTCP, Port: 443}
	rs6  = &ipvs.RealServer{Address: netip.MustParseAddr("fd00:10:244:1::a"), Port: 6443, Weight: 1}
)

// isInvalid: the kernel's EINVAL, neither IsNotFound nor IsExist.
func isInvalid(err error) bool {
	return errors.Is(err, syscall.EINVAL) && !ipvs.IsNotFound(err) && !ipvs.IsExist(err)
}

// withService returns a fake holding the virtual server k.
func withService(t *testing.T, k ipvs.ServiceKey) *Fake {
	t.Helper()
	f := NewFake()
	if err := f.AddService(&ipvs.VirtualServer{ServiceKey: k, Scheduler: "rr"}); err != nil {
		t.Fatal(err)
	}
	return f
}

// wired returns an iptables fake wired to f, after restoring sets (ipset
// restore lines) into f.
func wired(t *testing.T, f *Fake, sets ...string) *iptablestest.Fake {
	t.Helper()
	ipt := iptablestest.NewFake()
	if err := f.UseIPTables(ipt); err != nil {
		t.Fatal(err)
	}
	if err := f.RestoreSets([]byte(strings.Join(sets, "\n") + "\n")); err != nil {
		t.Fatal(err)
	}
	return ipt
}

// TestFakeRefuses: what the kernel refuses, the fake refuses, with the
// error kinds callers rely on.
func TestFakeRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(f *Fake) error
		is   func(error) bool // nil: any error
	}{
		{"destination of a missing service", func(f *Fake) error { return f.AddDestination(key, rs) }, ipvs.IsNotFound},
		{"service twice", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"})
			return f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"})
		}, ipvs.IsExist},
		{"unknown scheduler", func(f *Fake) error { return f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "nope"}) }, nil},
		{"IPv6 service with a zone", func(f *Fake) error {
			return f.AddService(&ipvs.VirtualServer{ServiceKey: ipvs.ServiceKey{Address: netip.MustParseAddr("fe80::1%eth0"), Protocol: v1.ProtocolTCP, Port: 1}, Scheduler: "rr"})
		}, nil},
		{"IPv4-mapped service", func(f *Fake) error {
			return f.AddService(&ipvs.VirtualServer{ServiceKey: ipvs.ServiceKey{Address: netip.MustParseAddr("::ffff:10.96.0.1"), Protocol: v1.ProtocolTCP, Port: 1}, Scheduler: "rr"})
		}, nil},
		{"IPv6 destination of an IPv4 service", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"})
			return f.AddDestination(key, rs6)
		}, isInvalid},
		{"IPv4 destination of an IPv6 service", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key6, Scheduler: "rr"})
			return f.AddDestination(key6, rs)
		}, isInvalid},
		{"update of an IPv4 destination of an IPv6 service", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key6, Scheduler: "rr"})
			return f.UpdateDestination(key6, rs)
		}, isInvalid},
		{"delete of an IPv4 destination of an IPv6 service", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key6, Scheduler: "rr"})
			return f.DeleteDestination(key6, rs)
		}, ipvs.IsNotFound},
		{"multicast IPv6 destination", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key6, Scheduler: "rr"})
			return f.AddDestination(key6, &ipvs.RealServer{Address: netip.MustParseAddr("ff02::1"), Port: 80})
		}, isInvalid},
		{"link-local IPv6 destination", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key6, Scheduler: "rr"})
			return f.AddDestination(key6, &ipvs.RealServer{Address: netip.MustParseAddr("fe80::1"), Port: 80})
		}, isInvalid},
		{"broadcast IPv4 destination", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"})
			return f.AddDestination(key, &ipvs.RealServer{Address: netip.MustParseAddr("255.255.255.255"), Port: 80})
		}, isInvalid},
		{"IPv4-mapped destination of an IPv6 service", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key6, Scheduler: "rr"})
			return f.AddDestination(key6, &ipvs.RealServer{Address: netip.MustParseAddr("::ffff:10.244.1.10"), Port: 80})
		}, isInvalid},
		{"IPv6 destination twice", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key6, Scheduler: "rr"})
			f.AddDestination(key6, rs6)
			return f.AddDestination(key6, rs6)
		}, ipvs.IsExist},
		{"destination twice", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"})
			f.AddDestination(key, rs)
			return f.AddDestination(key, rs)
		}, ipvs.IsExist},
		{"update of a missing destination", func(f *Fake) error {
			f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"})
			return f.UpdateDestination(key, rs)
		}, ipvs.IsNotFound},
		{"delete of a missing service", func(f *Fake) error { return f.DeleteService(key) }, ipvs.IsNotFound},
		{"listing destinations of a missing service", func(f *Fake) error { _, err := f.ListDestinations(key); return err }, ipvs.IsNotFound},
		{"address on a missing link", func(f *Fake) error { return f.AddAddress("nolink", key.Address) }, ipvs.IsNotFound},
		{"address twice", func(f *Fake) error {
			f.EnsureDummy("d0")
			f.AddAddress("d0", key.Address)
			return f.AddAddress("d0", key.Address)
		}, ipvs.IsExist},
		{"deleting an unbound address", func(f *Fake) error { f.EnsureDummy("d0"); return f.DeleteAddress("d0", key.Address) }, ipvs.IsNotFound},
		{"IPv6 address twice", func(f *Fake) error {
			f.EnsureDummy("d0")
			f.AddAddress("d0", key6.Address)
			return f.AddAddress("d0", key6.Address)
		}, ipvs.IsExist},
		{"deleting an unbound IPv6 address", func(f *Fake) error { f.EnsureDummy("d0"); return f.DeleteAddress("d0", key6.Address) }, ipvs.IsNotFound},
		// The kernel says EADDRNOTAVAIL, which IsNotFound takes for a
		// missing link or address.
		{"multicast IPv6 address", func(f *Fake) error {
			f.EnsureDummy("d0")
			return f.AddAddress("d0", netip.MustParseAddr("ff02::5"))
		}, func(err error) bool { return errors.Is(err, syscall.EADDRNOTAVAIL) }},
		{"IPv6 loopback address", func(f *Fake) error {
			f.EnsureDummy("d0")
			return f.AddAddress("d0", netip.IPv6Loopback())
		}, func(err error) bool { return errors.Is(err, syscall.EADDRNOTAVAIL) }},
		{"link-local IPv6 address", func(f *Fake) error { f.EnsureDummy("d0"); return f.AddAddress("d0", netip.MustParseAddr("fe80::1")) }, nil},
		{"IPv4-mapped address", func(f *Fake) error {
			f.EnsureDummy("d0")
			return f.AddAddress("d0", netip.MustParseAddr("::ffff:10.96.0.1"))
		}, nil},
		{"link name too long", func(f *Fake) error { return f.EnsureDummy("a-very-long-link-name") }, nil},
		{"entry in a missing set", func(f *Fake) error { return f.RestoreSets([]byte("add NOPE 10.0.0.1\n")) }, nil},
		{"entry of the wrong shape", func(f *Fake) error {
			return f.RestoreSets([]byte("create S hash:ip,port\nadd S 10.0.0.1\n"))
		}, nil},
		{"0.0.0.0/0 in a net set", func(f *Fake) error {
			return f.RestoreSets([]byte("create S hash:net\nadd S 0.0.0.0/0\n"))
		}, nil},
		{"set re-created with another type", func(f *Fake) error {
			return f.RestoreSets([]byte("create S hash:ip\ncreate S hash:net\n"))
		}, nil},
		{"unknown sysctl", func(f *Fake) error { return f.SetSysctl("net/ipv4/nope", "1") }, nil},
		{"destroying a set an iptables rule uses", func(f *Fake) error {
			ipt := wired(t, f, "create S hash:ip")
			if err := ipt.Restore([]byte("*filter\n-A INPUT -m set --match-set S src -j ACCEPT\nCOMMIT\n")); err != nil {
				return nil // not the error under test: fail below
			}
			return f.RestoreSets([]byte("destroy S\n"))
		}, func(err error) bool { return strings.Contains(err.Error(), "in use") }},
		{"an iptables rule naming a missing set", func(f *Fake) error {
			ipt := wired(t, f)
			return ipt.Restore([]byte("*filter\n-A INPUT -m set --match-set NOPE src -j ACCEPT\nCOMMIT\n"))
		}, func(err error) bool { return strings.Contains(err.Error(), "Set NOPE doesn't exist") }},
		{"an iptables jump naming a missing set", func(f *Fake) error {
			ipt := wired(t, f)
			return ipt.EnsureJump(iptables.Jump{Table: "filter", Chain: "INPUT", Args: []string{"-m", "set", "--match-set", "NOPE", "src", "-j", "ACCEPT"}})
		}, func(err error) bool { return strings.Contains(err.Error(), "Set NOPE doesn't exist") }},
		{"references to a missing set", func(f *Fake) error { return f.ReferenceSets(map[string]int{"NOPE": 1}) }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do(NewFake())
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !tc.is(err) {
				t.Errorf("error %v is not of the expected kind", err)
			}
		})
	}
}

// TestFakeSets: restore is not atomic, and gathers consecutive adds of a
// set like ipset: a line that does not parse loses the adds gathered
// before it, an element the kernel refuses keeps the ones before it. It
// stores entries as ipset save prints them.
func TestFakeSets(t *testing.T) {
	f := NewFake()
	err := f.RestoreSets([]byte(strings.Join([]string{
		"# a comment",
		"create N hash:net family inet hashsize 1024 maxelem 1048576",
		"add N 10.1.2.3/32",
		"add N 10.1.2.0/255.255.255.0", // does not parse: stops here, loses line 3
		"add N 10.9.0.0/16",
	}, "\n")))
	if err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("error %v, want one naming line 4", err)
	}
	got, ok := f.SetEntries("N")
	if d := cmp.Diff([]string(nil), got); d != "" || !ok {
		t.Errorf("N exists: %v; entries (-want +got):\n%s", ok, d)
	}
	err = f.RestoreSets([]byte(strings.Join([]string{
		"add N 10.1.2.3/32",
		"add N 0.0.0.0/0", // the kernel refuses it: line 1 stays
		"add N 10.9.0.0/16",
	}, "\n")))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("error %v, want one naming line 2", err)
	}
	if got, _ := f.SetEntries("N"); !cmp.Equal([]string{"10.1.2.3"}, got) {
		t.Errorf("entries %q, want [10.1.2.3]", got)
	}
	if err := f.RestoreSets([]byte("create N hash:net family inet hashsize 4096 maxelem 1048576\nadd N 10.9.1.1/16\nadd N 10.1.2.3\ndel N 10.1.2.3\ndel N 10.1.2.3\n")); err != nil {
		t.Fatalf("-exist semantics: %v", err)
	}
	got, _ = f.SetEntries("N")
	if d := cmp.Diff([]string{"10.9.0.0/16"}, got); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
	}
	// -exist does not cover another maxelem, a type or option the fake
	// does not model, or a bitmap without its range.
	for _, bad := range []string{
		"create N hash:net",
		"create M hash:ip counters",
		"create M hash:ip timeout 60",
		"create P bitmap:port",
		"create P bitmap:port range 30000-32767\nadd P 80",
	} {
		if err := f.RestoreSets([]byte(bad + "\n")); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestFakeServices: a service keeps its destinations, their weights and
// connection counts.
func TestFakeServices(t *testing.T) {
	f := NewFake()
	if err := f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr", Timeout: 60}); err != nil {
		t.Fatal(err)
	}
	if err := f.AddDestination(key, rs); err != nil {
		t.Fatal(err)
	}
	if err := f.UpdateDestination(key, &ipvs.RealServer{Address: rs.Address, Port: rs.Port, Weight: 0}); err != nil {
		t.Fatal(err)
	}
	f.SetConnections(key, rs.AddrPort(), 3, 4)
	svcs, _ := f.ListServices()
	want := []*ipvs.VirtualServer{{ServiceKey: key, Scheduler: "rr", Timeout: 60,
		Destinations: []*ipvs.RealServer{{Address: rs.Address, Port: rs.Port, Weight: 0, ActiveConns: 3, InactiveConns: 4}}}}
	if d := cmp.Diff(want, svcs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("services (-want +got):\n%s", d)
	}
	if err := f.DeleteService(key); err != nil {
		t.Fatal(err)
	}
	if svcs, _ := f.ListServices(); len(svcs) != 0 {
		t.Errorf("left after delete: %v", svcs)
	}
}

// TestFakeIPv6Services: IPv6 virtual servers with IPv6 real servers live
// beside IPv4 ones, and are listed with them.
func TestFakeIPv6Services(t *testing.T) {
	f := withService(t, key6)
	if err := f.AddService(&ipvs.VirtualServer{ServiceKey: key, Scheduler: "rr"}); err != nil {
		t.Fatal(err)
	}
	if err := f.AddDestination(key6, rs6); err != nil {
		t.Fatalf("IPv6 real server of an IPv6 virtual server: %v", err)
	}
	if err := f.AddDestination(key, rs); err != nil {
		t.Fatal(err)
	}
	if err := f.UpdateDestination(key6, &ipvs.RealServer{Address: rs6.Address, Port: rs6.Port, Weight: 5}); err != nil {
		t.Fatal(err)
	}
	svcs, err := f.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(svcs, func(a, b *ipvs.VirtualServer) int { return a.ServiceKey.Compare(b.ServiceKey) })
	want := []*ipvs.VirtualServer{
		{ServiceKey: key, Scheduler: "rr", Destinations: []*ipvs.RealServer{{Address: rs.Address, Port: rs.Port, Weight: 1}}},
		{ServiceKey: key6, Scheduler: "rr", Destinations: []*ipvs.RealServer{{Address: rs6.Address, Port: rs6.Port, Weight: 5}}},
	}
	if d := cmp.Diff(want, svcs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("services (-want +got):\n%s", d)
	}
	if err := f.DeleteDestination(key6, rs6); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteService(key6); err != nil {
		t.Fatal(err)
	}
}

// TestFakeIPv6Addresses: IPv6 addresses are bound and listed with the
// IPv4 ones, sorted.
func TestFakeIPv6Addresses(t *testing.T) {
	f := NewFake()
	if err := f.EnsureDummy("d0"); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"fd00::2", "10.96.0.10", "2001:db8::1", "10.96.0.1"} {
		if err := f.AddAddress("d0", netip.MustParseAddr(a)); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
	if err := f.DeleteAddress("d0", netip.MustParseAddr("2001:db8::1")); err != nil {
		t.Fatal(err)
	}
	got, err := f.ListAddresses("d0")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::2")}
	if !slices.Equal(want, got) {
		t.Errorf("addresses %v, want %v", got, want)
	}
}

// TestFakeIPv6Sets: sets of family inet6 hold IPv6 elements, printed as
// ipset save prints them, and refuse IPv4 ones; a set keeps its family
// when created again with the other, and then ipset and the kernel
// disagree on it (see RestoreSets).
func TestFakeIPv6Sets(t *testing.T) {
	const opts4, opts6 = " family inet hashsize 1024 maxelem 1048576", " family inet6 hashsize 1024 maxelem 1048576"
	f := NewFake()
	if err := f.RestoreSets([]byte(strings.Join([]string{
		"create IP hash:ip" + opts6, "add IP FD00:0:0::1", "add IP ::10.0.0.1", "add IP fd00::2/128",
		"create IPPORT hash:ip,port" + opts6, "add IPPORT fd00::1,80",
		"create IPPORTIP hash:ip,port,ip" + opts6, "add IPPORTIP fd00::1,tcp:80,fd00::5",
		"create IPPORTNET hash:ip,port,net" + opts6, "add IPPORTNET fd00::1,udp:53,2001:db8::7/64",
		"create NET hash:net" + opts6, "add NET fd00:10:244::/56", "add NET fd00::9/128", "add NET fd00::9/127",
		"create V4 hash:ip" + opts4,
	}, "\n"))); err != nil {
		t.Fatal(err)
	}
	sets, _ := f.ListSets()
	want := []*ipvs.Set{
		{Name: "IP", Type: "hash:ip", Entries: []string{"::10.0.0.1", "fd00::1", "fd00::2"}},
		{Name: "IPPORT", Type: "hash:ip,port", Entries: []string{"fd00::1,tcp:80"}},
		{Name: "IPPORTIP", Type: "hash:ip,port,ip", Entries: []string{"fd00::1,tcp:80,fd00::5"}},
		{Name: "IPPORTNET", Type: "hash:ip,port,net", Entries: []string{"fd00::1,udp:53,2001:db8::/64"}},
		{Name: "NET", Type: "hash:net", Entries: []string{"fd00:10:244::/56", "fd00::8/127", "fd00::9"}},
		{Name: "V4", Type: "hash:ip", Entries: []string{}},
	}
	if d := cmp.Diff(want, sets); d != "" {
		t.Errorf("sets (-want +got):\n%s", d)
	}
	for _, bad := range []string{
		"add IP 10.0.0.1",
		"add V4 ::ffff:10.0.0.1",
		"add V4 fd00::1",
		"add IP fd00::/120",
		"add IP ::",
		"add IPPORTIP fd00::1,tcp:80,fd00::5/128",
		"add IPPORTNET fd00::1,tcp:80,10.0.0.0/8",
		"add NET ::/0",
		"add NET fd00::/129",
	} {
		if err := f.RestoreSets([]byte(bad + "\n")); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}

	// Created again as inet6, V4 stays inet: ipset parses the IPv6
	// element, the kernel refuses it.
	err := f.RestoreSets([]byte("create V4 hash:ip" + opts6 + "\nadd V4 fd00::1\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "protocol error") {
		t.Errorf("IPv6 element in an inet set created again as inet6: got %v, want a protocol error in line 2", err)
	}
	// In one restore, ipset keeps the family of the first create line.
	err = f.RestoreSets([]byte("create V4 hash:ip" + opts4 + "\ncreate V4 hash:ip" + opts6 + "\nadd V4 fd00::1\n"))
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "resolving to IPv4") {
		t.Errorf("IPv6 element after two creates: got %v, want a syntax error in line 3", err)
	}
	// Destroyed and created again, it is inet6.
	if err := f.RestoreSets([]byte("add V4 10.0.0.1\ndestroy V4\ncreate V4 hash:ip" + opts6 + "\nadd V4 fd00::1\n")); err != nil {
		t.Errorf("destroyed and created as inet6: %v", err)
	}
	if got, _ := f.SetEntries("V4"); !slices.Equal(got, []string{"fd00::1"}) {
		t.Errorf("entries %q, want [fd00::1]", got)
	}
}

// TestFakeSetsInUse: a set is held by the iptables rules that match it, as
// in the kernel. Flushing it is fine, destroying it fails until the last
// rule using it is gone, whichever way it goes; a failed destroy leaves
// the set and the lines before it applied, as ipset does.
func TestFakeSetsInUse(t *testing.T) {
	f := NewFake()
	ipt := wired(t, f, "create A hash:ip", "create B hash:ip,port", "add A 10.0.0.1")
	if err := ipt.Restore([]byte("*nat\n:X - [0:0]\n-A X -m set --match-set A src -m set ! --match-set B dst,dst -j ACCEPT\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	jump := iptables.Jump{Table: "filter", Chain: "INPUT", Args: []string{"-m", "set", "--match-set", "A", "dst", "-j", "ACCEPT"}}
	if err := ipt.EnsureJump(jump); err != nil {
		t.Fatal(err)
	}
	if got := f.SetReferences("A"); got != 2 {
		t.Errorf("references to A: %d, want 2", got)
	}
	if err := f.RestoreSets([]byte("flush A\n")); err != nil {
		t.Errorf("flushing a set in use: %v", err)
	}
	err := f.RestoreSets([]byte("create C hash:ip\ndestroy B\ndestroy C\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "in use") {
		t.Errorf("destroying B in use: got %v, want an error naming line 2", err)
	}
	if _, ok := f.SetEntries("C"); !ok {
		t.Error("the line before the failing one was not applied")
	}
	if _, ok := f.SetEntries("B"); !ok {
		t.Error("B was destroyed while in use")
	}

	// The chain goes: B is free, A is still held by the jump.
	if err := ipt.Restore([]byte("*nat\n-F X\n-X X\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := f.RestoreSets([]byte("destroy B\n")); err != nil {
		t.Errorf("destroying B once unused: %v", err)
	}
	if err := f.RestoreSets([]byte("destroy A\n")); err == nil {
		t.Error("destroyed A while the jump uses it")
	}
	if err := ipt.DeleteJump(jump); err != nil {
		t.Fatal(err)
	}
	if err := f.RestoreSets([]byte("destroy A\ndestroy A\n")); err != nil {
		t.Errorf("destroying A once unused, then again (-exist): %v", err)
	}

	// A rule cannot come back for a set that is gone.
	if err := ipt.Restore([]byte("*nat\n:X - [0:0]\n-A X -m set --match-set A src -j ACCEPT\nCOMMIT\n")); err == nil {
		t.Error("a rule naming a destroyed set was taken")
	}
}

// TestSetReferencesOfTwoIPTables: with iptables and ip6tables fakes wired,
// a set is in use while a rule of either names it; one's rules do not
// replace the other's references.
func TestSetReferencesOfTwoIPTables(t *testing.T) {
	f := NewFake()
	ipt4, ipt6 := iptablestest.NewFake(), iptablestest.NewFake6()
	for _, ipt := range []*iptablestest.Fake{ipt4, ipt6} {
		if err := f.UseIPTables(ipt); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.RestoreSets([]byte("create A hash:ip family inet\ncreate B hash:ip family inet6\n")); err != nil {
		t.Fatal(err)
	}
	if err := ipt4.Restore([]byte("*filter\n:X - [0:0]\n-A X -m set --match-set A dst -j DROP\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := ipt6.Restore([]byte("*filter\n:X - [0:0]\n-A X -m set --match-set B dst -j DROP\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if got := f.SetReferences("A"); got != 1 {
		t.Errorf("references to A after ip6tables' restore: %d, want 1", got)
	}
	if err := f.RestoreSets([]byte("destroy A\n")); err == nil {
		t.Error("destroyed A while an iptables rule uses it")
	}
	if err := f.RestoreSets([]byte("destroy B\n")); err == nil {
		t.Error("destroyed B while an ip6tables rule uses it")
	}
}
