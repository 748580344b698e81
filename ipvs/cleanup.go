package ipvs

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/iptables"
)

// Cleanup removes everything of IPVS mode, and nothing else: the jumps
// from the built-in chains first (through ipt, and ipt6 unless nil) (so that traffic stops entering our
// chains), then our chains, the virtual servers on the dummy interface's
// addresses and the node-port virtual servers on opts.NodeAddresses
// (within opts.NodePortRange), the dummy interface with its addresses,
// and last the ipsets named SetPrefix… (no rule references them any
// more). Virtual servers of other programs, other links and other sets are
// not touched. On a host that never ran IPVS mode it changes nothing and
// loads no module. It keeps going after an error and reports every one.
func Cleanup(k Interface, ipt, ipt6 iptables.Interface, opts Options) error {
	_, err := RemoveAll(k, ipt, ipt6, opts)
	return err
}

// RemoveAll is Cleanup that also counts the virtual servers, links and
// ipsets it removed (not the iptables chains), for the leftovers log.
func RemoveAll(k Interface, ipt, ipt6 iptables.Interface, opts Options) (removed int, err error) {
	var errs []error
	if err := iptables.RemoveChains(ipt, jumps, IsOwnedChain); err != nil {
		errs = append(errs, err)
	}
	if ipt6 != nil {
		if err := iptables.RemoveChains(ipt6, jumps, IsOwnedChain); err != nil {
			errs = append(errs, fmt.Errorf("ip6tables: %w", err))
		}
	}

	addrs, err := k.ListAddresses(DummyInterface)
	linkExists := err == nil
	if err != nil && !IsNotFound(err) {
		errs = append(errs, fmt.Errorf("listing addresses of %s: %w", DummyInterface, err))
	}
	// Where IPVS is not loaded there is no virtual server, and listing
	// would load it.
	var svcs []*VirtualServer
	if k.Available() {
		svcs, err = k.ListServices()
		if err != nil {
			errs = append(errs, fmt.Errorf("listing virtual servers: %w", err))
		}
	}
	slices.SortFunc(svcs, func(a, b *VirtualServer) int { return a.Compare(b.ServiceKey) })
	for _, vs := range svcs {
		if !slices.Contains(addrs, vs.Address) && !opts.ownsNodePort(vs.ServiceKey) {
			continue
		}
		switch err := k.DeleteService(vs.ServiceKey); {
		case err == nil:
			removed++
		case !IsNotFound(err):
			errs = append(errs, fmt.Errorf("deleting virtual server %s: %w", vs.ServiceKey, err))
		}
	}
	if err := k.DeleteLink(DummyInterface); err != nil {
		errs = append(errs, fmt.Errorf("deleting %s: %w", DummyInterface, err))
	} else if linkExists {
		removed++
	}

	sets, err := k.ListSets()
	if err != nil {
		errs = append(errs, fmt.Errorf("listing ipsets: %w", err))
	}
	var b strings.Builder
	n := 0
	for _, s := range sets {
		if IsOwnedSet(s.Name) {
			fmt.Fprintf(&b, "destroy %s\n", s.Name)
			n++
		}
	}
	if b.Len() > 0 {
		if err := k.RestoreSets([]byte(b.String())); err != nil {
			errs = append(errs, fmt.Errorf("destroying ipsets: %w", err))
		} else {
			removed += n
		}
	}
	return removed, errors.Join(errs...)
}
