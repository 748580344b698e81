// Package config is svcproxy's configuration: every setting with
// kube-proxy's defaults, its command-line flags (kube-proxy's names where
// the meaning is the same), the KubeProxyConfiguration file that may set
// them, and their validation. cmd/svcproxy turns a Config into a running
// proxy/daemon.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/nftables"
	"github.com/svcproxy/svcproxy/proxy"
)

// Modes.
const (
	ModeIPTables = "iptables"
	ModeIPVS     = "ipvs"
	ModeNFTables = "nftables"
)

// Flag names that a KubeProxyConfiguration can also set, kube-proxy's.
const (
	flagMode               = "mode"
	flagProxyMode          = "proxy-mode"
	flagKubeconfig         = "kubeconfig"
	flagHostnameOverride   = "hostname-override"
	flagClusterCIDR        = "cluster-cidr"
	flagNodePortAddresses  = "nodeport-addresses"
	flagMasqueradeAll      = "masquerade-all"
	flagMasqueradeBit      = "iptables-masquerade-bit"
	flagSyncPeriod         = "sync-period"
	flagMinSyncPeriod      = "min-sync-period"
	flagConfig             = "config"
	flagHealthzBindAddress = "healthz-bind-address"
	flagMetricsBindAddress = "metrics-bind-address"
	flagIPVSScheduler      = "ipvs-scheduler"
)

// Defaults, kube-proxy's.
const (
	DefaultHealthzBindAddress = "0.0.0.0:10256"
	DefaultMetricsBindAddress = "127.0.0.1:10249"
	DefaultSyncPeriod         = 30 * time.Second
	DefaultMinSyncPeriod      = time.Second

	healthzPort = 10256
	metricsPort = 10249
)

// Config holds every setting of svcproxy. Flags keep kube-proxy's names
// where the meaning is the same.
type Config struct {
	Mode              string
	Kubeconfig        string
	Master            string
	HostnameOverride  string
	ClusterCIDR       string
	NodePortAddresses []string
	MasqueradeAll     bool
	MasqueradeBit     int
	SyncPeriod        time.Duration
	MinSyncPeriod     time.Duration
	DryRun            bool
	State             string
	StatePoll         time.Duration
	Cleanup           bool
	// RemoveKubeProxyRules removes upstream kube-proxy's leftovers once
	// svcproxy's own rules are in place (live takeover).
	RemoveKubeProxyRules bool
	// ConfigFile is a KubeProxyConfiguration file (--config).
	ConfigFile string
	// HealthzBindAddress is where /healthz and /livez are served; ""
	// turns the server off.
	HealthzBindAddress string
	// MetricsBindAddress is where /metrics is served; "" turns the
	// server off.
	MetricsBindAddress string
	// IPVSScheduler is the IPVS scheduler of every virtual server.
	IPVSScheduler string

	// Filled in by Complete and Validate.
	nodeName          string
	clusterCIDRs      []netip.Prefix
	nodePortAddresses []netip.Prefix
}

// Defaults returns a Config with kube-proxy's defaults.
func Defaults() *Config {
	return &Config{
		Mode:                 ModeIPTables,
		MasqueradeBit:        proxy.DefaultMasqueradeBit,
		SyncPeriod:           DefaultSyncPeriod,
		MinSyncPeriod:        DefaultMinSyncPeriod,
		StatePoll:            time.Second,
		RemoveKubeProxyRules: true,
		HealthzBindAddress:   DefaultHealthzBindAddress,
		MetricsBindAddress:   DefaultMetricsBindAddress,
		IPVSScheduler:        ipvs.DefaultScheduler,
	}
}

// AddFlags registers the configuration's flags on fs.
func (o *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Mode, flagMode, o.Mode, "Data plane: 'iptables', 'ipvs' or 'nftables'.")
	fs.StringVar(&o.Mode, flagProxyMode, o.Mode, "Alias of --mode, as kube-proxy names it.")
	fs.StringVar(&o.Kubeconfig, flagKubeconfig, o.Kubeconfig, "Path to a kubeconfig file. Empty with --master empty: in-cluster configuration.")
	fs.StringVar(&o.Master, "master", o.Master, "Address of the Kubernetes API server (overrides any value in kubeconfig).")
	fs.StringVar(&o.HostnameOverride, flagHostnameOverride, o.HostnameOverride, "Name of this node, as in EndpointSlices' nodeName. Default: the hostname.")
	fs.StringVar(&o.ClusterCIDR, flagClusterCIDR, o.ClusterCIDR, "Comma-separated pod network CIDRs of either or both IP families (e.g. 10.244.0.0/16,fd00:10:244::/56). Traffic to ClusterIPs from outside them is masqueraded.")
	fs.StringSliceVar(&o.NodePortAddresses, flagNodePortAddresses, o.NodePortAddresses, "CIDRs of the local addresses NodePorts answer on. Default: every local address but loopback.")
	fs.BoolVar(&o.MasqueradeAll, flagMasqueradeAll, o.MasqueradeAll, "SNAT all traffic sent to ClusterIPs.")
	fs.IntVar(&o.MasqueradeBit, flagMasqueradeBit, o.MasqueradeBit, "The fwmark bit (0-31) that marks packets to masquerade.")
	fs.DurationVar(&o.SyncPeriod, flagSyncPeriod, o.SyncPeriod, "Longest time between two full syncs of the rules.")
	fs.DurationVar(&o.MinSyncPeriod, flagMinSyncPeriod, o.MinSyncPeriod, "Shortest time between two syncs; changes in between are batched.")
	fs.BoolVar(&o.DryRun, "dry-run", o.DryRun, "Print the rules that would be programmed (iptables-restore --noflush input; nft -f input in nftables mode) and exit.")
	fs.StringVar(&o.State, "state", o.State, "Read Services and EndpointSlices from this file (kubectl get svc,endpointslices -A -o yaml|json) instead of an API server; re-read when it changes.")
	fs.DurationVar(&o.StatePoll, "state-poll-interval", o.StatePoll, "How often --state is checked for changes.")
	fs.BoolVar(&o.Cleanup, "cleanup", o.Cleanup, "Remove every rule and chain svcproxy created on this node, then exit.")
	fs.BoolVar(&o.RemoveKubeProxyRules, "remove-kube-proxy-rules", o.RemoveKubeProxyRules, "After the first successful sync, remove the rules upstream kube-proxy left on this node (its iptables-mode KUBE-* chains, nftables-mode kube-proxy tables and IPVS-mode kube-ipvs0; not kubelet's).")
	fs.StringVar(&o.ConfigFile, flagConfig, o.ConfigFile,
		"A kube-proxy configuration file (kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration). Flags given on the command line override it.")
	fs.StringVar(&o.HealthzBindAddress, flagHealthzBindAddress, o.HealthzBindAddress,
		"The address and port (default port 10256) of /healthz and /livez. Empty: no health server.")
	fs.StringVar(&o.MetricsBindAddress, flagMetricsBindAddress, o.MetricsBindAddress,
		"The address and port (default port 10249) of /metrics. Empty: no metrics server.")
	fs.StringVar(&o.IPVSScheduler, flagIPVSScheduler, o.IPVSScheduler,
		"The IPVS scheduler in --mode=ipvs: "+strings.Join(ipvs.Schedulers, ", ")+". A Service's "+proxy.IPVSSchedulerAnnotation+" annotation overrides it for that Service.")
}

// Complete fills in derived values and defaults that need the environment.
func (o *Config) Complete() error {
	o.HealthzBindAddress = appendPortIfNeeded(o.HealthzBindAddress, healthzPort)
	o.MetricsBindAddress = appendPortIfNeeded(o.MetricsBindAddress, metricsPort)
	o.Mode = strings.ToLower(strings.TrimSpace(o.Mode))
	if o.Mode == "" {
		o.Mode = ModeIPTables
	}
	o.IPVSScheduler = strings.ToLower(strings.TrimSpace(o.IPVSScheduler))
	o.nodeName = strings.ToLower(strings.TrimSpace(o.HostnameOverride))
	if o.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --hostname-override and no hostname: %w", err)
		}
		o.nodeName = strings.ToLower(h)
	}
	return nil
}

// Validate checks the configuration and fills in the values derived from
// it (NodeName, ClusterCIDRs, NodePortAddresses); every problem is
// reported.
func (o *Config) Validate() error {
	var errs []error
	if err := checkMode(o.Mode); err != nil {
		errs = append(errs, fmt.Errorf("--mode: %w", err))
	}
	o.clusterCIDRs = nil
	for _, s := range strings.Split(o.ClusterCIDR, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("--cluster-cidr: %w", err))
			continue
		}
		o.clusterCIDRs = append(o.clusterCIDRs, p.Masked())
	}
	o.nodePortAddresses = nil
	for _, s := range o.NodePortAddresses {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("--nodeport-addresses: %w", err))
			continue
		}
		o.nodePortAddresses = append(o.nodePortAddresses, p.Masked())
	}
	if o.MasqueradeBit < 0 || o.MasqueradeBit > 31 {
		errs = append(errs, fmt.Errorf("--%s %d: must be within 0-31", flagMasqueradeBit, o.MasqueradeBit))
	}
	if o.SyncPeriod <= 0 {
		errs = append(errs, fmt.Errorf("--%s %v: must be positive", flagSyncPeriod, o.SyncPeriod))
	}
	if o.MinSyncPeriod < 0 || o.MinSyncPeriod > o.SyncPeriod {
		errs = append(errs, fmt.Errorf("--%s %v: must be within 0 and --sync-period", flagMinSyncPeriod, o.MinSyncPeriod))
	}
	for _, a := range []struct{ flag, value string }{
		{flagHealthzBindAddress, o.HealthzBindAddress},
		{flagMetricsBindAddress, o.MetricsBindAddress},
	} {
		if a.value == "" {
			continue
		}
		if err := validateHostPort(a.value); err != nil {
			errs = append(errs, fmt.Errorf("--%s %q: %w", a.flag, a.value, err))
		}
	}
	if !ipvs.ValidScheduler(o.IPVSScheduler) {
		errs = append(errs, fmt.Errorf("--%s %q: unknown IPVS scheduler, want one of %s", flagIPVSScheduler, o.IPVSScheduler, strings.Join(ipvs.Schedulers, ", ")))
	}
	return errors.Join(errs...)
}

// IPTablesOptions maps the configuration to iptables mode's options for
// one IP family: the cluster CIDRs and node-port addresses of that family.
func (o *Config) IPTablesOptions(ipv6 bool) iptables.Options {
	opts := iptables.DefaultOptions()
	opts.IPv6 = ipv6
	opts.ClusterCIDRs = prefixesOf(o.clusterCIDRs, ipv6)
	opts.MasqueradeAll = o.MasqueradeAll
	opts.MasqueradeBit = o.MasqueradeBit
	opts.NodePortAddresses = prefixesOf(o.nodePortAddresses, ipv6)
	return opts
}

// NFTablesOptions maps the configuration to nftables mode's options for
// one IP family, like IPTablesOptions.
func (o *Config) NFTablesOptions(ipv6 bool) nftables.Options {
	opts := nftables.DefaultOptions()
	opts.IPv6 = ipv6
	opts.ClusterCIDRs = prefixesOf(o.clusterCIDRs, ipv6)
	opts.MasqueradeAll = o.MasqueradeAll
	opts.MasqueradeBit = o.MasqueradeBit
	opts.NodePortAddresses = prefixesOf(o.nodePortAddresses, ipv6)
	return opts
}

// prefixesOf returns the prefixes of one family.
func prefixesOf(ps []netip.Prefix, ipv6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() == ipv6 {
			out = append(out, p)
		}
	}
	return out
}

// IPVSOptions maps the configuration to IPVS mode's options; NodeAddresses
// are ipvs.HostOptions' to fill (they need the kernel).
func (o *Config) IPVSOptions() ipvs.Options {
	opts := ipvs.DefaultOptions()
	opts.Scheduler = o.IPVSScheduler
	opts.ClusterCIDRs = o.clusterCIDRs
	opts.MasqueradeAll = o.MasqueradeAll
	opts.MasqueradeBit = o.MasqueradeBit
	return opts
}

// NodeName is this node's name, set by Complete.
func (o *Config) NodeName() string { return o.nodeName }

// ClusterCIDRs are the parsed --cluster-cidr prefixes, set by Validate.
func (o *Config) ClusterCIDRs() []netip.Prefix { return o.clusterCIDRs }

// NodePortAddressPrefixes are the parsed --nodeport-addresses, set by
// Validate.
func (o *Config) NodePortAddressPrefixes() []netip.Prefix { return o.nodePortAddresses }

func validateHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("%q is not an IP address", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

// appendPortIfNeeded adds port to an address that is a bare IP, like
// kube-proxy's proxyutil.AppendPortIfNeeded; anything else is returned
// unchanged (and Validate judges it).
func appendPortIfNeeded(addr string, port int) string {
	if addr == "" {
		return addr
	}
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	ip := net.ParseIP(addr)
	if ip == nil {
		return addr
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}
