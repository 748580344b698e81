// Package trace models the iptables rules of one IP family (the filter,
// nat and mangle tables) and walks a packet through them the way the
// kernel handles the first packet of a connection: which chains and rules
// it goes through, and every possible outcome (DNAT to which endpoint with
// what probability, masquerade, REJECT or DROP).
//
// A Ruleset is read from iptables-restore or iptables-save text and checked
// as strictly as the real tools check it: whatever iptables-restore (legacy
// or nft) would refuse, Restore refuses too, and where the real tool
// silently accepts something that is almost certainly a mistake (an
// unterminated quote, a comment it would truncate, "010.0.0.1" read as
// 8.0.0.1), Restore refuses it as well. The matches and targets modelled
// are the ones svcproxy and kube-proxy render.
//
// ParseLive reads a real kernel's iptables-save output instead, where
// anything may sit next to the rules the model knows: it keeps what it
// cannot model, and the tracer takes such a rule as one that may match
// (Path.Assumed) rather than failing.
//
// `svcproxy explain` traces the rules svcproxy would program, and with
// --live the kernel's; the stateful fake of iptables/testing keeps a
// Ruleset and traces it for the tests.
package trace
