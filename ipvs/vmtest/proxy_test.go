//go:build vm

package vmtest

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// proxier runs IPVS mode's real Applier inside the node namespace.
type proxier struct {
	t       testing.TB
	tp      *topology
	opts    ipvs.Options
	kernel  *ipvs.Kernel
	ipt     iptables.Interface
	applier *ipvs.Applier
	last    *ipvs.Plan
}

func newProxier(t testing.TB, tp *topology, mods ...func(*ipvs.Options)) *proxier {
	t.Helper()
	opts := ipvs.DefaultOptions()
	opts.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	opts.NodeAddresses = []netip.Addr{netip.MustParseAddr(nodeIP)}
	for _, m := range mods {
		m(&opts)
	}
	must(t, opts.Validate())
	p := &proxier{t: t, tp: tp, opts: opts, kernel: ipvs.NewKernel()}
	t.Cleanup(p.kernel.Close)
	must(t, inNS(tp.node, func() error {
		var err error
		p.ipt, err = iptables.NewExec(iptables.DetectVariant())
		return err
	}))
	p.applier = ipvs.NewApplier(p.kernel, p.ipt, opts, nil)
	return p
}

func snapshot(t testing.TB, objs ...any) *proxy.Snapshot {
	t.Helper()
	return pt.Snapshot(t, objs...)
}

// sync renders objs and applies the plan in the node namespace.
func (p *proxier) sync(full bool, objs ...any) ipvs.SyncResult {
	p.t.Helper()
	plan := ipvs.Render(snapshot(p.t, objs...), p.opts)
	var res ipvs.SyncResult
	must(p.t, inNS(p.tp.node, func() error {
		var err error
		res, err = p.applier.Sync(context.Background(), plan, full)
		return err
	}))
	p.last = plan
	return res
}

// kernelState lists what the node's kernel holds of ours.
func (p *proxier) services() []*ipvs.VirtualServer {
	p.t.Helper()
	var out []*ipvs.VirtualServer
	must(p.t, inNS(p.tp.node, func() error {
		var err error
		out, err = p.kernel.ListServices()
		return err
	}))
	return out
}

// dumpServices renders the node's virtual servers for failure messages.
func (p *proxier) dumpServices() string {
	var b strings.Builder
	for _, vs := range p.services() {
		fmt.Fprintf(&b, "\n  %s -s %s -p %d", vs.ServiceKey, vs.Scheduler, vs.Timeout)
		for _, rs := range vs.Destinations {
			fmt.Fprintf(&b, "\n    -> %s w%d active %d inactive %d", rs.AddrPort(), rs.Weight, rs.ActiveConns, rs.InactiveConns)
		}
	}
	return b.String()
}
