package iptablestest

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var nodeIP = netip.MustParseAddr("192.168.0.1")

// pkt is a TCP packet from src (the node itself if src is nodeIP) to
// dst "ip:port".
func pkt(src, dst string) Packet {
	ap := netip.MustParseAddrPort(dst)
	s := netip.MustParseAddr(src)
	return Packet{SrcIP: s, DstIP: ap.Addr(), Proto: "tcp", DstPort: int(ap.Port()), SrcLocal: s == nodeIP, LocalAddrs: []netip.Addr{nodeIP}}
}

func outcomes(t *testing.T, f *Fake, p Packet) string {
	t.Helper()
	outs, err := f.Trace(p)
	if err != nil {
		t.Fatalf("Trace: %v", err)
	}
	var s []string
	for _, o := range outs {
		s = append(s, o.String())
	}
	return strings.Join(s, ", ")
}

func TestTrace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []string
		pkt   Packet
		want  string
	}{
		{
			name: "goto: falling off returns to the caller of the chain that did the goto",
			rules: []string{"*nat", ":A - [0:0]", ":B - [0:0]",
				"-A PREROUTING -j A",
				"-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:1",
				"-A A -g B",
				"-A A -p tcp -j DNAT --to-destination 10.0.0.2:2",
				"COMMIT"},
			pkt:  pkt("10.244.1.5", "10.96.0.1:80"),
			want: "ACCEPT 10.0.0.1:1",
		},
		{
			name: "jump: falling off returns to the next rule",
			rules: []string{"*nat", ":A - [0:0]", ":B - [0:0]",
				"-A PREROUTING -j A",
				"-A A -j B",
				"-A A -p tcp -j DNAT --to-destination 10.0.0.2:2",
				"COMMIT"},
			pkt:  pkt("10.244.1.5", "10.96.0.1:80"),
			want: "ACCEPT 10.0.0.2:2",
		},
		{
			name: "RETURN from a goto'd chain, and RETURN in a built-in chain applies its policy",
			rules: []string{"*filter", ":A - [0:0]", ":B - [0:0]", ":FORWARD DROP [0:0]",
				"-A FORWARD -j A",
				"-A FORWARD -j RETURN",
				"-A FORWARD -j ACCEPT",
				"-A A -g B",
				"-A A -j ACCEPT",
				"-A B -j RETURN",
				"-A B -j ACCEPT",
				"COMMIT"},
			pkt:  pkt("10.244.1.5", "10.96.0.1:80"),
			want: "DROP",
		},
		{
			name: "random split explores every branch",
			rules: []string{"*nat", ":S - [0:0]",
				"-A OUTPUT -j S",
				"-A S -m statistic --mode random --probability 0.3333333333 -p tcp -j DNAT --to-destination 10.0.0.1:1",
				"-A S -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.0.0.2:2",
				"-A S -m statistic --mode random --probability 0 -p tcp -j DNAT --to-destination 10.0.0.9:9",
				"-A S -p tcp -j DNAT --to-destination 10.0.0.3:3",
				"-A S -p tcp -j DNAT --to-destination 10.0.0.4:4",
				"COMMIT"},
			pkt:  pkt("192.168.0.1", "10.96.0.1:80"),
			want: "ACCEPT 10.0.0.1:1, ACCEPT 10.0.0.2:2, ACCEPT 10.0.0.3:3",
		},
		{
			name: "probability 1 always matches",
			rules: []string{"*nat",
				"-A PREROUTING -m statistic --mode random --probability 1 -p tcp -j DNAT --to-destination 10.0.0.1",
				"-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.2:2",
				"COMMIT"},
			pkt:  pkt("10.244.1.5", "10.96.0.1:80"),
			want: "ACCEPT 10.0.0.1:80",
		},
		{
			name: "marks and masquerade",
			rules: []string{"*nat", ":P - [0:0]",
				"-A PREROUTING -j MARK --or-mark 0x4000",
				"-A PREROUTING -j MARK --set-xmark 0x1/0x3",
				"-A POSTROUTING -j P",
				"-A P -m mark ! --mark 0x4001/0xffff -j RETURN",
				"-A P -j MARK --xor-mark 0x4000",
				"-A P -m mark --mark 0x4000/0x4000 -j ACCEPT",
				"-A P -j MASQUERADE --random-fully",
				"COMMIT"},
			pkt:  pkt("10.244.1.5", "10.96.0.1:80"),
			want: "ACCEPT masquerade",
		},
		{
			name: "addresses, ports, protocols, negations",
			rules: []string{"*filter",
				"-A FORWARD -p udp -j DROP",
				"-A FORWARD -p tcp --dport 81:90 -j DROP",
				"-A FORWARD ! -s 10.244.0.0/16 -j DROP",
				"-A FORWARD -d 10.96.0.0/16 ! -p tcp -j DROP",
				"-A FORWARD -d 10.96.0.1 -p tcp -m tcp ! --dport 80 -j DROP",
				"-A FORWARD -d 10.96.0.0/16 -p tcp --dport 70:80 -j REJECT",
				"COMMIT"},
			pkt:  pkt("10.244.1.5", "10.96.0.1:80"),
			want: "REJECT",
		},
		{
			name: "addrtype, conntrack, recent",
			rules: []string{"*filter",
				"-A INPUT -m addrtype --src-type LOCAL -j DROP",
				"-A INPUT -m addrtype ! --dst-type LOCAL -j DROP",
				"-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j DROP",
				"-A INPUT -m recent --name X --rcheck --seconds 10 --reap -j DROP",
				"-A INPUT -m recent --name X --update -j DROP",
				"-A INPUT -m conntrack ! --ctstate NEW -j DROP",
				"-A INPUT -m recent --name X --set -m conntrack --ctstate NEW -j REJECT",
				"COMMIT"},
			pkt:  pkt("203.0.113.7", "192.168.0.1:22"),
			want: "REJECT",
		},
		{
			name: "DNAT to a local address is delivered locally",
			rules: []string{"*nat",
				"-A PREROUTING -p tcp -j DNAT --to-destination 192.168.0.1:22",
				"COMMIT", "*filter",
				"-A FORWARD -j DROP",
				"COMMIT"},
			pkt:  pkt("203.0.113.7", "10.96.0.1:80"),
			want: "ACCEPT 192.168.0.1:22",
		},
		{
			name: "traffic from the node to itself also goes through INPUT",
			rules: []string{"*filter",
				"-A OUTPUT -j ACCEPT",
				"-A INPUT -d 127.0.0.1 -j REJECT",
				"COMMIT"},
			pkt:  pkt("192.168.0.1", "127.0.0.1:80"),
			want: "REJECT",
		},
		{
			name: "the initial mark is honoured",
			rules: []string{"*filter",
				"-A FORWARD -m mark --mark 0x4000/0x4000 -j DROP",
				"COMMIT"},
			pkt:  func() Packet { p := pkt("10.244.1.5", "10.96.0.1:80"); p.Mark = 0x4000; return p }(),
			want: "DROP",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			mustRestore(t, f, tc.rules...)
			if got := outcomes(t, f, tc.pkt); got != tc.want {
				paths, _ := f.Explain(tc.pkt)
				t.Errorf("got %q, want %q; paths:\n%v", got, tc.want, paths)
			}
		})
	}
}

func TestTraceErrors(t *testing.T) {
	// chains returns PREROUTING -> C1 -> ... -> Cn: n nested transitions.
	chains := func(n int) []string {
		r := []string{"*nat"}
		for i := 1; i <= n; i++ {
			r = append(r, fmt.Sprintf(":C%d - [0:0]", i))
		}
		r = append(r, "-A PREROUTING -j C1")
		for i := 1; i < n; i++ {
			r = append(r, fmt.Sprintf("-A C%d -g C%d", i, i+1))
		}
		return append(r, "COMMIT")
	}
	okDepth, tooDeep := chains(MaxDepth), chains(MaxDepth+1)
	loop := []string{"*nat", ":L - [0:0]", "-A PREROUTING -j L", "-A L -j L", "COMMIT"}

	for _, tc := range []struct {
		name    string
		rules   []string
		pkt     Packet
		wantErr string
	}{
		{"nesting of exactly MaxDepth is fine", okDepth, pkt("10.244.1.5", "10.96.0.1:80"), ""},
		{"nesting beyond MaxDepth", tooDeep, pkt("10.244.1.5", "10.96.0.1:80"), "deeper than 16"},
		{"a loop", loop, pkt("10.244.1.5", "10.96.0.1:80"), "deeper than 16"},
		{"DNAT in POSTROUTING", []string{"*nat", ":A - [0:0]", "-A POSTROUTING -j A", "-A A -p tcp -j DNAT --to-destination 10.0.0.1:1", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "only valid in nat PREROUTING and OUTPUT"},
		{"MASQUERADE in PREROUTING", []string{"*nat", "-A PREROUTING -j MASQUERADE", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "only valid in nat POSTROUTING"},
		{"unmodelled match behind one that fails", []string{"*filter", "-A FORWARD -p udp -i eth0 -j DROP", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "-i: not modelled"},
		{"unmodelled module", []string{"*filter", "-A FORWARD -m set --match-set x dst -j DROP", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "-m set"},
		{"prefix with host bits", []string{"*filter", "-A FORWARD -d 10.96.0.1/16 -j DROP", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "host bits"},
		{"SrcLocal disagrees with LocalAddrs", []string{"*filter", "COMMIT"}, func() Packet { p := pkt("10.244.1.5", "10.96.0.1:80"); p.SrcLocal = true; return p }(), "SrcLocal"},
		{"bad protocol", []string{"*filter", "COMMIT"}, func() Packet { p := pkt("10.244.1.5", "10.96.0.1:80"); p.Proto = "icmp"; return p }(), "protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake()
			mustRestore(t, f, tc.rules...)
			_, err := f.Trace(tc.pkt)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Trace: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Trace: got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestExplain(t *testing.T) {
	f := NewFake()
	mustRestore(t, f, "*nat", ":A - [0:0]",
		"-A PREROUTING -m comment --comment \"to A\" -j A",
		"-A A -d 10.0.0.0/8 -m statistic --mode random --probability 0.5 -p tcp -j DNAT --to-destination 10.0.0.1:1",
		"COMMIT")
	paths, err := f.Explain(pkt("203.0.113.7", "10.96.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range paths {
		got = append(got, p.String())
	}
	want := []string{
		strings.Join([]string{
			"ACCEPT (p=0.5000)",
			`  nat/PREROUTING -m comment --comment "to A" -j A`,
			"  nat/A: end of chain",
			"  nat/PREROUTING: policy ACCEPT",
			"  filter/FORWARD: policy ACCEPT",
			"  nat/POSTROUTING: policy ACCEPT",
		}, "\n"),
		strings.Join([]string{
			"ACCEPT 10.0.0.1:1 (p=0.5000)",
			`  nat/PREROUTING -m comment --comment "to A" -j A`,
			"  nat/A -d 10.0.0.0/8 -m statistic --mode random --probability 0.5 -p tcp -j DNAT --to-destination 10.0.0.1:1",
			"  filter/FORWARD: policy ACCEPT",
			"  nat/POSTROUTING: policy ACCEPT",
		}, "\n"),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Explain (-want +got):\n%s", diff)
	}
}

func TestExplainProbabilities(t *testing.T) {
	f := NewFake()
	mustRestore(t, f, "*nat", ":S - [0:0]",
		"-A PREROUTING -j S",
		"-A S -m statistic --mode random --probability 0.2500000000 -p tcp -j DNAT --to-destination 10.0.0.1:1",
		"-A S -m statistic --mode random --probability 0.3333333333 -p tcp -j DNAT --to-destination 10.0.0.2:2",
		"-A S -m statistic --mode random --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.0.0.3:3",
		"-A S -m statistic --mode random ! --probability 0.5000000000 -p tcp -j DNAT --to-destination 10.0.0.4:4",
		"COMMIT")
	paths, err := f.Explain(pkt("10.244.1.5", "10.96.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	sum := 0.0
	for _, p := range paths {
		got[p.Outcome.String()] += p.Probability
		sum += p.Probability
	}
	want := map[string]float64{"ACCEPT 10.0.0.1:1": 0.25, "ACCEPT 10.0.0.2:2": 0.25, "ACCEPT 10.0.0.3:3": 0.25, "ACCEPT 10.0.0.4:4": 0.125, "ACCEPT": 0.125}
	approx := cmp.Comparer(func(a, b float64) bool { return a-b < 1e-6 && b-a < 1e-6 })
	if diff := cmp.Diff(want, got, approx); diff != "" {
		t.Errorf("probabilities (-want +got):\n%s", diff)
	}
	if sum < 1-1e-9 || sum > 1+1e-9 {
		t.Errorf("probabilities add up to %v", sum)
	}
}
