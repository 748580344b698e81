package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables/trace"
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
