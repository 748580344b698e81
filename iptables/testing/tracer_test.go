package iptablestest

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

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
	for _, tc := range []struct {
		name    string
		rules   []string
		pkt     Packet
		wantErr string
	}{
		{"unmodelled match behind one that fails", []string{"*filter", "-A FORWARD -p udp -i eth0 -j DROP", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "-i: not modelled"},
		{"unmodelled module", []string{"*filter", "-A FORWARD -m set --match-set S dst -j DROP", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "-m set"},
		{"unmodelled recent option", []string{"*filter", "-A FORWARD -m recent --rcheck --rttl -j DROP", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "--rttl: not modelled"},
		{"prefix with host bits", []string{"*filter", "-A FORWARD -d 10.96.0.1/16 -j DROP", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "host bits"},
		{"DNAT to port 0", []string{"*nat", "-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:0", "COMMIT"}, pkt("10.244.1.5", "10.96.0.1:80"), "port 0"},
		{"SrcLocal disagrees with LocalAddrs", []string{"*filter", "COMMIT"}, func() Packet { p := pkt("10.244.1.5", "10.96.0.1:80"); p.SrcLocal = true; return p }(), "SrcLocal"},
		{"bad protocol", []string{"*filter", "COMMIT"}, func() Packet { p := pkt("10.244.1.5", "10.96.0.1:80"); p.Proto = "icmp"; return p }(), "protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := fakeWithSets(t)
			mustRestore(t, f, tc.rules...)
			_, err := f.Trace(tc.pkt)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Trace: got error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestTraceDepth: the tracer follows exactly MaxDepth nested chains, and
// Restore refuses one more (nf_tables would), so no traced ruleset nests
// deeper than the kernel allows.
func TestTraceDepth(t *testing.T) {
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
		r = append(r, fmt.Sprintf("-A C%d -p tcp -j DNAT --to-destination 10.0.0.1:1", n))
		return append(r, "COMMIT")
	}
	f := NewFake()
	mustRestore(t, f, chains(MaxDepth)...)
	if got := outcomes(t, f, pkt("10.244.1.5", "10.96.0.1:80")); got != "ACCEPT 10.0.0.1:1" {
		t.Errorf("at MaxDepth: got %q", got)
	}
	if err := NewFake().Restore(lines(chains(MaxDepth + 1)...)); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("deeper than %d", MaxDepth)) {
		t.Errorf("Restore of MaxDepth+1 nested chains: got %v, want a refusal", err)
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

// TestRecentLists: the xt_recent model. A --set records the source in its
// list only on a connection that happens (Connect), never on a Trace;
// --rcheck and --update match a source seen within --seconds, --update
// refreshing it; --remove forgets it; --rdest and --mask change the
// address looked up; lists go with the last rule using them.
func TestRecentLists(t *testing.T) {
	f := NewFake()
	mustRestore(t, f, "*nat", ":CHECK - [0:0]", ":SET - [0:0]",
		"-A PREROUTING -j CHECK",
		"-A PREROUTING -j SET",
		"-A CHECK -m recent --name L1 --rcheck --seconds 10 -p tcp -j DNAT --to-destination 10.0.0.1:1",
		"-A CHECK -m recent --name HITS --rcheck --hitcount 2 -p tcp -j DNAT --to-destination 10.0.0.4:4",
		"-A CHECK -m recent --name L2 --update --seconds 10 --reap -p tcp -j DNAT --to-destination 10.0.0.2:2",
		"-A CHECK -m recent --name DST --rdest --mask 255.255.255.0 --rcheck -p tcp -j DNAT --to-destination 10.0.0.3:3",
		// Kernel order: the recent match after a failing one does nothing.
		"-A SET -p udp -m recent --name L1 --set",
		"-A SET -m statistic --mode random --probability 0.5 -m recent --name L1 --set -p tcp -j DNAT --to-destination 10.0.0.9:9",
		"-A SET -m recent --name L2 --set -m recent --name HITS --set -p tcp -j DNAT --to-destination 10.0.0.8:8",
		"COMMIT")
	a := pkt("10.244.1.5", "10.96.0.1:80")
	if got := outcomes(t, f, a); got != "ACCEPT 10.0.0.8:8, ACCEPT 10.0.0.9:9" {
		t.Fatalf("empty lists: %q", got)
	}
	if got := outcomes(t, f, a); got != "ACCEPT 10.0.0.8:8, ACCEPT 10.0.0.9:9" {
		t.Fatalf("a Trace changed the lists: %q", got)
	}
	if got, _ := f.RecentEntries("L1"); len(got) != 0 {
		t.Fatalf("L1 after Traces: %v", got)
	}
	// Explain's paths, in order: 10.0.0.8 (p=0.5), then 10.0.0.9 (0.5).
	if p, err := f.Connect(a, 0.75); err != nil || p.DNAT.String() != "10.0.0.9:9" {
		t.Fatalf("Connect(0.75) = %v, %v", p, err)
	}
	if got, _ := f.RecentEntries("L1"); len(got) != 1 || got[0] != a.SrcIP {
		t.Fatalf("L1 after a connection: %v, want [%v]", got, a.SrcIP)
	}
	if got := outcomes(t, f, a); got != "ACCEPT 10.0.0.1:1" {
		t.Errorf("source in L1: %q", got)
	}
	if got := outcomes(t, f, pkt("10.244.1.6", "10.96.0.1:80")); got != "ACCEPT 10.0.0.8:8, ACCEPT 10.0.0.9:9" {
		t.Errorf("another source: %q", got)
	}
	f.AdvanceClock(11 * time.Second)
	if got := outcomes(t, f, a); got != "ACCEPT 10.0.0.8:8, ACCEPT 10.0.0.9:9" {
		t.Errorf("L1 entry older than --seconds: %q", got)
	}

	// The other branch sets L2 and HITS; --update keeps refreshing L2.
	if p, err := f.Connect(a, 0.25); err != nil || p.DNAT.String() != "10.0.0.8:8" {
		t.Fatalf("Connect(0.25) = %v, %v", p, err)
	}
	for i := range 3 {
		f.AdvanceClock(8 * time.Second)
		if p, err := f.Connect(a, 0); err != nil || p.DNAT.String() != "10.0.0.2:2" {
			t.Fatalf("connection %d, 8 s after the previous: %v, %v (want --update to keep the entry fresh)", i, p, err)
		}
	}

	// --hitcount 2: HITS has one stamp for a; a second --set makes two.
	f.AdvanceClock(11 * time.Second) // L1 and L2 are stale now
	if got := outcomes(t, f, a); got != "ACCEPT 10.0.0.8:8, ACCEPT 10.0.0.9:9" {
		t.Fatalf("one hit: %q", got)
	}
	if _, err := f.Connect(a, 0.25); err != nil {
		t.Fatal(err)
	}
	if got := outcomes(t, f, a); got != "ACCEPT 10.0.0.4:4" {
		t.Errorf("two hits: %q", got)
	}

	// --rdest with a mask: DST holds destinations by /24.
	mustRestore(t, f, "*nat", ":MARKDST - [0:0]", "-A OUTPUT -j MARKDST",
		"-A MARKDST -m recent --name DST --rdest --mask 255.255.255.0 --set", "COMMIT")
	if _, err := f.Connect(pkt("192.168.0.1", "10.96.7.7:80"), 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.RecentEntries("DST"); len(got) != 1 || got[0].String() != "10.96.7.0" {
		t.Errorf("DST: %v, want [10.96.7.0]", got)
	}
	if got := outcomes(t, f, pkt("203.0.113.1", "10.96.7.200:80")); got != "ACCEPT 10.0.0.3:3" {
		t.Errorf("destination in DST's /24: %q", got)
	}

	// --remove.
	mustRestore(t, f, "*nat", "-I CHECK -m recent --name DST --rdest --mask 255.255.255.0 --remove", "COMMIT")
	if _, err := f.Connect(pkt("203.0.113.1", "10.96.7.200:80"), 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.RecentEntries("DST"); len(got) != 0 {
		t.Errorf("DST after --remove: %v", got)
	}

	// A list goes with its last rule; one no rule uses does not exist.
	if diff := cmp.Diff([]string{"DST", "HITS", "L1", "L2"}, f.RecentLists()); diff != "" {
		t.Errorf("lists (-want +got):\n%s", diff)
	}
	mustRestore(t, f, "*nat", "-F CHECK", "COMMIT")
	if diff := cmp.Diff([]string{"DST", "HITS", "L1", "L2"}, f.RecentLists()); diff != "" {
		t.Errorf("lists still used by SET and MARKDST (-want +got):\n%s", diff)
	}
	mustRestore(t, f, "*nat", "-F SET", "-F MARKDST", "COMMIT")
	if got := f.RecentLists(); len(got) != 0 {
		t.Errorf("lists without rules: %v", got)
	}
	if _, ok := f.RecentEntries("L1"); ok {
		t.Error("L1 exists without a rule")
	}
}

// TestRecentListCapacity: a list keeps the last 100 addresses, like the
// kernel's default ip_list_tot.
func TestRecentListCapacity(t *testing.T) {
	f := NewFake()
	mustRestore(t, f, "*nat", "-A PREROUTING -m recent --name L --set", "COMMIT")
	for i := range 101 {
		if _, err := f.Connect(pkt(fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), "10.96.0.1:80"), 0); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := f.RecentEntries("L")
	if len(got) != 100 || got[0].String() != "10.1.0.2" {
		t.Errorf("%d entries, oldest %v; want 100, the first address dropped", len(got), got[0])
	}
}

func TestConnectPick(t *testing.T) {
	f := NewFake()
	mustRestore(t, f, "*nat",
		"-A PREROUTING -m statistic --mode random --probability 0.25 -p tcp -j DNAT --to-destination 10.0.0.1:1",
		"-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.2:2",
		"COMMIT")
	for _, tc := range []struct {
		pick float64
		want string
	}{{0, "10.0.0.1:1"}, {0.2499, "10.0.0.1:1"}, {0.25, "10.0.0.2:2"}, {0.9999, "10.0.0.2:2"}} {
		p, err := f.Connect(pkt("10.244.1.5", "10.96.0.1:80"), tc.pick)
		if err != nil || p.DNAT.String() != tc.want {
			t.Errorf("Connect(%v) = %v, %v; want %s", tc.pick, p.DNAT, err, tc.want)
		}
	}
	for _, bad := range []float64{-0.1, 1} {
		if _, err := f.Connect(pkt("10.244.1.5", "10.96.0.1:80"), bad); err == nil {
			t.Errorf("Connect(%v) succeeded", bad)
		}
	}
}
