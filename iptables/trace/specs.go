package trace

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// What iptables knows: modules, targets, options.

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
			"icmp-admin-prohibited", "admin-prohib", "tcp-reset",
			// ip6tables' (ip6tables-save prints the default,
			// icmp6-port-unreachable).
			"icmp6-no-route", "no-route", "icmp6-adm-prohibited", "adm-prohibited", "icmp6-addr-unreachable",
			"addr-unreach", "icmp6-port-unreachable", "icmp6-policy-fail", "policy-fail", "icmp6-reject-route", "reject-route")},
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

// modules are the match modules the model knows. Anything else is refused
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
			"--mask":     {args: 1, check: ipAddr}, // ip6tables-save prints an IPv6 one
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
	// state is conntrack's --ctstate under its old name, still common
	// in firewalls.
	"state": {
		opts: map[string]optSpec{"--state": {args: 1, inv: true, check: flagList("state", "INVALID", "ESTABLISHED", "NEW", "RELATED", "UNTRACKED")}},
		final: func(m *match) error {
			if !m.has("--state") {
				return errors.New(`state: option "--state" must be specified`)
			}
			return nil
		},
	},
	// rpfilter is firewalld's reverse path filter (raw PREROUTING).
	"rpfilter": {opts: map[string]optSpec{
		"--loose": {}, "--validmark": {}, "--accept-local": {}, "--invert": {},
	}},
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
	// nfacct is known so that kube-proxy's rules load; the model assumes
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
