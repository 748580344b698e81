package app

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// --- text output ---

func endpointAddr(e endpoint) string {
	return netip.AddrPortFrom(netip.MustParseAddr(e.IP), uint16(e.Port)).String()
}

// count returns "1 endpoint", "2 endpoints".
func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func writeExplanation(w io.Writer, x *explanation) error {
	var b strings.Builder
	line := func(key, format string, args ...any) {
		fmt.Fprintf(&b, "%-11s %s\n", key, fmt.Sprintf(format, args...))
	}
	line("target", "%s (node %s, %s mode)", x.Target, x.Node, x.Mode)
	if x.DNS != nil {
		answer := strings.Join(x.DNS.Addresses, ", ")
		switch {
		case x.DNS.CNAME != "":
			answer = "CNAME " + x.DNS.CNAME
		case answer == "":
			answer = "no address"
		}
		line("dns", "%s -> %s", x.DNS.Name, answer)
		k := x.DNS.KubeDNS
		switch {
		case !k.Found:
			line("", "no Service %s in the state: cannot tell whether names resolve", k.Service)
		case k.ReadyEndpoints == 0:
			line("", "%s (%s) has no ready endpoint: names do not resolve (addresses still connect)", k.Service, strings.Join(k.Addresses, ", "))
		default:
			line("", "%s (%s) has %s", k.Service, strings.Join(k.Addresses, ", "), count(k.ReadyEndpoints, "ready endpoint"))
		}
	}
	for _, r := range x.Results {
		b.WriteString("\n")
		port := r.Port
		if port == "" {
			port = `""`
		}
		fmt.Fprintf(&b, "%s port %s", r.Service, port)
		if r.Destination != "" {
			fmt.Fprintf(&b, " %s %s via %s %s", r.Protocol, r.Family, r.Via, r.Destination)
		}
		b.WriteString("\n")
		if r.From != "" {
			line("  from", "%s", r.From)
		}
		line("  verdict", "%s", strings.ToUpper(r.Verdict))
		width := 0
		for _, e := range r.Endpoints {
			width = max(width, len(endpointAddr(e)))
		}
		for i, e := range r.Endpoints {
			key := ""
			if i == 0 {
				key = "  endpoints"
			}
			where := cmp.Or(e.Node, "node unknown")
			if e.Local {
				where += " (this node)"
			}
			line(key, "%-*s  p=%.4f  %s", width, endpointAddr(e), e.Probability, where)
		}
		line("  reason", "%s", r.Reason)
		if r.Verdict == verdictDNAT {
			yes := "no"
			if r.Masquerade {
				yes = "yes"
			}
			line("  masquerade", "%s: %s", yes, r.MasqueradeReason)
		}
		if r.PathTo != "" {
			line("  path", "to %s, one of %d (the paths to the others differ from the DNAT on):", r.PathTo, len(r.Endpoints))
		}
		steps := r.Rules
		if len(steps) == 0 {
			steps = r.Path // IPVS mode: the objects met
		}
		for i, s := range steps {
			key := ""
			if i == 0 && r.PathTo == "" {
				key = "  path"
			}
			line(key, "%s", s)
		}
		writeLive(line, r)
	}
	if len(x.Notes) > 0 {
		b.WriteString("\n")
		for i, n := range x.Notes {
			key := ""
			if i == 0 {
				key = "notes"
			}
			line(key, "%s", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
