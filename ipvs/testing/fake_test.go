package ipvstest

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/ipvs"
)

var (
	key = ipvs.ServiceKey{Address: netip.MustParseAddr("10.96.0.1"), Protocol: v1.ProtocolTCP, Port: 443}
	rs  = &ipvs.RealServer{Address: netip.MustParseAddr("10.244.1.10"), Port: 6443, Weight: 1}
)

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
		{"IPv6 service", func(f *Fake) error {
			return f.AddService(&ipvs.VirtualServer{ServiceKey: ipvs.ServiceKey{Address: netip.MustParseAddr("fd00::1"), Protocol: v1.ProtocolTCP, Port: 1}, Scheduler: "rr"})
		}, nil},
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

// TestFakeSets: restore is line by line like ipset (earlier lines stay
// applied) and stores entries as ipset save prints them.
func TestFakeSets(t *testing.T) {
	f := NewFake()
	err := f.RestoreSets([]byte(strings.Join([]string{
		"# a comment",
		"create N hash:net family inet hashsize 1024 maxelem 1048576",
		"add N 10.1.2.3/32",
		"add N 10.1.2.0/255.255.255.0", // bad: stops here
		"add N 10.9.0.0/16",
	}, "\n")))
	if err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("error %v, want one naming line 4", err)
	}
	got, _ := f.SetEntries("N")
	if d := cmp.Diff([]string{"10.1.2.3"}, got); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
	}
	if err := f.RestoreSets([]byte("create N hash:net\nadd N 10.9.1.1/16\nadd N 10.1.2.3\ndel N 10.1.2.3\ndel N 10.1.2.3\n")); err != nil {
		t.Fatalf("-exist semantics: %v", err)
	}
	got, _ = f.SetEntries("N")
	if d := cmp.Diff([]string{"10.9.0.0/16"}, got); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
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
