package ipvs

import (
	"net/netip"
	"strings"
	"testing"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		errs []string
	}{
		{name: "defaults"},
		{name: "a kernel scheduler", mod: func(o *Options) { o.Scheduler = "wlc" }},
		{name: "unknown scheduler", mod: func(o *Options) { o.Scheduler = "fastest" }, errs: []string{`IPVS scheduler "fastest"`}},
		{name: "dual-stack", mod: func(o *Options) {
			o.IPv6 = true
			o.NodeAddresses = []netip.Addr{netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("2001:db8::1")}
			o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
		}},
		{name: "IPv6 only", mod: func(o *Options) { o.IPv4, o.IPv6 = false, true }},
		{name: "no family", mod: func(o *Options) { o.IPv4 = false }, errs: []string{"no IP family"}},
		{name: "everything wrong at once", mod: func(o *Options) {
			o.Scheduler = ""
			o.NodeAddresses = []netip.Addr{netip.MustParseAddr("fe80::1"), netip.MustParseAddr("::1"), netip.MustParseAddr("::ffff:10.0.0.1")}
			o.NodePortRange = PortRange{32767, 30000}
			o.ClusterCIDRs = []netip.Prefix{{}}
			o.MasqueradeBit = 32
			o.GracefulTimeout = -1
		}, errs: []string{"IPVS scheduler", "node address fe80::1", "node address ::1", "node address ::ffff:10.0.0.1", "node port range 32767-30000", "cluster CIDR invalid Prefix", "masquerade bit 32", "graceful termination timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			if tc.mod != nil {
				tc.mod(&o)
			}
			err := o.Validate()
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %v", tc.errs)
			}
			for _, e := range tc.errs {
				if !strings.Contains(err.Error(), e) {
					t.Errorf("error %q does not mention %q", err, e)
				}
			}
		})
	}
}

func TestKernelAtLeast(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    bool
	}{
		{"6.1.0-56-amd64", true}, {"5.9.0", true}, {"5.8.18-100", false}, {"4.19.0-20-amd64", false}, {"weird", true},
	} {
		if got := kernelAtLeast(tc.release, 5, 9); got != tc.want {
			t.Errorf("kernelAtLeast(%q, 5, 9) = %v, want %v", tc.release, got, tc.want)
		}
	}
}

func TestParseSetSave(t *testing.T) {
	sets, err := ParseSetSave([]byte(dedent(`
		create SVCP-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x1f2e3d4c
		add SVCP-IPVS-IPS 10.96.0.1
		create OTHER hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 300
		add OTHER 10.0.0.1,udp:53 timeout 120
		create EMPTY hash:net family inet hashsize 1024 maxelem 65536
	`)))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range sets {
		got = append(got, s.Name+" "+s.Type+" "+strings.Join(s.Entries, " "))
	}
	want := "SVCP-IPVS-IPS hash:ip 10.96.0.1|OTHER hash:ip,port 10.0.0.1,udp:53|EMPTY hash:net "
	if strings.Join(got, "|") != want {
		t.Errorf("got %q, want %q", strings.Join(got, "|"), want)
	}
	if _, err := ParseSetSave([]byte("add NOSET 1.2.3.4\n")); err == nil {
		t.Error("an entry before its set: no error")
	}
}
