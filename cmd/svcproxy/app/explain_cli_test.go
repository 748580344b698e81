package app

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestExplainFromDualStack: --from pod:IPv4,IPv6 (a dual-stack pod's two
// addresses) traces each family from its own address, in both modes; a
// single address still traces its family only.
func TestExplainFromDualStack(t *testing.T) {
	dual := []string{"--state", dualStackState, "--hostname-override", "node1", "--cluster-cidr", dualStackCIDRs}
	for _, mode := range []string{"iptables", "ipvs"} {
		for _, tc := range []struct {
			from    string
			sources []string // per result, in order
			notes   string
		}{
			{"pod:10.244.1.5,fd00:10:244:1::5", []string{"10.244.1.5", "fd00:10:244:1::5"}, ""},
			{"pod:fd00:10:244:1::5,10.244.1.5", []string{"10.244.1.5", "fd00:10:244:1::5"}, ""},
			{"remote-pod:10.244.2.5,fd00:10:244:2::5", []string{"10.244.2.5", "fd00:10:244:2::5"}, ""},
			{"external:198.51.100.7, 2001:db8:9::7", []string{"198.51.100.7", "2001:db8:9::7"}, ""},
			{"pod:10.244.1.5", []string{"10.244.1.5"}, "IPv6 not traced: the source 10.244.1.5 is not IPv6"},
		} {
			t.Run(mode+" "+tc.from, func(t *testing.T) {
				code, out, errOut := runExplainArgs(t, noAPI, append(dual, "--mode", mode, "--from", tc.from, "-o", "json", "web.demo:http")...)
				if code != 0 {
					t.Fatalf("exit %d, stderr:\n%s", code, errOut)
				}
				var x explanation
				if err := json.Unmarshal([]byte(out), &x); err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, r := range x.Results {
					got = append(got, r.Source)
					if r.Verdict != verdictDNAT || len(r.Endpoints) != 2 {
						t.Errorf("%s from %s: %s with %d endpoints", r.Destination, r.Source, r.Verdict, len(r.Endpoints))
					}
				}
				if strings.Join(got, " ") != strings.Join(tc.sources, " ") {
					t.Errorf("sources %q, want %q", got, tc.sources)
				}
				if tc.notes != "" && !strings.Contains(strings.Join(x.Notes, "\n"), tc.notes) {
					t.Errorf("notes %q lack %q", x.Notes, tc.notes)
				}
			})
		}
	}
	for _, tc := range []struct{ from, want string }{
		{"pod:10.244.1.5,10.244.1.6", `--from "pod:10.244.1.5,10.244.1.6": two IPv4 addresses: give one of each family`},
		{"pod:fd00::5,fd00::6", "two IPv6 addresses"},
		{"pod:10.244.1.5,fd00::5,10.244.1.6", "at most two addresses, one IPv4 and one IPv6"},
		{"pod:10.244.1.5,", `--from "pod:10.244.1.5,"`},
		{"external:198.51.100.7,nope", `--from "external:198.51.100.7,nope"`},
	} {
		t.Run("refused "+tc.from, func(t *testing.T) {
			code, out, errOut := runExplainArgs(t, noAPI, append(dual, "--from", tc.from, "web.demo")...)
			if code != explainUsage || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant %q", code, out, errOut, tc.want)
			}
		})
	}
}

// TestExplainETPLocalWording: externalTrafficPolicy Local without a local
// endpoint names the load balancer's health-check node port where there is
// one (a LoadBalancer), and says there is none for a NodePort Service.
func TestExplainETPLocalWording(t *testing.T) {
	for _, mode := range []string{"iptables", "ipvs"} {
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"NodePort", []string{"--state", scenarios + "etp-local.yaml", "--hostname-override", "node1", "--cluster-cidr", "10.244.0.0/16", "--node-ip", "192.168.0.1",
				"--from", "external:203.0.113.7", "192.168.0.1:30091"},
				"externalTrafficPolicy Local and no endpoint on node1 (1 on other nodes); the Service has no health-check node port (only a LoadBalancer gets one): clients must be sent to nodes that have an endpoint"},
			{"LoadBalancer", []string{"--state", dualStackState, "--hostname-override", "node3", "--cluster-cidr", dualStackCIDRs, "--node-ip", "192.168.0.3",
				"--from", "external:198.51.100.7", "203.0.113.12:80/tcp"},
				"externalTrafficPolicy Local and no endpoint on node3 (2 on other nodes); the load balancer's health check (node port 30082) steers clients to nodes that have one"},
		} {
			t.Run(mode+" "+tc.name, func(t *testing.T) {
				code, out, errOut := runExplainArgs(t, noAPI, append(tc.args, "--mode", mode)...)
				if code != 0 || !strings.Contains(out, "verdict   DROP\n  reason    "+tc.want+"\n") {
					t.Errorf("exit %d, want the reason %q; stdout:\n%s\nstderr:\n%s", code, tc.want, out, errOut)
				}
			})
		}
	}
}

// TestDaemonHelp: svcproxy --help names the explain subcommand.
func TestDaemonHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main([]string{"--help"}, &out, &errOut)
	help := errOut.String()
	for _, w := range []string{"Usage: svcproxy [flags]\n", "       svcproxy explain [flags] TARGET\n", "(svcproxy explain --help)", "--mode string", "--hostname-override"} {
		if code != 0 || !strings.Contains(help, w) {
			t.Errorf("--help: exit %d, stderr lacks %q:\n%s", code, w, help)
		}
	}
}
