package app

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/iptables/trace"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/config"
)

// --- the explanation ---

// explanation is explain's output; its JSON is -o json.
type explanation struct {
	Target  string       `json:"target"`
	Node    string       `json:"node"`
	Mode    string       `json:"mode"`
	Live    bool         `json:"live"`              // compared with the kernel's rules
	Service string       `json:"service,omitempty"` // a name target's ns/name
	DNS     *dnsAnswer   `json:"dns,omitempty"`     // a name target's
	Results []portResult `json:"results"`
	Notes   []string     `json:"notes"`
}

// dnsAnswer is what a pod's lookup of the name returns.
type dnsAnswer struct {
	Name      string   `json:"name"`
	Addresses []string `json:"addresses"`
	CNAME     string   `json:"cname,omitempty"`
	KubeDNS   kubeDNS  `json:"kubeDNS"`
}

// kubeDNS says whether names resolve at all.
type kubeDNS struct {
	Service        string   `json:"service"`
	Addresses      []string `json:"addresses"`
	ReadyEndpoints int      `json:"readyEndpoints"`
	Found          bool     `json:"found"`
}

// portResult is the fate of a connection to one service port of one IP
// family.
type portResult struct {
	Service     string `json:"service"`
	Port        string `json:"port"`
	Protocol    string `json:"protocol"`
	Family      string `json:"family"`
	From        string `json:"from"`        // the source traced, described
	Source      string `json:"source"`      // its address
	Destination string `json:"destination"` // "ip:port"
	Via         string `json:"via"`         // cluster IP, external IP, load-balancer IP or node port

	Verdict          string     `json:"verdict"`
	Reason           string     `json:"reason"`
	Endpoints        []endpoint `json:"endpoints"`
	Masquerade       bool       `json:"masquerade"`
	MasqueradeReason string     `json:"masqueradeReason,omitempty"`
	Path             []string   `json:"path"`             // the chains, "table/CHAIN"
	Rules            []string   `json:"rules"`            // the rules that matched, in order
	PathTo           string     `json:"pathTo,omitempty"` // the endpoint of the path shown, of several
	// With --live: what the kernel's rules do, and every difference.
	Kernel *kernelView `json:"kernel,omitempty"`
	Drift  []driftItem `json:"drift"`
}

// endpoint is one endpoint a DNAT may pick.
type endpoint struct {
	IP          string  `json:"ip"`
	Port        int     `json:"port"`
	Probability float64 `json:"probability"`
	Node        string  `json:"node"`
	Local       bool    `json:"local"`
	Masquerade  bool    `json:"masquerade"`
}

// explainer holds what one explain run works with.
type explainer struct {
	o        *config.Config
	e        explainFlags
	cl       *cluster
	src      from
	nodeIPs  []netip.Addr
	rulesets map[bool]*trace.Ruleset // by IPv6
	notes    []string
	taken    map[netip.Addr]bool // every endpoint address, once needed

	ipvs ipvsView // --mode ipvs

	// --live
	deps      explainDeps
	live      map[bool]*trace.Ruleset // the kernel's, by IPv6
	liveErr   map[bool]error
	hostAddrs []netip.Addr // this namespace's
}

// dest is one destination to trace: an address of a service port.
type dest struct {
	sp  *proxy.ServicePort
	dst netip.AddrPort
	via string
}

func (x *explainer) note(format string, args ...any) {
	n := fmt.Sprintf(format, args...)
	if !slices.Contains(x.notes, n) {
		x.notes = append(x.notes, n)
	}
}

func (x *explainer) explain(t *target) (*explanation, error) {
	out := &explanation{Target: t.text, Node: x.o.NodeName(), Mode: x.o.Mode, Live: x.e.live}
	var dests []dest
	if t.isAddr() {
		var err error
		if dests, err = x.resolveAddr(t); err != nil {
			return nil, err
		}
	} else {
		svc, fqdn, err := x.resolveName(t)
		if err != nil {
			return nil, err
		}
		out.Service = svc.Namespace + "/" + svc.Name
		out.DNS = x.dnsAnswer(svc, fqdn)
		ports, err := servicePorts(svc, t.port)
		if err != nil {
			return nil, err
		}
		if why := unprogrammed(svc); why != "" {
			for _, p := range ports {
				out.Results = append(out.Results, untraced(svc, p, why))
			}
			if len(ports) == 0 {
				out.Results = append(out.Results, untraced(svc, v1.ServicePort{}, why))
			}
		}
		for _, p := range ports {
			n := 0
			for _, sp := range x.cl.snap.ServicePorts() {
				if sp.Name.Namespace == svc.Namespace && sp.Name.Name == svc.Name && sp.Name.Port == p.Name && sp.Protocol == cmp.Or(p.Protocol, v1.ProtocolTCP) {
					dests = append(dests, dest{sp: sp, dst: netip.AddrPortFrom(sp.ClusterIP, uint16(sp.Port)), via: viaClusterIP})
					n++
				}
			}
			if n == 0 && unprogrammed(svc) == "" {
				out.Results = append(out.Results, untraced(svc, p, "svcproxy programs nothing for this port: the Service or its address is invalid, or another Service holds the address (the daemon's log says which)"))
			}
		}
	}
	if x.ipvsMode() {
		x.assumeNodeAddrs(dests)
	}
	for _, d := range dests {
		r, err := x.traceDest(d)
		if err != nil {
			return nil, err
		}
		if r != nil {
			out.Results = append(out.Results, *r)
		}
	}
	if len(out.Results) == 0 {
		return nil, fmt.Errorf("%s: nothing to trace: %s", t.text, strings.Join(x.notes, "; "))
	}
	out.Notes = append([]string{}, x.notes...)
	return out, nil
}

// resolveName finds the Service a name targets, as a pod in --namespace
// resolves it with its DNS search path, and returns it with the name's
// fully qualified form.
func (x *explainer) resolveName(t *target) (*v1.Service, string, error) {
	ns, name := t.namespace, t.name
	domain := strings.Trim(strings.ToLower(x.e.clusterDomain), ".")
	if t.dns != "" {
		labels := strings.Split(t.dns, ".")
		switch {
		case len(labels) == 1:
			ns, name = x.e.namespace, labels[0]
		case len(labels) == 2:
			ns, name = labels[1], labels[0]
		case len(labels) == 3 && labels[2] == "svc":
			ns, name = labels[1], labels[0]
		case strings.Join(labels[2:], ".") == "svc."+domain && len(labels) > 3:
			ns, name = labels[1], labels[0]
		default:
			return nil, "", &notFoundError{msg: fmt.Sprintf("%s: not a Service name in %s (name, name.namespace, name.namespace.svc, name.namespace.svc.%s or namespace/name)", t.text, domain, domain)}
		}
	}
	fqdn := name + "." + ns + ".svc." + domain
	for _, s := range x.cl.services {
		if s.Namespace == ns && s.Name == name {
			return s, fqdn, nil
		}
	}
	return nil, "", &notFoundError{msg: fmt.Sprintf("%s: no Service %s/%s (%s)", t.text, ns, name, fqdn), closest: x.closest(ns, name)}
}

// closest returns the Services whose ns/name is nearest to ns/name: the
// same name in other namespaces, then names a typo away, at most 5.
func (x *explainer) closest(ns, name string) []string {
	type cand struct {
		d int
		s string
	}
	var cs []cand
	for _, s := range x.cl.services {
		d := editDistance(s.Name, name)
		if s.Namespace != ns {
			d += min(editDistance(s.Namespace, ns), 1)
		}
		if d <= max(2, len(name)/3) {
			cs = append(cs, cand{d, s.Namespace + "/" + s.Name})
		}
	}
	slices.SortFunc(cs, func(a, b cand) int { return cmp.Or(cmp.Compare(a.d, b.d), cmp.Compare(a.s, b.s)) })
	var out []string
	for _, c := range cs[:min(len(cs), 5)] {
		out = append(out, c.s)
	}
	return out
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// servicePorts returns the ports of svc that port ("" for all) names.
func servicePorts(svc *v1.Service, port string) ([]v1.ServicePort, error) {
	if port == "" {
		return svc.Spec.Ports, nil
	}
	var out []v1.ServicePort
	var names []string
	for _, p := range svc.Spec.Ports {
		names = append(names, fmt.Sprintf("%s %d/%s", cmp.Or(p.Name, `""`), p.Port, cmp.Or(p.Protocol, v1.ProtocolTCP)))
		if p.Name == port || strconv.Itoa(int(p.Port)) == port {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, &notFoundError{msg: fmt.Sprintf("Service %s/%s has no port %s", svc.Namespace, svc.Name, port), closest: names}
	}
	return out, nil
}

// unprogrammed says why svcproxy programs nothing for svc, "" when it
// does.
func unprogrammed(svc *v1.Service) string {
	switch {
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		return "ExternalName Service: DNS answers with a CNAME and svcproxy programs nothing for it; connections go to whatever that name resolves to"
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		return "headless Service (clusterIP None): DNS answers with the endpoints' own addresses and connections go straight to the pods; svcproxy programs nothing for it"
	case svc.Spec.ClusterIP == "":
		return "the Service has no cluster IP: svcproxy programs nothing for it"
	case svc.Labels[proxy.LabelServiceProxyName] != "":
		return fmt.Sprintf("the Service's label %s=%s hands it to another proxy: svcproxy programs nothing for it", proxy.LabelServiceProxyName, svc.Labels[proxy.LabelServiceProxyName])
	}
	return ""
}

// untraced is the result of a port svcproxy programs nothing for.
func untraced(svc *v1.Service, p v1.ServicePort, why string) portResult {
	r := newResult()
	r.Service, r.Port, r.Protocol = svc.Namespace+"/"+svc.Name, p.Name, string(p.Protocol)
	r.Verdict, r.Reason = verdictNoMatch, why
	return r
}

func newResult() portResult {
	return portResult{Endpoints: []endpoint{}, Path: []string{}, Rules: []string{}, Drift: []driftItem{}}
}

// dnsAnswer is what a pod's lookup of fqdn returns, and whether kube-dns
// can answer at all.
func (x *explainer) dnsAnswer(svc *v1.Service, fqdn string) *dnsAnswer {
	a := &dnsAnswer{Name: fqdn, Addresses: []string{}}
	switch {
	case svc.Spec.Type == v1.ServiceTypeExternalName:
		a.CNAME = svc.Spec.ExternalName
	case svc.Spec.ClusterIP == v1.ClusterIPNone:
		seen := map[string]bool{}
		for _, s := range x.cl.slices {
			if s.Namespace != svc.Namespace || s.Labels[discovery.LabelServiceName] != svc.Name {
				continue
			}
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready && !svc.Spec.PublishNotReadyAddresses {
					continue
				}
				for _, ip := range ep.Addresses {
					if !seen[ip] {
						seen[ip] = true
						a.Addresses = append(a.Addresses, ip)
					}
				}
			}
		}
		slices.Sort(a.Addresses)
	default:
		a.Addresses = append(a.Addresses, svc.Spec.ClusterIPs...)
		if len(a.Addresses) == 0 && svc.Spec.ClusterIP != "" {
			a.Addresses = append(a.Addresses, svc.Spec.ClusterIP)
		}
	}
	a.KubeDNS = kubeDNS{Service: "kube-system/kube-dns", Addresses: []string{}}
	for _, sp := range x.cl.snap.ServicePorts() {
		if sp.Name.Namespace != "kube-system" || sp.Name.Name != "kube-dns" {
			continue
		}
		a.KubeDNS.Found = true
		if ip := sp.ClusterIP.String(); !slices.Contains(a.KubeDNS.Addresses, ip) {
			a.KubeDNS.Addresses = append(a.KubeDNS.Addresses, ip)
		}
		if sp.Protocol == v1.ProtocolUDP && sp.Port == 53 {
			n := 0
			for _, ep := range sp.AllEndpoints {
				if ep.Ready {
					n++
				}
			}
			a.KubeDNS.ReadyEndpoints += n
		}
	}
	return a
}

// resolveAddr finds the service ports an address targets: a cluster,
// external or load-balancer IP and port, or a node port on any other
// address.
func (x *explainer) resolveAddr(t *target) ([]dest, error) {
	ip, port := t.addr.Addr(), int32(t.addr.Port())
	var dests []dest
	serviceAddr := false
	var served []string
	for _, sp := range x.cl.snap.ServicePorts() {
		via := ""
		switch {
		case sp.ClusterIP == ip:
			via = viaClusterIP
		case slices.Contains(sp.ExternalIPs, ip):
			via = viaExternalIP
		case slices.Contains(sp.LoadBalancerIPs, ip):
			via = viaLBIP
		}
		if via != "" {
			serviceAddr = true
			served = append(served, fmt.Sprintf("%d/%s (%s, %s)", sp.Port, sp.Protocol, sp.Name.Comment(), via))
			if sp.Port == port && (t.proto == "" || strings.EqualFold(t.proto, string(sp.Protocol))) {
				dests = append(dests, dest{sp: sp, dst: t.addr, via: via})
			}
		}
	}
	if serviceAddr {
		if len(dests) == 0 {
			return nil, &notFoundError{msg: fmt.Sprintf("%s: no service port %s on %s", t.text, portProto(port, t.proto), ip), closest: served}
		}
		return dests, nil
	}
	var nodePorts []string
	for _, sp := range x.cl.snap.ServicePorts() {
		if sp.NodePort == 0 || sp.ClusterIP.Is4() != ip.Is4() {
			continue
		}
		if sp.NodePort == port && (t.proto == "" || strings.EqualFold(t.proto, string(sp.Protocol))) {
			dests = append(dests, dest{sp: sp, dst: t.addr, via: viaNodePort})
		} else if sp.NodePort == port {
			nodePorts = append(nodePorts, fmt.Sprintf("%d/%s (%s)", sp.NodePort, sp.Protocol, sp.Name.Comment()))
		}
	}
	if len(dests) == 0 {
		return nil, &notFoundError{msg: fmt.Sprintf("%s: no Service has address %s, and no Service has node port %s", t.text, ip, portProto(port, t.proto)), closest: nodePorts}
	}
	return dests, nil
}

func portProto(port int32, proto string) string {
	if proto == "" {
		return strconv.Itoa(int(port))
	}
	return fmt.Sprintf("%d/%s", port, strings.ToUpper(proto))
}

// ruleset returns the rules svcproxy would program for a family.
func (x *explainer) ruleset(ipv6 bool) (*trace.Ruleset, error) {
	if rs := x.rulesets[ipv6]; rs != nil {
		return rs, nil
	}
	rs, err := trace.Parse(iptables.Render(x.cl.snap, x.o.IPTablesOptions(ipv6)).String(), ipv6)
	if err != nil {
		return nil, fmt.Errorf("the rendered rules do not load: %w", err)
	}
	x.rulesets[ipv6] = rs
	return rs, nil
}

// family names an address's IP family.
func family(a netip.Addr) string {
	if a.Is4() {
		return string(v1.IPv4Protocol)
	}
	return string(v1.IPv6Protocol)
}

// source returns the address to trace from for a destination's family and
// how to describe it; ok false (with a note) when there is none.
func (x *explainer) source(d dest) (ip netip.Addr, desc string, ok bool) {
	fam := family(d.dst.Addr())
	node := x.o.NodeName()
	if len(x.src.ips) > 0 {
		a, ok := x.src.addr(d.dst.Addr().Is6())
		if !ok {
			x.note("%s not traced: the source %s is not %s", fam, x.src.ips[0], fam)
			return ip, "", false
		}
		switch x.src.kind {
		case fromPod:
			return a, fmt.Sprintf("a pod on %s (%s)", node, a), true
		case fromRemotePod:
			return a, fmt.Sprintf("a pod on another node (%s)", a), true
		}
		return a, fmt.Sprintf("an outside client (%s)", a), true
	}
	if x.src.kind == fromNode {
		for _, a := range x.nodeIPs {
			if a.Is4() == d.dst.Addr().Is4() {
				return a, fmt.Sprintf("%s itself (%s)", node, a), true
			}
		}
		if d.via == viaNodePort {
			return d.dst.Addr(), fmt.Sprintf("%s itself (%s, the node address of the target)", node, d.dst.Addr()), true
		}
		x.note("%s not traced: no %s address of %s is known (--node-ip, or status.addresses of its Node)", fam, fam, node)
		return ip, "", false
	}
	// A stand-in pod: an address of the cluster CIDR that is no endpoint,
	// so that no hairpin rule takes it.
	if x.taken == nil {
		x.taken = map[netip.Addr]bool{}
		for _, sp := range x.cl.snap.ServicePorts() {
			for _, ep := range sp.AllEndpoints {
				x.taken[ep.IP] = true
			}
		}
	}
	taken := x.taken
	for _, cidr := range x.o.ClusterCIDRs() {
		if cidr.Addr().Is4() != d.dst.Addr().Is4() || cidr.Bits() >= cidr.Addr().BitLen()-1 {
			continue
		}
		a := lastAddr(cidr).Prev()
		for taken[a] && cidr.Contains(a.Prev()) {
			a = a.Prev()
		}
		return a, fmt.Sprintf("a pod on %s (%s, a stand-in address in --cluster-cidr %s; --from pod:IP for a real one)", node, a, cidr), true
	}
	x.note("%s not traced: no %s --cluster-cidr to take a pod address from (--from pod:IP gives one)", fam, fam)
	return ip, "", false
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// localAddrs returns this node's addresses of dst's family, with dst
// itself when it is a node port target and no address of the family is
// known (assumed to be the node's).
func (x *explainer) localAddrs(d dest, src netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range slices.Concat(x.nodeIPs, x.hostAddrs) {
		if a.Is4() == d.dst.Addr().Is4() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if d.via == viaNodePort && len(out) == 0 && !d.dst.Addr().IsLoopback() {
		x.note("%s is taken to be an address of %s (--node-ip names the node's addresses)", d.dst.Addr(), x.o.NodeName())
		out = append(out, d.dst.Addr())
	}
	if x.src.kind == fromNode && !slices.Contains(out, src) {
		out = append(out, src)
	}
	return out
}

// traceDest traces a connection to d and explains it; nil when the source
// has no address of d's family.
func (x *explainer) traceDest(d dest) (*portResult, error) {
	if x.ipvsMode() {
		return x.traceDestIPVS(d)
	}
	src, desc, ok := x.source(d)
	if !ok {
		return nil, nil
	}
	ipv6 := d.dst.Addr().Is6()
	rs, err := x.ruleset(ipv6)
	if err != nil {
		return nil, err
	}
	pkt := trace.Packet{
		SrcIP: src, DstIP: d.dst.Addr(), Proto: strings.ToLower(string(d.sp.Protocol)), DstPort: int(d.dst.Port()),
		SrcLocal: x.src.kind == fromNode, LocalAddrs: x.localAddrs(d, src),
	}
	paths, err := rs.Explain(pkt, nil, time.Time{})
	if err == nil && len(paths) == 0 {
		err = errors.New("no path")
	}
	if err != nil {
		return nil, fmt.Errorf("tracing %s -> %s: %w", src, d.dst, err)
	}
	r := newResult()
	r.Service = d.sp.Name.Namespace + "/" + d.sp.Name.Name
	r.Port, r.Protocol, r.Family = d.sp.Name.Port, string(d.sp.Protocol), family(d.dst.Addr())
	r.From, r.Source, r.Destination, r.Via = desc, src.String(), d.dst.String(), d.via

	// The verdict is the likeliest kind of outcome; svcproxy's rules give
	// one kind per connection.
	byVerdict := map[string]float64{}
	for _, p := range paths {
		byVerdict[verdictOf(p.Outcome)] += p.Probability
	}
	for _, v := range []string{verdictDNAT, verdictReject, verdictDrop, verdictNoMatch} {
		if r.Verdict == "" || byVerdict[v] > byVerdict[r.Verdict] {
			r.Verdict = v
		}
	}
	var rep *trace.Path
	masqEPs := map[netip.Addr]bool{}
	for i, p := range paths {
		if verdictOf(p.Outcome) != r.Verdict {
			x.note("%s: %s with probability %.4f (%s)", r.Destination, verdictOf(p.Outcome), p.Probability, p.Outcome)
			continue
		}
		if rep == nil || p.Probability > rep.Probability {
			rep = &paths[i]
		}
		r.Masquerade = r.Masquerade || p.Masquerade
		if !p.DNAT.IsValid() {
			continue
		}
		if p.Masquerade {
			masqEPs[p.DNAT.Addr()] = true
		}
		j := slices.IndexFunc(r.Endpoints, func(e endpoint) bool { return e.IP == p.DNAT.Addr().String() && e.Port == int(p.DNAT.Port()) })
		if j < 0 {
			e := endpoint{IP: p.DNAT.Addr().String(), Port: int(p.DNAT.Port())}
			for _, ep := range d.sp.AllEndpoints {
				if ep.IP == p.DNAT.Addr() && int(ep.Port) == e.Port {
					e.Node, e.Local = ep.NodeName, ep.IsLocal
				}
			}
			r.Endpoints = append(r.Endpoints, e)
			j = len(r.Endpoints) - 1
		}
		r.Endpoints[j].Probability += p.Probability
		r.Endpoints[j].Masquerade = r.Endpoints[j].Masquerade || p.Masquerade
	}
	for i := range r.Endpoints {
		r.Endpoints[i].Probability = math.Round(r.Endpoints[i].Probability*1e4) / 1e4
	}
	slices.SortFunc(r.Endpoints, func(a, b endpoint) int {
		return netip.MustParseAddr(a.IP).Compare(netip.MustParseAddr(b.IP))
	})
	r.Path = rep.Chains()
	r.Rules = rep.Steps
	if len(r.Endpoints) > 1 {
		r.PathTo = rep.DNAT.String()
	}
	c := x.classify(src)
	switch r.Verdict {
	case verdictDNAT:
		r.Reason = x.dnatReason(d, c)
	case verdictReject:
		r.Reason = rejectReason(d.sp)
	case verdictDrop:
		r.Reason = x.dropReason(d, src, c)
	default:
		r.Reason = x.noMatchReason(d, pkt.LocalAddrs)
	}
	if r.Verdict == verdictDNAT {
		r.MasqueradeReason = x.masqueradeReason(d, src, c, r.Masquerade, masqEPs)
	}
	if x.src.kind == fromRemotePod && d.via == viaClusterIP {
		x.note("a pod on another node reaches a cluster IP through its own node's rules: this is how %s's rules would treat it", x.o.NodeName())
	}
	if x.e.live {
		if err := x.compareLive(d, pkt, paths, &r, !x.e.all); err != nil {
			return nil, err
		}
	}
	return &r, nil
}
