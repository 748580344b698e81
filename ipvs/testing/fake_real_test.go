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

const opts = " family inet hashsize 1024 maxelem 1048576"

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
	{"IPv6 set", []step{sets("create A hash:ip family inet6")}, "IPv4 only"},
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
		})
	}
}
