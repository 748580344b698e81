package iptablestest

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// builtinChains lists the built-in chains of each modelled table, in the
// order iptables-save prints them.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	// mangle holds no rule of svcproxy's; it is modelled because
	// kubelet and kube-proxy keep chains there (KUBE-PROXY-CANARY,
	// KUBE-IPTABLES-HINT) that the takeover reads and removes.
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

// tableOrder is the order Dump prints tables in.
var tableOrder = []string{"filter", "nat", "mangle"}

func isBuiltin(table, chain string) bool {
	return slices.Contains(builtinChains[table], chain)
}

// opt is one option of a rule: "-d 10.0.0.1/32", "! --mark 0x4000/0x4000".
// name is the canonical (short or main long) name.
type opt struct {
	neg  bool
	name string
	args []string
}

func (o opt) arg() string {
	if len(o.args) == 0 {
		return ""
	}
	return o.args[0]
}

// match is one match module and its options, in rule order. Generic options
// (-p, -s, -d, -i, -o) form a match of their own with module "".
type match struct {
	module string
	opts   []opt
}

func (m *match) get(name string) (opt, bool) {
	for _, o := range m.opts {
		if o.name == name {
			return o, true
		}
	}
	return opt{}, false
}

func (m *match) has(name string) bool { _, ok := m.get(name); return ok }

// rule is a parsed rule.
type rule struct {
	text       string   // as received, after "-A CHAIN "
	args       []string // tokens
	matches    []match
	target     string // "" when the rule has no target
	isGoto     bool
	targetOpts []opt
}

// targetOpt returns the argument of a target option, "" if absent.
func (r *rule) targetOpt(name string) (string, bool) {
	for _, o := range r.targetOpts {
		if o.name == name {
			return o.arg(), true
		}
	}
	return "", false
}

// protoInv returns the protocol the rule names with -p (canonical name,
// e.g. "tcp" for "-p 6"), "" if none, and whether it is inverted.
func (r *rule) protoInv() (string, bool) {
	for _, m := range r.matches {
		if m.module != "" {
			continue
		}
		for _, o := range m.opts {
			if o.name == "-p" {
				return o.arg(), o.neg
			}
		}
	}
	return "", false
}

// proto returns the protocol the rule matches with a non-inverted -p, ""
// if none.
func (r *rule) proto() string {
	p, neg := r.protoInv()
	if neg {
		return ""
	}
	return p
}

// --- what iptables knows: modules, targets, options ---

// optSpec says how one option of a match or target is written.
type optSpec struct {
	args  int                // arguments it takes: 0 or 1 (2 for --match-set and --tcp-flags)
	inv   bool               // may be preceded by "!"
	multi bool               // may be given more than once
	check func(string) error // validates the (first) argument; nil: anything
}

// moduleSpec is a match module.
type moduleSpec struct {
	// proto is the protocol -p must name, without "!", for the module to
	// load (tcp, udp, sctp); "" for any.
	proto   string
	opts    map[string]optSpec
	aliases map[string]string // long option name -> canonical
	// final checks the match once every option is in: required and
	// exclusive options, as the extension's final check does.
	final func(m *match) error
}

// targetSpec is a target extension (a standard target, or DNAT, MARK…).
type targetSpec struct {
	table string // the only table it is valid in; "" for any
	// hooks are the built-in chains of its table it may be reached from
	// (the kernel checks this when the ruleset is loaded); nil for any.
	hooks []string
	opts  map[string]optSpec
	final func(r *rule) error
}

var noOpts = map[string]optSpec{}

// targets are the targets that are not chains. The tables and hooks they
// are valid in follow the kernel. A name missing here and not a chain of
// the table is refused, as iptables refuses it.
var targets = map[string]*targetSpec{
	"ACCEPT": {opts: noOpts},
	"DROP":   {opts: noOpts},
	"RETURN": {opts: noOpts},
	"LOG": {opts: map[string]optSpec{
		"--log-prefix": {args: 1, check: maxLen("log prefix", 29)},
		"--log-level":  {args: 1, check: oneOf("log level", "0", "1", "2", "3", "4", "5", "6", "7", "emerg", "alert", "crit", "error", "warning", "notice", "info", "debug")},
	}},
	"MARK": {
		opts: map[string]optSpec{
			"--set-xmark": {args: 1, check: markArg(true)},
			"--set-mark":  {args: 1, check: markArg(true)},
			"--and-mark":  {args: 1, check: markArg(false)},
			"--or-mark":   {args: 1, check: markArg(false)},
			"--xor-mark":  {args: 1, check: markArg(false)},
		},
		final: func(r *rule) error {
			if len(r.targetOpts) != 1 {
				return errors.New("MARK: One of the --set-xmark, --{and,or,xor,set}-mark options is required (and only one)")
			}
			return nil
		},
	},
	"REJECT": {table: "filter", opts: map[string]optSpec{
		"--reject-with": {args: 1, check: oneOf("reject type",
			"icmp-net-unreachable", "net-unreach", "icmp-host-unreachable", "host-unreach",
			"icmp-proto-unreachable", "proto-unreach", "icmp-port-unreachable", "port-unreach",
			"icmp-net-prohibited", "net-prohib", "icmp-host-prohibited", "host-prohib",
			"icmp-admin-prohibited", "admin-prohib", "tcp-reset")},
	}, final: func(r *rule) error {
		if w, _ := r.targetOpt("--reject-with"); w == "tcp-reset" && r.proto() != "tcp" {
			return errors.New("REJECT --reject-with tcp-reset needs -p tcp")
		}
		return nil
	}},
	"DNAT": {
		table: "nat", hooks: []string{"PREROUTING", "OUTPUT"},
		opts: map[string]optSpec{
			"--to-destination": {args: 1, check: natRange},
			"--random":         {},
			"--persistent":     {},
		},
		final: natFinal("DNAT", "--to-destination"),
	},
	"SNAT": {
		table: "nat", hooks: []string{"POSTROUTING", "INPUT"},
		opts: map[string]optSpec{
			"--to-source":    {args: 1, check: natRange},
			"--random":       {},
			"--random-fully": {},
			"--persistent":   {},
		},
		final: natFinal("SNAT", "--to-source"),
	},
	"MASQUERADE": {
		table: "nat", hooks: []string{"POSTROUTING"},
		opts: map[string]optSpec{
			"--to-ports":     {args: 1, check: portRangeDash},
			"--random":       {},
			"--random-fully": {},
		},
		final: func(r *rule) error {
			if _, ok := r.targetOpt("--to-ports"); ok && !portProto(r) {
				return errors.New("MASQUERADE: Need TCP, UDP, SCTP or DCCP with port specification")
			}
			return nil
		},
	},
}

func natFinal(name, to string) func(r *rule) error {
	return func(r *rule) error {
		v, ok := r.targetOpt(to)
		if !ok {
			return fmt.Errorf("%s: option %q must be specified", name, to)
		}
		if strings.Contains(v, ":") && !portProto(r) {
			return fmt.Errorf("%s: Need TCP, UDP, SCTP or DCCP with port specification", name)
		}
		return nil
	}
}

// portProto reports whether the rule's protocol allows a NAT port.
func portProto(r *rule) bool {
	switch r.proto() {
	case "tcp", "udp", "sctp", "dccp", "icmp":
		return true
	}
	return false
}

var portOpts = map[string]optSpec{
	"--dport": {args: 1, inv: true, check: portRangeColon},
	"--sport": {args: 1, inv: true, check: portRangeColon},
}

var portAliases = map[string]string{"--destination-port": "--dport", "--source-port": "--sport"}

// modules are the match modules the fake knows. Anything else is refused
// as iptables refuses a module it cannot load; a few real modules svcproxy
// never uses are refused too (and said to be not modelled).
var modules = map[string]*moduleSpec{
	"tcp": {proto: "tcp", aliases: portAliases, opts: map[string]optSpec{
		"--dport":     portOpts["--dport"],
		"--sport":     portOpts["--sport"],
		"--syn":       {inv: true},
		"--tcp-flags": {args: 2, inv: true, check: tcpFlags},
	}},
	"udp":  {proto: "udp", aliases: portAliases, opts: portOpts},
	"sctp": {proto: "sctp", aliases: portAliases, opts: portOpts},
	"multiport": {
		aliases: map[string]string{"--destination-ports": "--dports", "--source-ports": "--sports"},
		opts: map[string]optSpec{
			"--dports": {args: 1, inv: true, check: portList},
			"--sports": {args: 1, inv: true, check: portList},
			"--ports":  {args: 1, inv: true, check: portList},
		},
		final: func(m *match) error {
			if len(m.opts) != 1 {
				return errors.New("multiport: exactly one of --sports, --dports or --ports is required")
			}
			return nil
		},
	},
	"comment": {
		opts: map[string]optSpec{"--comment": {args: 1, check: comment}},
		final: func(m *match) error {
			if !m.has("--comment") {
				return errors.New(`comment: option "--comment" must be specified`)
			}
			return nil
		},
	},
	"statistic": {
		opts: map[string]optSpec{
			"--mode":        {args: 1, check: oneOf("mode", "random", "nth")},
			"--probability": {args: 1, inv: true, check: probability},
			"--every":       {args: 1, inv: true, check: uintRange("--every", 1, math.MaxUint32)},
			"--packet":      {args: 1, check: uintRange("--packet", 0, math.MaxUint32)},
		},
		final: statisticFinal,
	},
	"recent": {
		opts: map[string]optSpec{
			"--set":      {inv: true},
			"--rcheck":   {inv: true},
			"--update":   {inv: true},
			"--remove":   {inv: true},
			"--seconds":  {args: 1, check: uintRange("--seconds", 1, math.MaxUint32)},
			"--reap":     {},
			"--hitcount": {args: 1, check: uintRange("--hitcount", 1, 255)},
			"--rttl":     {},
			"--name":     {args: 1, check: recentName},
			"--rsource":  {},
			"--rdest":    {},
			"--mask":     {args: 1, check: ipv4},
		},
		final: recentFinal,
	},
	"addrtype": {
		opts: map[string]optSpec{
			"--src-type":        {args: 1, inv: true, check: addrTypes},
			"--dst-type":        {args: 1, inv: true, check: addrTypes},
			"--limit-iface-in":  {},
			"--limit-iface-out": {},
		},
		final: func(m *match) error {
			if !m.has("--src-type") && !m.has("--dst-type") {
				return errors.New("addrtype: you must specify --src-type or --dst-type")
			}
			if m.has("--limit-iface-in") && m.has("--limit-iface-out") {
				return errors.New("addrtype: you can't specify both --limit-iface-in and --limit-iface-out")
			}
			return nil
		},
	},
	"mark": {
		opts: map[string]optSpec{"--mark": {args: 1, inv: true, check: markArg(true)}},
		final: func(m *match) error {
			if !m.has("--mark") {
				return errors.New(`mark: option "--mark" must be specified`)
			}
			return nil
		},
	},
	"conntrack": {
		opts: map[string]optSpec{
			"--ctstate":  {args: 1, inv: true, check: flagList("ctstate", "INVALID", "ESTABLISHED", "NEW", "RELATED", "UNTRACKED", "SNAT", "DNAT")},
			"--ctstatus": {args: 1, inv: true, check: flagList("ctstatus", "NONE", "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED")},
		},
		final: func(m *match) error {
			if len(m.opts) == 0 {
				return errors.New("conntrack: At least one option is required")
			}
			return nil
		},
	},
	"set": {
		opts: map[string]optSpec{"--match-set": {args: 2, inv: true, check: setName}},
		final: func(m *match) error {
			o, ok := m.get("--match-set")
			if !ok {
				return errors.New("set: You must specify `--match-set' with proper arguments")
			}
			return setDirs(o.args[1])
		},
	},
	// nfacct is known so that kube-proxy's rules load; the fake assumes
	// the accounting object exists (the kernel refuses a rule naming a
	// missing one).
	"nfacct": {
		opts: map[string]optSpec{"--nfacct-name": {args: 1, check: maxLen("nfacct name", 31)}},
		final: func(m *match) error {
			if !m.has("--nfacct-name") {
				return errors.New(`nfacct: option "--nfacct-name" must be specified`)
			}
			return nil
		},
	},
}

func statisticFinal(m *match) error {
	mode, ok := m.get("--mode")
	if !ok {
		return errors.New(`statistic: option "--mode" must be specified`)
	}
	switch mode.arg() {
	case "random":
		if !m.has("--probability") {
			return errors.New("--probability must be specified when using random mode")
		}
		if m.has("--every") || m.has("--packet") {
			return errors.New("--every and --packet can only be used in nth mode")
		}
	case "nth":
		if !m.has("--every") {
			return errors.New("--every and --packet must be specified when using nth mode")
		}
		if m.has("--probability") {
			return errors.New("--probability can only be used in random mode")
		}
		if p, ok := m.get("--packet"); ok {
			e, _ := m.get("--every")
			pn, _ := strconv.ParseUint(p.arg(), 10, 32)
			en, _ := strconv.ParseUint(e.arg(), 10, 32)
			if pn >= en {
				return errors.New("--packet must be lower than --every")
			}
		}
	}
	return nil
}

func recentFinal(m *match) error {
	var cmds []string
	for _, c := range []string{"--set", "--rcheck", "--update", "--remove"} {
		if m.has(c) {
			cmds = append(cmds, c)
		}
	}
	switch {
	case len(cmds) == 0:
		return errors.New("recent: you must specify one of `--set', `--rcheck' `--update' or `--remove'")
	case len(cmds) > 1:
		return fmt.Errorf("recent: option %q cannot be used together with %q", cmds[0], cmds[1])
	case m.has("--rsource") && m.has("--rdest"):
		return errors.New("recent: --rsource and --rdest are exclusive")
	case m.has("--reap") && !m.has("--seconds"):
		return errors.New(`recent: option "--reap" also requires "--seconds"`)
	}
	// The kernel (recent_mt_check) refuses time conditions on --set and
	// --remove.
	if (cmds[0] == "--set" || cmds[0] == "--remove") && (m.has("--seconds") || m.has("--hitcount") || m.has("--rttl") || m.has("--reap")) {
		return fmt.Errorf("recent: %s with --seconds, --hitcount, --rttl or --reap: invalid argument (refused by the kernel)", cmds[0])
	}
	return nil
}

// --- argument checks ---

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
// beyond 255 characters; the fake refuses it, since the rule read back
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

// addrPrefix checks the argument of -s and -d: an IPv4 address, with an
// optional mask (a prefix length or a contiguous dotted mask). Host bits
// are allowed, as iptables masks them; the tracer refuses them. iptables
// also resolves host names, accepts inet_aton forms ("10.1", "010.0.0.1"
// is 8.0.0.1!), comma-separated lists and non-contiguous masks: the fake
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
// names from /etc/services; the fake does not.
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

// canonicalProto returns the protocol as the fake keeps it: a name for
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

// --- parsing ---

// longNames maps the long forms of generic options to their short forms.
var longNames = map[string]string{
	"--protocol": "-p", "--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d",
	"--in-interface": "-i", "--out-interface": "-o", "--match": "-m", "--jump": "-j", "--goto": "-g",
}

// parseArgs parses and checks a rule the way iptables does before anything
// reaches the kernel, plus what the kernel checks of a single rule: known
// modules and targets, known options with well-formed arguments, required
// and exclusive options, "!" only where allowed, each option once, the
// protocol a module or a NAT port needs. What depends on other rules
// (chains, sets, hooks) is the caller's business.
func parseArgs(text string, args []string) (*rule, error) {
	r := &rule{text: text, args: args}
	var tspec *targetSpec
	generic := map[string]bool{}
	proto, invProto := "", ""
	for i := 0; i < len(args); {
		neg := false
		if args[i] == "!" {
			neg = true
			i++
			if i == len(args) {
				return nil, errors.New(`"!" at end of rule`)
			}
		}
		name := args[i]
		i++
		if short, ok := longNames[name]; ok {
			name = short
		}
		next := func(n int) ([]string, error) {
			if i+n > len(args) {
				return nil, fmt.Errorf("option %q requires %d argument(s)", name, n)
			}
			i += n
			return args[i-n : i], nil
		}
		switch name {
		case "-p", "-s", "-d", "-i", "-o":
			if tspec != nil {
				return nil, fmt.Errorf("option %q after the target (iptables takes it; the fake wants matches first)", name)
			}
			if generic[name] {
				return nil, fmt.Errorf("multiple %s flags not allowed", name)
			}
			generic[name] = true
			v, err := next(1)
			if err != nil {
				return nil, err
			}
			arg := v[0]
			switch name {
			case "-p":
				if arg, err = canonicalProto(arg); err != nil {
					return nil, err
				}
				if neg {
					invProto = arg
				} else {
					proto = arg
				}
			case "-s", "-d":
				err = addrPrefix(arg)
			default:
				err = iface(arg)
			}
			if err != nil {
				return nil, err
			}
			r.matches = append(r.matches, match{opts: []opt{{neg: neg, name: name, args: []string{arg}}}})
		case "-m":
			if neg {
				return nil, errors.New(`unexpected "!" before -m`)
			}
			if tspec != nil {
				return nil, errors.New(`"-m" after the target (iptables takes it; the fake wants matches first)`)
			}
			v, err := next(1)
			if err != nil {
				return nil, err
			}
			if modules[v[0]] == nil {
				return nil, fmt.Errorf("Couldn't load match `%s' (unknown to the fake: no such module, or not modelled)", v[0])
			}
			r.matches = append(r.matches, match{module: v[0]})
		case "-j", "-g":
			if neg {
				return nil, fmt.Errorf(`unexpected "!" before %q`, name)
			}
			if r.target != "" {
				return nil, errors.New("more than one target")
			}
			v, err := next(1)
			if err != nil {
				return nil, err
			}
			r.target, r.isGoto = v[0], name == "-g"
			if tspec = targets[r.target]; tspec == nil {
				tspec = &targetSpec{opts: noOpts} // a chain
			}
		default:
			if !strings.HasPrefix(name, "--") {
				return nil, fmt.Errorf("Bad argument `%s'", name)
			}
			if tspec != nil {
				spec, ok := tspec.opts[name]
				if !ok {
					return nil, fmt.Errorf("unknown option %q for target %s", name, r.target)
				}
				if _, dup := r.targetOpt(name); dup && !spec.multi {
					return nil, fmt.Errorf("%s: option %q can only be used once", r.target, name)
				}
				o, err := parseOpt(neg, name, spec, next)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", r.target, err)
				}
				r.targetOpts = append(r.targetOpts, o)
				continue
			}
			mi, canon := findOption(r.matches, name)
			if mi < 0 && (proto == "tcp" || proto == "udp" || proto == "sctp") && !slices.ContainsFunc(r.matches, func(m match) bool { return m.module == proto }) {
				// iptables loads the protocol's match on demand.
				if _, known := modules[proto].canonical(name); known {
					r.matches = append(r.matches, match{module: proto})
					mi, canon = findOption(r.matches, name)
				}
			}
			if mi < 0 && modules[invProto] != nil && modules[invProto].proto != "" {
				if _, known := modules[invProto].canonical(name); known {
					return nil, fmt.Errorf("%s match requires '-p %s' (without \"!\")", strings.ToUpper(invProto), invProto)
				}
			}
			if mi < 0 {
				return nil, fmt.Errorf("unknown option %q", name)
			}
			m := &r.matches[mi]
			spec := modules[m.module].opts[canon]
			if m.has(canon) && !spec.multi {
				return nil, fmt.Errorf("%s: option %q can only be used once", m.module, name)
			}
			o, err := parseOpt(neg, canon, spec, next)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", m.module, err)
			}
			m.opts = append(m.opts, o)
		}
	}
	for _, m := range r.matches {
		if m.module == "" {
			continue
		}
		spec := modules[m.module]
		if spec.proto != "" && spec.proto != proto {
			return nil, fmt.Errorf("%s match requires '-p %s' (without \"!\")", strings.ToUpper(m.module), spec.proto)
		}
		if m.module == "multiport" && proto != "tcp" && proto != "udp" && proto != "sctp" && proto != "dccp" && proto != "udplite" {
			return nil, errors.New("multiport needs `-p tcp', `-p udp', `-p udplite', `-p sctp' or `-p dccp'")
		}
		if spec.final != nil {
			if err := spec.final(&m); err != nil {
				return nil, err
			}
		}
	}
	if tspec != nil && tspec.final != nil {
		if err := tspec.final(r); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// canonical returns the canonical name of an option of the module.
func (s *moduleSpec) canonical(name string) (string, bool) {
	if c, ok := s.aliases[name]; ok {
		name = c
	}
	_, ok := s.opts[name]
	return name, ok
}

// findOption returns the index of the latest loaded match that knows
// option name, and the option's canonical name; -1 if none.
func findOption(ms []match, name string) (int, string) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].module == "" {
			continue
		}
		if c, ok := modules[ms[i].module].canonical(name); ok {
			return i, c
		}
	}
	return -1, ""
}

func parseOpt(neg bool, name string, spec optSpec, next func(int) ([]string, error)) (opt, error) {
	if neg && !spec.inv {
		return opt{}, fmt.Errorf("option %q cannot be inverted", name)
	}
	o := opt{neg: neg, name: name}
	if spec.args > 0 {
		v, err := next(spec.args)
		if err != nil {
			return opt{}, err
		}
		o.args = slices.Clone(v)
		if spec.check != nil {
			if err := spec.check(v[0]); err != nil {
				return opt{}, err
			}
		}
	}
	return o, nil
}

// maxParam is the longest word iptables-restore takes (its parameter
// buffer is 1024 bytes).
const maxParam = 1023

// tokenize splits a rule like iptables-restore does: on blanks, with
// double quotes grouping words (a closing quote ends the word) and, inside
// them, a backslash escaping the next character. Single quotes are
// ordinary characters, as in iptables-restore. Where iptables-restore
// silently takes the rest of the line into an unterminated quote (a rule
// that loses its target, say), the fake refuses.
func tokenize(s string) ([]string, error) {
	var out []string
	var b strings.Builder
	inQuote, escaped, inWord := false, false, false
	flush := func() error {
		if b.Len() > maxParam {
			return fmt.Errorf("Parameter too long! (%d characters)", b.Len())
		}
		out = append(out, b.String())
		b.Reset()
		inWord = false
		return nil
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if inQuote {
			switch {
			case escaped:
				b.WriteByte(c)
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inQuote = false
				if err := flush(); err != nil {
					return nil, err
				}
			default:
				b.WriteByte(c)
			}
			continue
		}
		switch c {
		case '"':
			inQuote, inWord = true, true
		case ' ', '\t':
			if inWord {
				if err := flush(); err != nil {
					return nil, err
				}
			}
		default:
			b.WriteByte(c)
			inWord = true
		}
	}
	if inQuote {
		return nil, errors.New(`unterminated quote: iptables-restore would silently take the rest of the line as one argument`)
	}
	if inWord {
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// quoteArgs joins args into rule text, quoting those that need it.
func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"\\") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}
