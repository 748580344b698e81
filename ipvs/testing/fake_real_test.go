//go:build integration

package ipvstest

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/ipvs"
)

// step is one thing done to the kernel: ipset restore -exist input, or
// iptables-restore --noflush input.
type step struct {
	sets, rules string
}

func sets(lines ...string) step  { return step{sets: strings.Join(lines, "\n") + "\n"} }
func rules(lines ...string) step { return step{rules: strings.Join(lines, "\n") + "\n"} }

const (
	opts  = " family inet hashsize 1024 maxelem 1048576"
	opts6 = " family inet6 hashsize 1024 maxelem 1048576"
)

// setCases are sequences of steps; the fake (wired to a fake iptables)
// and the real ipset and iptables must agree on which steps fail and on
// the sets left at the end, entries as ipset save prints them.
var setCases = []struct {
	name  string
	steps []step
	// stricter, when set, says why the fake refuses a step the real
	// ipset takes: a feature it does not model.
	stricter string
}{
	{"every type svcproxy creates, entries canonicalized", []step{sets(
		"create IP hash:ip"+opts, "add IP 10.0.0.1",
		"create IPPORT hash:ip,port"+opts, "add IPPORT 10.0.0.1,80", "add IPPORT 10.0.0.1,udp:53", "add IPPORT 10.0.0.2,sctp:3868",
		"create IPPORTIP hash:ip,port,ip"+opts, "add IPPORTIP 10.244.1.5,tcp:8080,10.244.1.5",
		"create IPPORTNET hash:ip,port,net"+opts, "add IPPORTNET 203.0.113.10,tcp:80,198.51.100.0/24", "add IPPORTNET 203.0.113.10,tcp:80,192.0.2.1/32",
		"create NET hash:net"+opts, "add NET 10.244.0.0/16", "add NET 10.9.1.1/16", "add NET 10.1.2.3/32",
	)}, ""},
	{"-exist: create again, add again, delete a missing entry, destroy a missing set", []step{sets(
		"create A hash:ip"+opts, "add A 10.0.0.1", "create A hash:ip"+opts, "add A 10.0.0.1", "del A 10.0.0.2", "destroy NOPE",
	)}, ""},
	{"create again with another type", []step{sets("create A hash:ip"+opts, "create A hash:net"+opts)}, ""},
	{"add to a missing set", []step{sets("add NOPE 10.0.0.1")}, ""},
	{"flush a missing set", []step{sets("flush NOPE")}, ""},
	{"entry of the wrong shape", []step{sets("create A hash:ip,port"+opts, "add A 10.0.0.1")}, ""},
	{"0.0.0.0/0 in a net set", []step{sets("create A hash:net"+opts, "add A 0.0.0.0/0")}, ""},
	{"port out of range", []step{sets("create A hash:ip,port"+opts, "add A 10.0.0.1,tcp:65536")}, ""},
	{"a line that does not parse loses the adds gathered before it", []step{sets("create A hash:ip"+opts, "add A 10.0.0.1", "add A nonsense", "create B hash:ip"+opts)}, ""},
	{"unknown set type", []step{sets("create A hash:foo" + opts)}, ""},
	{"set name of 32 characters", []step{sets("create " + strings.Repeat("S", 32) + " hash:ip" + opts)}, ""},
	{"netmask form is not an element", []step{sets("create N hash:net"+opts, "add N 10.1.2.3/32", "add N 10.1.2.0/255.255.255.0")}, ""},
	{"the kernel refuses an element: the ones before it stay", []step{sets("create N hash:net"+opts, "add N 10.0.0.1", "add N 0.0.0.0/0", "add N 10.0.0.2")}, ""},
	{"adds of another set are sent when the next set's line parses", []step{sets(
		"create A hash:ip"+opts, "create B hash:ip"+opts, "add A 10.0.0.1", "add B 10.0.0.2", "add A bad")}, ""},
	{"a del line sends the adds before it", []step{sets("create A hash:ip"+opts, "add A 10.0.0.1", "del A 10.0.0.5", "add A bad")}, ""},
	{"flush of a missing set sends the adds before it", []step{sets("create A hash:ip"+opts, "add A 10.0.0.1", "flush NOPE")}, ""},
	{"create again with another maxelem", []step{sets("create A hash:ip"+opts, "create A hash:ip")}, ""},
	{"create again with another hashsize", []step{sets("create A hash:ip"+opts, "create A hash:ip family inet hashsize 4096 maxelem 1048576")}, ""},
	{"port 0", []step{sets("create A hash:ip,port"+opts, "add A 10.0.0.1,tcp:0")}, ""},
	{"kube-proxy's bitmap sets", []step{sets("create P bitmap:port range 0-65535", "add P 30001", "add P tcp:30002",
		"create R bitmap:port range 30000-32767", "add R 30080", "add R 80")}, ""},
	{"bitmap without a range", []step{sets("create P bitmap:port")}, ""},
	{"every type svcproxy creates, inet6, entries canonicalized", []step{sets(
		"create IP hash:ip"+opts6, "add IP fd00::1", "add IP FD00:0000:0:0::2", "add IP 2001:db8:0:0:1:0:0:1", "add IP fd00::3/128",
		"add IP ::ffff:10.0.0.1", "add IP ::10.0.0.1", "add IP ::1:0", "add IP 1:0:0:1:0:0:1:0", "add IP 64:ff9b::10.1.2.3",
		"create IPPORT hash:ip,port"+opts6, "add IPPORT fd00::1,80", "add IPPORT fd00::1,udp:53", "add IPPORT fd00::2,sctp:3868",
		"add IPPORT fd00::3/128,tcp:0",
		"create IPPORTIP hash:ip,port,ip"+opts6, "add IPPORTIP fd00:10:244:1::5,tcp:8080,fd00:10:244:1::5", "add IPPORTIP ::,tcp:80,::",
		"create IPPORTNET hash:ip,port,net"+opts6, "add IPPORTNET fd00::1,tcp:80,2001:db8::/64", "add IPPORTNET fd00::1,tcp:80,2001:db8:1::1/64",
		"add IPPORTNET fd00::1,tcp:80,2001:db8::9/128", "add IPPORTNET fd00::1/128,tcp:80,2001:db8::a", "add IPPORTNET ::,tcp:80,::/1",
		"create NET hash:net"+opts6, "add NET fd00:10:244::/56", "add NET fd00:10:245:ff::1/56", "add NET fd00::7/128", "add NET fd00::8",
		"add NET fd00::9/127", "add NET ::",
	)}, ""},
	{"-exist, inet6: create again, add again, delete missing entries", []step{sets(
		"create A hash:ip"+opts6, "add A fd00::1", "create A hash:ip"+opts6, "add A fd00::1", "del A fd00::9", "del A fd00::1", "del A fd00::1",
		"create B hash:net"+opts6, "del B fd00::/64", "create C hash:ip,port,net"+opts6, "del C fd00::1,tcp:80,fd00::/64",
	)}, ""},
	{"IPv4 element in an inet6 hash:ip", []step{sets("create A hash:ip"+opts6, "add A fd00::1", "add A 10.0.0.2")}, ""},
	{"IPv4 element in an inet6 hash:ip,port", []step{sets("create A hash:ip,port"+opts6, "add A fd00::1,tcp:80", "add A 10.0.0.1,tcp:80")}, ""},
	{"IPv4 third address in an inet6 hash:ip,port,ip", []step{sets("create A hash:ip,port,ip"+opts6, "add A fd00::1,tcp:80,fd00::2", "add A fd00::1,tcp:80,10.0.0.2")}, ""},
	{"IPv4 net in an inet6 hash:ip,port,net", []step{sets("create A hash:ip,port,net"+opts6, "add A fd00::1,tcp:80,fd00::2", "add A fd00::1,tcp:80,10.0.0.0/8")}, ""},
	{"IPv4 net in an inet6 hash:net", []step{sets("create A hash:net"+opts6, "add A fd00::/64", "add A 10.0.0.0/8")}, ""},
	{"IPv6 element in an inet set", []step{sets("create A hash:ip"+opts, "add A 10.0.0.1", "add A fd00::2")}, ""},
	{"IPv4-mapped element in an inet set", []step{sets("create A hash:ip"+opts, "add A 10.0.0.1", "add A ::ffff:10.0.0.2")}, ""},
	{"IPv6 net in an inet hash:net", []step{sets("create A hash:net"+opts, "add A 10.0.0.0/8", "add A fd00::/64")}, ""},
	{"IPv4 element deleted from an inet6 set", []step{sets("create A hash:ip"+opts6, "add A fd00::1", "del A 10.0.0.1")}, ""},
	{"::/0 in an inet6 net set", []step{sets("create A hash:net"+opts6, "add A fd00::1", "add A ::/0", "add A fd00::2")}, ""},
	{"fd00::/0 in an inet6 net set", []step{sets("create A hash:net"+opts6, "add A fd00::1", "add A fd00::/0")}, ""},
	{"::/0 in an inet6 hash:ip,port,net", []step{sets("create A hash:ip,port,net"+opts6, "add A fd00::1,tcp:80,fd00::2", "add A fd00::1,tcp:80,::/0")}, ""},
	{"0.0.0.0/0 in a hash:ip,port,net", []step{sets("create A hash:ip,port,net"+opts, "add A 10.0.0.1,tcp:80,10.0.0.2", "add A 10.0.0.1,tcp:80,0.0.0.0/0")}, ""},
	{"prefix of 129", []step{sets("create A hash:net"+opts6, "add A fd00::1", "add A fd00::/129")}, ""},
	{"a prefix on the address of an inet6 hash:ip", []step{sets("create A hash:ip"+opts6, "add A fd00::1", "add A fd00::8/126")}, ""},
	{"a prefix on the first address of an inet6 hash:ip,port,net", []step{sets("create A hash:ip,port,net"+opts6, "add A fd00::/127,tcp:80,fd00::2/127")}, ""},
	{"/128 on the third address of an inet6 hash:ip,port,ip", []step{sets("create A hash:ip,port,ip"+opts6, "add A fd00::1,tcp:80,fd00::3", "add A fd00::1,tcp:80,fd00::2/128", "create B hash:ip"+opts6)}, ""},
	{"a zone", []step{sets("create A hash:ip"+opts6, "add A fd00::1", "add A fe80::1%lo")}, ""},
	{":: in a hash:ip", []step{sets("create A hash:ip"+opts6, "add A fd00::1", "add A ::", "add A fd00::2")}, ""},
	{"0.0.0.0 in a hash:ip", []step{sets("create A hash:ip"+opts, "add A 10.0.0.1", "add A 0.0.0.0")}, ""},
	{":: in a hash:ip,port", []step{sets("create A hash:ip,port"+opts6, "add A fd00::1,tcp:80", "add A ::,tcp:80")}, ""},
	{"0.0.0.0 in a hash:ip,port", []step{sets("create A hash:ip,port"+opts, "add A 10.0.0.1,tcp:80", "add A 0.0.0.0,tcp:80")}, ""},
	{"0.0.0.0 first in a hash:ip,port,ip and a hash:ip,port,net, 0.0.0.0 in a hash:net", []step{sets(
		"create A hash:ip,port,ip"+opts, "add A 0.0.0.0,tcp:80,0.0.0.0", "create B hash:ip,port,net"+opts, "add B 0.0.0.0,tcp:80,10.0.0.0/8",
		"create C hash:net"+opts, "add C 0.0.0.0", "add C 0.0.0.0/1")}, ""},
	{"family aliases", []step{sets("create A hash:ip family ipv4", "add A 10.0.0.1", "create B hash:ip family ipv6", "add B fd00::1")}, ""},
	{"unknown family", []step{sets("create A hash:ip family inet7")}, ""},
	{"create again with the other family: the set keeps its family, ipset the first one", []step{sets(
		"create A hash:ip"+opts, "add A 10.0.0.1", "create A hash:ip"+opts6, "add A 10.0.0.2",
		"create B hash:ip"+opts6, "add B fd00::1", "create B hash:ip"+opts, "add B fd00::2")}, ""},
	{"create again with the other family, then an element of the other", []step{sets(
		"create A hash:ip"+opts, "add A 10.0.0.1", "create A hash:ip"+opts6, "add A 10.0.0.2", "add A fd00::2")}, ""},
	{"create again with the other family, the other way round", []step{sets(
		"create A hash:ip"+opts6, "add A fd00::1", "create A hash:ip"+opts, "add A fd00::2", "add A 10.0.0.3")}, ""},
	{"created again as inet6 by a later restore: ipset sends IPv6, the kernel refuses it", []step{
		sets("create A hash:ip"+opts, "add A 10.0.0.1"),
		sets("add A 10.0.0.5", "create A hash:ip"+opts6, "add A fd00::2", "add A fd00::3"),
	}, ""},
	{"created again as inet6 by a later restore: ipset refuses IPv4", []step{
		sets("create A hash:ip"+opts, "add A 10.0.0.1"),
		sets("create A hash:ip"+opts6, "add A 10.0.0.2"),
	}, ""},
	{"created again as inet6 by a later restore: the kernel refuses an IPv6 del", []step{
		sets("create A hash:ip"+opts, "add A 10.0.0.1"),
		sets("create A hash:ip"+opts6, "del A fd00::9"),
	}, ""},
	{"a later restore adds IPv6 to an inet set", []step{
		sets("create A hash:ip"+opts, "add A 10.0.0.1"),
		sets("add A fd00::2"),
	}, ""},
	{"destroyed and created again as inet6", []step{
		sets("create A hash:ip"+opts, "add A 10.0.0.1"),
		sets("add A 10.0.0.5", "destroy A", "create A hash:ip"+opts6, "add A fd00::2"),
		sets("create B hash:ip"+opts, "add B 10.0.0.1", "destroy B", "create B hash:ip"+opts6, "add B fd00::2"),
	}, ""},
	{"brackets around an IPv6 address", []step{sets("create A hash:ip,port"+opts6, "add A [fd00::1],tcp:80")}, "plain addresses only"},
	{"entries with a timeout", []step{sets("create A hash:ip timeout 60", "add A 10.0.0.1")}, "no timeouts"},
	{"an ICMP type as port", []step{sets("create A hash:ip,port"+opts, "add A 10.0.0.1,icmp:ping")}, "tcp, udp and sctp ports only"},
	{"an IP range in a hash:ip", []step{sets("create A hash:ip"+opts, "add A 10.0.0.0/30")}, "one address per element"},
	{"a rule naming a missing set", []step{rules("*filter", "-A INPUT -m set --match-set NOPE src -j ACCEPT", "COMMIT")}, ""},
	{"a set in use cannot be destroyed, flushed it can; once unused it goes", []step{
		sets("create A hash:ip,port"+opts, "create B hash:ip"+opts, "add A 10.0.0.1,tcp:80"),
		rules("*nat", ":X - [0:0]", "-A X -m set --match-set A dst,dst -m set ! --match-set B src -j RETURN", "COMMIT"),
		sets("destroy B"),
		sets("flush A"),
		rules("*nat", "-F X", "COMMIT"),
		sets("destroy A", "destroy B"),
	}, ""},
	{"destroy stops at the set in use", []step{
		sets("create A hash:ip"+opts, "create B hash:ip"+opts, "create C hash:ip"+opts),
		rules("*filter", "-A INPUT -m set --match-set B src -j ACCEPT", "COMMIT"),
		sets("destroy A", "destroy B", "destroy C"),
	}, ""},
}

// realKernel is a private network namespace, deleted when the test ends.
type realKernel struct{ ns string }

func newRealKernel(t *testing.T, i int) *realKernel {
	t.Helper()
	k := &realKernel{ns: fmt.Sprintf("svcpsets%d-%d", os.Getpid(), i)}
	if out, err := exec.Command("ip", "netns", "add", k.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", k.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", k.ns, err, out)
		}
	})
	return k
}

func (k *realKernel) run(stdin string, args ...string) (string, error) {
	c := exec.Command("ip", append([]string{"netns", "exec", k.ns}, args...)...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	return string(out), err
}

// TestFakeSetsAgreeWithRealIPSet runs every case against the fake and
// against ipset v7 and iptables-nft in a namespace of its own.
func TestFakeSetsAgreeWithRealIPSet(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it creates network namespaces (run it as root, as hack/test.sh does)")
	}
	for _, bin := range []string{"ip", "ipset", "iptables-nft-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is missing (apt-get install iptables ipset iproute2): %v", bin, err)
		}
	}
	for i, tc := range setCases {
		t.Run(tc.name, func(t *testing.T) {
			real := newRealKernel(t, i)
			fake, ipt := NewFake(), iptablestest.NewFake()
			if err := fake.UseIPTables(ipt); err != nil {
				t.Fatal(err)
			}
			fakeRefused := false
			for j, s := range tc.steps {
				var realOut string
				var realErr, fakeErr error
				if s.sets != "" {
					realOut, realErr = real.run(s.sets, "ipset", "restore", "-exist")
					fakeErr = fake.RestoreSets([]byte(s.sets))
				} else {
					realOut, realErr = real.run(s.rules, "iptables-nft-restore", "--noflush")
					fakeErr = ipt.Restore([]byte(s.rules))
				}
				fakeRefused = fakeRefused || fakeErr != nil
				switch {
				case tc.stricter != "" && realErr != nil:
					t.Errorf("step %d: listed as refused by the fake only (%s), but ipset refuses it too: %v %s", j+1, tc.stricter, realErr, strings.TrimSpace(realOut))
				case tc.stricter == "" && (realErr != nil) != (fakeErr != nil):
					t.Errorf("step %d: real: %v %s; fake: %v\n%s%s", j+1, realErr, strings.TrimSpace(realOut), fakeErr, s.sets, s.rules)
				}
			}
			if tc.stricter != "" {
				if !fakeRefused {
					t.Errorf("the fake takes it, but the table says it refuses it on purpose (%s)", tc.stricter)
				}
				return
			}
			out, err := real.run("", "ipset", "save")
			if err != nil {
				t.Fatalf("ipset save: %v\n%s", err, out)
			}
			realSets, err := ipvs.ParseSetSave([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range realSets {
				slices.Sort(s.Entries)
			}
			fakeSets, _ := fake.ListSets()
			if d := cmp.Diff(realSets, fakeSets, cmpopts.EquateEmpty()); d != "" {
				t.Errorf("sets left (-real +fake):\n%s", d)
			}
			fakeFamilies := map[string]string{}
			for n, s := range fake.sets {
				fakeFamilies[n] = s.family
			}
			if d := cmp.Diff(saveFamilies(out), fakeFamilies); d != "" {
				t.Errorf("families of the sets left (-real +fake):\n%s", d)
			}
		})
	}
}

// saveFamilies returns the family of each set in ipset save output, ""
// for a set without one (bitmap:port).
func saveFamilies(save string) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(save, "\n") {
		fs := strings.Fields(l)
		if len(fs) < 3 || fs[0] != "create" {
			continue
		}
		out[fs[1]] = ""
		if i := slices.Index(fs, "family"); i > 0 && i+1 < len(fs) {
			out[fs[1]] = fs[i+1]
		}
	}
	return out
}
