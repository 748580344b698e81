//go:build linux

package ipvs

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeIPSet writes a script standing in for the ipset command: it records
// its arguments and standard input in dir, prints saveOutput for "save",
// and fails with stderr when its input holds "fail".
func fakeIPSet(t *testing.T, saveOutput string) (path, dir string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "save.out"), []byte(saveOutput), 0o644); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "ipset")
	script := `#!/bin/sh
echo "$@" >>"` + dir + `/args"
if [ "$1" = save ]; then cat "` + dir + `/save.out"; exit 0; fi
cat >>"` + dir + `/stdin"
if grep -q fail "` + dir + `/stdin"; then echo "ipset v7.17: Error in line 1: boom" >&2; exit 1; fi
`
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, dir
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestKernelIPSet checks the exact commands at the process boundary.
func TestKernelIPSet(t *testing.T) {
	path, dir := fakeIPSet(t, "create SVCP-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 1048576\nadd SVCP-IPVS-IPS 10.96.0.1\n")
	k := NewKernel()
	k.IPSet = path
	sets, err := k.ListSets()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]*Set{{Name: SetIPs, Type: "hash:ip", Entries: []string{"10.96.0.1"}}}, sets); d != "" {
		t.Errorf("sets (-want +got):\n%s", d)
	}
	if err := k.RestoreSets([]byte("add SVCP-IPVS-IPS 10.96.0.2\n")); err != nil {
		t.Fatal(err)
	}
	err = k.RestoreSets([]byte("fail\n"))
	if err == nil || !strings.Contains(err.Error(), "Error in line 1: boom") {
		t.Errorf("failing restore: %v, want ipset's message", err)
	}
	if got, want := readFile(t, filepath.Join(dir, "args")), "save\nrestore -exist\nrestore -exist\n"; got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
	if got, want := readFile(t, filepath.Join(dir, "stdin")), "add SVCP-IPVS-IPS 10.96.0.2\nfail\n"; got != want {
		t.Errorf("input:\n%s\nwant:\n%s", got, want)
	}
}

func TestKernelSysctl(t *testing.T) {
	k := NewKernel()
	k.ProcSys = t.TempDir()
	if err := os.MkdirAll(filepath.Join(k.ProcSys, "net/ipv4/vs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(k.ProcSys, "net/ipv4/vs/conntrack"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if v, err := k.Sysctl("net/ipv4/vs/conntrack"); err != nil || v != "0" {
		t.Fatalf("Sysctl: %q, %v", v, err)
	}
	if err := k.SetSysctl("net/ipv4/vs/conntrack", "1"); err != nil {
		t.Fatal(err)
	}
	if v, _ := k.Sysctl("net/ipv4/vs/conntrack"); v != "1" {
		t.Errorf("after SetSysctl: %q", v)
	}
	if _, err := k.Sysctl("net/ipv4/vs/nope"); err == nil {
		t.Error("missing sysctl: no error")
	}
}

// TestWithinPerFamily: --nodeport-addresses applies per family: a family
// without a prefix matches every address of it (an IPv4-only list used to
// leave a dual-stack node without IPv6 node ports).
func TestWithinPerFamily(t *testing.T) {
	v4only := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	v6only := []netip.Prefix{netip.MustParsePrefix("2001:db8::/64")}
	both := append(slices.Clone(v4only), v6only...)
	for _, tc := range []struct {
		addr     string
		prefixes []netip.Prefix
		want     bool
	}{
		{"10.0.0.5", nil, true},
		{"2001:db8::5", nil, true},
		{"10.0.0.5", v4only, true},
		{"192.168.0.5", v4only, false},
		{"2001:db8::5", v4only, true},
		{"10.0.0.5", v6only, true},
		{"2001:db8:1::5", v6only, false},
		{"2001:db8::5", both, true},
		{"2001:db8:1::5", both, false},
		{"192.168.0.5", both, false},
	} {
		if got := within(netip.MustParseAddr(tc.addr), tc.prefixes); got != tc.want {
			t.Errorf("within(%s, %v) = %v, want %v", tc.addr, tc.prefixes, got, tc.want)
		}
	}
}
