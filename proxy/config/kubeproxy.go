package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxy"
)

// ApplyConfigFile reads the KubeProxyConfiguration (kubeproxy.config.k8s.io/
// v1alpha1, the kube-proxy ConfigMap's config.conf) at path and sets the
// options it maps to, except those whose flag changed says was given on the
// command line: flags override the file. Like kube-proxy, the file's unset
// fields take kube-proxy's defaults (syncPeriod 0s means 30s), and those
// defaults in turn replace svcproxy's built-in ones.
//
// Settings svcproxy does not support are reported as one warning each when
// they hold a value other than kube-proxy's default, as are unknown and
// duplicate fields (kube-proxy decodes leniently then, and warns too). An
// unreadable or malformed file, a wrong kind or apiVersion, and a mode that
// svcproxy does not implement (kernelspace, or one that does not exist)
// are errors.
//
// changed is usually the FlagSet's Changed; nil means no flag was given.
func (o *Config) ApplyConfigFile(path string, changed func(flag string) bool) (warnings []string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	cfg, warnings, err := decodeConfig(data)
	if err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	if changed == nil {
		changed = func(string) bool { return false }
	}
	more, err := o.applyConfig(cfg, changed)
	if err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	return append(warnings, more...), nil
}

// decodeConfig decodes a KubeProxyConfiguration in YAML or JSON. Unknown and
// duplicate fields are warnings; anything else that is wrong is an error.
func decodeConfig(data []byte) (*kubeproxyconfig.KubeProxyConfiguration, []string, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil, errors.New("empty file")
	}
	var warnings []string
	js, strictErr := yaml.YAMLToJSONStrict(data)
	if strictErr != nil {
		// Duplicate keys fail here only; anything else fails again below.
		var err error
		js, err = yaml.YAMLToJSON(data)
		if err != nil {
			return nil, nil, fmt.Errorf("not YAML or JSON: %w", err)
		}
		warnings = append(warnings, fmt.Sprintf("config file: %s; the last value is used", strings.Join(strings.Fields(strictErr.Error()), " ")))
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, nil, errors.New("empty file")
	}
	cfg := &kubeproxyconfig.KubeProxyConfiguration{}
	strictErrs, err := sigsjson.UnmarshalStrict(js, cfg, sigsjson.DisallowUnknownFields, sigsjson.DisallowDuplicateFields)
	if err != nil {
		return nil, nil, fmt.Errorf("malformed KubeProxyConfiguration: %w", err)
	}
	gv := kubeproxyconfig.SchemeGroupVersion.String()
	if cfg.Kind != "KubeProxyConfiguration" || cfg.APIVersion != gv {
		return nil, nil, fmt.Errorf("want kind KubeProxyConfiguration, apiVersion %s; got kind %q, apiVersion %q", gv, cfg.Kind, cfg.APIVersion)
	}
	for _, e := range strictErrs {
		warnings = append(warnings, fmt.Sprintf("config file: %v; ignored", e))
	}
	return cfg, warnings, nil
}

// Defaults kube-proxy gives unset fields (pkg/proxy/apis/config/v1alpha1/
// defaults.go): a field holding one of these is not "set".
const (
	kpSyncPeriod            = 30 * time.Second
	kpMinSyncPeriod         = time.Second
	kpMasqueradeBit         = proxy.DefaultMasqueradeBit
	kpOOMScoreAdj           = -999
	kpConntrackMaxPerCore   = 32 * 1024
	kpConntrackMin          = 128 * 1024
	kpTCPEstablishedTimeout = 24 * time.Hour
	kpTCPCloseWaitTimeout   = time.Hour
	kpConfigSyncPeriod      = 15 * time.Minute
	kpContentType           = "application/vnd.kubernetes.protobuf"
	kpQPS                   = 5
	kpBurst                 = 10
	kpFlushFrequency        = 5 * time.Second
)

// applyConfig maps cfg onto o; see ApplyConfigFile.
func (o *Config) applyConfig(cfg *kubeproxyconfig.KubeProxyConfiguration, changed func(string) bool) ([]string, error) {
	var warnings []string
	warn := func(field, format string, args ...any) {
		warnings = append(warnings, fmt.Sprintf("config file: %s: ", field)+fmt.Sprintf(format, args...))
	}

	// Mode first: it decides which section's sync periods apply.
	mode := strings.ToLower(strings.TrimSpace(string(cfg.Mode)))
	if mode == "" {
		mode = ModeIPTables // kube-proxy's default on Linux
	}
	modeErr := checkMode(mode)
	if changed(flagMode) || changed(flagProxyMode) {
		if modeErr != nil {
			warn("mode", "%v; ignored, --mode is given", modeErr)
		}
		mode = strings.ToLower(strings.TrimSpace(o.Mode))
	} else {
		if modeErr != nil {
			return nil, modeErr
		}
		o.Mode = mode
	}

	set := func(flag string, apply func()) {
		if !changed(flag) {
			apply()
		}
	}
	set(flagKubeconfig, func() { o.Kubeconfig = cfg.ClientConnection.Kubeconfig })
	set(flagHostnameOverride, func() { o.HostnameOverride = cfg.HostnameOverride })
	set(flagClusterCIDR, func() { o.ClusterCIDR = cfg.ClusterCIDR })
	// The masquerade settings and sync periods come from the section of
	// the mode (kube-proxy reads the iptables one in ipvs mode too, except
	// for the sync periods).
	masqAll, masqBit := cfg.IPTables.MasqueradeAll, cfg.IPTables.MasqueradeBit
	syncPeriod, minSyncPeriod := cfg.IPTables.SyncPeriod.Duration, cfg.IPTables.MinSyncPeriod.Duration
	if mode == ModeNFTables {
		masqAll, masqBit = cfg.NFTables.MasqueradeAll, cfg.NFTables.MasqueradeBit
		syncPeriod, minSyncPeriod = cfg.NFTables.SyncPeriod.Duration, cfg.NFTables.MinSyncPeriod.Duration
	}
	set(flagMasqueradeAll, func() { o.MasqueradeAll = masqAll })
	set(flagMasqueradeBit, func() {
		o.MasqueradeBit = kpMasqueradeBit
		if masqBit != nil {
			o.MasqueradeBit = int(*masqBit)
		}
	})
	if minSyncPeriod == 0 {
		minSyncPeriod = kpMinSyncPeriod
	}
	if mode == ModeIPVS {
		// No default for ipvs.minSyncPeriod: 0 means sync at once.
		syncPeriod, minSyncPeriod = cfg.IPVS.SyncPeriod.Duration, cfg.IPVS.MinSyncPeriod.Duration
	}
	if syncPeriod == 0 {
		syncPeriod = kpSyncPeriod
	}
	set(flagSyncPeriod, func() { o.SyncPeriod = syncPeriod })
	set(flagMinSyncPeriod, func() { o.MinSyncPeriod = minSyncPeriod })
	if !changed(flagNodePortAddresses) {
		o.NodePortAddresses = nodePortAddresses(cfg.NodePortAddresses, warn)
	}
	set(flagHealthzBindAddress, func() {
		o.HealthzBindAddress = DefaultHealthzBindAddress
		if cfg.HealthzBindAddress != "" {
			o.HealthzBindAddress = appendPortIfNeeded(cfg.HealthzBindAddress, healthzPort)
		}
	})
	set(flagMetricsBindAddress, func() {
		o.MetricsBindAddress = DefaultMetricsBindAddress
		if cfg.MetricsBindAddress != "" {
			o.MetricsBindAddress = appendPortIfNeeded(cfg.MetricsBindAddress, metricsPort)
		}
	})
	if mode == ModeIPVS {
		set(flagIPVSScheduler, func() {
			o.IPVSScheduler = ipvs.DefaultScheduler
			if s := strings.ToLower(strings.TrimSpace(cfg.IPVS.Scheduler)); s != "" {
				o.IPVSScheduler = s
			}
		})
		warnIPVS(cfg, warn)
	}
	// Like kube-proxy, svcproxy reads the nftables section in nftables
	// mode only, and the ipvs one in ipvs mode only.

	warnUnsupported(cfg, warn)
	return warnings, nil
}

func checkMode(mode string) error {
	switch mode {
	case ModeIPTables, ModeIPVS, ModeNFTables:
		return nil
	case "kernelspace":
		return fmt.Errorf("mode %q is a kube-proxy mode that svcproxy does not implement; use %q, %q or %q", mode, ModeIPTables, ModeIPVS, ModeNFTables)
	}
	return fmt.Errorf("unknown mode %q: want %q, %q or %q", mode, ModeIPTables, ModeIPVS, ModeNFTables)
}

// nodePortAddresses maps kube-proxy's nodePortAddresses (CIDRs and the
// keywords primary, localhost and all) to --nodeport-addresses. CIDRs are
// kept as they are (Validate checks them). svcproxy's default, no CIDR, is
// every local address but loopback, which is what "all" means in practice
// here because svcproxy never serves NodePorts on loopback.
func nodePortAddresses(in []string, warn func(field, format string, args ...any)) []string {
	var out []string
	all := false
	for _, s := range in {
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "all":
			all = true
		case "primary":
			warn("nodePortAddresses", `keyword "primary" (the Node's primary IPs) is not supported; list the node network's CIDR instead. Without one, NodePorts answer on every local address except loopback`)
		case "localhost":
			warn("nodePortAddresses", `keyword "localhost" is not supported: svcproxy never serves NodePorts on loopback addresses`)
		case "":
		default:
			out = append(out, strings.TrimSpace(s))
		}
	}
	if all {
		return nil
	}
	return out
}

func warnIPVS(cfg *kubeproxyconfig.KubeProxyConfiguration, warn func(field, format string, args ...any)) {
	ipvs := cfg.IPVS
	if len(ipvs.ExcludeCIDRs) > 0 {
		warn("ipvs.excludeCIDRs", "not supported (svcproxy only ever removes IPVS virtual servers it created); ignored")
	}
	// strictARP needs no warning: svcproxy always sets arp_ignore and
	// arp_announce for its dummy interface (docs/architecture.md, IPVS mode).
	for _, d := range []struct {
		field string
		value time.Duration
	}{
		{"ipvs.tcpTimeout", ipvs.TCPTimeout.Duration},
		{"ipvs.tcpFinTimeout", ipvs.TCPFinTimeout.Duration},
		{"ipvs.udpTimeout", ipvs.UDPTimeout.Duration},
	} {
		if d.value != 0 {
			warn(d.field, "not supported (svcproxy leaves the kernel's IPVS timeouts alone); %v ignored", d.value)
		}
	}
}

// warnUnsupported reports every field svcproxy does not support that holds
// a value other than kube-proxy's default.
func warnUnsupported(cfg *kubeproxyconfig.KubeProxyConfiguration, warn func(field, format string, args ...any)) {
	if len(cfg.FeatureGates) > 0 {
		gates := make([]string, 0, len(cfg.FeatureGates))
		for g, on := range cfg.FeatureGates {
			gates = append(gates, fmt.Sprintf("%s=%v", g, on))
		}
		slices.Sort(gates)
		warn("featureGates", "svcproxy has no feature gates; %s ignored", strings.Join(gates, ","))
	}

	cc := cfg.ClientConnection
	if cc.AcceptContentTypes != "" {
		warn("clientConnection.acceptContentTypes", "not supported; %q ignored", cc.AcceptContentTypes)
	}
	if cc.ContentType != "" && cc.ContentType != kpContentType {
		warn("clientConnection.contentType", "not supported; %q ignored", cc.ContentType)
	}
	if cc.QPS != 0 && cc.QPS != kpQPS {
		warn("clientConnection.qps", "not supported; %v ignored", cc.QPS)
	}
	if cc.Burst != 0 && cc.Burst != kpBurst {
		warn("clientConnection.burst", "not supported; %v ignored", cc.Burst)
	}

	lg := cfg.Logging
	if lg.Format != "" && lg.Format != "text" {
		warn("logging.format", "only text logs are supported; %q ignored", lg.Format)
	}
	if f := lg.FlushFrequency.Duration.Duration; f != 0 && f != kpFlushFrequency {
		warn("logging.flushFrequency", "not supported; %v ignored", f)
	}
	if lg.Verbosity != 0 {
		warn("logging.verbosity", "not read from the file; use the -v=%d flag", lg.Verbosity)
	}
	if len(lg.VModule) > 0 {
		warn("logging.vmodule", "not read from the file; use the -vmodule flag")
	}
	for _, o := range []struct {
		field string
		split bool
		size  int64
	}{
		{"logging.options.text", lg.Options.Text.SplitStream, lg.Options.Text.InfoBufferSize.Value()},
		{"logging.options.json", lg.Options.JSON.SplitStream, lg.Options.JSON.InfoBufferSize.Value()},
	} {
		if o.split || o.size != 0 {
			warn(o.field, "split streams and info buffers are not supported; ignored")
		}
	}

	switch cfg.BindAddress {
	case "", "0.0.0.0", "::":
	default:
		warn("bindAddress", "overriding the node IP is not supported; %q ignored", cfg.BindAddress)
	}
	if cfg.BindAddressHardFail {
		warn("bindAddressHardFail", "not supported; ignored")
	}
	if cfg.EnableProfiling {
		warn("enableProfiling", "profiling handlers are not served; ignored")
	}
	if cfg.ShowHiddenMetricsForVersion != "" {
		warn("showHiddenMetricsForVersion", "svcproxy hides no metrics; %q ignored", cfg.ShowHiddenMetricsForVersion)
	}

	if lp := cfg.IPTables.LocalhostNodePorts; lp != nil && *lp {
		warn("iptables.localhostNodePorts", "svcproxy never serves NodePorts on loopback addresses; true ignored")
	}

	switch cfg.DetectLocalMode {
	case "", "ClusterCIDR":
	default:
		warn("detectLocalMode", "only ClusterCIDR (from clusterCIDR) is supported; %q ignored", cfg.DetectLocalMode)
	}
	if cfg.DetectLocal.BridgeInterface != "" {
		warn("detectLocal.bridgeInterface", "not supported; %q ignored", cfg.DetectLocal.BridgeInterface)
	}
	if cfg.DetectLocal.InterfaceNamePrefix != "" {
		warn("detectLocal.interfaceNamePrefix", "not supported; %q ignored", cfg.DetectLocal.InterfaceNamePrefix)
	}

	if v := cfg.OOMScoreAdj; v != nil && *v != kpOOMScoreAdj {
		warn("oomScoreAdj", "svcproxy does not set its OOM score; %d ignored", *v)
	}

	ct := cfg.Conntrack
	conntrack := "svcproxy does not set conntrack sysctls (set them on the host); %v ignored"
	if v := ct.MaxPerCore; v != nil && *v != 0 && *v != kpConntrackMaxPerCore {
		warn("conntrack.maxPerCore", conntrack, *v)
	}
	if v := ct.Min; v != nil && *v != 0 && *v != kpConntrackMin {
		warn("conntrack.min", conntrack, *v)
	}
	if v := ct.TCPEstablishedTimeout; v != nil && v.Duration != 0 && v.Duration != kpTCPEstablishedTimeout {
		warn("conntrack.tcpEstablishedTimeout", conntrack, v.Duration)
	}
	if v := ct.TCPCloseWaitTimeout; v != nil && v.Duration != 0 && v.Duration != kpTCPCloseWaitTimeout {
		warn("conntrack.tcpCloseWaitTimeout", conntrack, v.Duration)
	}
	if ct.TCPBeLiberal {
		warn("conntrack.tcpBeLiberal", conntrack, true)
	}
	if v := ct.UDPTimeout.Duration; v != 0 {
		warn("conntrack.udpTimeout", conntrack, v)
	}
	if v := ct.UDPStreamTimeout.Duration; v != 0 {
		warn("conntrack.udpStreamTimeout", conntrack, v)
	}

	if v := cfg.ConfigSyncPeriod.Duration; v != 0 && v != kpConfigSyncPeriod {
		warn("configSyncPeriod", "svcproxy's informers do not resync; %v ignored", v)
	}
	if cfg.PortRange != "" {
		warn("portRange", "unused (as in kube-proxy); %q ignored", cfg.PortRange)
	}
	if cfg.WindowsRunAsService {
		warn("windowsRunAsService", "Windows only; ignored")
	}
	w := cfg.Winkernel
	if w.NetworkName != "" || w.SourceVip != "" || w.EnableDSR || w.RootHnsEndpointName != "" || w.ForwardHealthCheckVip {
		warn("winkernel", "Windows only; ignored")
	}
}
