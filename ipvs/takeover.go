package ipvs

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Names upstream kube-proxy's IPVS mode uses (k8s.io/kubernetes
// pkg/proxy/ipvs, v1.37.2): the dummy link every service address is bound
// to, and the prefix of all its ipsets (KUBE-CLUSTER-IP, KUBE-LOOP-BACK,
// KUBE-NODE-PORT-TCP, KUBE-LOAD-BALANCER-FW, KUBE-IPVS-IPS, …; IPv6 ones
// are KUBE-6-…). Its iptables chains are iptables.RemoveKubeProxy's.
const (
	KubeProxyDummyInterface = "kube-ipvs0"
	KubeProxySetPrefix      = "KUBE-"
)

// IsKubeProxySet reports whether an ipset is upstream kube-proxy's.
func IsKubeProxySet(name string) bool {
	return strings.HasPrefix(name, KubeProxySetPrefix) && len(name) > len(KubeProxySetPrefix)
}

// KubeProxyPresent reports whether upstream kube-proxy's IPVS mode left its
// dummy link on the node. It loads no module.
func KubeProxyPresent(k Interface) bool {
	_, err := k.ListAddresses(KubeProxyDummyInterface)
	return err == nil
}

// RemoveKubeProxy removes what upstream kube-proxy's IPVS mode leaves
// behind: every virtual server whose address is bound to kube-ipvs0 (unless
// keep, which may be nil, says the key is svcproxy's own: in IPVS mode the
// same ClusterIP:port is served by our virtual server), then kube-ipvs0
// itself, then the ipsets named KUBE-…. An ipset cannot be destroyed while
// an iptables rule references it, so call it after
// iptables.RemoveKubeProxy; a set still referenced (another program's rule)
// is kept and reported. Without kube-ipvs0 it touches no virtual server
// and loads no module, but still destroys leftover KUBE- sets.
// removed counts deleted virtual servers, links and sets. It keeps going
// after an error and reports every one.
func RemoveKubeProxy(k Interface, keep func(ServiceKey) bool) (removed int, err error) {
	return removeKubeProxy(k, keep, nil)
}

// RemoveKubeProxyNodePorts is RemoveKubeProxy that also removes the
// virtual servers on opts.NodeAddresses within opts.NodePortRange (kube-
// proxy's node ports), for iptables mode. There, a node port svcproxy
// serves is DNATed in nat PREROUTING/OUTPUT before IPVS sees the packet,
// but a node port svcproxy does not serve (a service deleted while
// kube-proxy was gone, or one svcproxy rejects) would still be answered by
// kube-proxy's stale virtual server. IPVS mode must not use it: its Applier
// owns those keys.
func RemoveKubeProxyNodePorts(k Interface, keep func(ServiceKey) bool, opts Options) (removed int, err error) {
	return removeKubeProxy(k, keep, opts.ownsNodePort)
}

func removeKubeProxy(k Interface, keep, nodePort func(ServiceKey) bool) (removed int, err error) {
	var errs []error
	addrs, lerr := k.ListAddresses(KubeProxyDummyInterface)
	switch {
	case lerr == nil:
		// Where IPVS is not loaded there is no virtual server, and
		// listing would load it.
		var svcs []*VirtualServer
		if k.Available() {
			svcs, err = k.ListServices()
			if err != nil {
				errs = append(errs, fmt.Errorf("listing virtual servers: %w", err))
			}
		}
		slices.SortFunc(svcs, func(a, b *VirtualServer) int { return a.Compare(b.ServiceKey) })
		for _, vs := range svcs {
			if !slices.Contains(addrs, vs.Address) && (nodePort == nil || !nodePort(vs.ServiceKey)) {
				continue
			}
			if keep != nil && keep(vs.ServiceKey) {
				continue
			}
			if err := k.DeleteService(vs.ServiceKey); err != nil {
				if !IsNotFound(err) {
					errs = append(errs, fmt.Errorf("deleting kube-proxy's virtual server %s: %w", vs.ServiceKey, err))
				}
				continue
			}
			removed++
		}
		if err := k.DeleteLink(KubeProxyDummyInterface); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", KubeProxyDummyInterface, err))
		} else {
			removed++
		}
	case !IsNotFound(lerr):
		errs = append(errs, fmt.Errorf("listing addresses of %s: %w", KubeProxyDummyInterface, lerr))
	}

	sets, err := k.ListSets()
	if err != nil {
		errs = append(errs, fmt.Errorf("listing ipsets: %w", err))
	}
	var kube []string
	for _, s := range sets {
		if IsKubeProxySet(s.Name) {
			kube = append(kube, s.Name)
		}
	}
	if len(kube) == 0 {
		return removed, errors.Join(errs...)
	}
	var b strings.Builder
	for _, s := range kube {
		fmt.Fprintf(&b, "destroy %s\n", s)
	}
	if err := k.RestoreSets([]byte(b.String())); err == nil {
		return removed + len(kube), errors.Join(errs...)
	}
	// ipset restore stops at the first failing line (a set still in use):
	// one at a time, so that the others go.
	for _, s := range kube {
		if err := k.RestoreSets([]byte("destroy " + s + "\n")); err != nil {
			errs = append(errs, fmt.Errorf("destroying kube-proxy's ipset %s: %w", s, err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}
