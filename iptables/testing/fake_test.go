package iptablestest

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/svcproxy/svcproxy/iptables"
)

func lines(ls ...string) []byte { return []byte(strings.Join(ls, "\n") + "\n") }

func mustRestore(t *testing.T, f *Fake, ls ...string) {
	t.Helper()
	if err := f.Restore(lines(ls...)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
}

// base is the state every error case starts from: A jumps to B in nat.
var base = []string{
	"*nat",
	":A - [0:0]",
	":B - [0:0]",
	":EMPTY - [0:0]",
	"-A A -m comment --comment \"to b\" -j B",
	"-A B -p tcp -j DNAT --to-destination 10.0.0.1:80",
	"COMMIT",
}

func TestRestoreRejects(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   []string
		wantErr string // substring; always also checked: the state did not change
	}{
		{"jump to missing chain", []string{"*nat", ":C - [0:0]", "-A C -j MISSING", "COMMIT"}, `line 3 failed: "-A C -j MISSING": jump to chain "MISSING" that does not exist`},
		{"goto missing chain", []string{"*nat", "-A A -g MISSING", "COMMIT"}, "line 2 failed"},
		{"goto a standard target", []string{"*nat", "-A A -g ACCEPT", "COMMIT"}, "not a chain"},
		{"jump to a built-in chain", []string{"*nat", "-A A -j PREROUTING", "COMMIT"}, "built-in chain"},
		{"jump to a chain of another table", []string{"*filter", ":F - [0:0]", "-A F -j A", "COMMIT"}, "line 3"},
		{"unknown table", []string{"*raw", "COMMIT"}, `line 1 failed: "*raw": unknown table`},
		{"rule for a missing chain", []string{"*nat", "-A NOPE -j ACCEPT", "COMMIT"}, `line 2 failed: "-A NOPE -j ACCEPT": chain "NOPE" does not exist`},
		{"missing COMMIT", []string{"*nat", ":C - [0:0]"}, "missing COMMIT"},
		{"second table without COMMIT", []string{"*nat", "*filter", "COMMIT"}, "line 2"},
		{"COMMIT outside a table", []string{"COMMIT"}, "line 1"},
		{"rule outside a table", []string{"-A A -j ACCEPT"}, "line 1"},
		{"unbalanced quotes", []string{"*nat", `-A A -m comment --comment "oops -j ACCEPT`, "COMMIT"}, "line 2 failed"},
		{"delete a referenced chain", []string{"*nat", "-F B", "-X B", "COMMIT"}, `line 3 failed: "-X B": chain "B" is still referenced by A#1`},
		{"delete a built-in chain", []string{"*nat", "-X PREROUTING", "COMMIT"}, "built-in"},
		{"delete a missing chain", []string{"*nat", "-X NOPE", "COMMIT"}, "does not exist"},
		{"delete a non-empty chain", []string{"*nat", "-X A", "COMMIT"}, "not empty"},
		{"DNAT in filter", []string{"*filter", "-A INPUT -p tcp -j DNAT --to-destination 10.0.0.1:80", "COMMIT"}, "not valid in table filter"},
		{"REJECT in nat", []string{"*nat", "-A A -j REJECT", "COMMIT"}, "not valid in table nat"},
		{"DNAT to a port without -p", []string{"*nat", "-A A -j DNAT --to-destination 10.0.0.1:80", "COMMIT"}, "Need TCP, UDP, SCTP or DCCP"},
		{"--dport without -p", []string{"*nat", "-A A --dport 80 -j ACCEPT", "COMMIT"}, `unknown option "--dport"`},
		{"DNAT reachable from POSTROUTING", []string{"*nat", "-A POSTROUTING -j B", "COMMIT"}, "only valid from PREROUTING, OUTPUT"},
		{"loop reachable from a built-in chain", []string{"*nat", "-A B -j A", "-A OUTPUT -j A", "COMMIT"}, `chain "A" reaches itself`},
		{"two targets", []string{"*nat", "-A A -j ACCEPT -j DROP", "COMMIT"}, "more than one target"},
		{"policy on a user chain", []string{"*nat", ":C ACCEPT [0:0]", "COMMIT"}, "cannot have a policy"},
		{"chain name too long", []string{"*nat", ":SVCP-0123456789012345678901234 - [0:0]", "COMMIT"}, "28 characters"},
		{"create an existing chain", []string{"*nat", "-N A", "COMMIT"}, "already exists"},
		{"unknown command", []string{"*nat", "-Z A", "COMMIT"}, "unsupported command"},
		{"late error rolls back earlier tables", []string{"*filter", ":F - [0:0]", "-A INPUT -j F", "COMMIT", "*nat", "-A A -j MISSING", "COMMIT"}, "line 6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			mustRestore(t, f, base...)
			before := f.Dump()
			err := f.Restore(lines(tc.input...))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Restore: got error %v, want one containing %q", err, tc.wantErr)
			}
			if diff := cmp.Diff(before, f.Dump()); diff != "" {
				t.Errorf("state changed by a failed Restore (-before +after):\n%s", diff)
			}
		})
	}
}

func TestRestoreSemantics(t *testing.T) {
	f := NewFake()
	mustRestore(t, f, base...)
	mustRestore(t, f,
		"# a comment, then a blank line",
		"",
		"*nat",
		":A - [0:0]", // exists: flushed, as with --noflush
		":B - [0:0]",
		":C - [0:0]",
		"-X EMPTY",
		"-A A -j C",
		`-A A -m comment --comment "with \"quotes\" and \\" -j RETURN`,
		"-I A -m comment --comment \"first\" -j LOG",
		"-I A 2 -m comment --comment \"second\"",
		"-X B", // flushed above, no longer referenced
		"COMMIT",
		"*filter",
		":FORWARD DROP [0:0]",
		"-N NEW",
		"-A NEW -j ACCEPT",
		"-A FORWARD -j NEW",
		"COMMIT",
	)
	want := strings.Join([]string{
		"*filter",
		":INPUT ACCEPT [0:0]",
		":FORWARD DROP [0:0]",
		":OUTPUT ACCEPT [0:0]",
		":NEW - [0:0]",
		"-A FORWARD -j NEW",
		"-A NEW -j ACCEPT",
		"COMMIT",
		"*nat",
		":PREROUTING ACCEPT [0:0]",
		":INPUT ACCEPT [0:0]",
		":OUTPUT ACCEPT [0:0]",
		":POSTROUTING ACCEPT [0:0]",
		":A - [0:0]",
		":C - [0:0]",
		`-A A -m comment --comment "first" -j LOG`,
		`-A A -m comment --comment "second"`,
		"-A A -j C",
		`-A A -m comment --comment "with \"quotes\" and \\" -j RETURN`,
		"COMMIT",
	}, "\n") + "\n"
	if diff := cmp.Diff(want, f.Dump()); diff != "" {
		t.Errorf("Dump (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "A", "C"}, f.Chains("nat")); diff != "" {
		t.Errorf("Chains(nat) (-want +got):\n%s", diff)
	}
	if got := f.Rules("nat", "MISSING"); got != nil {
		t.Errorf("Rules of a missing chain = %q, want nil", got)
	}

	// Flush, then the Dump restores into an identical Fake.
	mustRestore(t, f, "*nat", "-F A", "COMMIT")
	if got := f.Rules("nat", "A"); len(got) != 0 {
		t.Errorf("after -F A: %q", got)
	}
	g := NewFake()
	if err := g.Restore([]byte(f.Dump())); err != nil {
		t.Fatalf("restoring a Dump: %v", err)
	}
	if diff := cmp.Diff(f.Dump(), g.Dump()); diff != "" {
		t.Errorf("Dump round trip (-orig +copy):\n%s", diff)
	}
}

func TestEnsureJump(t *testing.T) {
	f := NewFake()
	mustRestore(t, f, "*filter", ":SVCP-X - [0:0]", ":SVCP-Y - [0:0]", "-A INPUT -j ACCEPT", "COMMIT")
	jx := iptables.Jump{Table: "filter", Chain: "INPUT", Args: []string{"-m", "comment", "--comment", "to x", "-j", "SVCP-X"}}
	jy := iptables.Jump{Table: "filter", Chain: "INPUT", Args: []string{"-j", "SVCP-Y"}}
	for _, j := range []iptables.Jump{jx, jy, jx, jy} {
		if err := f.EnsureJump(j); err != nil {
			t.Fatalf("EnsureJump(%v): %v", j, err)
		}
	}
	want := []string{"-j SVCP-Y", `-m comment --comment "to x" -j SVCP-X`, "-j ACCEPT"}
	if diff := cmp.Diff(want, f.Rules("filter", "INPUT")); diff != "" {
		t.Errorf("INPUT (-want +got):\n%s", diff)
	}
	for _, j := range []iptables.Jump{
		{Table: "filter", Chain: "INPUT", Args: []string{"-j", "SVCP-MISSING"}},
		{Table: "raw", Chain: "PREROUTING", Args: []string{"-j", "ACCEPT"}},
		{Table: "filter", Chain: "SVCP-X", Args: []string{"-j", "ACCEPT"}},
	} {
		if err := f.EnsureJump(j); err == nil {
			t.Errorf("EnsureJump(%v) succeeded, want an error", j)
		}
	}
	names, err := f.ListChains("filter")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"INPUT", "FORWARD", "OUTPUT", "SVCP-X", "SVCP-Y"}, names); diff != "" {
		t.Errorf("ListChains (-want +got):\n%s", diff)
	}
	if _, err := f.ListChains("raw"); err == nil {
		t.Error("ListChains(raw) succeeded, want an error")
	}
}

func TestFailRestoreAt(t *testing.T) {
	f := NewFake()
	f.FailRestoreAt(2)
	one := lines("*nat", ":A - [0:0]", "COMMIT")
	two := lines("*nat", ":B - [0:0]", "COMMIT")
	if err := f.Restore(one); err != nil {
		t.Fatalf("first Restore: %v", err)
	}
	before := f.Dump()
	if err := f.Restore(two); !errors.Is(err, ErrInjected) {
		t.Fatalf("second Restore: got %v, want ErrInjected", err)
	}
	if f.Dump() != before {
		t.Error("an injected failure changed the state")
	}
	if err := f.Restore(two); err != nil {
		t.Fatalf("third Restore: %v", err)
	}
	if n := f.RestoreCount(); n != 3 {
		t.Errorf("RestoreCount() = %d, want 3", n)
	}
	got := f.Restores()
	if len(got) != 3 || string(got[0]) != string(one) || string(got[1]) != string(two) || string(got[2]) != string(two) {
		t.Errorf("Restores() = %q", got)
	}
	got[0][0] = 'X' // a copy
	if f.Restores()[0][0] != '*' {
		t.Error("Restores() returned the Fake's own buffer")
	}
}
