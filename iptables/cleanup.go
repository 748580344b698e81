package iptables

import (
	"errors"
	"fmt"
)

// Cleanup removes everything of svcproxy's iptables mode: the jumps from the
// built-in chains first (so traffic stops entering our chains), then every
// chain IsOwnedChain names, flushed and deleted in one iptables-restore per
// table. Rules of other programs (and of IPVS mode) are not touched.
func Cleanup(ipt Interface) error {
	return RemoveChains(ipt, jumps, IsOwnedChain)
}

// RemoveChains deletes jumps from the built-in chains, then flushes and
// deletes, in one iptables-restore per table (filter, nat), every chain
// for which owned is true. It keeps going after an error and reports all.
func RemoveChains(ipt Interface, jumps []Jump, owned func(string) bool) error {
	var errs []error
	for _, j := range jumps {
		if err := ipt.DeleteJump(j); err != nil {
			errs = append(errs, err)
		}
	}
	for _, table := range []string{TableFilter, TableNAT} {
		chains, err := ipt.ListChains(table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var remove []string
		for _, c := range chains {
			if owned(c) {
				remove = append(remove, c)
			}
		}
		if len(remove) == 0 {
			continue
		}
		if err := ipt.Restore(removeChainsText(table, remove)); err != nil {
			errs = append(errs, fmt.Errorf("removing %d chains from %s: %w", len(remove), table, err))
		}
	}
	return errors.Join(errs...)
}
