package nftables

import (
	"context"
	"errors"
	"strings"
	"syscall"

	"sigs.k8s.io/knftables"
)

// Lister reads the few things of a table the Syncer ever reads back, each
// cheaply (no rule of the table is read): at a full sync the names of its
// objects, so that those the plan no longer has go; between syncs the
// rule counts of the fixed chains, to see drift.
type Lister interface {
	// Objects returns the names of the table's chains, sets and maps
	// (anonymous sets left out); all empty when the table does not exist.
	Objects(ctx context.Context) (Objects, error)
	// CountRules returns the number of rules in one chain, 0 when the
	// chain or the table does not exist.
	CountRules(ctx context.Context, chain string) (int, error)
}

// Objects are the names of a table's objects.
type Objects struct {
	Exists bool // the table exists
	Chains []string
	Sets   []string
	Maps   []string
}

// FakeLister lists a knftables.Fake's table, for tests (and for the dry
// run's empty table).
func FakeLister(f *knftables.Fake) Lister { return fakeLister{f} }

type fakeLister struct{ f *knftables.Fake }

func (l fakeLister) Objects(context.Context) (Objects, error) {
	l.f.RLock()
	defer l.f.RUnlock()
	t := l.f.Table
	if t == nil {
		return Objects{}, nil
	}
	out := Objects{Exists: true}
	for name := range t.Chains {
		out.Chains = append(out.Chains, name)
	}
	for name := range t.Sets {
		out.Sets = append(out.Sets, name)
	}
	for name := range t.Maps {
		out.Maps = append(out.Maps, name)
	}
	return out, nil
}

func (l fakeLister) CountRules(_ context.Context, chain string) (int, error) {
	l.f.RLock()
	defer l.f.RUnlock()
	if l.f.Table == nil || l.f.Table.Chains[chain] == nil {
		return 0, nil
	}
	return len(l.f.Table.Chains[chain].Rules), nil
}

// isNotFound reports whether err says a table, chain or set does not
// exist: nft's "No such file or directory" or netlink's ENOENT.
func isNotFound(err error) bool {
	return knftables.IsNotFound(err) || errors.Is(err, syscall.ENOENT)
}

// anonymous reports whether a set name is one nft gives an anonymous set
// ("__set0", "__map1").
func anonymous(name string) bool { return strings.HasPrefix(name, "__") }
