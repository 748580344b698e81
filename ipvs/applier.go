package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/svcproxy/svcproxy/iptables"
)

// Applier makes the kernel match Plans. It remembers what it programmed,
// so that a partial sync diffs against memory instead of listing the
// kernel, and it drains removed TCP real servers: their weight goes to 0
// and they are deleted once their active connections reach 0 or
// Options.GracefulTimeout has passed. Not safe for concurrent use.
//
// What is ours in the kernel: the dummy link and every address on it,
// every virtual server on one of those addresses, every virtual server on
// a node address whose port is within Options.NodePortRange, the virtual
// servers of the plan, ipsets named SetPrefix… and iptables chains named
// ChainPrefix…. Nothing else is touched; the kernel is never flushed.
type Applier struct {
	k     Interface
	ipt   *iptables.Syncer
	ipt6  *iptables.Syncer // nil: no ip6tables
	opts  Options
	clock clock.PassiveClock

	// known is the state the kernel is in, as far as the Applier knows;
	// nil means unknown (start, or after a failure): the next sync lists
	// the kernel and is full.
	known *State
	// draining holds removed TCP real servers kept with weight 0, and
	// since when.
	draining map[drainKey]time.Time
	// sysctlsSet is true once the sysctls were ensured.
	sysctlsSet bool
	// everNode are all node addresses the Applier was ever given: a node
	// port's virtual server on an address the node lost is still ours to
	// delete.
	everNode []netip.Addr
}

type drainKey struct {
	vs ServiceKey
	rs netip.AddrPort
}

// SyncResult says what a sync did.
type SyncResult struct {
	Full    bool
	Added   int // operations of Changes.Add applied
	Removed int // operations of Changes.Remove applied
	// Draining counts removed real servers still kept with weight 0;
	// Drained those deleted by this sync.
	Draining, Drained int
	// IPTables and IPTables6 are the syncs of each family's rules.
	IPTables, IPTables6 iptables.SyncResult
}

// NewApplier returns an Applier acting through k (virtual servers, links,
// ipsets, sysctls) and ipt (the iptables rules; only chains of ours are
// seen and deleted). A nil clock means the real one. It does nothing until
// the first Sync.
func NewApplier(k Interface, ipt iptables.Interface, opts Options, clk clock.PassiveClock) *Applier {
	return NewDualStackApplier(k, ipt, nil, opts, clk)
}

// NewDualStackApplier is NewApplier that applies the IPv6 rules of a plan
// (Plan.IPTables6) through ipt6, which may be nil when no plan has any.
func NewDualStackApplier(k Interface, ipt, ipt6 iptables.Interface, opts Options, clk clock.PassiveClock) *Applier {
	if clk == nil {
		clk = clock.RealClock{}
	}
	a := &Applier{
		k:        k,
		ipt:      iptables.NewOwnedSyncer(ipt, 0, IsOwnedChain),
		opts:     opts,
		clock:    clk,
		draining: map[drainKey]time.Time{},
	}
	if ipt6 != nil {
		a.ipt6 = iptables.NewOwnedSyncer(ipt6, 0, IsOwnedChain)
	}
	a.everNode = slices.Clone(opts.NodeAddresses)
	return a
}

// SetHostAddresses gives the Applier the node's addresses as they are now
// (Options.LocalAddresses and NodeAddresses); the virtual servers on the
// node addresses it had before stay its own, so that the next sync deletes
// those of addresses gone.
func (a *Applier) SetHostAddresses(local, node []netip.Addr) {
	a.opts.LocalAddresses, a.opts.NodeAddresses = local, node
	for _, n := range node {
		if !slices.Contains(a.everNode, n) {
			a.everNode = append(a.everNode, n)
		}
	}
}

// Sync makes the kernel match plan. With full (and always when the
// previous state is unknown) it lists what the kernel holds and repairs
// any drift; otherwise it diffs against what it last programmed. The
// first sync also sets the sysctls IPVS needs. Additions are applied
// first, then the iptables rules, then the new service addresses, then
// removals (addresses before the virtual servers behind them); removed TCP
// real servers are drained, not deleted. Each family goes on alone when
// the other fails. After an error the next sync is full; nothing of a
// family is removed in a sync whose additions of that family failed.
func (a *Applier) Sync(ctx context.Context, plan *Plan, full bool) (SyncResult, error) {
	logger := klog.FromContext(ctx)
	res := SyncResult{Full: full || a.known == nil}
	have := a.known
	a.known = nil // until this sync succeeds
	if res.Full {
		var err error
		if have, err = a.list(plan); err != nil {
			return res, err
		}
	}
	if !a.sysctlsSet {
		if err := ensureSysctls(a.k, logger); err != nil {
			return res, err
		}
		a.sysctlsSet = true
	}
	changes := Diff(plan, have)
	now := a.clock.Now()

	// The families are applied independently: a failure in one (an IPv6
	// address the kernel refuses, a failing ip6tables-restore) fails the
	// sync, and that family's later steps wait for the retry, but the
	// other family's rules, addresses and removals still go in.
	var binds, adds []Op
	for _, op := range changes.Add {
		if op.Kind == OpAddAddress {
			binds = append(binds, op)
		} else {
			adds = append(adds, op)
		}
	}
	failed, err := a.apply(logger, adds, now, &res.Added)
	errs := []error{err}
	if plan.IPTables != nil && failed&fam4 == 0 {
		ir, err := a.ipt.Sync(plan.IPTables, res.Full)
		res.IPTables = ir
		if err != nil {
			failed |= fam4
			errs = append(errs, fmt.Errorf("iptables rules: %w", err))
		}
	}
	if plan.IPTables6 != nil && failed&fam6 == 0 {
		var ir iptables.SyncResult
		err := errors.New("no ip6tables")
		if a.ipt6 != nil {
			ir, err = a.ipt6.Sync(plan.IPTables6, res.Full)
		}
		res.IPTables6 = ir
		if err != nil {
			failed |= fam6
			errs = append(errs, fmt.Errorf("ip6tables rules: %w", err))
		}
	}
	// Service addresses become local last: once their virtual servers and
	// the filter rules that guard them (source ranges) are in place.
	f, err := a.apply(logger, ofFamilies(binds, ^failed), now, &res.Added)
	failed |= f
	errs = append(errs, err)
	_, err = a.apply(logger, ofFamilies(changes.Remove, ^failed), now, &res.Removed)
	errs = append(errs, err)
	drained, err := a.reap(logger, now)
	res.Drained = drained
	res.Draining = len(a.draining)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	a.known = a.expected(plan)
	return res, nil
}

// list reads our part of the kernel's state.
func (a *Applier) list(plan *Plan) (*State, error) {
	o := a.opts
	o.NodeAddresses = a.everNode
	return ListState(a.k, plan, o)
}

// ListState reads what the kernel holds of IPVS mode, as Diff expects it:
// the dummy link plan.Interface and its addresses, the virtual servers on
// those addresses, on node addresses within opts.NodePortRange, or in
// plan, and the ipsets named SetPrefix….
func ListState(k Interface, plan *Plan, opts Options) (*State, error) {
	st := &State{LinkExists: true}
	addrs, err := k.ListAddresses(plan.Interface)
	switch {
	case IsNotFound(err):
		st.LinkExists = false
	case err != nil:
		return nil, fmt.Errorf("listing addresses of %s: %w", plan.Interface, err)
	}
	st.Addresses = addrs
	svcs, err := k.ListServices()
	if err != nil {
		return nil, fmt.Errorf("listing virtual servers: %w", err)
	}
	onLink := make(map[netip.Addr]bool, len(addrs))
	for _, ad := range addrs {
		onLink[ad] = true
	}
	wanted := make(map[ServiceKey]bool, len(plan.Services))
	for _, vs := range plan.Services {
		wanted[vs.ServiceKey] = true
	}
	for _, vs := range svcs {
		if onLink[vs.Address] || wanted[vs.ServiceKey] || opts.ownsNodePort(vs.ServiceKey) {
			st.Services = append(st.Services, vs)
		}
	}
	slices.SortFunc(st.Services, func(x, y *VirtualServer) int { return x.Compare(y.ServiceKey) })
	sets, err := k.ListSets()
	if err != nil {
		return nil, fmt.Errorf("listing ipsets: %w", err)
	}
	for _, s := range sets {
		if IsOwnedSet(s.Name) {
			st.Sets = append(st.Sets, s)
		}
	}
	return st, nil
}

// ownsNodePort reports whether a virtual server on a node address is a
// node port of ours.
func (o Options) ownsNodePort(k ServiceKey) bool {
	return slices.Contains(o.NodeAddresses, k.Address) && o.NodePortRange.Contains(k.Port)
}

// graceful reports whether removing a real server of k drains it. UDP and
// SCTP real servers are deleted at once, as in kube-proxy: with
// expire_nodest_conn their flows move to another real server at the next
// packet, and the caller's conntrack cleanup removes the stale entries.
func (a *Applier) graceful(k ServiceKey) bool {
	return k.Protocol == v1.ProtocolTCP && a.opts.GracefulTimeout > 0
}

// families is a set of IP families, for the failures of a sync.
type families uint8

const (
	fam4    families = 1
	fam6    families = 2
	famBoth          = fam4 | fam6
)

// opFamily returns the family an op changes: both for the link.
func opFamily(op Op) families {
	fam := func(a netip.Addr) families {
		if a.Is6() {
			return fam6
		}
		return fam4
	}
	switch op.Kind {
	case OpCreateLink:
		return famBoth
	case OpCreateSet, OpAddEntry, OpDeleteEntry, OpDestroySet:
		if isIPv6Set(op.Set) {
			return fam6
		}
		return fam4
	case OpAddAddress, OpDeleteAddress:
		return fam(op.Address)
	}
	return fam(op.Service.Address)
}

// ofFamilies returns the ops that change only families in want.
func ofFamilies(ops []Op, want families) []Op {
	out := ops[:0:0]
	for _, op := range ops {
		if opFamily(op)&^want == 0 {
			out = append(out, op)
		}
	}
	return out
}

// apply runs ops in order and returns the families of the ops that failed.
// Sets are changed in one `ipset restore` per batch of consecutive set
// operations of one family. Creating something that exists and deleting
// something missing count as done. Other failures are collected and the
// remaining ops still run, so that one bad virtual server does not hold
// back every other change.
func (a *Applier) apply(logger klog.Logger, ops []Op, now time.Time, count *int) (families, error) {
	var errs []error
	var failed families
	var setLines []string
	var setFam families
	flushSets := func() error {
		if len(setLines) == 0 {
			return nil
		}
		err := a.k.RestoreSets([]byte(strings.Join(setLines, "\n") + "\n"))
		if err == nil {
			*count += len(setLines)
		} else {
			failed |= setFam
		}
		setLines = setLines[:0]
		return err
	}
	for _, op := range ops {
		if line := setLine(op); line != "" {
			if fam := opFamily(op); fam != setFam {
				if err := flushSets(); err != nil {
					errs = append(errs, fmt.Errorf("ipsets: %w", err))
				}
				setFam = fam
			}
			setLines = append(setLines, line)
			continue
		}
		if err := flushSets(); err != nil {
			errs = append(errs, fmt.Errorf("ipsets: %w", err))
		}
		err := a.applyOne(logger, op, now)
		switch {
		case err == nil:
			*count++
		case isAdd(op.Kind) && IsExist(err), !isAdd(op.Kind) && IsNotFound(err):
			logger.V(2).Info("Kernel already in the state an operation would bring", "op", op.String(), "err", err)
		default:
			failed |= opFamily(op)
			errs = append(errs, fmt.Errorf("%s: %w", op, err))
			if op.Kind == OpCreateLink {
				return famBoth, errors.Join(errs...)
			}
		}
	}
	if err := flushSets(); err != nil {
		errs = append(errs, fmt.Errorf("ipsets: %w", err))
	}
	if len(errs) > 10 {
		errs = append(errs[:10], fmt.Errorf("and %d more errors", len(errs)-10))
	}
	return failed, errors.Join(errs...)
}

func isAdd(k OpKind) bool { return k <= OpAddAddress }

// setLine returns the `ipset restore` line of a set op, or "".
func setLine(op Op) string {
	switch op.Kind {
	case OpCreateSet:
		return "create " + op.Set + " " + op.SetType + " " + setOptions(op.Set)
	case OpAddEntry:
		return "add " + op.Set + " " + op.Entry
	case OpDeleteEntry:
		return "del " + op.Set + " " + op.Entry
	case OpDestroySet:
		return "destroy " + op.Set
	}
	return ""
}

func (a *Applier) applyOne(logger klog.Logger, op Op, now time.Time) error {
	switch op.Kind {
	case OpCreateLink:
		return a.k.EnsureDummy(op.Link)
	case OpAddService:
		return a.k.AddService(op.Service)
	case OpUpdateService:
		return a.k.UpdateService(op.Service)
	case OpAddDestination, OpUpdateDestination:
		// An endpoint that comes back stops draining.
		delete(a.draining, drainKey{op.Service.ServiceKey, op.Dest.AddrPort()})
		if op.Kind == OpAddDestination {
			return a.k.AddDestination(op.Service.ServiceKey, op.Dest)
		}
		return a.k.UpdateDestination(op.Service.ServiceKey, op.Dest)
	case OpAddAddress:
		return a.k.AddAddress(op.Link, op.Address)
	case OpDeleteAddress:
		return a.k.DeleteAddress(op.Link, op.Address)
	case OpDeleteDestination:
		key := drainKey{op.Service.ServiceKey, op.Dest.AddrPort()}
		if !a.graceful(op.Service.ServiceKey) {
			return a.k.DeleteDestination(op.Service.ServiceKey, op.Dest)
		}
		if _, ok := a.draining[key]; !ok {
			a.draining[key] = now
			logger.V(2).Info("Draining real server", "virtualServer", op.Service.ServiceKey.String(), "realServer", key.rs.String())
		}
		if op.Dest.Weight == 0 {
			return nil
		}
		return a.k.UpdateDestination(op.Service.ServiceKey, &RealServer{Address: op.Dest.Address, Port: op.Dest.Port, Weight: 0})
	case OpDeleteService:
		for k := range a.draining {
			if k.vs == op.Service.ServiceKey {
				delete(a.draining, k)
			}
		}
		return a.k.DeleteService(op.Service.ServiceKey)
	}
	return fmt.Errorf("unexpected operation %v", op)
}

// reap deletes draining real servers that have no active connection left
// or whose timeout passed. It lists only the virtual servers concerned.
func (a *Applier) reap(logger klog.Logger, now time.Time) (int, error) {
	byVS := map[ServiceKey][]netip.AddrPort{}
	for k := range a.draining {
		byVS[k.vs] = append(byVS[k.vs], k.rs)
	}
	keys := make([]ServiceKey, 0, len(byVS))
	for k := range byVS {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, ServiceKey.Compare)
	var errs []error
	drained := 0
	for _, vk := range keys {
		dests, err := a.k.ListDestinations(vk)
		if IsNotFound(err) {
			for _, rs := range byVS[vk] {
				delete(a.draining, drainKey{vk, rs})
			}
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("listing real servers of %s: %w", vk, err))
			continue
		}
		for _, ap := range byVS[vk] {
			key := drainKey{vk, ap}
			i := slices.IndexFunc(dests, func(d *RealServer) bool { return d.AddrPort() == ap })
			if i < 0 {
				delete(a.draining, key)
				continue
			}
			d := dests[i]
			expired := now.Sub(a.draining[key]) >= a.opts.GracefulTimeout
			if d.ActiveConns > 0 && !expired {
				continue
			}
			if err := a.k.DeleteDestination(vk, d); err != nil && !IsNotFound(err) {
				errs = append(errs, fmt.Errorf("deleting drained real server %s of %s: %w", ap, vk, err))
				continue
			}
			logger.V(2).Info("Deleted drained real server", "virtualServer", vk.String(), "realServer", ap.String(),
				"activeConnections", d.ActiveConns, "timedOut", d.ActiveConns > 0)
			delete(a.draining, key)
			drained++
		}
	}
	return drained, errors.Join(errs...)
}

// expected returns the state the kernel is in after a successful sync of
// plan: the plan, plus the real servers still draining with weight 0.
func (a *Applier) expected(plan *Plan) *State {
	st := StateOf(plan)
	if len(a.draining) == 0 {
		return st
	}
	extra := map[ServiceKey][]*RealServer{}
	for k := range a.draining {
		extra[k.vs] = append(extra[k.vs], &RealServer{Address: k.rs.Addr(), Port: k.rs.Port(), Weight: 0})
	}
	st.Services = slices.Clone(plan.Services)
	for i, vs := range st.Services {
		if rs, ok := extra[vs.ServiceKey]; ok {
			c := *vs
			c.Destinations = append(slices.Clone(vs.Destinations), rs...)
			st.Services[i] = &c
		}
	}
	return st
}
