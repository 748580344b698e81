package iptablestest

import (
	"fmt"
	"strings"
	"testing"
)

// restoreCase is one iptables-restore --noflush input and whether
// iptables-restore takes it. TestRestoreCases holds the fake to it;
// TestFakeAgreesWithRealRestore (fake_real_test.go, build tag integration)
// holds the real iptables-restore, nft and legacy, to it too, so that the
// table says what the real tool does, not what we believe it does.
type restoreCase struct {
	name  string
	input string
	ok    bool // every real iptables-restore and the fake take it
	// stricter, when set, says why the fake refuses an input the real
	// tool takes (ok is then false): a silent truncation or
	// reinterpretation, or a form no caller of ours should write.
	stricter string
	wantErr  string // a substring of the fake's error; "" for any
}

// The sets every case may use: the fake's set model and the test
// namespace hold them.
var caseSets = map[string]string{"S": "hash:ip,port", "N": "hash:net"}

// in returns input for one rule in user chain A of table, A reached from
// nothing (so that no hook restriction applies).
func in(table, rule string) string {
	return fmt.Sprintf("*%s\n:A - [0:0]\n-A A %s\nCOMMIT\n", table, rule)
}

// from returns input for one rule in user chain A of table, A jumped to
// from built-in chain hook.
func from(table, hook, rule string) string {
	return fmt.Sprintf("*%s\n:A - [0:0]\n-A %s -j A\n-A A %s\nCOMMIT\n", table, hook, rule)
}

// nested returns PREROUTING -> C1 -> ... -> Cn in nat, each transition a
// jump (-j) or a goto (-g).
func nested(n int, how string) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, ":C%d - [0:0]\n", i)
	}
	b.WriteString("-A PREROUTING -j C1\n")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "-A C%d %s C%d\n", i, how, i+1)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func good(name, input string) restoreCase { return restoreCase{name: name, input: input, ok: true} }

func bad(name, input, wantErr string) restoreCase {
	return restoreCase{name: name, input: input, wantErr: wantErr}
}

func stricter(name, input, why string) restoreCase {
	return restoreCase{name: name, input: input, stricter: why}
}

var restoreCases = []restoreCase{
	// What svcproxy renders, in both modes.
	good("cluster IP dispatch", in("nat", `-m comment --comment "ns/web:http cluster IP" -d 10.96.0.20/32 -p tcp --dport 80 -j ACCEPT`)),
	good("endpoint with random split and affinity --set", from("nat", "PREROUTING", `-m comment --comment "ns/web:http -> 10.244.2.2:8080" -m statistic --mode random --probability 0.3333333333 -m recent --name SVCP-A-ABCDEFGHIJKLMNOP --set -p tcp -j DNAT --to-destination 10.244.2.2:8080`)),
	good("affinity --update", from("nat", "OUTPUT", `-m recent --name SVCP-A-ABCDEFGHIJKLMNOP --update --seconds 10800 --reap -p udp -j DNAT --to-destination 10.244.2.2:53`)),
	good("sctp endpoint", from("nat", "PREROUTING", `-p sctp -j DNAT --to-destination 10.244.2.2:3868`)),
	good("masquerade mark", in("nat", `-m comment --comment "x cluster IP" -d 10.96.0.20/32 -p tcp --dport 80 ! -s 10.244.0.0/16 -j MARK --or-mark 0x4000`)),
	good("postrouting", from("nat", "POSTROUTING", `-m comment --comment "service traffic requiring SNAT" -j MASQUERADE --random-fully`)),
	good("postrouting mark test", in("nat", `-m mark ! --mark 0x4000/0x4000 -j RETURN`)),
	good("xor mark", in("nat", `-j MARK --xor-mark 0x4000`)),
	good("set-xmark", in("nat", `-j MARK --set-xmark 0x4000/0x4000`)),
	good("hairpin", from("nat", "POSTROUTING", `-m comment --comment "hairpin" -s 10.244.1.5/32 -d 10.244.1.5/32 -j MASQUERADE`)),
	good("conntrack DNAT", in("nat", `-m conntrack --ctstate DNAT -j ACCEPT`)),
	good("forward rules", in("filter", `-m comment --comment "svcproxy forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)),
	good("node ports", in("nat", `-m comment --comment "node ports on local addresses" ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j ACCEPT`)),
	good("local source", in("nat", `-m addrtype --src-type LOCAL -j ACCEPT`)),
	good("node port tree", in("nat", `-p tcp --dport 30000:30015 -j ACCEPT`)),
	good("reject", from("filter", "INPUT", `-m comment --comment "ns/web:http has no endpoints" -d 10.96.0.20/32 -p tcp --dport 80 -j REJECT`)),
	good("drop", in("filter", `-m comment --comment "ns/web:http has no local endpoints" -d 10.96.0.20/32 -p udp --dport 53 -j DROP`)),
	good("ipvs set match", in("filter", `-m comment --comment "service has no endpoints" -m set --match-set S dst,dst -j REJECT`)),
	good("ipvs inverted set match", in("nat", `-m set ! --match-set N src -m set --match-set S dst,dst -j MARK --or-mark 0x4000`)),
	good("goto", "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -d 10.96.0.0/20 -g B\nCOMMIT\n"),
	good("nesting of 15 jumps from a built-in chain", nested(15, "-j")),
	good("nesting of 15 gotos from a built-in chain", nested(15, "-g")),

	// Forms the real tool takes that the fake takes too.
	good("host bits are masked", in("nat", `-s 10.0.0.1/16 -j ACCEPT`)),
	good("dotted mask", in("nat", `-s 10.0.0.0/255.255.0.0 -j ACCEPT`)),
	good("protocol by number", in("nat", `-p 6 --dport 80 -j ACCEPT`)),
	good("protocol in capitals", in("nat", `-p TCP --dport 80 -j ACCEPT`)),
	good("explicit tcp match", in("nat", `-p tcp -m tcp --dport 80 -j ACCEPT`)),
	good("port 0 in a match", in("nat", `-p tcp --dport 0 -j ACCEPT`)),
	good("open port ranges", in("nat", `-p udp --dport :81 -m udp --sport 81: -j ACCEPT`)),
	good("inverted probability", in("nat", `-m statistic --mode random ! --probability 0.5 -j ACCEPT`)),
	good("probability 0", in("nat", `-m statistic --mode random --probability 0 -j ACCEPT`)),
	good("probability 1.0", in("nat", `-m statistic --mode random --probability 1.0 -j ACCEPT`)),
	good("probability in exponent form", in("nat", `-m statistic --mode random --probability 5e-1 -j ACCEPT`)),
	good("lower-case ctstate", in("nat", `-m conntrack --ctstate new -j ACCEPT`)),
	good("inverted recent", in("nat", `-m recent ! --set -j ACCEPT`)),
	good("recent --rcheck without a name", in("nat", `-m recent --rcheck --seconds 60 --hitcount 2 -j ACCEPT`)),
	good("comment of 255 characters", in("nat", `-m comment --comment "`+strings.Repeat("x", 255)+`" -j ACCEPT`)),
	good("empty comment", in("nat", `-m comment --comment "" -j ACCEPT`)),
	good("escaped quote in a comment", in("nat", `-m comment --comment "say \"hi\"" -j ACCEPT`)),
	good("quote inside a word", in("nat", `-m comment --comment a"b c" -j ACCEPT`)),
	good("DNAT to port 0", from("nat", "PREROUTING", `-p tcp -j DNAT --to-destination 10.0.0.1:0`)),
	good("DNAT without a port needs no protocol", from("nat", "OUTPUT", `-j DNAT --to-destination 10.0.0.1`)),
	good("DNAT with a port and a protocol number", from("nat", "OUTPUT", `-p 6 -j DNAT --to-destination 10.0.0.1:80`)),
	good("DNAT --random", from("nat", "PREROUTING", `-p tcp -j DNAT --to-destination 10.0.0.1:80 --random`)),
	good("DNAT in a chain no built-in chain reaches", "*nat\n:A - [0:0]\n-A POSTROUTING -j ACCEPT\n-A A -p tcp -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n"),
	good("SNAT", from("nat", "POSTROUTING", `-j SNAT --to-source 192.0.2.1`)),
	good("LOG", in("filter", `-j LOG --log-prefix "svcproxy: "`)),
	good("interface", in("filter", `-i eth0 -j ACCEPT`)),
	good("multiport", in("filter", `-p tcp -m multiport --dports 80,443,8000:8080 -j ACCEPT`)),
	good("reject with tcp-reset", from("filter", "INPUT", `-p tcp -j REJECT --reject-with tcp-reset`)),

	// Modules, options and targets that do not exist.
	bad("unknown module", in("nat", `-m foo -j ACCEPT`), "Couldn't load match `foo'"),
	bad("unknown option of comment", in("nat", `-m comment --comment x --foo -j ACCEPT`), `unknown option "--foo"`),
	bad("unknown option of statistic", in("nat", `-m statistic --mode random --probability 0.5 --seconds 1 -j ACCEPT`), `unknown option "--seconds"`),
	bad("unknown option of tcp", in("nat", `-p tcp --foo -j ACCEPT`), `unknown option "--foo"`),
	bad("unknown option without a module", in("nat", `--foo -j ACCEPT`), `unknown option "--foo"`),
	bad("--dport without -p", in("nat", `--dport 80 -j ACCEPT`), `unknown option "--dport"`),
	bad("--comment without -m comment", in("nat", `--comment x -j ACCEPT`), `unknown option "--comment"`),
	bad("--dport of icmp", in("nat", `-p icmp --dport 80 -j ACCEPT`), `unknown option "--dport"`),
	bad("tcp match without -p", in("nat", `-m tcp --dport 80 -j ACCEPT`), "TCP match requires '-p tcp'"),
	bad("tcp match with -p udp", in("nat", `-p udp -m tcp --dport 80 -j ACCEPT`), "TCP match requires '-p tcp'"),
	bad("port match with an inverted protocol", in("nat", `! -p tcp --dport 80 -j ACCEPT`), "TCP match requires"),
	bad("unknown protocol", in("nat", `-p foo -j ACCEPT`), "unknown protocol"),
	bad("protocol number out of range", in("nat", `-p 256 -j ACCEPT`), "unknown protocol"),
	bad("option of the target unknown", in("nat", `-j ACCEPT --foo`), `unknown option "--foo"`),
	bad("MASQUERADE with an unknown option", from("nat", "POSTROUTING", `-j MASQUERADE --foo`), `unknown option "--foo"`),
	bad("jump to a missing chain", in("nat", `-j FOO`), `chain "FOO" that does not exist`),
	bad("goto a standard target", in("nat", `-g ACCEPT`), "not a chain"),
	bad("REJECT in nat", in("nat", `-j REJECT`), "not valid in table nat"),
	bad("DNAT in filter", in("filter", `-p tcp -j DNAT --to-destination 10.0.0.1:80`), "not valid in table filter"),
	bad("stray word", in("nat", `-m comment --comment a b -j ACCEPT`), "Bad argument `b'"),
	bad("option twice", in("nat", `-p tcp --dport 80 --dport 81 -j ACCEPT`), "can only be used once"),
	bad("generic option twice", in("nat", `-s 10.0.0.1 -s 10.0.0.2 -j ACCEPT`), "multiple -s flags"),
	bad("interface name too long", in("filter", `-i abcdefghijklmnopq -j ACCEPT`), "IFNAMSIZ"),

	// Addresses.
	bad("address out of range", in("nat", `-s 10.0.0.256 -j ACCEPT`), "not found"),
	bad("prefix length 33", in("nat", `-d 10.0.0.1/33 -j ACCEPT`), "invalid mask"),
	bad("empty prefix length", in("nat", `-s 10.0.0.1/ -j ACCEPT`), "invalid mask"),
	bad("negative prefix length", in("nat", `-s 10.0.0.0/-1 -j ACCEPT`), "invalid mask"),
	bad("IPv6 address", in("nat", `-s fd00::1 -j ACCEPT`), "not found"),
	bad("empty address", in("nat", `-d "" -j ACCEPT`), "not found"),
	bad("DNAT to a bad address", from("nat", "PREROUTING", `-p tcp -j DNAT --to-destination 10.0.0.256:80`), "Bad IP address"),
	stricter("inet_aton short form", in("nat", `-s 10.1 -j ACCEPT`), "iptables reads 10.1 as 10.0.0.1"),
	stricter("leading zero", in("nat", `-s 010.0.0.1 -j ACCEPT`), "iptables reads 010.0.0.1 as octal, 8.0.0.1"),
	stricter("address list", in("nat", `-s 10.0.0.1,10.0.0.2 -j ACCEPT`), "iptables adds one rule per address"),
	stricter("non-contiguous mask", in("nat", `-s 10.0.0.0/255.0.255.0 -j ACCEPT`), "a mask no prefix length can say"),
	stricter("host name", in("nat", `-s localhost -j ACCEPT`), "iptables resolves names once, at load"),

	// Ports.
	bad("port 65536", in("nat", `-p tcp --dport 65536 -j ACCEPT`), "invalid port"),
	bad("port -1", in("nat", `-p tcp --dport -1 -j ACCEPT`), "invalid port"),
	bad("port with garbage", in("nat", `-p tcp --dport 80x -j ACCEPT`), "invalid port"),
	bad("inverted port range", in("nat", `-p tcp --dport 90:81 -j ACCEPT`), "min > max"),
	bad("port list in --dport", in("nat", `-p tcp --dport 80,81 -j ACCEPT`), "invalid port"),
	bad("too many multiport ports", in("filter", `-p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 -j ACCEPT`), "too many ports"),
	bad("DNAT port 65536", from("nat", "PREROUTING", `-p tcp -j DNAT --to-destination 10.0.0.1:65536`), "not valid"),
	bad("DNAT port with garbage", from("nat", "PREROUTING", `-p tcp -j DNAT --to-destination 10.0.0.1:80x`), "not valid"),
	bad("DNAT inverted port range", from("nat", "PREROUTING", `-p tcp -j DNAT --to-destination 10.0.0.1:80-79`), "funky"),
	stricter("service name for a port", in("nat", `-p tcp --dport http -j ACCEPT`), "iptables looks names up in /etc/services"),

	// Probabilities.
	bad("probability above 1", in("nat", `-m statistic --mode random --probability 1.5 -j ACCEPT`), "out of range (0-1)"),
	bad("negative probability", in("nat", `-m statistic --mode random --probability -0.1 -j ACCEPT`), "out of range (0-1)"),
	bad("probability with garbage", in("nat", `-m statistic --mode random --probability 0.5x -j ACCEPT`), "out of range (0-1)"),
	bad("probability not a number", in("nat", `-m statistic --mode random --probability abc -j ACCEPT`), "out of range (0-1)"),
	bad("infinite probability", in("nat", `-m statistic --mode random --probability inf -j ACCEPT`), "out of range (0-1)"),
	bad("probability without a mode", in("nat", `-m statistic --probability 0.5 -j ACCEPT`), `"--mode" must be specified`),
	bad("random mode without a probability", in("nat", `-m statistic --mode random -j ACCEPT`), "--probability must be specified"),
	bad("unknown statistic mode", in("nat", `-m statistic --mode foo -j ACCEPT`), "bad mode"),
	bad("probability in nth mode", in("nat", `-m statistic --mode nth --probability 0.5 -j ACCEPT`), "--every"),

	// Required arguments, exclusive options.
	bad("comment without --comment", in("nat", `-m comment -j ACCEPT`), `"--comment" must be specified`),
	bad("inverted comment", in("nat", `-m comment ! --comment x -j ACCEPT`), "cannot be inverted"),
	bad("recent without a command", in("nat", `-m recent --name X -j ACCEPT`), "you must specify one of"),
	bad("recent with two commands", in("nat", `-m recent --set --update -j ACCEPT`), "cannot be used together"),
	bad("recent --reap without --seconds", in("nat", `-m recent --rcheck --reap -j ACCEPT`), `"--reap" also requires "--seconds"`),
	bad("recent --seconds 0", in("nat", `-m recent --rcheck --seconds 0 -j ACCEPT`), "out of range"),
	bad("recent --seconds not a number", in("nat", `-m recent --update --seconds abc -j ACCEPT`), "out of range"),
	bad("recent --set with --seconds", in("nat", `-m recent --set --seconds 5 -j ACCEPT`), "refused by the kernel"),
	bad("recent with an empty name", in("nat", `-m recent --set --name "" -j ACCEPT`), "refused by the kernel"),
	bad("recent name with a slash", in("nat", `-m recent --set --name a/b -j ACCEPT`), "refused by the kernel"),
	stricter("recent --hitcount beyond 255", in("nat", `-m recent --rcheck --hitcount 300 -j ACCEPT`), "iptables keeps the low 8 bits: 300 becomes 44"),
	bad("addrtype without a type", in("nat", `-m addrtype -j ACCEPT`), "you must specify --src-type or --dst-type"),
	bad("unknown address type", in("nat", `-m addrtype --dst-type FOO -j ACCEPT`), "Bad addrtype type"),
	bad("mark match without --mark", in("nat", `-m mark -j ACCEPT`), `"--mark" must be specified`),
	bad("mark with two masks", in("nat", `-m mark --mark 0x4000/0x4000/1 -j ACCEPT`), "bad mask"),
	bad("mark beyond 32 bits", in("nat", `-m mark --mark 4294967296 -j ACCEPT`), "out of range"),
	bad("mark not a number", in("nat", `-m mark --mark abc -j ACCEPT`), "out of range"),
	bad("conntrack without options", in("nat", `-m conntrack -j ACCEPT`), "At least one option is required"),
	bad("unknown ctstate", in("nat", `-m conntrack --ctstate FOO -j ACCEPT`), "Bad ctstate"),
	bad("DNAT without --to-destination", from("nat", "PREROUTING", `-p tcp -j DNAT`), `"--to-destination" must be specified`),
	bad("DNAT twice --to-destination", from("nat", "PREROUTING", `-p tcp -j DNAT --to-destination 10.0.0.1:80 --to-destination 10.0.0.2`), "can only be used once"),
	bad("DNAT to a port without -p", from("nat", "PREROUTING", `-j DNAT --to-destination 10.0.0.1:80`), "Need TCP, UDP, SCTP or DCCP"),
	bad("DNAT to a port with -p all", from("nat", "PREROUTING", `-p all -j DNAT --to-destination 10.0.0.1:80`), "Need TCP, UDP, SCTP or DCCP"),
	bad("SNAT without --to-source", from("nat", "POSTROUTING", `-j SNAT`), `"--to-source" must be specified`),
	bad("MARK without an option", in("nat", `-j MARK`), "One of the --set-xmark"),
	bad("MARK with two options", in("nat", `-j MARK --set-xmark 0x1 --or-mark 0x2`), "only one"),
	bad("MARK --or-mark with a mask", in("nat", `-j MARK --or-mark 0x1/0x1`), "no mask allowed"),
	bad("MARK --or-mark not a number", in("nat", `-j MARK --or-mark abc`), "out of range"),
	bad("MASQUERADE --to-ports without -p", from("nat", "POSTROUTING", `-j MASQUERADE --to-ports 80`), "Need TCP, UDP, SCTP or DCCP"),
	bad("MASQUERADE twice --random-fully", from("nat", "POSTROUTING", `-j MASQUERADE --random-fully --random-fully`), "can only be used once"),
	bad("unknown reject type", from("filter", "INPUT", `-j REJECT --reject-with foo`), "bad reject type"),

	// Sets.
	bad("missing set", in("nat", `-m set --match-set NOPE src -j ACCEPT`), "Set NOPE doesn't exist"),
	bad("bad set direction", in("nat", `-m set --match-set S foo -j ACCEPT`), "'src' or 'dst'"),
	bad("set without --match-set", in("nat", `-m set -j ACCEPT`), "--match-set"),

	// Quoting.
	bad("single quotes are not quotes", in("nat", `-m comment --comment 'a b' -j ACCEPT`), "Bad argument `b''"),
	bad("a closing quote ends the word", in("nat", `-m comment --comment "a"b -j ACCEPT`), "Bad argument `b'"),
	stricter("unterminated quote", in("nat", `-m comment --comment "oops -j ACCEPT`), "iptables takes the rest of the line into the comment: the rule loses its target"),
	stricter("comment of 256 characters", in("nat", `-m comment --comment "`+strings.Repeat("x", 256)+`" -j ACCEPT`), "iptables truncates it to 255"),

	// What the kernel checks of the whole table.
	bad("DNAT reachable from POSTROUTING", from("nat", "POSTROUTING", `-p tcp -j DNAT --to-destination 10.0.0.1:80`), "only valid from PREROUTING, OUTPUT"),
	bad("MASQUERADE reachable from PREROUTING", from("nat", "PREROUTING", `-j MASQUERADE`), "only valid from POSTROUTING"),
	bad("SNAT reachable from OUTPUT", from("nat", "OUTPUT", `-j SNAT --to-source 192.0.2.1`), "only valid from POSTROUTING, INPUT"),
	bad("nesting of 16 jumps from a built-in chain", nested(16, "-j"), "deeper than 15"),
	bad("nesting of 16 gotos from a built-in chain", nested(16, "-g"), "deeper than 15"),
	bad("loop reachable from a built-in chain", "*nat\n:L - [0:0]\n:M - [0:0]\n-A PREROUTING -j L\n-A L -j M\n-A M -g L\nCOMMIT\n", "a loop"),
	good("loop no built-in chain reaches", "*nat\n:L - [0:0]\n-A L -j L\nCOMMIT\n"),
	bad("jump into a loop from a built-in chain", "*nat\n:L - [0:0]\n-A L -j L\nCOMMIT\n*nat\n-A OUTPUT -j L\nCOMMIT\n", "a loop"),
}

// fakeWithSets returns a new Fake wired to the sets of caseSets.
func fakeWithSets(t testing.TB) *Fake {
	t.Helper()
	f := NewFake()
	s := &stubSets{have: map[string]bool{}}
	for n := range caseSets {
		s.have[n] = true
	}
	if err := f.UseSets(s); err != nil {
		t.Fatal(err)
	}
	return f
}

// stubSets is a fixed set registry for tests of this package; the real
// model is ipvstest.Fake.
type stubSets struct {
	have map[string]bool
	refs map[string]int
}

func (s *stubSets) HasSet(name string) bool { return s.have[name] }

func (s *stubSets) ReferenceSets(refs map[string]int) error {
	for n := range refs {
		if !s.have[n] {
			return fmt.Errorf("Set %s doesn't exist", n)
		}
	}
	s.refs = refs
	return nil
}

// TestRestoreCases holds the fake to the table: it takes what iptables
// takes and refuses, with the expected error, what iptables refuses and
// what the table says it refuses on purpose.
func TestRestoreCases(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range restoreCases {
		if seen[tc.name] {
			t.Fatalf("two cases named %q", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			if tc.ok && tc.stricter != "" {
				t.Fatal("a case cannot be ok and stricter")
			}
			f := fakeWithSets(t)
			before := f.Dump()
			err := f.Restore([]byte(tc.input))
			switch {
			case tc.ok && err != nil:
				t.Errorf("the fake refuses what iptables-restore takes: %v", err)
			case !tc.ok && err == nil:
				t.Errorf("the fake takes what it must refuse:\n%s", tc.input)
			case !tc.ok && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if err != nil && f.Dump() != before {
				t.Error("a refused Restore changed the tables")
			}
		})
	}
}
