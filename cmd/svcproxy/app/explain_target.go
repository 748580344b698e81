package app

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// --- the target ---

// target is a parsed TARGET.
type target struct {
	text string
	// A name: namespace and name (namespace "" for a bare DNS name, which
	// --namespace completes), and the DNS form ("" for ns/name).
	namespace, name, dns string
	// An address.
	addr  netip.AddrPort
	proto string // "" for every protocol
	// port is the :PORT or :PORTNAME of a name, "" for all.
	port string
}

func (t *target) isAddr() bool { return t.addr.IsValid() }

// parseTarget parses the syntax of TARGET; what it names is resolved later.
func parseTarget(s string) (*target, error) {
	t := &target{text: s}
	if s == "" {
		return nil, errors.New("empty TARGET")
	}
	if addr, proto, ok := strings.Cut(s, "/"); ok && !strings.Contains(proto, "/") {
		if ap, err := netip.ParseAddrPort(addr); err == nil {
			switch p := strings.ToLower(proto); p {
			case "tcp", "udp", "sctp":
				t.addr, t.proto = ap, p
			default:
				return nil, fmt.Errorf("TARGET %q: protocol %q: want tcp, udp or sctp", s, proto)
			}
		}
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		t.addr = ap
	}
	if t.isAddr() {
		t.addr = netip.AddrPortFrom(t.addr.Addr().Unmap(), t.addr.Port())
		if t.addr.Port() == 0 {
			return nil, fmt.Errorf("TARGET %q: port 0", s)
		}
		return t, nil
	}
	if _, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return nil, fmt.Errorf("TARGET %q: an address needs a port (IP:PORT)", s)
	}
	name, port, _ := strings.Cut(strings.ToLower(s), ":")
	if port != "" {
		if n, err := strconv.Atoi(port); err == nil {
			if n < 1 || n > 65535 {
				return nil, fmt.Errorf("TARGET %q: port %d out of range", s, n)
			}
		} else if !isLabel(port) {
			return nil, fmt.Errorf("TARGET %q: %q is neither a port number nor a port name", s, port)
		}
		t.port = port
	}
	if ns, n, ok := strings.Cut(name, "/"); ok {
		if !isLabel(ns) || !isLabel(n) {
			return nil, fmt.Errorf("TARGET %q: want NAMESPACE/NAME", s)
		}
		t.namespace, t.name = ns, n
		return t, nil
	}
	name = strings.TrimSuffix(name, ".")
	for _, l := range strings.Split(name, ".") {
		if !isLabel(l) {
			return nil, fmt.Errorf("TARGET %q: %q is not a DNS name, NAMESPACE/NAME or IP:PORT", s, name)
		}
	}
	t.dns = name
	return t, nil
}

// isLabel reports whether s is a DNS label (RFC 1123), as names of
// Services, namespaces and ports are.
func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// notFoundError is a target that names nothing, with the closest matches.
type notFoundError struct {
	msg     string
	closest []string
}

func (e *notFoundError) Error() string { return e.msg }

// --- the source ---

// from is a parsed --from: its kind and addresses, at most one of each
// family (a dual-stack pod's two); none for a stand-in pod and node.
type from struct {
	kind string
	ips  []netip.Addr
}

// addr returns the source's address of a family.
func (f from) addr(ipv6 bool) (netip.Addr, bool) {
	for _, a := range f.ips {
		if a.Is6() == ipv6 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func parseFrom(s string) (from, error) {
	kind, ips, hasIP := strings.Cut(s, ":")
	f := from{kind: cmp.Or(kind, fromPod)}
	switch f.kind {
	case fromPod, fromRemotePod, fromExternal:
		if !hasIP && f.kind != fromPod {
			return f, fmt.Errorf("--from %s needs an address: %s:IP", f.kind, f.kind)
		}
	case fromNode:
		if hasIP {
			return f, errors.New("--from node takes no address (--node-ip gives the node's)")
		}
	default:
		return f, fmt.Errorf("--from %q: want pod:IP, remote-pod:IP, node or external:IP", s)
	}
	if !hasIP {
		return f, nil
	}
	// pod:10.244.1.2,fd00:10:244:1::2 — a dual-stack source, each family
	// traced from its own address.
	parts := strings.Split(ips, ",")
	if len(parts) > 2 {
		return f, fmt.Errorf("--from %q: at most two addresses, one IPv4 and one IPv6", s)
	}
	for _, p := range parts {
		a, err := netip.ParseAddr(strings.TrimSpace(p))
		if err != nil {
			return f, fmt.Errorf("--from %q: %w", s, err)
		}
		a = a.Unmap()
		if _, dup := f.addr(a.Is6()); dup {
			return f, fmt.Errorf("--from %q: two %s addresses: give one of each family (a dual-stack pod's IPv4 and IPv6)", s, family(a))
		}
		f.ips = append(f.ips, a)
	}
	return f, nil
}

func parseAddrs(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}
