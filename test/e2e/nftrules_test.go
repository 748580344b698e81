//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// parseNFT reads `nft list table` output of svcproxy's table of family fam
// ("IPv4" or "IPv6") as a ruleset: every chain with its lines in order
// (its type, hook and priority line first, then its rules), every set and
// map with its declaration lines and then its elements, one line each,
// sorted (a hash set lists them in an order of its own). The elements of
// the affinity sets (aff-…) are left out: they are the clients the kernel
// added, not what svcproxy programmed. Keys are "<fam> svcproxy/<kind>
// <name>".
func parseNFT(fam, listing string) ruleset {
	r := ruleset{chains: map[string][]string{}}
	key := ""
	skipElems := false
	inElems := false
	var elems []string
	endElems := func() {
		slices.Sort(elems)
		if !skipElems {
			for _, e := range elems {
				r.chains[key] = append(r.chains[key], "element "+e)
			}
		}
		elems, inElems = nil, false
	}
	addElems := func(body string) {
		end := strings.HasSuffix(body, "}")
		body = strings.TrimSuffix(body, "}")
		for _, e := range strings.Split(body, ",") {
			if e = strings.TrimSpace(e); e != "" {
				elems = append(elems, e)
			}
		}
		if end {
			endElems()
		}
	}
	for _, line := range strings.Split(listing, "\n") {
		l := strings.TrimSpace(line)
		switch {
		case inElems:
			addElems(l)
		case l == "":
		case key == "" && strings.HasPrefix(l, "table "):
		case key == "" && strings.HasSuffix(l, "{"):
			kind, name, _ := strings.Cut(strings.TrimSpace(strings.TrimSuffix(l, "{")), " ")
			name = strings.Trim(name, `"`)
			key = fam + " " + framework.NFTablesTable + "/" + kind + " " + name
			skipElems = kind == "set" && strings.HasPrefix(name, "aff-")
			r.chains[key] = []string{}
		case l == "}":
			key = ""
		case key != "" && strings.HasPrefix(l, "elements = {"):
			inElems = true
			addElems(strings.TrimPrefix(l, "elements = {"))
		case key != "":
			r.chains[key] = append(r.chains[key], l)
		default:
			// The table's own lines (its comment): part of the ruleset
			// too.
			k := fam + " " + framework.NFTablesTable + "/table"
			r.chains[k] = append(r.chains[k], l)
		}
	}
	return r
}

// nftLiveRules returns node n's svcproxy tables of both families.
func nftLiveRules(ctx context.Context, n *framework.Node) (ruleset, error) {
	v4, err := n.NetNS.NFTList(ctx, "ip", framework.NFTablesTable)
	if err != nil {
		return ruleset{}, err
	}
	v6, err := n.NetNS.NFTList(ctx, "ip6", framework.NFTablesTable)
	if err != nil {
		return ruleset{}, err
	}
	r := parseNFT("IPv4", v4).merge(parseNFT("IPv6", v6))
	// Chains a sync left empty and unreferenced wait StaleChainDelay (1 s)
	// and are deleted by the next sync (nftables/README.md: kernels
	// before 6.2 release a chain a deleted map element pointed to only a
	// moment later): on a settled node until the periodic full sync. They
	// hold nothing, so they are not compared.
	for k, rules := range r.chains {
		if strings.Contains(k, "/chain ") && len(rules) == 0 {
			delete(r.chains, k)
		}
	}
	return r, nil
}

// nftRenderedRules returns what svcproxy --dry-run (nftables mode) renders
// for n now, loaded into a scratch namespace by the real nft and listed.
func nftRenderedRules(ctx context.Context, n *framework.Node) (ruleset, error) {
	text, err := cluster.DryRun(ctx, n)
	if err != nil {
		return ruleset{}, fmt.Errorf("dry run for %s: %w", n.Name, err)
	}
	v4, v6, err := cluster.CanonicalNFT(ctx, text)
	if err != nil {
		return ruleset{}, fmt.Errorf("dry run for %s: %w", n.Name, err)
	}
	if v4 == "" {
		return ruleset{}, fmt.Errorf("dry run for %s: no ip %s table", n.Name, framework.NFTablesTable)
	}
	return parseNFT("IPv4", v4).merge(parseNFT("IPv6", v6)), nil
}
