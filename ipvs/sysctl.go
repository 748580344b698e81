package ipvs

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
)

// sysctl is one setting IPVS mode needs.
type sysctl struct {
	name, value string
	// required: IPVS mode cannot work without it (masquerading IPVS
	// traffic needs conntrack entries for it).
	required bool
	why      string
}

var sysctls = []sysctl{
	{"net/ipv4/vs/conntrack", "1", true, "keep conntrack entries for IPVS connections, so that iptables can masquerade them"},
	{"net/ipv4/vs/expire_nodest_conn", "1", false, "drop connections to a deleted real server at their next packet instead of blackholing them"},
	{"net/ipv4/vs/expire_quiescent_template", "1", false, "expire persistence templates of weight-0 real servers, so that affinity does not pin clients to a draining endpoint"},
	{"net/ipv4/conf/all/arp_ignore", "1", false, "answer ARP only for addresses of the receiving interface, not for service addresses on the dummy link"},
	{"net/ipv4/conf/all/arp_announce", "2", false, "never announce service addresses as ARP sources"},
}

// connReuseSysctl is left alone on kernels that fixed the 1-second delay
// of reused connections (5.9, kubernetes#93297) and set to 0 before.
const connReuseSysctl = "net/ipv4/vs/conn_reuse_mode"

// ensureSysctls sets and logs the sysctls IPVS mode needs. An optional one
// that cannot be set is logged; a required one is an error.
func ensureSysctls(k Interface, logger klog.Logger) error {
	for _, s := range sysctls {
		if err := ensureSysctl(k, logger, s.name, s.value, s.why); err != nil {
			if s.required {
				return err
			}
			logger.Error(err, "Could not set sysctl; continuing", "sysctl", s.name, "want", s.value)
		}
	}
	release, err := k.Sysctl("kernel/osrelease")
	if err != nil {
		logger.Error(err, "Could not read the kernel version; leaving sysctl as is", "sysctl", connReuseSysctl)
		return nil
	}
	if kernelAtLeast(release, 5, 9) {
		v, _ := k.Sysctl(connReuseSysctl)
		logger.Info("Left sysctl as is: the kernel has the fix for reused connections", "sysctl", connReuseSysctl, "value", v, "kernel", release)
		return nil
	}
	if err := ensureSysctl(k, logger, connReuseSysctl, "0", "avoid the 1-second delay of reused connections on kernels before 5.9"); err != nil {
		logger.Error(err, "Could not set sysctl; continuing", "sysctl", connReuseSysctl)
	}
	return nil
}

func ensureSysctl(k Interface, logger klog.Logger, name, value, why string) error {
	old, err := k.Sysctl(name)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", name, err)
	}
	if old == value {
		logger.V(2).Info("Sysctl already set", "sysctl", name, "value", value)
		return nil
	}
	if err := k.SetSysctl(name, value); err != nil {
		return fmt.Errorf("setting sysctl %s=%s: %w", name, value, err)
	}
	logger.Info("Set sysctl", "sysctl", name, "from", old, "to", value, "why", why)
	return nil
}

// kernelAtLeast reports whether a release string ("6.1.0-56-amd64") is at
// least major.minor; an unparsable one counts as new.
func kernelAtLeast(release string, major, minor int) bool {
	fs := strings.FieldsFunc(release, func(r rune) bool { return r == '.' || r == '-' })
	if len(fs) < 2 {
		return true
	}
	ma, err1 := strconv.Atoi(fs[0])
	mi, err2 := strconv.Atoi(fs[1])
	if err1 != nil || err2 != nil {
		return true
	}
	return ma > major || (ma == major && mi >= minor)
}

// IPv6Unusable says why IPv6 service addresses cannot work on this node,
// or "" when they can: a kernel without IPv6 (ipv6.disable=1: no
// /proc/sys/net/ipv6) or IPv6 disabled on every link
// (net.ipv6.conf.all.disable_ipv6=1), where binding an IPv6 address is
// refused and every sync would fail. ip6tables may still work there, so
// its presence alone does not say.
func IPv6Unusable(k Interface) string {
	v, err := k.Sysctl("net/ipv6/conf/all/disable_ipv6")
	switch {
	case err != nil:
		return "the kernel has no IPv6 (" + err.Error() + ")"
	case v != "0":
		return "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6=" + v + ")"
	}
	return ""
}
