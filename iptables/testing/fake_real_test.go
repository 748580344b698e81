//go:build integration

package iptablestest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// realVariants are the iptables-restore binaries the fake must agree
// with: svcproxy drives either, whichever the host uses.
var realVariants = []string{"nft", "legacy"}

// realNS is a private network namespace for one variant, deleted when the
// test ends. Nothing here touches the caller's namespace.
type realNS struct {
	name, variant string
}

func newRealNS(t *testing.T, variant string) *realNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the agreement test needs root: it creates network namespaces (run it as root, as hack/test.sh does)")
	}
	for _, bin := range []string{"ip", "ipset", "iptables-" + variant + "-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is missing (apt-get install iptables ipset iproute2): %v", bin, err)
		}
	}
	ns := &realNS{name: fmt.Sprintf("svcpfake%d%s", os.Getpid(), variant), variant: variant}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns.name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns.name, err, out)
		}
	})
	for name, typ := range caseSets {
		ns.run(t, "", "ipset", "create", name, typ)
	}
	return ns
}

// run runs a command in the namespace with stdin and fails the test if it
// fails.
func (ns *realNS) run(t *testing.T, stdin string, args ...string) {
	t.Helper()
	if out, err := ns.cmd(stdin, args...); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (ns *realNS) cmd(stdin string, args ...string) (string, error) {
	c := exec.Command("ip", append([]string{"netns", "exec", ns.name}, args...)...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	return string(out), err
}

// reset empties both tables: a restore without --noflush replaces them.
func (ns *realNS) reset(t *testing.T) {
	t.Helper()
	ns.run(t, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"+
		"*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
		"iptables-"+ns.variant+"-restore")
}

// restore feeds input to the real iptables-restore --noflush; nil if it
// took it.
func (ns *realNS) restore(t *testing.T, input string) error {
	t.Helper()
	ns.reset(t)
	out, err := ns.cmd(input, "iptables-"+ns.variant+"-restore", "--noflush")
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
	}
	return nil
}

// TestFakeAgreesWithRealRestore feeds every case of restoreCases to the
// real iptables-restore, nft and legacy, each in a namespace of its own,
// and to the fake: the fake must refuse exactly what either real one
// refuses, and the cases it refuses on purpose must be ones both real
// ones take (else the reason given for them is wrong).
func TestFakeAgreesWithRealRestore(t *testing.T) {
	nss := map[string]*realNS{}
	for _, v := range realVariants {
		nss[v] = newRealNS(t, v)
	}
	for _, tc := range restoreCases {
		t.Run(tc.name, func(t *testing.T) {
			realErrs := map[string]error{}
			var refusedBy []string
			for _, v := range realVariants {
				if err := nss[v].restore(t, tc.input); err != nil {
					realErrs[v] = err
					refusedBy = append(refusedBy, v)
				}
			}
			realRefuses := len(refusedBy) > 0
			fakeErr := fakeWithSets(t).Restore([]byte(tc.input))
			if len(refusedBy) == 1 {
				t.Logf("only %s refuses: %v", refusedBy[0], realErrs[refusedBy[0]])
			}
			switch {
			case tc.stricter != "" && realRefuses:
				t.Errorf("listed as refused by the fake only (%s), but the real iptables-restore refuses it too (%v): make it an ordinary bad case", tc.stricter, realErrs)
			case tc.stricter != "" && fakeErr == nil:
				t.Errorf("the fake takes it, but the table says it refuses it on purpose (%s)", tc.stricter)
			case tc.stricter != "":
				// Both real ones take it, the fake refuses: as documented.
			case realRefuses && fakeErr == nil:
				t.Errorf("the real iptables-restore refuses it (%v), the fake takes it:\n%s", realErrs, tc.input)
			case !realRefuses && fakeErr != nil:
				t.Errorf("the real iptables-restore takes it, the fake refuses it: %v\n%s", fakeErr, tc.input)
			case tc.ok == realRefuses:
				t.Errorf("the table says ok=%v, the real iptables-restore says otherwise (%v)", tc.ok, realErrs)
			}
		})
	}
}
