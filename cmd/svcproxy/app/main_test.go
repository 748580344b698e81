package app

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMainDryRunPrintsTheGoldenRuleset(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main([]string{"--dry-run", "--state", "../../../examples/cluster.yaml", "--hostname-override", "node1",
		"--cluster-cidr", "10.244.0.0/16", "--logtostderr=false"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", code, errOut.String())
	}
	want, err := os.ReadFile("../../../iptables/testdata/example.golden")
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Errorf("--dry-run output differs from iptables/testdata/example.golden:\n%s", out.String())
	}
}

func TestMainDryRunIPVSPrintsThreeSections(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main([]string{"--mode=ipvs", "--dry-run", "--ipvs-scheduler=wlc", "--state", "../../../examples/cluster.yaml", "--hostname-override", "node1",
		"--cluster-cidr", "10.244.0.0/16", "--logtostderr=false"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", code, errOut.String())
	}
	got := out.String()
	for _, want := range []string{"# ipset save", "# ipvsadm -Sn", "# iptables-save", "-A -t 10.96.0.10:53 -s wlc", "-a -t 10.96.0.10:53 -r 10.244.1.2:53", "*nat", "COMMIT"} {
		if !strings.Contains(got, want) {
			t.Errorf("--mode=ipvs --dry-run output lacks %q:\n%s", want, got)
		}
	}
}

// TestMainDryRunIPVSDualStack: in IPVS mode a dual-stack state prints the
// inet6 sets beside the IPv4 ones, the IPv6 virtual servers, and an
// ip6tables section after the iptables one; an IPv4-only state prints no
// IPv6 at all.
func TestMainDryRunIPVSDualStack(t *testing.T) {
	run := func(state string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		code := Main([]string{"--mode=ipvs", "--dry-run", "--state", state, "--hostname-override", "node1",
			"--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--logtostderr=false"}, &out, &errOut)
		if code != 0 {
			t.Fatalf("exit code %d, stderr:\n%s", code, errOut.String())
		}
		return out.String()
	}
	got := run("../../../examples/dual-stack.yaml")
	for _, want := range []string{
		"create SVCP-IPVS-CLUSTER-IP hash:ip,port family inet ",
		"create SVCP-IPVS-6-CLUSTER-IP hash:ip,port family inet6 ",
		"add SVCP-IPVS-6-CLUSTER-CIDR fd00:10:244::/56\n",
		"-A -t 10.96.10.10:80 -s rr\n",
		"-A -t [fd00:10:96::a]:80 -s rr\n",
		"-a -t [fd00:10:96::a]:80 -r [fd00:10:244:1::10]:8080 -m -w 1\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("dual-stack --mode=ipvs --dry-run output lacks %q", want)
		}
	}
	i4 := strings.Index(got, "# iptables-save (restore with: iptables-restore --noflush)\n")
	i6 := strings.Index(got, "# ip6tables-save (restore with: ip6tables-restore --noflush)\n")
	if i4 < 0 || i6 < i4 {
		t.Errorf("want an iptables section followed by an ip6tables one: at %d and %d", i4, i6)
	} else if six := got[i6:]; !strings.Contains(six, "--match-set SVCP-IPVS-6-CLUSTER-IP") || strings.Contains(six, "--match-set SVCP-IPVS-CLUSTER-IP ") {
		t.Errorf("the ip6tables section does not use the IPv6 sets:\n%s", six)
	}

	got = run("../../../examples/cluster.yaml")
	for _, absent := range []string{"inet6", "SVCP-IPVS-6-", "ip6tables"} {
		if strings.Contains(got, absent) {
			t.Errorf("IPv4-only --mode=ipvs --dry-run output has %q", absent)
		}
	}
}

func TestMainErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: web, namespace: shop}\n  spec: {ports: oops}\n"), 0o644)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  []string
	}{
		{name: "malformed state file names file and item", args: []string{"--dry-run", "--state", bad},
			wantCode: 2, wantErr: []string{bad, "item 1", "shop/web"}},
		{name: "missing state file", args: []string{"--dry-run", "--state", filepath.Join(dir, "nope.yaml")},
			wantCode: 2, wantErr: []string{"nope.yaml"}},
		{name: "unknown IPVS scheduler", args: []string{"--mode", "ipvs", "--ipvs-scheduler", "fastest", "--dry-run"},
			wantCode: 2, wantErr: []string{"--ipvs-scheduler", "fastest", "rr, wrr, lc, wlc"}},
		{name: "proxy-mode alias is validated too", args: []string{"--proxy-mode", "userspace"},
			wantCode: 2, wantErr: []string{`--mode: unknown mode "userspace"`}},
		{name: "bad cluster CIDR and bad sync periods reported together", args: []string{"--cluster-cidr", "10.244.0.0/33", "--min-sync-period", "1m", "--sync-period", "30s"},
			wantCode: 2, wantErr: []string{"--cluster-cidr", "--min-sync-period"}},
		{name: "bad nodeport address", args: []string{"--nodeport-addresses", "eth0"},
			wantCode: 2, wantErr: []string{"--nodeport-addresses"}},
		{name: "unknown flag", args: []string{"--no-such-flag"}, wantCode: 2, wantErr: []string{"no-such-flag"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(append(tc.args, "--hostname-override", "node1", "--logtostderr=false"), &out, &errOut)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tc.wantCode, errOut.String())
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(errOut.String(), w) {
					t.Errorf("stderr does not mention %q:\n%s", w, errOut.String())
				}
			}
			if out.Len() != 0 {
				t.Errorf("nothing should be printed to stdout on error, got:\n%s", out.String())
			}
		})
	}
}
