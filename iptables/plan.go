package iptables

// Table names.
const (
	TableFilter = "filter"
	TableNAT    = "nat"
)

// Chain is one chain of ours and its rules. A rule is the text that follows
// "-A <chain> " in iptables-restore input.
type Chain struct {
	Name  string
	Rules []string
}

// Jump is a rule in a built-in chain that sends traffic into ours. It is
// installed idempotently at the top of the built-in chain.
type Jump struct {
	Table string
	Chain string   // built-in chain, e.g. PREROUTING
	Args  []string // rule arguments, the last two being "-j", our chain
}

// Plan is the desired state of svcproxy's iptables rules. Chains in each
// table are ordered so that a chain comes after every chain it jumps to:
// applying them in order never references a missing chain.
type Plan struct {
	Filter []*Chain
	NAT    []*Chain
	Jumps  []Jump
}

// Tables returns the plan's tables in the order they are applied.
func (p *Plan) Tables() []struct {
	Name   string
	Chains []*Chain
} {
	return []struct {
		Name   string
		Chains []*Chain
	}{{TableFilter, p.Filter}, {TableNAT, p.NAT}}
}

// InsertOrder returns the jumps in the order to insert them, each at the top
// of its built-in chain, so that they end up in the order of p.Jumps.
func (p *Plan) InsertOrder() []Jump {
	out := make([]Jump, len(p.Jumps))
	for i, j := range p.Jumps {
		out[len(out)-1-i] = j
	}
	return out
}

// Stats counts chains and rules.
func (p *Plan) Stats() (chains, rules int) {
	for _, t := range p.Tables() {
		chains += len(t.Chains)
		for _, c := range t.Chains {
			rules += len(c.Rules)
		}
	}
	return chains, rules
}

// String renders the whole plan as iptables-restore --noflush input that
// programs an empty namespace exactly as svcproxy would, jumps from the
// built-in chains included. This is the --dry-run output.
func (p *Plan) String() string {
	var w Writer
	for _, t := range p.Tables() {
		w.Table(t.Name)
		for _, c := range t.Chains {
			w.Chain(c.Name)
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				w.Append(c.Name, r)
			}
		}
		for _, j := range p.InsertOrder() {
			if j.Table == t.Name {
				w.Insert(j)
			}
		}
		w.Commit()
	}
	return w.String()
}
