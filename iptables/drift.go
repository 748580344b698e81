package iptables

import (
	"fmt"
	"strings"
)

// RootChains are the chains of iptables mode whose rules CheckDrift counts:
// the fixed ones every packet to a service walks first.
var RootChains = []string{ServicesChain, DispatchChain, NodePortsChain, PostroutingChain, FilterChain, ForwardChain}

// CheckDrift tells cheaply whether what plan put in place is still there,
// without listing whole tables (a few `iptables -S CHAIN` of small chains):
// every jump of plan in its built-in chain, and the chains named in roots
// with as many rules as plan gave them. A flushed table, a deleted jump or
// a flushed root chain is found; damage deeper in the tree waits for the
// periodic full sync. It returns why it judges the rules drifted ("" when
// they are in place); an error is a failure to look.
func CheckDrift(ipt Interface, plan *Plan, roots []string) (string, error) {
	if c, ok := ipt.(*CachedLister); ok {
		ipt = c.Raw() // the kernel as it is now
	}
	builtin := map[[2]string][]string{}
	for _, j := range plan.Jumps {
		k := [2]string{j.Table, j.Chain}
		if _, ok := builtin[k]; ok {
			continue
		}
		rules, err := ipt.ListRules(j.Table, j.Chain)
		if err != nil {
			return "", err
		}
		builtin[k] = rules
	}
	for _, j := range plan.Jumps {
		target := "-j " + j.Args[len(j.Args)-1]
		found := false
		for _, r := range builtin[[2]string{j.Table, j.Chain}] {
			if strings.HasSuffix(r, " "+target) || strings.Contains(r, " "+target+" ") {
				found = true
				break
			}
		}
		if !found {
			return fmt.Sprintf("the jump from %s/%s to %s is missing", j.Table, j.Chain, j.Args[len(j.Args)-1]), nil
		}
	}
	for _, t := range plan.Tables() {
		for _, c := range t.Chains {
			if !contains(roots, c.Name) {
				continue
			}
			rules, err := ipt.ListRules(t.Name, c.Name)
			if err != nil {
				// A missing chain is drift; so is anything else the
				// table cannot answer about its own chain.
				return fmt.Sprintf("chain %s/%s cannot be listed: %v", t.Name, c.Name, err), nil
			}
			if len(rules) != len(c.Rules) {
				return fmt.Sprintf("chain %s/%s has %d rules, want %d", t.Name, c.Name, len(rules), len(c.Rules)), nil
			}
		}
	}
	return "", nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
