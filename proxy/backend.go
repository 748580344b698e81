package proxy

import (
	"context"
	"errors"

	v1 "k8s.io/api/core/v1"
)

// Backend is one data plane (--mode): it renders a Snapshot and programs
// the node's kernel with the result, and nothing else. Change tracking,
// traffic policy, conntrack cleanup, health and metrics are the daemon's
// (package proxy/daemon), the same for every mode. A mode implements
// Backend in one file of its package (iptables/backend.go,
// ipvs/backend.go).
type Backend interface {
	// Sync programs snap. With full every rule is rewritten and drift in
	// the kernel repaired; otherwise only what changed since the last
	// successful Sync may be sent. After an error the daemon's next call
	// is full. The result counts what was done, also on error.
	Sync(ctx context.Context, snap *Snapshot, full bool) (SyncResult, error)
	// Cleanup removes everything this mode created on the node (rules,
	// chains, links, virtual servers, sets) and nothing else.
	Cleanup(ctx context.Context) error
}

// DriftChecker is a Backend that can tell cheaply, between syncs, whether
// what its last successful Sync programmed is still in the kernel: a
// firewall reload, another agent or an operator may flush a table or
// delete a jump. The daemon calls it every few seconds (never during a
// Sync) and asks for a full sync when it reports drift.
type DriftChecker interface {
	// CheckDrift returns why the rules are judged drifted, "" when they
	// are in place. An error is a failure to look, not drift.
	CheckDrift(ctx context.Context) (reason string, err error)
}

// Leftovers removes what another data plane left on the node: another mode
// of svcproxy after a mode switch, or upstream kube-proxy (live takeover).
// The daemon runs them after its first successful sync, so that our rules
// are in before the old ones go (make before break), and again after each
// later sync until they succeed once. The mode packages cannot import each
// other (ipvs builds on iptables' syncer), so removers are handed to the
// daemon by the wiring in cmd/svcproxy.
type Leftovers interface {
	// Name says what is removed, for logs ("kube-proxy iptables rules").
	Name() string
	// Remove removes it and returns how many objects went. With nothing
	// left it changes nothing and returns 0.
	Remove(ctx context.Context) (removed int, err error)
}

// LeftoversFunc adapts a function to Leftovers.
type LeftoversFunc struct {
	What string
	Func func(ctx context.Context) (int, error)
}

// Name implements Leftovers.
func (f LeftoversFunc) Name() string { return f.What }

// Remove implements Leftovers.
func (f LeftoversFunc) Remove(ctx context.Context) (int, error) { return f.Func(ctx) }

// SyncResult says what a Backend's Sync did, for logs and metrics.
type SyncResult struct {
	// Full is true when every rule was rewritten.
	Full bool
	// ChainsWritten, ChainsDeleted and Restores count iptables chains
	// written and deleted and iptables-restore calls.
	ChainsWritten, ChainsDeleted, Restores int
	// Chains counts the chains of the whole ruleset.
	Chains int
	// Rules and RulesWritten count, per iptables table, the rules of the
	// whole ruleset and those written by this sync.
	Rules, RulesWritten map[string]int
	// StaleErr is a failure to delete objects the snapshot no longer
	// needs (chains another program still references). It does not fail
	// the sync: everything else is in place, and the deletion is tried
	// again at the next one. The daemon logs and counts it.
	StaleErr error
	// ByFamily holds each family's own result when a Backend syncs more
	// than one (the metrics carry an ip_family label); nil otherwise.
	ByFamily map[v1.IPFamily]SyncResult
}

// Add adds the result of one family's sync to r (families synced in one
// Sync): counts are summed, rules kept per family too.
func (r *SyncResult) Add(family v1.IPFamily, f SyncResult) {
	r.Full = r.Full || f.Full
	r.ChainsWritten += f.ChainsWritten
	r.ChainsDeleted += f.ChainsDeleted
	r.Restores += f.Restores
	r.Chains += f.Chains
	if r.Rules == nil {
		r.Rules, r.RulesWritten = map[string]int{}, map[string]int{}
	}
	for t, n := range f.Rules {
		r.Rules[t] += n
	}
	for t, n := range f.RulesWritten {
		r.RulesWritten[t] += n
	}
	if r.ByFamily == nil {
		r.ByFamily = map[v1.IPFamily]SyncResult{}
	}
	r.ByFamily[family] = f
	r.StaleErr = errors.Join(r.StaleErr, f.StaleErr)
}

// TotalRules sums the rules of every table.
func (r SyncResult) TotalRules() int {
	n := 0
	for _, v := range r.Rules {
		n += v
	}
	return n
}

// RestoreError marks a failure of iptables-restore (or ip6tables-restore):
// the daemon counts it as kubeproxy_sync_proxy_rules_iptables_restore_failures_total,
// like kube-proxy. Other sync failures (netlink, ipset) are counted only
// by svcproxy_sync_proxy_rules_failures_total.
type RestoreError struct {
	Err error
}

func (e *RestoreError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *RestoreError) Unwrap() error { return e.Err }

// IsRestoreError reports whether err is, or wraps, a RestoreError.
func IsRestoreError(err error) bool {
	var re *RestoreError
	return errors.As(err, &re)
}
