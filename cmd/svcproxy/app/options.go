// Package app is svcproxy's command line: options, flags and Run.
package app

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/iptables"
)

// Modes.
const (
	ModeIPTables = "iptables"
	ModeIPVS     = "ipvs"
)

// Options holds every setting of svcproxy.
type Options struct {
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
	ExtraOptions

	// Filled in by Complete.
	nodeName          string
	clusterCIDRs      []netip.Prefix
	nodePortAddresses []netip.Prefix
}

// NewOptions returns Options with kube-proxy's defaults.
func NewOptions() *Options {
	return &Options{
		Mode:          ModeIPTables,
		MasqueradeBit: 14,
		SyncPeriod:    30 * time.Second,
		MinSyncPeriod: time.Second,
		StatePoll:     time.Second,
		ExtraOptions:  NewExtraOptions(),

		RemoveKubeProxyRules: true,
	}
}

// AddFlags registers the options' flags on fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Mode, "mode", o.Mode, "Data plane: 'iptables' or 'ipvs'.")
	fs.StringVar(&o.Mode, "proxy-mode", o.Mode, "Alias of --mode, as kube-proxy names it.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Path to a kubeconfig file. Empty with --master empty: in-cluster configuration.")
	fs.StringVar(&o.Master, "master", o.Master, "Address of the Kubernetes API server (overrides any value in kubeconfig).")
	fs.StringVar(&o.HostnameOverride, "hostname-override", o.HostnameOverride, "Name of this node, as in EndpointSlices' nodeName. Default: the hostname.")
	fs.StringVar(&o.ClusterCIDR, "cluster-cidr", o.ClusterCIDR, "Comma-separated pod network CIDRs. Traffic to ClusterIPs from outside them is masqueraded.")
	fs.StringSliceVar(&o.NodePortAddresses, "nodeport-addresses", o.NodePortAddresses, "CIDRs of the local addresses NodePorts answer on. Default: every local address but loopback.")
	fs.BoolVar(&o.MasqueradeAll, "masquerade-all", o.MasqueradeAll, "SNAT all traffic sent to ClusterIPs.")
	fs.IntVar(&o.MasqueradeBit, "iptables-masquerade-bit", o.MasqueradeBit, "The fwmark bit (0-31) that marks packets to masquerade.")
	fs.DurationVar(&o.SyncPeriod, "sync-period", o.SyncPeriod, "Longest time between two full syncs of the rules.")
	fs.DurationVar(&o.MinSyncPeriod, "min-sync-period", o.MinSyncPeriod, "Shortest time between two syncs; changes in between are batched.")
	fs.BoolVar(&o.DryRun, "dry-run", o.DryRun, "Print the rules that would be programmed (iptables-restore --noflush input) and exit.")
	fs.StringVar(&o.State, "state", o.State, "Read Services and EndpointSlices from this file (kubectl get svc,endpointslices -A -o yaml|json) instead of an API server; re-read when it changes.")
	fs.DurationVar(&o.StatePoll, "state-poll-interval", o.StatePoll, "How often --state is checked for changes.")
	fs.BoolVar(&o.Cleanup, "cleanup", o.Cleanup, "Remove every rule and chain svcproxy created on this node, then exit.")
	fs.BoolVar(&o.RemoveKubeProxyRules, "remove-kube-proxy-rules", o.RemoveKubeProxyRules, "After the first successful sync, remove the rules upstream kube-proxy left on this node (its iptables-mode KUBE-* chains and the nftables-mode kube-proxy tables; not kubelet's).")
	o.ExtraOptions.AddFlags(fs)
}

// Complete fills in derived values and defaults that need the environment.
func (o *Options) Complete() error {
	o.ExtraOptions.Complete()
	o.Mode = strings.ToLower(strings.TrimSpace(o.Mode))
	if o.Mode == "" {
		o.Mode = ModeIPTables
	}
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

// Validate checks the options; every problem is reported.
func (o *Options) Validate() error {
	var errs []error
	switch o.Mode {
	case ModeIPTables, ModeIPVS:
	default:
		errs = append(errs, fmt.Errorf("unknown --mode %q: want iptables or ipvs", o.Mode))
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
		if p.Addr().Is4() {
			o.clusterCIDRs = append(o.clusterCIDRs, p.Masked())
		} else {
			klog.InfoS("Ignoring IPv6 --cluster-cidr in an IPv4 proxier", "cidr", s)
		}
	}
	o.nodePortAddresses = nil
	for _, s := range o.NodePortAddresses {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("--nodeport-addresses: %w", err))
			continue
		}
		if p.Addr().Is4() {
			o.nodePortAddresses = append(o.nodePortAddresses, p.Masked())
		}
	}
	if o.MasqueradeBit < 0 || o.MasqueradeBit > 31 {
		errs = append(errs, fmt.Errorf("--iptables-masquerade-bit %d: must be within 0-31", o.MasqueradeBit))
	}
	if o.SyncPeriod <= 0 {
		errs = append(errs, fmt.Errorf("--sync-period %v: must be positive", o.SyncPeriod))
	}
	if o.MinSyncPeriod < 0 || o.MinSyncPeriod > o.SyncPeriod {
		errs = append(errs, fmt.Errorf("--min-sync-period %v: must be within 0 and --sync-period", o.MinSyncPeriod))
	}
	errs = append(errs, o.ExtraOptions.Validate())
	return errors.Join(errs...)
}

func (o *Options) iptablesOptions() iptables.Options {
	opts := iptables.DefaultOptions()
	opts.ClusterCIDRs = o.clusterCIDRs
	opts.MasqueradeAll = o.MasqueradeAll
	opts.MasqueradeBit = o.MasqueradeBit
	opts.NodePortAddresses = o.nodePortAddresses
	return opts
}

// newFlagSet returns the complete flag set, klog's flags included.
func newFlagSet(o *Options) *pflag.FlagSet {
	fs := pflag.NewFlagSet("svcproxy", pflag.ContinueOnError)
	o.AddFlags(fs)
	gofs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(gofs)
	fs.AddGoFlagSet(gofs)
	return fs
}
