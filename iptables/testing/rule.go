package iptablestest

import (
	"errors"
	"fmt"
	"strings"
)

// standardTargets are the targets that are not chains. The tables they are
// valid in follow the kernel: NAT targets only in nat, REJECT only in filter.
var standardTargets = map[string]string{
	"ACCEPT":     "",
	"DROP":       "",
	"RETURN":     "",
	"LOG":        "",
	"MARK":       "",
	"REJECT":     "filter",
	"DNAT":       "nat",
	"SNAT":       "nat",
	"MASQUERADE": "nat",
}

// builtinChains lists the built-in chains of each modelled table, in the
// order iptables-save prints them.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// tableOrder is the order Dump prints tables in.
var tableOrder = []string{"filter", "nat"}

func isBuiltin(table, chain string) bool {
	for _, c := range builtinChains[table] {
		if c == chain {
			return true
		}
	}
	return false
}

// opt is one option of a rule: "-d 10.0.0.1/32", "! --mark 0x4000/0x4000".
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

// rule is a parsed rule.
type rule struct {
	text       string   // as received, after "-A CHAIN "
	args       []string // tokens
	matches    []match
	target     string // "" when the rule has no target
	isGoto     bool
	targetOpts []opt
}

// longNames maps the long forms of generic options to their short forms.
var longNames = map[string]string{
	"--protocol": "-p", "--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d",
	"--in-interface": "-i", "--out-interface": "-o", "--match": "-m", "--jump": "-j", "--goto": "-g",
}

// protoOptions are options that belong to the protocol match loaded by -p.
var protoOptions = map[string]bool{"--dport": true, "--sport": true, "--destination-port": true, "--source-port": true}

// singleArg are options that always take exactly one argument, even if it
// looks like an option.
var singleArg = map[string]bool{"--comment": true}

// parseRule tokenizes and structures rule text (what follows "-A CHAIN ").
// It checks structure only; what each module means is the tracer's business.
func parseRule(text string) (*rule, error) {
	args, err := tokenize(text)
	if err != nil {
		return nil, err
	}
	return parseArgs(text, args)
}

func parseArgs(text string, args []string) (*rule, error) {
	r := &rule{text: text, args: args}
	cur := -1         // index in r.matches of the module -- options belong to
	proto := ""       // protocol given with -p
	protoMatch := -1  // index of the implicit match of -p's protocol
	inTarget := false // options now belong to the target
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
		next := func() (string, error) {
			if i == len(args) {
				return "", fmt.Errorf("option %q requires an argument", name)
			}
			i++
			return args[i-1], nil
		}
		switch name {
		case "-p", "-s", "-d", "-i", "-o":
			if inTarget {
				return nil, fmt.Errorf("option %q after the target", name)
			}
			v, err := next()
			if err != nil {
				return nil, err
			}
			r.matches = append(r.matches, match{opts: []opt{{neg: neg, name: name, args: []string{v}}}})
			if name == "-p" {
				proto, protoMatch = strings.ToLower(v), -1
			}
		case "-m":
			if neg || inTarget {
				return nil, errors.New(`misplaced "-m"`)
			}
			v, err := next()
			if err != nil {
				return nil, err
			}
			r.matches = append(r.matches, match{module: v})
			cur = len(r.matches) - 1
			if v == proto {
				protoMatch = cur
			}
		case "-j", "-g":
			if neg {
				return nil, fmt.Errorf(`"!" before %q`, name)
			}
			if r.target != "" {
				return nil, errors.New("more than one target")
			}
			v, err := next()
			if err != nil {
				return nil, err
			}
			r.target, r.isGoto, inTarget = v, name == "-g", true
		default:
			if !strings.HasPrefix(name, "--") {
				return nil, fmt.Errorf("unexpected argument %q", name)
			}
			o := opt{neg: neg, name: name}
			if singleArg[name] {
				v, err := next()
				if err != nil {
					return nil, err
				}
				o.args = []string{v}
			} else {
				for i < len(args) && args[i] != "!" && !strings.HasPrefix(args[i], "-") {
					o.args = append(o.args, args[i])
					i++
				}
			}
			switch {
			case inTarget:
				r.targetOpts = append(r.targetOpts, o)
			case protoOptions[name] && (cur < 0 || r.matches[cur].module != proto):
				if proto != "tcp" && proto != "udp" && proto != "sctp" {
					return nil, fmt.Errorf("option %q needs -p tcp, udp or sctp first", name)
				}
				if protoMatch < 0 {
					r.matches = append(r.matches, match{module: proto})
					protoMatch = len(r.matches) - 1
				}
				r.matches[protoMatch].opts = append(r.matches[protoMatch].opts, o)
			case cur >= 0:
				r.matches[cur].opts = append(r.matches[cur].opts, o)
			default:
				return nil, fmt.Errorf("option %q without a match module", name)
			}
		}
	}
	return r, nil
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

// proto returns the protocol the rule matches with -p, "" if none.
func (r *rule) proto() string {
	for _, m := range r.matches {
		for _, o := range m.opts {
			if m.module == "" && o.name == "-p" && !o.neg {
				return strings.ToLower(o.arg())
			}
		}
	}
	return ""
}

// tokenize splits a rule like iptables-restore does: on blanks, with
// double or single quotes grouping words and a backslash escaping the quote
// character inside quotes.
func tokenize(s string) ([]string, error) {
	var out []string
	var b strings.Builder
	var quote byte
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == '\\' && i+1 < len(s) && (s[i+1] == quote || s[i+1] == '\\'):
			i++
			b.WriteByte(s[i])
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			b.WriteByte(c)
		case c == '"' || c == '\'':
			quote, inWord = c, true
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, b.String())
				b.Reset()
				inWord = false
			}
		default:
			b.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unbalanced quote %c", quote)
	}
	if inWord {
		out = append(out, b.String())
	}
	return out, nil
}

// quoteArgs joins args into rule text, quoting those that need it.
func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'\\") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}
