package iptables_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func TestBackendCheckDrift(t *testing.T) {
	tr := proxy.NewTracker("node1", nil, nil)
	tr.OnServiceUpdate(nil, pt.Service("ns", "web", "10.96.0.20", "http", 80))
	tr.OnEndpointSliceUpdate(nil, pt.Slice("ns", "web", "web-1", "http", 8080, pt.Ready("10.244.2.2", "node2")))
	snap, _ := tr.Snapshot()
	opts := iptables.DefaultOptions()
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}

	for _, tc := range []struct {
		name   string
		tamper func(*iptablestest.Fake) error
		want   string // part of the reason; "" for no drift
	}{
		{name: "untouched"},
		{name: "jump deleted", want: "jump from nat/PREROUTING to SVCP-SERVICES is missing", tamper: func(f *iptablestest.Fake) error {
			return f.DeleteJump(iptables.Jump{Table: "nat", Chain: "PREROUTING",
				Args: []string{"-m", "comment", "--comment", "svcproxy-services", "-j", iptables.ServicesChain}})
		}},
		{name: "root chain flushed", want: "chain nat/SVCP-DISPATCH has 0 rules", tamper: func(f *iptablestest.Fake) error {
			return f.Restore([]byte("*nat\n:" + iptables.DispatchChain + " - [0:0]\nCOMMIT\n"))
		}},
		{name: "filter chain gone", want: "to SVCP-FORWARD is missing", tamper: func(f *iptablestest.Fake) error {
			if err := f.DeleteJump(iptables.Jump{Table: "filter", Chain: "FORWARD",
				Args: []string{"-m", "comment", "--comment", "svcproxy-forward", "-j", iptables.ForwardChain}}); err != nil {
				return err
			}
			return f.Restore([]byte("*filter\n:" + iptables.ForwardChain + " - [0:0]\n-X " + iptables.ForwardChain + "\nCOMMIT\n"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := iptablestest.NewFake()
			be := iptables.NewBackend(fake, opts)
			ctx := context.Background()
			if why, err := be.CheckDrift(ctx); why != "" || err != nil {
				t.Fatalf("before any sync: %q, %v; want no drift", why, err)
			}
			if _, err := be.Sync(ctx, snap, true); err != nil {
				t.Fatal(err)
			}
			if tc.tamper != nil {
				if err := tc.tamper(fake); err != nil {
					t.Fatal(err)
				}
			}
			why, err := be.CheckDrift(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" && why != "" || tc.want != "" && !strings.Contains(why, tc.want) {
				t.Fatalf("drift %q, want %q", why, tc.want)
			}
			// A full sync repairs it.
			if _, err := be.Sync(ctx, snap, true); err != nil {
				t.Fatal(err)
			}
			if why, err := be.CheckDrift(ctx); why != "" || err != nil {
				t.Errorf("after a full sync: %q, %v; want no drift", why, err)
			}
		})
	}
}
