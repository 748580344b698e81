package trace

import (
	"cmp"
	"slices"
)

// ParseLive reads iptables-save output of a real kernel. Unlike Parse it
// refuses nothing a kernel may hold: tables the model does not know (raw,
// security…) are kept with the built-in chains they declare, and a rule
// the model cannot read in full (a match module or target it does not know
// — "-m physdev", "-j CT", "-j NFQUEUE" —, or options it does not know) is
// kept with the parts it can read. The checks Parse makes of the family,
// of the sets a rule names and of a table as a whole are left to the
// kernel, which made them already.
//
// Tracing such a Ruleset (Explain, Trace) never fails on what it does not
// model; instead:
//   - a match it cannot evaluate (an interface, an ipset, "--sport"…) may
//     hold: the packet goes on as if it did not, and a Path with Assumed
//     set follows what happens if it does;
//   - a target it does not follow ends the path with the verdict Unknown,
//     unless it lets the packet go on (LOG, NOTRACK, CT, CONNMARK, TCPMSS…:
//     the packet goes on);
//   - besides nat and filter, the raw, mangle and security tables are
//     walked where their built-in chains hold rules or a DROP policy.
func ParseLive(data string, ipv6 bool) (*Ruleset, error) {
	rs := NewRuleset(ipv6)
	rs.tolerant = true
	return rs.Restore(data, nil)
}

// Tolerant reports whether the Ruleset was read by ParseLive.
func (rs *Ruleset) Tolerant() bool { return rs.tolerant }

// Targets returns the target of every rule of a chain ("" for a rule
// without one), in order, and whether the chain exists.
func (rs *Ruleset) Targets(table, chain string) ([]string, bool) {
	t := rs.tables[table]
	if t == nil || t.chains[chain] == nil {
		return nil, false
	}
	out := make([]string, 0, len(t.chains[chain].rules))
	for _, r := range t.chains[chain].rules {
		out = append(out, r.target)
	}
	return out, true
}

// Unknown returns the rules of a chain the model cannot read in full
// (ParseLive), as "rule text: why", in order.
func (rs *Ruleset) Unknown(table, chain string) []string {
	t := rs.tables[table]
	if t == nil || t.chains[chain] == nil {
		return nil
	}
	var out []string
	for _, r := range t.chains[chain].rules {
		if why := cmp.Or(r.unknown, r.targetWhy); why != "" {
			out = append(out, r.text+": "+why)
		}
	}
	return out
}

// lenientRule reads a rule of a kernel's listing with as much of it as the
// model knows: the whole rule when it can; else its matches without the
// modules it does not know (the rule then may match), and the target as
// an opaque one when its options cannot be read.
func lenientRule(t *table, text string, args []string) *rule {
	r, err := parseArgs(text, args)
	if err != nil {
		why := err.Error()
		head, tail := splitTarget(args)
		kept, dropped := knownMatches(head)
		r = nil
		if dropped {
			if got, err := parseArgs(text, concat(kept, tail)); err == nil {
				r, got.unknown = got, why
			}
		}
		if r == nil {
			if got, err := parseArgs(text, kept); err == nil {
				// Every match is read (unless a module was dropped): the
				// target is what the model does not know.
				r = got
				setOpaqueTarget(r, tail, why)
				if dropped {
					r.unknown = why
				}
			}
		}
		if r == nil {
			if got, err := parseArgs(text, genericOnly(head)); err == nil {
				r = got
			} else {
				r = &rule{text: text}
			}
			setOpaqueTarget(r, tail, why)
			r.unknown = why
		}
		r.args = args
	}
	if r.target != "" && !r.opaqueTarget {
		if _, known := targets[r.target]; !known && (t.chains[r.target] == nil || t.chains[r.target].policy != "") {
			// "-j NOTRACK" reads like a jump to a chain; there is none.
			r.opaqueTarget, r.targetWhy = true, "target "+r.target+" is not modelled"
		}
	}
	return r
}

// splitTarget splits args at the target: the matches, and "-j NAME
// options…" (empty when the rule has no target).
func splitTarget(args []string) (head, tail []string) {
	for i, a := range args {
		switch a {
		case "-j", "--jump", "-g", "--goto":
			return args[:i], args[i:]
		}
	}
	return args, nil
}

// isMatchStart reports whether a starts a match module: "-m NAME".
func isMatchStart(a string) bool { return a == "-m" || a == "--match" }

// knownMatches returns head without the "-m NAME options…" segments of
// modules the model does not know, and whether it dropped any. In
// iptables-save output a module's options run up to the next "-m".
func knownMatches(head []string) ([]string, bool) {
	var out []string
	dropped, skipping := false, false
	for i := 0; i < len(head); i++ {
		a := head[i]
		if isMatchStart(a) && i+1 < len(head) {
			skipping = modules[head[i+1]] == nil
			dropped = dropped || skipping
		}
		if !skipping {
			out = append(out, a)
		}
	}
	return out, dropped
}

// genericOnly returns the generic matches of head: -p, -s, -d (and -i,
// -o), with their "!", up to the first module.
func genericOnly(head []string) []string {
	var out []string
	for i := 0; i < len(head); i++ {
		if isMatchStart(head[i]) {
			break
		}
		out = append(out, head[i])
	}
	return out
}

// setOpaqueTarget gives r the target of tail, not modelled (why).
func setOpaqueTarget(r *rule, tail []string, why string) {
	if len(tail) < 2 {
		return
	}
	r.target, r.isGoto, r.opaqueTarget, r.targetWhy = tail[1], tail[0] == "-g" || tail[0] == "--goto", true, why
	r.targetOpts = nil
}

func concat(a, b []string) []string {
	return append(slices.Clip(a), b...)
}

// Targets that let the packet go on: their rule changes something the
// tracer does not follow (a log line, conntrack's zone or helper, the
// MSS, DSCP…) and the packet continues with the next rule.
var continuing = map[string]bool{
	"LOG": true, "NFLOG": true, "ULOG": true, "TRACE": true, "AUDIT": true, "NOTRACK": true, "CT": true,
	"CONNMARK": true, "MARK": true, "TCPMSS": true, "TCPOPTSTRIP": true, "CHECKSUM": true, "DSCP": true,
	"TOS": true, "TTL": true, "HL": true, "CLASSIFY": true, "SET": true, "SECMARK": true, "CONNSECMARK": true,
	"IDLETIMER": true, "LED": true, "RATEEST": true, "TEE": true, "HMARK": true, "ECN": true,
}
