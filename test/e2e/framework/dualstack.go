package framework

import (
	"context"
	"fmt"
	"strings"
)

// Markers svcproxy --dry-run puts before each family's section when the
// cluster has IPv6 Services (a dual-stack cluster): each section is the
// input of the command the comment names.
const (
	dryRunMarker4 = "# iptables-restore --noflush\n"
	dryRunMarker6 = "# ip6tables-restore --noflush\n"
)

// SplitDryRun splits iptables-mode --dry-run output into the IPv4 and the
// IPv6 ruleset. Output without markers is IPv4 only (svcproxy prints no
// marker when no Service is IPv6); a section that is not there is "".
func SplitDryRun(text string) (v4, v6 string, err error) {
	i4 := strings.Index(text, dryRunMarker4)
	i6 := strings.Index(text, dryRunMarker6)
	switch {
	case i4 < 0 && i6 < 0:
		return text, "", nil
	case i4 < 0 && i6 == 0:
		return "", text[len(dryRunMarker6):], nil
	case i4 == 0 && i6 > i4:
		return text[len(dryRunMarker4):i6], text[i6+len(dryRunMarker6):], nil
	default:
		return "", "", fmt.Errorf("dry run output: markers %q at %d and %q at %d, want both in that order at the start of their sections, or the IPv6 one alone at the start, or none", dryRunMarker4, i4, dryRunMarker6, i6)
	}
}

// CanonicalRules6 is CanonicalRules for IPv6: it loads restore
// (ip6tables-restore --noflush input) into a scratch network namespace of
// the cluster's and returns its ip6tables-save. The namespace is deleted
// before it returns.
func (c *Cluster) CanonicalRules6(ctx context.Context, restore string) (string, error) {
	return c.canonicalRules(ctx, restore, "ip6tables")
}

// IP6TablesSave returns ip6tables-save of the namespace (its standard
// output only).
func (n *NetNS) IP6TablesSave(ctx context.Context) (string, error) {
	return n.save(ctx, "ip6tables-save")
}
