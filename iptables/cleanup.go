package iptables

import (
	"fmt"
	"strings"
)

// Cleanup removes everything of svcproxy's iptables mode: the jumps from the
// built-in chains first (so traffic stops entering our chains), then every
// chain whose name starts with ChainPrefix, flushed and deleted in one
// iptables-restore per table. Rules of other programs are not touched.
func Cleanup(ipt Interface) error {
	for _, j := range jumps {
		if err := ipt.DeleteJump(j); err != nil {
			return err
		}
	}
	for _, table := range []string{TableFilter, TableNAT} {
		chains, err := ipt.ListChains(table)
		if err != nil {
			return err
		}
		var owned []string
		for _, c := range chains {
			if IsOwnedChain(c) {
				owned = append(owned, c)
			}
		}
		if len(owned) == 0 {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range owned {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		for _, c := range owned {
			fmt.Fprintf(&b, "-X %s\n", c)
		}
		b.WriteString("COMMIT\n")
		if err := ipt.Restore([]byte(b.String())); err != nil {
			return fmt.Errorf("removing %d chains from %s: %w", len(owned), table, err)
		}
	}
	return nil
}
