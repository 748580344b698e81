package app

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/iptables/trace"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/config"
	"github.com/svcproxy/svcproxy/proxy/source"
)

// Exit codes of explain.
const (
	explainOK       = 0
	explainNotFound = 1 // the target names no Service, port or service address
	explainUsage    = 2 // bad flags or target, or the state cannot be read
)

// Verdicts.
const (
	verdictDNAT    = "dnat"
	verdictReject  = "reject"
	verdictDrop    = "drop"
	verdictNoMatch = "no-match"
	// verdictUnknown: the kernel's rules send the packet to a target
	// explain does not follow (--live only).
	verdictUnknown = "unknown"
)

// How a destination reaches a service port.
const (
	viaClusterIP  = "cluster IP"
	viaExternalIP = "external IP"
	viaLBIP       = "load-balancer IP"
	viaNodePort   = "node port"
)

// Kinds of source (--from).
const (
	fromPod       = "pod"
	fromRemotePod = "remote-pod"
	fromNode      = "node"
	fromExternal  = "external"
)

const explainUsageText = `Usage: svcproxy explain [flags] TARGET

Explains why a connection to TARGET is DNATed, rejected or dropped by the
rules svcproxy programs on this node (--hostname-override), from the state
of --state FILE or of the API server (--kubeconfig, --master).

TARGET is a name as a pod types it: web, web.b, web.b.svc,
web.b.svc.cluster.local (a bare name is looked up in --namespace); or b/web;
each with an optional :PORT or :PORTNAME. Or an address: IP:PORT[/tcp|udp|sctp]
(a cluster, external or load-balancer IP, or a node address and node port).

--from is pod:IP (a pod on this node; the default is a stand-in pod address
in --cluster-cidr), remote-pod:IP, node, or external:IP. A dual-stack
source gives both its addresses, pod:IPv4,IPv6: each family is traced from
its own.

--mode iptables (the default) follows the chains svcproxy renders; --mode
ipvs the IPVS plan: the filter's ipsets, the virtual server and its real
servers, the masquerade marks. nftables mode is not explained yet.

--live also walks the connection through what this node's kernel holds
(iptables-save, ip6tables-save; in IPVS mode also the virtual servers, the
addresses of svcproxy-ipvs0 and the ipsets; read only) and reports every
difference from the intended path as drift. --live --all checks every
service port that way (a pod on this node to cluster IPs, an outside client
to node ports, external and load-balancer IPs) and the node's jumps and
chains: one line per service port and a summary, for a node self-check or a
readiness probe.

Exit status: 0 explained (with --live: the kernel agrees), 1 target not
found, 2 usage error or unreadable state or kernel rules, 3 the kernel's
rules differ from the intended ones.

Flags:
`

// explainFlags are explain's own flags; the others are svcproxy's.
type explainFlags struct {
	from          string
	namespace     string
	output        string
	nodeIPs       []string
	clusterDomain string
	live          bool
	all           bool
}

// newKubeClient builds the API client of --kubeconfig and --master.
type newKubeClient func(o *config.Config) (kubernetes.Interface, error)

// explainMain runs `svcproxy explain` and returns its exit code.
func explainMain(args []string, stdout, stderr io.Writer) int {
	return runExplain(context.Background(), args, stdout, stderr, defaultExplainDeps())
}

func kubeClient(o *config.Config) (kubernetes.Interface, error) {
	cfg, err := source.BuildConfig(o.Kubeconfig, o.Master)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "svcproxy-explain"
	cfg.Timeout = 30 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// runExplain is explainMain with what it reads besides its arguments.
func runExplain(ctx context.Context, args []string, stdout, stderr io.Writer, deps explainDeps) int {
	o := config.Defaults()
	fs := newFlagSet(o)
	fs.SetOutput(stderr)
	var e explainFlags
	fs.StringVar(&e.from, "from", "", "Where the connection comes from: pod:IP (a pod on this node), remote-pod:IP, node, external:IP; pod:IPv4,IPv6 (and the others) for a dual-stack source, each family traced from its address. Default: a pod on this node.")
	fs.StringVarP(&e.namespace, "namespace", "n", v1.NamespaceDefault, "The namespace of the pod whose DNS search path resolves a bare name.")
	fs.StringVarP(&e.output, "output", "o", "text", "Output format: text or json.")
	fs.StringSliceVar(&e.nodeIPs, "node-ip", nil, "This node's addresses (default: the Node's status.addresses, when the state has them).")
	fs.StringVar(&e.clusterDomain, "cluster-domain", "cluster.local", "The cluster's DNS domain.")
	fs.BoolVar(&e.live, "live", false, "Also walk the connection through this node's kernel (iptables-save; IPVS mode: the virtual servers, addresses and ipsets too; read only) and report any difference (exit status 3).")
	fs.BoolVar(&e.all, "all", false, "With --live and no TARGET: check every service port, and the node's jumps and chains.")
	// The daemon's other flags are taken (a kube-proxy command line works
	// as is) but not shown.
	shown := map[string]bool{"from": true, "namespace": true, "output": true, "node-ip": true, "cluster-domain": true, "live": true, "all": true,
		"state": true, "kubeconfig": true, "master": true, "hostname-override": true, "cluster-cidr": true, "nodeport-addresses": true,
		"masquerade-all": true, "iptables-masquerade-bit": true, "mode": true, "config": true, "v": true}
	fs.VisitAll(func(f *pflag.Flag) { f.Hidden = !shown[f.Name] })
	fs.Usage = func() {
		fmt.Fprint(stderr, explainUsageText)
		fs.PrintDefaults()
	}
	usage := func(err error) int {
		fmt.Fprintln(stderr, "svcproxy explain:", err)
		return explainUsage
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return explainOK
		}
		return usage(err)
	}
	if !fs.Changed("v") {
		// Loading logs a line per file and per skipped object: noise here.
		// The zero Logger discards.
		klog.SetLogger(klog.Logger{})
		defer klog.ClearLogger()
	}
	switch {
	case e.all && !e.live:
		return usage(errors.New("--all checks the kernel's rules: it goes with --live"))
	case e.all && fs.NArg() != 0:
		return usage(fmt.Errorf("--all checks every service port: no TARGET, got %q", fs.Args()))
	case e.all && e.from != "":
		return usage(errors.New("--all picks its sources (a pod on this node, an outside client): no --from"))
	case !e.all && fs.NArg() != 1:
		return usage(fmt.Errorf("want exactly one TARGET, got %d arguments %q", fs.NArg(), fs.Args()))
	}
	if o.ConfigFile != "" {
		if _, err := o.ApplyConfigFile(o.ConfigFile, fs.Changed); err != nil {
			return usage(err)
		}
	}
	if err := o.Complete(); err != nil {
		return usage(err)
	}
	if err := o.Validate(); err != nil {
		return usage(err)
	}
	switch {
	case o.DryRun || o.Cleanup:
		return usage(errors.New("--dry-run and --cleanup do not go with explain"))
	case o.Mode != config.ModeIPTables && o.Mode != config.ModeIPVS:
		return usage(fmt.Errorf("--mode=%s is not supported yet: explain follows iptables and IPVS mode's rules only", o.Mode))
	case e.output != "text" && e.output != "json":
		return usage(fmt.Errorf("--output %q: want text or json", e.output))
	}
	src, err := parseFrom(e.from)
	if err != nil {
		return usage(err)
	}
	nodeIPs, err := parseAddrs(e.nodeIPs)
	if err != nil {
		return usage(fmt.Errorf("--node-ip: %w", err))
	}
	var tgt *target
	if !e.all {
		if tgt, err = parseTarget(fs.Arg(0)); err != nil {
			return usage(err)
		}
	}
	cl, err := loadCluster(ctx, o, deps.newClient, !e.all)
	if err != nil {
		return usage(err)
	}
	if len(nodeIPs) == 0 {
		nodeIPs = cl.nodeAddrs
	}
	x := &explainer{o: o, e: e, cl: cl, src: src, nodeIPs: nodeIPs, rulesets: map[bool]*trace.Ruleset{},
		deps: deps, live: map[bool]*trace.Ruleset{}, liveErr: map[bool]error{}}
	if e.live {
		if x.ipvsMode() {
			err := x.openIPVS()
			if c, ok := x.ipvs.k.(interface{ Close() }); ok {
				defer c.Close()
			}
			if err != nil {
				return usage(err)
			}
		}
		if err := x.addHostAddrs(); err != nil {
			return usage(err)
		}
	}
	if e.all {
		return x.runAll(stdout, stderr)
	}
	out, err := x.explain(tgt)
	var nf *notFoundError
	switch {
	case errors.As(err, &nf):
		fmt.Fprintln(stderr, "svcproxy explain:", nf.Error())
		if len(nf.closest) > 0 {
			fmt.Fprintln(stderr, "closest matches:", strings.Join(nf.closest, ", "))
		}
		return explainNotFound
	case err != nil:
		return usage(err)
	}
	if e.output == "json" {
		if err := writeJSON(stdout, out); err != nil {
			return usage(err)
		}
	} else if err := writeExplanation(stdout, out); err != nil {
		return usage(err)
	}
	for _, r := range out.Results {
		if len(r.Drift) > 0 {
			return explainDrift
		}
	}
	return explainOK
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// --- the cluster's state ---

// cluster is what explain knows of the cluster: the Snapshot the rules are
// rendered from, and the objects DNS answers from.
type cluster struct {
	snap      *proxy.Snapshot
	services  []*v1.Service
	slices    []*discovery.EndpointSlice
	nodeAddrs []netip.Addr // this node's, from its status
}

// loadCluster reads --state, or lists the API server's objects, and builds
// the Snapshot of this node as the daemon would. dns reads a state file
// again for what only DNS answers and node addresses need (--all, on the
// node, takes this namespace's addresses and answers no name).
func loadCluster(ctx context.Context, o *config.Config, newClient newKubeClient, dns bool) (*cluster, error) {
	var st *source.State
	if o.State != "" {
		var err error
		if st, err = source.LoadFile(o.State); err != nil {
			return nil, err
		}
		// Loading strips what the rules never need; DNS needs some of it.
		if dns {
			if err := addUnstripped(o.State, st); err != nil {
				return nil, err
			}
		}
	} else {
		client, err := newClient(o)
		if err != nil {
			return nil, err
		}
		if st, err = listState(ctx, client, o.NodeName()); err != nil {
			return nil, err
		}
	}
	tracker := proxy.NewTracker(o.NodeName(), nil, nil)
	cl := &cluster{services: st.Services, slices: st.EndpointSlices}
	for _, n := range st.Nodes {
		tracker.OnNodeUpdate(n)
		if n.Name != o.NodeName() {
			continue
		}
		for _, a := range n.Status.Addresses {
			ip, err := netip.ParseAddr(a.Address)
			if err == nil && (a.Type == v1.NodeInternalIP || a.Type == v1.NodeExternalIP) && !slices.Contains(cl.nodeAddrs, ip) {
				cl.nodeAddrs = append(cl.nodeAddrs, ip)
			}
		}
	}
	for _, s := range st.Services {
		tracker.OnServiceUpdate(nil, s)
	}
	for _, s := range st.EndpointSlices {
		tracker.OnEndpointSliceUpdate(nil, s)
	}
	cl.snap, _ = tracker.Snapshot()
	return cl, nil
}

// listState lists the API server's Services and EndpointSlices and this
// node's Node (absent: no addresses).
func listState(ctx context.Context, client kubernetes.Interface, node string) (*source.State, error) {
	st := &source.State{}
	svcs, err := client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Services: %w", err)
	}
	for i := range svcs.Items {
		st.Services = append(st.Services, &svcs.Items[i])
	}
	eps, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing EndpointSlices: %w", err)
	}
	for i := range eps.Items {
		st.EndpointSlices = append(st.EndpointSlices, &eps.Items[i])
	}
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	switch {
	case err == nil:
		st.Nodes = []*v1.Node{n}
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading Node %s: %w", node, err)
	}
	return st, nil
}

// rawObject is the part of a state file's object that source.LoadFile
// strips and explain needs.
type rawObject struct {
	Kind     string      `json:"kind"`
	Items    []rawObject `json:"items"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		ExternalName             string `json:"externalName"`
		PublishNotReadyAddresses bool   `json:"publishNotReadyAddresses"`
	} `json:"spec"`
	Status struct {
		Addresses []v1.NodeAddress `json:"addresses"`
	} `json:"status"`
}

// addUnstripped reads path again for what LoadFile stripped and DNS needs:
// a Service's externalName and publishNotReadyAddresses, a Node's
// addresses. LoadFile has checked the file already.
func addUnstripped(path string, st *source.State) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	svcs := map[string]*v1.Service{}
	for _, s := range st.Services {
		svcs[s.Namespace+"/"+s.Name] = s
	}
	nodes := map[string]*v1.Node{}
	for _, n := range st.Nodes {
		nodes[n.Name] = n
	}
	var add func(o *rawObject, kind string)
	add = func(o *rawObject, kind string) {
		kind = cmp.Or(o.Kind, kind)
		for i := range o.Items {
			add(&o.Items[i], strings.TrimSuffix(kind, "List"))
		}
		switch kind {
		case "Service":
			if s := svcs[cmp.Or(o.Metadata.Namespace, v1.NamespaceDefault)+"/"+o.Metadata.Name]; s != nil {
				s.Spec.ExternalName = o.Spec.ExternalName
				s.Spec.PublishNotReadyAddresses = o.Spec.PublishNotReadyAddresses
			}
		case "Node":
			if n := nodes[o.Metadata.Name]; n != nil {
				n.Status.Addresses = o.Status.Addresses
			}
		}
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var o rawObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return &source.FileError{Path: path, Err: err}
		}
		add(&o, "")
	}
}

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

func verdictOf(o trace.Outcome) string {
	switch {
	case o.Verdict == trace.Reject:
		return verdictReject
	case o.Verdict == trace.Drop:
		return verdictDrop
	case o.Verdict == trace.Unknown:
		return verdictUnknown
	case o.DNAT.IsValid():
		return verdictDNAT
	}
	return verdictNoMatch
}

// Source classes, as the rules tell them apart.
const (
	classPod      = "pod"      // inside --cluster-cidr
	classNode     = "node"     // the node itself
	classExternal = "external" // anything else
)

func (x *explainer) classify(src netip.Addr) string {
	if x.src.kind == fromNode {
		return classNode
	}
	if x.inClusterCIDR(src) {
		return classPod
	}
	return classExternal
}

func (x *explainer) inClusterCIDR(a netip.Addr) bool {
	return slices.ContainsFunc(x.o.ClusterCIDRs(), func(p netip.Prefix) bool { return p.Contains(a) })
}

func (x *explainer) cidrs(ipv6 bool) string {
	var s []string
	for _, p := range x.o.ClusterCIDRs() {
		if p.Addr().Is6() == ipv6 {
			s = append(s, p.String())
		}
	}
	return strings.Join(s, ",")
}

// dnatReason says which endpoints a DNAT picks from, and why those.
func (x *explainer) dnatReason(d dest, c string) string {
	sp := d.sp
	var parts []string
	local := false
	switch {
	case d.via == viaClusterIP && sp.InternalPolicyLocal:
		local = true
		parts = append(parts, "internalTrafficPolicy Local: this node's endpoints only")
	case d.via != viaClusterIP && sp.ExternalPolicyLocal && c == classExternal:
		local = true
		parts = append(parts, "externalTrafficPolicy Local: this node's endpoints only")
	case d.via != viaClusterIP && sp.ExternalPolicyLocal && x.ipvsMode():
		local = true
		parts = append(parts, "externalTrafficPolicy Local: this node's endpoints only, for pods and the node too (IPVS mode: one virtual server serves every source)")
	case d.via != viaClusterIP && sp.ExternalPolicyLocal:
		parts = append(parts, "externalTrafficPolicy Local, but traffic from pods and from the node itself goes to every endpoint, as in kube-proxy")
	}
	used := sp.ClusterEndpoints
	if local {
		used = sp.LocalEndpoints
	}
	ready, notReady, terminating := 0, 0, 0
	for _, ep := range sp.AllEndpoints {
		if local && !ep.IsLocal {
			continue
		}
		switch {
		case ep.Ready:
			ready++
		case ep.Terminating:
			terminating++
		default:
			notReady++
		}
	}
	switch {
	case len(used) > 0 && !used[0].Ready:
		parts = append(parts, fmt.Sprintf("no endpoint is ready: %s, serving but terminating, get the traffic until they go", count(len(used), "endpoint")))
	case !local && len(used) < ready:
		parts = append(parts, fmt.Sprintf("topology hints: %d of %d ready endpoints are meant for this node or its zone", len(used), ready))
	default:
		parts = append(parts, count(len(used), "ready endpoint"))
	}
	if terminating > 0 && len(used) > 0 && used[0].Ready {
		parts = append(parts, fmt.Sprintf("%d terminating, unused while others are ready", terminating))
	}
	if notReady > 0 {
		parts = append(parts, fmt.Sprintf("%d not ready", notReady))
	}
	if sp.AffinityTimeout > 0 && !x.ipvsMode() { // IPVS mode: its persistence says it
		parts = append(parts, fmt.Sprintf("sessionAffinity ClientIP: a client keeps the endpoint it got for %d s after its last connection", sp.AffinityTimeout))
	}
	return strings.Join(parts, "; ")
}

// rejectReason says why a port with no usable endpoint rejects.
func rejectReason(sp *proxy.ServicePort) string {
	notReady, terminating := 0, 0
	for _, ep := range sp.AllEndpoints {
		if ep.Terminating {
			terminating++
		} else {
			notReady++
		}
	}
	switch {
	case sp.HasEndpoints():
		return "rejected by a rule of svcproxy's, though the port has endpoints"
	case len(sp.AllEndpoints) == 0:
		return "no endpoints: the Service has no " + string(sp.IPFamily) + " endpoint at all (does its selector match a running pod?)"
	case notReady == 0:
		return fmt.Sprintf("only terminating endpoints: all %d are shutting down and none is serving", terminating)
	}
	return fmt.Sprintf("no ready endpoints: %d not ready, %d terminating and not serving", notReady, terminating)
}

// dropReason says why a connection is dropped.
func (x *explainer) dropReason(d dest, src netip.Addr, c string) string {
	sp := d.sp
	elsewhere := elsewhere(sp)
	node := x.o.NodeName()
	switch {
	case d.via == viaClusterIP && sp.InternalPolicyLocal && len(sp.LocalEndpoints) == 0:
		return fmt.Sprintf("internalTrafficPolicy Local and no endpoint on %s (%d on other nodes)", node, elsewhere)
	case d.via == viaLBIP && (sp.LoadBalancerSourceRangesSet || len(sp.LoadBalancerSourceRanges) > 0) &&
		!slices.ContainsFunc(sp.LoadBalancerSourceRanges, func(p netip.Prefix) bool { return p.Contains(src) }):
		if len(sp.LoadBalancerSourceRanges) == 0 {
			return fmt.Sprintf("source not in loadBalancerSourceRanges: they hold no %s range, so no %s client may connect", sp.IPFamily, sp.IPFamily)
		}
		var rs []string
		for _, p := range sp.LoadBalancerSourceRanges {
			rs = append(rs, p.String())
		}
		return fmt.Sprintf("source %s not in loadBalancerSourceRanges %s", src, strings.Join(rs, ","))
	case d.via != viaClusterIP && sp.ExternalPolicyLocal && len(sp.LocalEndpoints) == 0 && (c == classExternal || x.ipvsMode()):
		return x.etpLocalReason(sp, elsewhere, c)
	}
	return dropFallback
}

// dropFallback is dropReason's answer when the Snapshot does not say why.
const dropFallback = "dropped by a rule of svcproxy's"

// etpLocalReason says why externalTrafficPolicy Local without a local
// endpoint turns a connection away, and what steers clients elsewhere: a
// LoadBalancer's health-check node port; a NodePort Service (or an
// external IP) has none.
func (x *explainer) etpLocalReason(sp *proxy.ServicePort, elsewhere int, c string) string {
	s := fmt.Sprintf("externalTrafficPolicy Local and no endpoint on %s (%d on other nodes)", x.o.NodeName(), elsewhere)
	if c != classExternal {
		// IPVS mode only: iptables mode sends pods and the node to every
		// endpoint.
		return s + ": in IPVS mode pods and the node reach this address through the virtual server outside clients use, so they get this node's endpoints only too"
	}
	if sp.HealthCheckNodePort != 0 {
		return s + fmt.Sprintf("; the load balancer's health check (node port %d) steers clients to nodes that have one", sp.HealthCheckNodePort)
	}
	return s + "; the Service has no health-check node port (only a LoadBalancer gets one): clients must be sent to nodes that have an endpoint"
}

// ipvsMode reports whether explain follows IPVS mode's plan.
func (x *explainer) ipvsMode() bool { return x.o.Mode == config.ModeIPVS }

// noMatchReason says why no rule of svcproxy's took the connection.
func (x *explainer) noMatchReason(d dest, local []netip.Addr) string {
	ip := d.dst.Addr()
	if d.via != viaNodePort {
		return noMatchFallback
	}
	switch {
	case ip.IsLoopback():
		return fmt.Sprintf("node ports do not answer on loopback addresses (%s)", ip)
	case ip.IsLinkLocalUnicast():
		return fmt.Sprintf("node ports do not answer on link-local addresses (%s)", ip)
	case !slices.Contains(local, ip):
		return fmt.Sprintf("%s is not an address of %s: the packet is routed on untouched (explain it on the node that has it)", ip, x.o.NodeName())
	}
	if npa := x.o.NodePortAddressPrefixes(); len(npa) > 0 && !slices.ContainsFunc(npa, func(p netip.Prefix) bool { return p.Contains(ip) }) {
		var s []string
		for _, p := range npa {
			s = append(s, p.String())
		}
		return fmt.Sprintf("nodePort not on an allowed address: %s is not within --nodeport-addresses %s", ip, strings.Join(s, ","))
	}
	return noMatchFallback
}

// noMatchFallback is noMatchReason's answer when the Snapshot and the
// flags do not say why.
const noMatchFallback = "no rule of svcproxy's matched"

// masqueradeReason says why a DNATed connection is (or is not)
// masqueraded: the endpoint sees the node's address, or the client's.
func (x *explainer) masqueradeReason(d dest, src netip.Addr, c string, masq bool, masqEPs map[netip.Addr]bool) string {
	sp := d.sp
	node := x.o.NodeName()
	if masq {
		switch {
		case len(masqEPs) == 1 && masqEPs[src]:
			return fmt.Sprintf("only when the pod reaches itself (%s): hairpin traffic is masqueraded so that the reply comes back through the node", src)
		case d.via == viaClusterIP && x.o.MasqueradeAll:
			return "--masquerade-all: every connection to a cluster IP is masqueraded"
		case d.via == viaClusterIP && !x.inClusterCIDR(src):
			return fmt.Sprintf("the source %s is outside --cluster-cidr %s: off-cluster traffic to a cluster IP is masqueraded so that replies come back through %s", src, x.cidrs(src.Is6()), node)
		case d.via != viaClusterIP && c == classNode && sp.ExternalPolicyLocal:
			return "traffic from the node itself to an externalTrafficPolicy Local address is masqueraded"
		case d.via != viaClusterIP && !sp.ExternalPolicyLocal:
			return fmt.Sprintf("externalTrafficPolicy Cluster: traffic to a %s is masqueraded so that replies come back through %s; the endpoint sees %s's address, not the client's", d.via, node, node)
		}
		return "a rule on the path marked the connection for masquerade"
	}
	switch {
	case d.via == viaClusterIP && len(x.o.ClusterCIDRs()) == 0:
		return "no --cluster-cidr and no --masquerade-all: connections to cluster IPs keep their source"
	case d.via == viaClusterIP:
		return fmt.Sprintf("the source is inside --cluster-cidr %s: the endpoint sees the pod's address", x.cidrs(src.Is6()))
	case sp.ExternalPolicyLocal && c == classExternal:
		return "externalTrafficPolicy Local: the endpoint sees the client's address"
	case c == classPod:
		return "traffic from a pod keeps its address"
	}
	return ""
}

// --- text output ---

func endpointAddr(e endpoint) string {
	return netip.AddrPortFrom(netip.MustParseAddr(e.IP), uint16(e.Port)).String()
}

// count returns "1 endpoint", "2 endpoints".
func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func writeExplanation(w io.Writer, x *explanation) error {
	var b strings.Builder
	line := func(key, format string, args ...any) {
		fmt.Fprintf(&b, "%-11s %s\n", key, fmt.Sprintf(format, args...))
	}
	line("target", "%s (node %s, %s mode)", x.Target, x.Node, x.Mode)
	if x.DNS != nil {
		answer := strings.Join(x.DNS.Addresses, ", ")
		switch {
		case x.DNS.CNAME != "":
			answer = "CNAME " + x.DNS.CNAME
		case answer == "":
			answer = "no address"
		}
		line("dns", "%s -> %s", x.DNS.Name, answer)
		k := x.DNS.KubeDNS
		switch {
		case !k.Found:
			line("", "no Service %s in the state: cannot tell whether names resolve", k.Service)
		case k.ReadyEndpoints == 0:
			line("", "%s (%s) has no ready endpoint: names do not resolve (addresses still connect)", k.Service, strings.Join(k.Addresses, ", "))
		default:
			line("", "%s (%s) has %s", k.Service, strings.Join(k.Addresses, ", "), count(k.ReadyEndpoints, "ready endpoint"))
		}
	}
	for _, r := range x.Results {
		b.WriteString("\n")
		port := r.Port
		if port == "" {
			port = `""`
		}
		fmt.Fprintf(&b, "%s port %s", r.Service, port)
		if r.Destination != "" {
			fmt.Fprintf(&b, " %s %s via %s %s", r.Protocol, r.Family, r.Via, r.Destination)
		}
		b.WriteString("\n")
		if r.From != "" {
			line("  from", "%s", r.From)
		}
		line("  verdict", "%s", strings.ToUpper(r.Verdict))
		width := 0
		for _, e := range r.Endpoints {
			width = max(width, len(endpointAddr(e)))
		}
		for i, e := range r.Endpoints {
			key := ""
			if i == 0 {
				key = "  endpoints"
			}
			where := cmp.Or(e.Node, "node unknown")
			if e.Local {
				where += " (this node)"
			}
			line(key, "%-*s  p=%.4f  %s", width, endpointAddr(e), e.Probability, where)
		}
		line("  reason", "%s", r.Reason)
		if r.Verdict == verdictDNAT {
			yes := "no"
			if r.Masquerade {
				yes = "yes"
			}
			line("  masquerade", "%s: %s", yes, r.MasqueradeReason)
		}
		if r.PathTo != "" {
			line("  path", "to %s, one of %d (the paths to the others differ from the DNAT on):", r.PathTo, len(r.Endpoints))
		}
		steps := r.Rules
		if len(steps) == 0 {
			steps = r.Path // IPVS mode: the objects met
		}
		for i, s := range steps {
			key := ""
			if i == 0 && r.PathTo == "" {
				key = "  path"
			}
			line(key, "%s", s)
		}
		writeLive(line, r)
	}
	if len(x.Notes) > 0 {
		b.WriteString("\n")
		for i, n := range x.Notes {
			key := ""
			if i == 0 {
				key = "notes"
			}
			line(key, "%s", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
