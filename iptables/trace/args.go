package trace

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Argument checks.

func oneOf(what string, vals ...string) func(string) error {
	return func(s string) error {
		if !slices.Contains(vals, s) {
			return fmt.Errorf("bad %s %q", what, s)
		}
		return nil
	}
}

func maxLen(what string, n int) func(string) error {
	return func(s string) error {
		if len(s) > n {
			return fmt.Errorf("%s %q is longer than %d characters", what, s, n)
		}
		return nil
	}
}

// comment checks a --comment. iptables silently truncates a comment
// beyond 255 characters; the model refuses it, since the rule read back
// would differ from the rule written.
func comment(s string) error {
	if len(s) > 255 {
		return fmt.Errorf("comment of %d characters: longer than 255 (iptables would truncate it)", len(s))
	}
	return nil
}

// flagList checks a comma-separated list of names (case-insensitive).
func flagList(what string, vals ...string) func(string) error {
	return func(s string) error {
		for _, v := range strings.Split(s, ",") {
			if !slices.Contains(vals, strings.ToUpper(v)) {
				return fmt.Errorf("Bad %s %q", what, v)
			}
		}
		return nil
	}
}

func addrTypes(s string) error {
	return flagList("addrtype type", "UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST",
		"BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")(s)
}

func uintRange(what string, lo, hi uint64) func(string) error {
	return func(s string) error {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("bad value for option %q, or out of range (%d-%d)", what, lo, hi)
		}
		return nil
	}
}

// probability checks a --probability: a number in [0, 1]. NaN is refused.
func probability(s string) error {
	_, err := parseProbability(s)
	return err
}

func parseProbability(s string) (float64, error) {
	p, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(p) || p < 0 || p > 1 {
		return 0, fmt.Errorf(`statistic: bad value for option "--probability" %q, or out of range (0-1)`, s)
	}
	return p, nil
}

// recentName checks an xt_recent list name as the kernel does
// (xt_check_proc_name): 1 to 199 characters, no "/", not "." or "..".
func recentName(s string) error {
	switch {
	case s == "" || s == "." || s == "..":
		return fmt.Errorf("recent: list name %q: invalid argument (refused by the kernel)", s)
	case len(s) >= 200:
		return fmt.Errorf("recent: list name of %d characters: too long (refused by the kernel)", len(s))
	case strings.Contains(s, "/"):
		return fmt.Errorf("recent: list name %q contains \"/\" (refused by the kernel)", s)
	}
	return nil
}

func setName(s string) error {
	if s == "" || len(s) > 31 {
		return fmt.Errorf("set: set name %q: 1 to 31 characters", s)
	}
	return nil
}

func setDirs(s string) error {
	dirs := strings.Split(s, ",")
	if len(dirs) > 6 {
		return fmt.Errorf("set: too many binding directions in %q", s)
	}
	for _, d := range dirs {
		if d != "src" && d != "dst" {
			return fmt.Errorf("set: you must specify (the comma separated list of) 'src' or 'dst', not %q", s)
		}
	}
	return nil
}

func tcpFlags(s string) error {
	return flagList("TCP flag", "SYN", "ACK", "FIN", "RST", "URG", "PSH", "ALL", "NONE")(s)
}

// ipv4 checks a dotted IPv4 address.
func ipv4(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return fmt.Errorf("host/network %q not found (want a dotted IPv4 address)", s)
	}
	return nil
}

// ipAddr checks an IPv4 or IPv6 address (the family is checkFamily's).
func ipAddr(s string) error {
	if _, err := netip.ParseAddr(s); err != nil {
		return fmt.Errorf("host/network %q not found", s)
	}
	return nil
}

// addrPrefix checks the argument of -s and -d: an IPv4 address, with an
// optional mask (a prefix length or a contiguous dotted mask). Host bits
// are allowed, as iptables masks them; the tracer refuses them. iptables
// also resolves host names, accepts inet_aton forms ("10.1", "010.0.0.1"
// is 8.0.0.1!), comma-separated lists and non-contiguous masks: the model
// refuses all of those, which no caller of ours means to write.
func addrPrefix(s string) error {
	_, err := parseAddrMask(s)
	return err
}

func parseAddrMask(s string) (netip.Prefix, error) {
	as, ms, hasMask := strings.Cut(s, "/")
	if a, err := netip.ParseAddr(as); err == nil && a.Is6() && !a.Is4In6() && a.Zone() == "" {
		// ip6tables: an IPv6 address with an optional prefix length.
		if !hasMask {
			return netip.PrefixFrom(a, 128), nil
		}
		n, err := strconv.Atoi(ms)
		if err != nil || ms != strconv.Itoa(n) || n < 0 || n > 128 {
			return netip.Prefix{}, fmt.Errorf("invalid mask %q specified", ms)
		}
		return netip.PrefixFrom(a, n), nil
	}
	a, err := netip.ParseAddr(as)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("host/network %q not found (want a dotted IPv4 address)", as)
	}
	if !hasMask {
		return netip.PrefixFrom(a, 32), nil
	}
	if n, err := strconv.Atoi(ms); err == nil && ms == strconv.Itoa(n) {
		if n < 0 || n > 32 {
			return netip.Prefix{}, fmt.Errorf("invalid mask %q specified", ms)
		}
		return netip.PrefixFrom(a, n), nil
	}
	m, err := netip.ParseAddr(ms)
	if err != nil || !m.Is4() {
		return netip.Prefix{}, fmt.Errorf("invalid mask %q specified", ms)
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := 0
	for ones < 32 && v&(1<<(31-ones)) != 0 {
		ones++
	}
	if ones < 32 && v<<ones != 0 {
		return netip.Prefix{}, fmt.Errorf("mask %q is not contiguous", ms)
	}
	return netip.PrefixFrom(a, ones), nil
}

// port parses a numeric port, 0 to 65535. iptables also takes service
// names from /etc/services; the model does not.
func port(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || s != strconv.Itoa(n) || n < 0 || n > 65535 {
		return 0, fmt.Errorf("invalid port/service %q specified", s)
	}
	return n, nil
}

// portRangeColon checks a match port or range: "p", "p:q", ":q", "p:".
func portRangeColon(s string) error {
	_, _, err := parsePortRange(s)
	return err
}

func parsePortRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, ":")
	if !isRange {
		lo, err = port(s)
		return lo, lo, err
	}
	lo, hi = 0, 65535
	if a != "" {
		if lo, err = port(a); err != nil {
			return 0, 0, err
		}
	}
	if b != "" {
		if hi, err = port(b); err != nil {
			return 0, 0, err
		}
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("invalid portrange %q (min > max)", s)
	}
	return lo, hi, nil
}

// portList checks a multiport list: up to 15 ports, a range counting two.
func portList(s string) error {
	n := 0
	for _, p := range strings.Split(s, ",") {
		if strings.Contains(p, ":") {
			n += 2
		} else {
			n++
		}
		if err := portRangeColon(p); err != nil {
			return err
		}
	}
	if n > 15 {
		return fmt.Errorf("too many ports specified in %q", s)
	}
	return nil
}

// portRangeDash checks a NAT port or range: "p" or "p-q".
func portRangeDash(s string) error {
	a, b, isRange := strings.Cut(s, "-")
	lo, err := port(a)
	if err != nil {
		return fmt.Errorf("Port %q not valid", a)
	}
	if isRange {
		hi, err := port(b)
		if err != nil || hi < lo {
			return fmt.Errorf("Port range %q funky", s)
		}
	}
	return nil
}

// natRange checks a --to-destination or --to-source:
// "ip[-ip][:port[-port]]", in ip6tables "[ip6][:port[-port]]" or "ip6".
func natRange(s string) error {
	if strings.HasPrefix(s, "[") {
		ip, rest, ok := strings.Cut(s[1:], "]")
		if a, err := netip.ParseAddr(ip); !ok || err != nil || !a.Is6() {
			return fmt.Errorf("Bad IP address %q", ip)
		}
		if rest == "" {
			return nil
		}
		if !strings.HasPrefix(rest, ":") {
			return fmt.Errorf("Bad IP address %q", s)
		}
		return portRangeDash(rest[1:])
	}
	if strings.Count(s, ":") > 1 {
		if a, err := netip.ParseAddr(s); err != nil || !a.Is6() {
			return fmt.Errorf("Bad IP address %q", s)
		}
		return nil
	}
	ips, ports, hasPort := strings.Cut(s, ":")
	for _, ip := range strings.SplitN(ips, "-", 2) {
		if err := ipv4(ip); err != nil {
			return fmt.Errorf("Bad IP address %q", ip)
		}
	}
	if hasPort {
		return portRangeDash(ports)
	}
	return nil
}

// markArg checks "value[/mask]", each a 32-bit number (decimal, 0x hex or
// 0 octal), the mask only where allowed.
func markArg(maskOK bool) func(string) error {
	return func(s string) error {
		vs, ms, hasMask := strings.Cut(s, "/")
		if hasMask && !maskOK {
			return fmt.Errorf("bad value %q, or out of range (0-4294967295): no mask allowed", s)
		}
		if _, err := strconv.ParseUint(vs, 0, 32); err != nil || strings.Contains(vs, "_") {
			return fmt.Errorf("bad integer value %q, or out of range", s)
		}
		if hasMask {
			if _, err := strconv.ParseUint(ms, 0, 32); err != nil || strings.Contains(ms, "_") {
				return fmt.Errorf("bad mask in %q (trailing garbage or out of range)", s)
			}
		}
		return nil
	}
}

// protocols are the names -p takes, and the numbers of the ones with
// port matches. Numbers 0-255 are taken too.
var protocols = map[string]string{
	"tcp": "tcp", "udp": "udp", "sctp": "sctp", "dccp": "dccp", "udplite": "udplite", "icmp": "icmp",
	"esp": "esp", "ah": "ah", "gre": "gre", "all": "all",
	"6": "tcp", "17": "udp", "132": "sctp", "33": "dccp", "136": "udplite", "1": "icmp", "0": "all",
}

// canonicalProto returns the protocol as the model keeps it: a name for
// the ones above, else the number.
func canonicalProto(s string) (string, error) {
	if p, ok := protocols[strings.ToLower(s)]; ok {
		return p, nil
	}
	if n, err := strconv.Atoi(s); err == nil && s == strconv.Itoa(n) && n >= 0 && n <= 255 {
		return s, nil
	}
	return "", fmt.Errorf("unknown protocol %q specified", s)
}

func iface(s string) error {
	if s == "" || len(s) > 15 {
		return fmt.Errorf("interface name %q must be shorter than IFNAMSIZ (15)", s)
	}
	return nil
}
