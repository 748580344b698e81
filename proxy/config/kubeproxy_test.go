package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spf13/pflag"
)

// header is the part of every inline test file that makes it a
// KubeProxyConfiguration.
const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

func TestApplyConfigFile(t *testing.T) {
	defaults := func() *Config { return Defaults() }
	tests := []struct {
		name string
		// file is a testdata file name, or with content the inline file.
		file, content string
		// flags are command-line flags parsed before the file is applied.
		flags        []string
		wantOptions  func(*Config)
		wantWarnings []string
		wantErr      string
	}{
		{
			name: "kubeadm default",
			file: "kubeadm-default.yaml",
			wantOptions: func(o *Config) {
				o.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
				o.ClusterCIDR = "10.244.0.0/16"
			},
		},
		{
			name:  "kubeadm default, flags override the file",
			file:  "kubeadm-default.yaml",
			flags: []string{"--kubeconfig=/etc/svcproxy/kubeconfig", "--cluster-cidr=10.0.0.0/8", "--sync-period=1m", "--metrics-bind-address=0.0.0.0:9100", "--proxy-mode=ipvs"},
			wantOptions: func(o *Config) {
				o.Mode = ModeIPVS
				o.Kubeconfig = "/etc/svcproxy/kubeconfig"
				o.ClusterCIDR = "10.0.0.0/8"
				o.SyncPeriod = time.Minute
				// ipvs mode from the flag: ipvs.minSyncPeriod (0s) applies.
				o.MinSyncPeriod = 0
				o.MetricsBindAddress = "0.0.0.0:9100"
			},
		},
		{
			name: "ipvs settings",
			file: "ipvs.yaml",
			wantOptions: func(o *Config) {
				o.Mode = ModeIPVS
				o.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
				o.ClusterCIDR = "10.244.0.0/16"
				o.MasqueradeAll = true
				o.SyncPeriod = time.Minute
				o.MinSyncPeriod = 2 * time.Second
				o.NodePortAddresses = []string{"192.168.1.0/24"}
				o.MetricsBindAddress = "0.0.0.0:10249"
				o.IPVSScheduler = "lc"
			},
			wantWarnings: []string{
				"config file: ipvs.excludeCIDRs: not supported (svcproxy only ever removes IPVS virtual servers it created); ignored",
				"config file: ipvs.tcpTimeout: not supported (svcproxy leaves the kernel's IPVS timeouts alone); 15m0s ignored",
			},
		},
		{
			name:  "ipvs settings, scheduler and mode from flags",
			file:  "ipvs.yaml",
			flags: []string{"--ipvs-scheduler=sh", "--mode=iptables", "--min-sync-period=3s"},
			wantOptions: func(o *Config) {
				o.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
				o.ClusterCIDR = "10.244.0.0/16"
				o.MasqueradeAll = true
				o.MinSyncPeriod = 3 * time.Second
				o.NodePortAddresses = []string{"192.168.1.0/24"}
				o.MetricsBindAddress = "0.0.0.0:10249"
				o.IPVSScheduler = "sh"
			},
		},
		{
			name: "unknown fields of an old kubeadm cluster",
			file: "unknown-fields.yaml",
			wantOptions: func(o *Config) {
				o.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
				o.ClusterCIDR = "10.244.0.0/16"
			},
			wantWarnings: []string{
				`config file: unknown field "conntrack.max"; ignored`,
				`config file: unknown field "resourceContainer"; ignored`,
				`config file: unknown field "udpIdleTimeout"; ignored`,
				"config file: featureGates: svcproxy has no feature gates; SupportIPVSProxyMode=true ignored",
				"config file: conntrack.maxPerCore: svcproxy does not set conntrack sysctls (set them on the host); 65536 ignored",
			},
		},
		{
			name:    "minimal file gets kube-proxy's defaults",
			content: header,
			flags:   []string{"--healthz-bind-address=", "--sync-period=5s", "--min-sync-period=0s", "--iptables-masquerade-bit=3"},
			wantOptions: func(o *Config) {
				o.HealthzBindAddress = ""
				o.SyncPeriod = 5 * time.Second
				o.MinSyncPeriod = 0
				o.MasqueradeBit = 3
			},
		},
		{
			name:    "file values replace built-in defaults",
			content: header + "iptables:\n  masqueradeBit: 0\n  syncPeriod: 10s\n  minSyncPeriod: 500ms\nhostnameOverride: node-7\n",
			wantOptions: func(o *Config) {
				o.MasqueradeBit = 0
				o.SyncPeriod = 10 * time.Second
				o.MinSyncPeriod = 500 * time.Millisecond
				o.HostnameOverride = "node-7"
			},
		},
		{
			name:    "ipvs mode reads the ipvs section only",
			content: header + "mode: IPVS\niptables:\n  syncPeriod: 10s\n  minSyncPeriod: 5s\nipvs:\n  scheduler: WRR\n",
			wantOptions: func(o *Config) {
				o.Mode = ModeIPVS
				o.MinSyncPeriod = 0
				o.IPVSScheduler = "wrr"
			},
		},
		{
			name:        "iptables mode ignores the ipvs section",
			content:     header + "mode: iptables\nipvs:\n  scheduler: lc\n  syncPeriod: 10s\n  tcpTimeout: 5m\n  excludeCIDRs: [10.0.0.0/8]\n",
			wantOptions: func(*Config) {},
		},
		{
			name:    "bind addresses without a port",
			content: header + "healthzBindAddress: 192.168.1.10\nmetricsBindAddress: 0.0.0.0\n",
			wantOptions: func(o *Config) {
				o.HealthzBindAddress = "192.168.1.10:10256"
				o.MetricsBindAddress = "0.0.0.0:10249"
			},
		},
		{
			name:        "nodePortAddresses keywords",
			content:     header + "nodePortAddresses: [primary, 10.0.0.0/8, localhost, 192.168.0.0/16]\n",
			wantOptions: func(o *Config) { o.NodePortAddresses = []string{"10.0.0.0/8", "192.168.0.0/16"} },
			wantWarnings: []string{
				`config file: nodePortAddresses: keyword "primary" (the Node's primary IPs) is not supported; list the node network's CIDR instead. Without one, NodePorts answer on every local address except loopback`,
				`config file: nodePortAddresses: keyword "localhost" is not supported: svcproxy never serves NodePorts on loopback addresses`,
			},
		},
		{
			name:        "nodePortAddresses all",
			content:     header + "nodePortAddresses: [10.0.0.0/8, all]\n",
			wantOptions: func(*Config) {},
		},
		{
			name:        "nodePortAddresses flag wins, no keyword warning",
			content:     header + "nodePortAddresses: [primary]\n",
			flags:       []string{"--nodeport-addresses=10.1.0.0/16"},
			wantOptions: func(o *Config) { o.NodePortAddresses = []string{"10.1.0.0/16"} },
		},
		{
			name: "unsupported settings, one warning each",
			content: header + `bindAddress: 192.168.1.10
bindAddressHardFail: true
enableProfiling: true
showHiddenMetricsForVersion: "1.36"
detectLocalMode: InterfaceNamePrefix
detectLocal:
  interfaceNamePrefix: veth
  bridgeInterface: cbr0
oomScoreAdj: -500
configSyncPeriod: 1m
portRange: 30000-32767
clientConnection:
  acceptContentTypes: application/json
  contentType: application/json
  qps: 50
  burst: 100
logging:
  format: json
  flushFrequency: 10s
  verbosity: 4
  vmodule:
  - filePattern: proxier
    verbosity: 6
  options:
    json:
      splitStream: true
iptables:
  localhostNodePorts: true
conntrack:
  min: 262144
  tcpEstablishedTimeout: 1h
  tcpCloseWaitTimeout: 30s
  tcpBeLiberal: true
  udpTimeout: 30s
  udpStreamTimeout: 2m
winkernel:
  enableDSR: true
`,
			wantOptions: func(*Config) {},
			wantWarnings: []string{
				`config file: clientConnection.acceptContentTypes: not supported; "application/json" ignored`,
				`config file: clientConnection.contentType: not supported; "application/json" ignored`,
				"config file: clientConnection.qps: not supported; 50 ignored",
				"config file: clientConnection.burst: not supported; 100 ignored",
				`config file: logging.format: only text logs are supported; "json" ignored`,
				"config file: logging.flushFrequency: not supported; 10s ignored",
				"config file: logging.verbosity: not read from the file; use the -v=4 flag",
				"config file: logging.vmodule: not read from the file; use the -vmodule flag",
				"config file: logging.options.json: split streams and info buffers are not supported; ignored",
				`config file: bindAddress: overriding the node IP is not supported; "192.168.1.10" ignored`,
				"config file: bindAddressHardFail: not supported; ignored",
				"config file: enableProfiling: profiling handlers are not served; ignored",
				`config file: showHiddenMetricsForVersion: svcproxy hides no metrics; "1.36" ignored`,
				"config file: iptables.localhostNodePorts: svcproxy never serves NodePorts on loopback addresses; true ignored",
				`config file: detectLocalMode: only ClusterCIDR (from clusterCIDR) is supported; "InterfaceNamePrefix" ignored`,
				`config file: detectLocal.bridgeInterface: not supported; "cbr0" ignored`,
				`config file: detectLocal.interfaceNamePrefix: not supported; "veth" ignored`,
				"config file: oomScoreAdj: svcproxy does not set its OOM score; -500 ignored",
				"config file: conntrack.min: svcproxy does not set conntrack sysctls (set them on the host); 262144 ignored",
				"config file: conntrack.tcpEstablishedTimeout: svcproxy does not set conntrack sysctls (set them on the host); 1h0m0s ignored",
				"config file: conntrack.tcpCloseWaitTimeout: svcproxy does not set conntrack sysctls (set them on the host); 30s ignored",
				"config file: conntrack.tcpBeLiberal: svcproxy does not set conntrack sysctls (set them on the host); true ignored",
				"config file: conntrack.udpTimeout: svcproxy does not set conntrack sysctls (set them on the host); 30s ignored",
				"config file: conntrack.udpStreamTimeout: svcproxy does not set conntrack sysctls (set them on the host); 2m0s ignored",
				"config file: configSyncPeriod: svcproxy's informers do not resync; 1m0s ignored",
				`config file: portRange: unused (as in kube-proxy); "30000-32767" ignored`,
				"config file: winkernel: Windows only; ignored",
			},
		},
		{
			name:        "settings at kube-proxy's defaults do not warn",
			content:     header + "oomScoreAdj: -999\nconfigSyncPeriod: 15m\nclientConnection:\n  qps: 5\n  burst: 10\nconntrack:\n  maxPerCore: 32768\n  min: 131072\n  tcpEstablishedTimeout: 24h\n  tcpCloseWaitTimeout: 1h\niptables:\n  localhostNodePorts: false\nlogging:\n  format: text\n  flushFrequency: 5s\ndetectLocalMode: ClusterCIDR\n",
			wantOptions: func(*Config) {},
		},
		{
			name:        "JSON",
			content:     `{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "clusterCIDR": "10.32.0.0/12", "iptables": {"masqueradeAll": true}}`,
			wantOptions: func(o *Config) { o.ClusterCIDR = "10.32.0.0/12"; o.MasqueradeAll = true },
		},
		{
			name:         "duplicate field: the last one wins, with a warning",
			content:      header + "clusterCIDR: 10.0.0.0/8\nclusterCIDR: 10.244.0.0/16\n",
			wantOptions:  func(o *Config) { o.ClusterCIDR = "10.244.0.0/16" },
			wantWarnings: []string{`config file: yaml: unmarshal errors: line 4: key "clusterCIDR" already set in map; the last value is used`},
		},
		{
			name:         "mode svcproxy lacks, overridden by --mode",
			content:      header + "mode: kernelspace\n",
			flags:        []string{"--mode=iptables"},
			wantOptions:  func(*Config) {},
			wantWarnings: []string{`config file: mode: mode "kernelspace" is a kube-proxy mode that svcproxy does not implement; use "iptables", "ipvs" or "nftables"; ignored, --mode is given`},
		},
		{
			name: "nftables mode: the nftables section's settings, not the iptables one's",
			content: header + "mode: nftables\n" +
				"iptables: {masqueradeAll: false, masqueradeBit: 12, syncPeriod: 10s, minSyncPeriod: 2s}\n" +
				"nftables: {masqueradeAll: true, masqueradeBit: 13, syncPeriod: 1m, minSyncPeriod: 500ms}\n",
			wantOptions: func(o *Config) {
				o.Mode = ModeNFTables
				o.MasqueradeAll, o.MasqueradeBit = true, 13
				o.SyncPeriod, o.MinSyncPeriod = time.Minute, 500*time.Millisecond
			},
		},
		{
			name:        "nftables mode with kube-proxy's defaults",
			content:     header + "mode: nftables\niptables: {masqueradeBit: 12, syncPeriod: 10s}\n",
			wantOptions: func(o *Config) { o.Mode = ModeNFTables },
		},
		{
			name:        "nftables section outside nftables mode is not read",
			content:     header + "nftables: {masqueradeAll: true, masqueradeBit: 13, syncPeriod: 1m}\n",
			wantOptions: func(*Config) {},
		},
		{
			name:        "--mode=nftables over the file's iptables mode",
			content:     header + "mode: iptables\nnftables: {syncPeriod: 1m}\n",
			flags:       []string{"--mode=nftables"},
			wantOptions: func(o *Config) { o.Mode = ModeNFTables; o.SyncPeriod = time.Minute },
		},
		{name: "kernelspace mode", content: header + "mode: kernelspace\n", wantErr: `mode "kernelspace" is a kube-proxy mode`},
		{name: "unknown mode", content: header + "mode: iptable\n", wantErr: `unknown mode "iptable"`},
		{name: "empty file", content: "\n# nothing\n", wantErr: "empty file"},
		{name: "not YAML", content: "mode: [ipvs\n", wantErr: "not YAML or JSON"},
		{name: "wrong kind", content: "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n", wantErr: `want kind KubeProxyConfiguration, apiVersion kubeproxy.config.k8s.io/v1alpha1; got kind "KubeletConfiguration"`},
		{name: "wrong version", content: "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n", wantErr: `apiVersion "kubeproxy.config.k8s.io/v1alpha2"`},
		{name: "no kind", content: "mode: ipvs\n", wantErr: `got kind "", apiVersion ""`},
		{name: "wrong type", content: header + "iptables:\n  syncPeriod: 30\n", wantErr: "malformed KubeProxyConfiguration"},
		{name: "wrong type of list", content: header + "nodePortAddresses: 10.0.0.0/8\n", wantErr: "malformed KubeProxyConfiguration"},
		{name: "missing file", file: "does-not-exist.yaml", wantErr: "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join("testdata", tc.file)
			if tc.file == "" {
				path = filepath.Join(t.TempDir(), "config.conf")
				if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			o := defaults()
			fs := newFlagSet(o)
			if err := fs.Parse(tc.flags); err != nil {
				t.Fatal(err)
			}
			warnings, err := o.ApplyConfigFile(path, fs.Changed)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			wantO := defaults()
			tc.wantOptions(wantO)
			if diff := cmp.Diff(wantO, o, cmpopts.IgnoreUnexported(Config{})); diff != "" {
				t.Errorf("Options (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantWarnings, warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

// TestApplyConfigFileResultValidates checks that what the real-world files
// map to passes Validate (ipvs aside while that mode is not built).
func TestApplyConfigFileResultValidates(t *testing.T) {
	for _, file := range []string{"kubeadm-default.yaml", "unknown-fields.yaml", "ipvs.yaml"} {
		t.Run(file, func(t *testing.T) {
			o := Defaults()
			if _, err := o.ApplyConfigFile(filepath.Join("testdata", file), nil); err != nil {
				t.Fatal(err)
			}
			o.Mode = ModeIPTables
			o.HostnameOverride = "node1"
			if err := o.Complete(); err != nil {
				t.Fatal(err)
			}
			if err := o.Validate(); err != nil {
				t.Errorf("Options.Validate: %v", err)
			}
		})
	}
}

// serverOptions are the options TestServerAndSchedulerFlags compares.
type serverOptions struct {
	ConfigFile, HealthzBindAddress, MetricsBindAddress, IPVSScheduler string
}

func TestServerAndSchedulerFlags(t *testing.T) {
	defaults := serverOptions{HealthzBindAddress: DefaultHealthzBindAddress, MetricsBindAddress: DefaultMetricsBindAddress, IPVSScheduler: "rr"}
	tests := []struct {
		name    string
		flags   []string
		want    serverOptions
		wantErr string
	}{
		{name: "defaults", want: defaults},
		{
			name:  "bare IPs get the default ports",
			flags: []string{"--healthz-bind-address=127.0.0.1", "--metrics-bind-address=0.0.0.0"},
			want:  serverOptions{HealthzBindAddress: "127.0.0.1:10256", MetricsBindAddress: "0.0.0.0:10249", IPVSScheduler: "rr"},
		},
		{
			name:  "servers off",
			flags: []string{"--healthz-bind-address=", "--metrics-bind-address="},
			want:  serverOptions{IPVSScheduler: "rr"},
		},
		{
			name:  "config file",
			flags: []string{"--config=/var/lib/kube-proxy/config.conf"},
			want:  serverOptions{ConfigFile: "/var/lib/kube-proxy/config.conf", HealthzBindAddress: DefaultHealthzBindAddress, MetricsBindAddress: DefaultMetricsBindAddress, IPVSScheduler: "rr"},
		},
		{name: "every kernel scheduler", flags: []string{"--ipvs-scheduler=WLC"}, want: serverOptions{HealthzBindAddress: DefaultHealthzBindAddress, MetricsBindAddress: DefaultMetricsBindAddress, IPVSScheduler: "wlc"}},
		{name: "bad address", flags: []string{"--healthz-bind-address=localhost:10256"}, wantErr: `--healthz-bind-address "localhost:10256": "localhost" is not an IP address`},
		{name: "bad port", flags: []string{"--metrics-bind-address=127.0.0.1:99999"}, wantErr: `invalid port "99999"`},
		{name: "bad scheduler", flags: []string{"--ipvs-scheduler=fastest"}, wantErr: `--ipvs-scheduler "fastest": unknown IPVS scheduler, want one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf, twos`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := Defaults()
			fs := newFlagSet(o)
			if err := fs.Parse(append(tc.flags, "--hostname-override=node1")); err != nil {
				t.Fatal(err)
			}
			if err := o.Complete(); err != nil {
				t.Fatal(err)
			}
			err := o.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := serverOptions{o.ConfigFile, o.HealthzBindAddress, o.MetricsBindAddress, o.IPVSScheduler}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// newFlagSet returns a flag set with the configuration's flags.
func newFlagSet(o *Config) *pflag.FlagSet {
	fs := pflag.NewFlagSet("svcproxy", pflag.ContinueOnError)
	o.AddFlags(fs)
	return fs
}

// TestModeFlag: the three modes are taken, case and spaces aside; nftables
// mode's options carry the family's CIDRs like iptables mode's.
func TestModeFlag(t *testing.T) {
	for _, tc := range []struct{ flag, want, wantErr string }{
		{"iptables", ModeIPTables, ""},
		{" IPVS", ModeIPVS, ""},
		{"nftables", ModeNFTables, ""},
		{"kernelspace", "", `mode "kernelspace" is a kube-proxy mode that svcproxy does not implement; use "iptables", "ipvs" or "nftables"`},
		{"nft", "", `unknown mode "nft": want "iptables", "ipvs" or "nftables"`},
	} {
		o := Defaults()
		fs := newFlagSet(o)
		if err := fs.Parse([]string{"--mode=" + tc.flag, "--hostname-override=node1", "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
			"--nodeport-addresses=192.168.0.0/16,fd00:50::/64", "--masquerade-all"}); err != nil {
			t.Fatal(err)
		}
		if err := o.Complete(); err != nil {
			t.Fatal(err)
		}
		err := o.Validate()
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("--mode=%q: error %v, want %q", tc.flag, err, tc.wantErr)
			}
			continue
		}
		if err != nil || o.Mode != tc.want {
			t.Errorf("--mode=%q: mode %q, error %v; want %q", tc.flag, o.Mode, err, tc.want)
		}
	}
	o := Defaults()
	fs := newFlagSet(o)
	if err := fs.Parse([]string{"--hostname-override=node1", "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56", "--nodeport-addresses=192.168.0.0/16,fd00:50::/64", "--masquerade-all", "--iptables-masquerade-bit=12"}); err != nil {
		t.Fatal(err)
	}
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, ipv6 := range []bool{false, true} {
		n, i := o.NFTablesOptions(ipv6), o.IPTablesOptions(ipv6)
		if n.IPv6 != ipv6 || !n.MasqueradeAll || n.MasqueradeBit != 12 || !n.RandomFully ||
			!cmp.Equal(n.ClusterCIDRs, i.ClusterCIDRs, cmpopts.EquateComparable(netip.Prefix{})) ||
			!cmp.Equal(n.NodePortAddresses, i.NodePortAddresses, cmpopts.EquateComparable(netip.Prefix{})) || len(n.ClusterCIDRs) != 1 {
			t.Errorf("NFTablesOptions(%v) = %+v, want the family's part of %+v", ipv6, n, i)
		}
	}
}
