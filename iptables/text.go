package iptables

import (
	"bytes"
	"strings"
)

// Writer builds iptables-restore input. Every place that emits restore
// text (the Plan's dump, the Syncer's batches, cleanup, the takeover from
// kube-proxy, and IPVS mode through Plan) goes through it, so the line
// formats are decided once. The zero value is ready to use.
type Writer struct {
	b bytes.Buffer
}

// Table starts a table section: "*table".
func (w *Writer) Table(name string) { w.line("*", name) }

// Chain declares a chain, creating it or flushing it: ":chain - [0:0]".
func (w *Writer) Chain(name string) { w.line(":", name, " - [0:0]") }

// Append appends rule (the text after "-A chain ") to chain.
func (w *Writer) Append(chain, rule string) { w.line("-A ", chain, " ", rule) }

// Insert inserts j at the top of its built-in chain.
func (w *Writer) Insert(j Jump) { w.line("-I ", j.Chain, " ", strings.Join(j.Args, " ")) }

// DeleteChain deletes chain, which must be declared (flushed) in the same
// section and referenced by no rule.
func (w *Writer) DeleteChain(name string) { w.line("-X ", name) }

// Commit ends the table section.
func (w *Writer) Commit() { w.b.WriteString("COMMIT\n") }

// Bytes returns the text written so far.
func (w *Writer) Bytes() []byte { return w.b.Bytes() }

// String returns the text written so far.
func (w *Writer) String() string { return w.b.String() }

func (w *Writer) line(parts ...string) {
	for _, p := range parts {
		w.b.WriteString(p)
	}
	w.b.WriteByte('\n')
}

// removeChainsText returns the restore input that flushes and deletes
// chains of table in one commit.
func removeChainsText(table string, chains []string) []byte {
	var w Writer
	w.Table(table)
	for _, c := range chains {
		w.Chain(c)
	}
	for _, c := range chains {
		w.DeleteChain(c)
	}
	w.Commit()
	return w.Bytes()
}

// Comment returns "-m comment --comment" with s quoted (see comment).
func Comment(s string) string { return "-m comment --comment " + comment(s) }

// ForwardRules are the rules of a FORWARD-hooked chain that accept what a
// service sends on: traffic marked for masquerading (which a host firewall
// with a DROP policy would otherwise drop) and its replies. who names the
// mode in the comments.
func ForwardRules(who, mark string) []string {
	return []string{
		Comment(who+" forwarding rules") + " -m mark --mark " + mark + "/" + mark + " -j ACCEPT",
		Comment(who+" forwarding conntrack rule") + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
	}
}

// PostroutingRules are the rules of the POSTROUTING-hooked chain: first
// (the hairpin rule of the mode), then masquerade what carries mark,
// clearing the mark so that a packet that comes back through the stack is
// not masqueraded twice.
func PostroutingRules(first, mark string, randomFully bool) []string {
	masq := Comment("service traffic requiring SNAT") + " -j MASQUERADE"
	if randomFully {
		masq += " --random-fully"
	}
	return []string{
		first,
		"-m mark ! --mark " + mark + "/" + mark + " -j RETURN",
		"-j MARK --xor-mark " + mark,
		masq,
	}
}
