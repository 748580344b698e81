package app

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/iptables/trace"
	"github.com/svcproxy/svcproxy/proxy"
)

// explain --live --all: every service port of every family, each address
// from the source that usually uses it, walked through the intended rules
// and the kernel's; then the node's jumps and chains.

// allReport is the output of --all; its JSON is -o json.
type allReport struct {
	Node    string        `json:"node"`
	Mode    string        `json:"mode"`
	Ports   []portCheck   `json:"ports"`
	Drift   []familyDrift `json:"drift"` // node-wide: jumps and chains
	Summary allSummary    `json:"summary"`
	Notes   []string      `json:"notes"`
}

// portCheck is one service port of one family.
type portCheck struct {
	Service  string      `json:"service"`
	Port     string      `json:"port"`
	Protocol string      `json:"protocol"`
	Family   string      `json:"family"`
	Agree    bool        `json:"agree"`
	Checks   []destCheck `json:"checks"`
}

// destCheck is one address of a service port, from one source.
type destCheck struct {
	Via         string      `json:"via"`
	From        string      `json:"from"`
	Source      string      `json:"source"`
	Destination string      `json:"destination"`
	Verdict     string      `json:"verdict"`   // intended
	Endpoints   int         `json:"endpoints"` // intended
	Kernel      string      `json:"kernel"`    // the kernel's verdict, "" when it has no rules of the family
	Drift       []driftItem `json:"drift"`
}

// familyDrift is a node-wide difference of one family's rules.
type familyDrift struct {
	Family string `json:"family"`
	driftItem
}

type allSummary struct {
	Ports     int `json:"ports"`
	IPv4      int `json:"ipv4"`
	IPv6      int `json:"ipv6"`
	Agree     int `json:"agree"`
	Differ    int `json:"differ"`
	NodeDrift int `json:"nodeDrift"`
}

func (x *explainer) runAll(stdout, stderr io.Writer) int {
	rep, err := x.checkAll()
	if err != nil {
		fmt.Fprintln(stderr, "svcproxy explain:", err)
		return explainUsage
	}
	if x.e.output == "json" {
		err = writeJSON(stdout, rep)
	} else {
		err = writeAll(stdout, rep)
	}
	if err != nil {
		fmt.Fprintln(stderr, "svcproxy explain:", err)
		return explainUsage
	}
	if rep.Summary.Differ > 0 || rep.Summary.NodeDrift > 0 {
		return explainDrift
	}
	return explainOK
}

// checkAll checks every service port and the node's jumps and chains.
func (x *explainer) checkAll() (*allReport, error) {
	rep := &allReport{Node: x.o.NodeName(), Mode: x.o.Mode, Ports: []portCheck{}, Drift: []familyDrift{}, Notes: []string{}}
	for _, sp := range x.cl.snap.ServicePorts() {
		pc, err := x.checkPort(sp)
		if err != nil {
			return nil, err
		}
		rep.Ports = append(rep.Ports, pc)
		rep.Summary.Ports++
		if pc.Family == familyName(true) {
			rep.Summary.IPv6++
		} else {
			rep.Summary.IPv4++
		}
		if pc.Agree {
			rep.Summary.Agree++
		} else {
			rep.Summary.Differ++
		}
	}
	drift, err := x.nodeDriftAll()
	if err != nil {
		return nil, err
	}
	rep.Drift = append(rep.Drift, drift...)
	rep.Summary.NodeDrift = len(rep.Drift)
	rep.Notes = append(rep.Notes, x.notes...)
	return rep, nil
}

// nodeDriftAll checks every family's jumps and chains of the mode (and in
// IPVS mode the virtual servers nobody intends).
func (x *explainer) nodeDriftAll() ([]familyDrift, error) {
	if x.ipvsMode() {
		return x.ipvsNodeDrift()
	}
	var out []familyDrift
	for _, ipv6 := range []bool{false, true} {
		live, err := x.liveRuleset(ipv6)
		if ipv6 && errors.Is(err, errNoIP6tables) {
			continue // svcproxy programs no IPv6 here; IPv6 ports say so
		}
		if err != nil {
			return nil, err
		}
		rs, err := x.ruleset(ipv6)
		if err != nil {
			return nil, err
		}
		for _, d := range nodeDrift(iptables.IsOwnedChain, rs, live) {
			out = append(out, familyDrift{Family: familyName(ipv6), driftItem: d})
		}
	}
	return out, nil
}

func familyName(ipv6 bool) string {
	if ipv6 {
		return family(netip.IPv6Unspecified())
	}
	return family(netip.IPv4Unspecified())
}

// checkPort checks every address of a service port: its cluster IP from
// a pod on this node, its node port (on the node's first address of the
// family), external and load-balancer IPs from an outside client.
func (x *explainer) checkPort(sp *proxy.ServicePort) (portCheck, error) {
	ipv6 := sp.ClusterIP.Is6()
	pc := portCheck{Service: sp.Name.Namespace + "/" + sp.Name.Name, Port: sp.Name.Port, Protocol: string(sp.Protocol),
		Family: familyName(ipv6), Agree: true, Checks: []destCheck{}}
	type check struct {
		d   dest
		src from
	}
	ext := from{kind: fromExternal, ips: []netip.Addr{x.externalSource(ipv6, nil)}}
	checks := []check{{dest{sp: sp, dst: netip.AddrPortFrom(sp.ClusterIP, uint16(sp.Port)), via: viaClusterIP}, from{kind: fromPod}}}
	if sp.NodePort != 0 {
		if a, ok := x.nodePortAddr(ipv6); ok {
			checks = append(checks, check{dest{sp: sp, dst: netip.AddrPortFrom(a, uint16(sp.NodePort)), via: viaNodePort}, ext})
		} else {
			x.note("node ports of %s are not checked: no %s address of this node within --nodeport-addresses", pc.Family, pc.Family)
		}
	}
	for _, ip := range sp.ExternalIPs {
		checks = append(checks, check{dest{sp: sp, dst: netip.AddrPortFrom(ip, uint16(sp.Port)), via: viaExternalIP}, ext})
	}
	for _, ip := range sp.LoadBalancerIPs {
		// A client the source ranges admit, when there are any: the
		// path to the endpoints is what is worth checking.
		lb := from{kind: fromExternal, ips: []netip.Addr{x.externalSource(ipv6, sp.LoadBalancerSourceRanges)}}
		checks = append(checks, check{dest{sp: sp, dst: netip.AddrPortFrom(ip, uint16(sp.Port)), via: viaLBIP}, lb})
	}
	for _, c := range checks {
		x.src = c.src
		r, err := x.traceDest(c.d)
		if err != nil {
			return pc, err
		}
		if r == nil {
			continue // no source of the family: noted
		}
		dc := destCheck{Via: r.Via, From: r.From, Source: r.Source, Destination: r.Destination, Verdict: r.Verdict,
			Endpoints: len(r.Endpoints), Drift: r.Drift}
		if r.Kernel != nil {
			dc.Kernel = r.Kernel.Verdict
		}
		pc.Agree = pc.Agree && len(r.Drift) == 0
		pc.Checks = append(pc.Checks, dc)
	}
	return pc, nil
}

// externalSource returns --all's outside client of a family: in the first
// of ranges (the load-balancer source ranges) when there are any, else a
// documentation address; never one of this node's or of the cluster CIDR.
func (x *explainer) externalSource(ipv6 bool, ranges []netip.Prefix) netip.Addr {
	var cands []netip.Addr
	for _, p := range ranges {
		if p.Addr().Is6() == ipv6 {
			a := lastAddr(p)
			if p.Bits() < a.BitLen()-1 {
				a = a.Prev() // not a broadcast address
			}
			for i := 0; i < 4 && p.Contains(a); i++ {
				cands = append(cands, a)
				a = a.Prev()
			}
		}
	}
	def := netip.MustParseAddr(externalSource4)
	if ipv6 {
		def = netip.MustParseAddr(externalSource6)
	}
	cands = append(cands, def, def.Prev(), def.Prev().Prev())
	for _, a := range cands {
		if !slices.Contains(x.nodeIPs, a) && !slices.Contains(x.hostAddrs, a) && !x.inClusterCIDR(a) {
			return a
		}
	}
	return def
}

// nodePortAddr returns the node address of a family --all sends node port
// traffic to: the first of the node's (global unicast) addresses within
// --nodeport-addresses.
func (x *explainer) nodePortAddr(ipv6 bool) (netip.Addr, bool) {
	npa := x.o.NodePortAddressPrefixes()
	for _, a := range x.nodeIPs {
		if a.Is6() != ipv6 || !a.IsGlobalUnicast() {
			continue
		}
		if len(npa) == 0 || slices.ContainsFunc(npa, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// nodeDrift checks the kernel for every jump and chain of svcproxy's
// intended rules of a family; owned tells the mode's chains.
func nodeDrift(owned func(string) bool, rs, live *trace.Ruleset) []driftItem {
	var out []driftItem
	for _, table := range []string{iptables.TableFilter, iptables.TableNAT} {
		chains, _ := rs.Chains(table)
		for _, c := range chains {
			if pol, _ := rs.Policy(table, c); pol == "" {
				out = append(out, chainDrift(rs, live, table, c)...)
				continue
			}
			targets, _ := rs.Targets(table, c)
			var want []string
			for _, t := range targets {
				if owned(t) {
					want = append(want, t)
				}
			}
			if len(want) > 0 {
				out = append(out, jumpDrift(owned, live, table, c, want)...)
			}
		}
	}
	return out
}

// writeAll writes --all's text: one line per service port, the drift
// under it, the node's drift, a summary.
func writeAll(w io.Writer, rep *allReport) error {
	var b strings.Builder
	for _, pc := range rep.Ports {
		status := "ok"
		if !pc.Agree {
			status = "DRIFT"
		}
		var cs []string
		for _, c := range pc.Checks {
			s := fmt.Sprintf("%s %s %s", c.Via, c.Destination, strings.ToUpper(c.Verdict))
			if c.Verdict == verdictDNAT {
				s += " " + count(c.Endpoints, "endpoint")
			}
			cs = append(cs, s)
		}
		fmt.Fprintf(&b, "%-5s  %s:%s/%s %s  %s\n", status, pc.Service, pc.Port, pc.Protocol, pc.Family, strings.Join(cs, "; "))
		for _, c := range pc.Checks {
			for _, d := range c.Drift {
				fmt.Fprintf(&b, "         %s %s: %s: %s\n", c.Via, c.Destination, d.Kind, d.Detail)
			}
		}
	}
	for _, d := range rep.Drift {
		fmt.Fprintf(&b, "%-5s  node %s: %s: %s\n", "DRIFT", d.Family, d.Kind, d.Detail)
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(&b, "note   %s\n", n)
	}
	s := rep.Summary
	fmt.Fprintf(&b, "%s checked on %s (%d IPv4, %d IPv6) against the kernel's rules: %d agree, %d differ; %s\n",
		count(s.Ports, "service port"), rep.Node, s.IPv4, s.IPv6, s.Agree, s.Differ, nodeSummary(s.NodeDrift))
	_, err := io.WriteString(w, b.String())
	return err
}

func nodeSummary(n int) string {
	if n == 0 {
		return "the node's jumps and chains agree"
	}
	return fmt.Sprintf("%s in the node's jumps and chains", count(n, "difference"))
}
