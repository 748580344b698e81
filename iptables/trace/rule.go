package trace

import (
	"errors"
	"fmt"
	"slices"
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
	// unknown says why a rule of a kernel's listing (ParseLive) is not
	// fully modelled ("" when it is): matches holds only the parts the
	// model knows, so the rule may match whenever they hold.
	unknown string
	// opaqueTarget: the target is not modelled (NOTRACK, REDIRECT,
	// NFQUEUE…, or a known one with options the model does not know);
	// targetWhy says why.
	opaqueTarget bool
	targetWhy    string
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
				return nil, fmt.Errorf("option %q after the target (iptables takes it; this model wants matches first)", name)
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
				return nil, errors.New(`"-m" after the target (iptables takes it; this model wants matches first)`)
			}
			v, err := next(1)
			if err != nil {
				return nil, err
			}
			if modules[v[0]] == nil {
				return nil, fmt.Errorf("Couldn't load match `%s' (unknown to this model: no such module, or not modelled)", v[0])
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
// that loses its target, say), the model refuses.
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
