package ipvs

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"

	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func vs(s string, sched string, timeout uint32, dests ...string) *VirtualServer {
	proto, ap, _ := strings.Cut(s, " ")
	a := netip.MustParseAddrPort(ap)
	v := &VirtualServer{ServiceKey: ServiceKey{Address: a.Addr(), Protocol: v1.Protocol(proto), Port: a.Port()}, Scheduler: sched, Timeout: timeout}
	for _, d := range dests {
		w := 1
		if strings.HasSuffix(d, "/0") {
			d, w = strings.TrimSuffix(d, "/0"), 0
		}
		ap := netip.MustParseAddrPort(d)
		v.Destinations = append(v.Destinations, &RealServer{Address: ap.Addr(), Port: ap.Port(), Weight: w})
	}
	return v
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestDiff(t *testing.T) {
	want := &Plan{
		Interface: DummyInterface,
		Addresses: addrs("10.96.0.1", "10.96.0.2"),
		Services: []*VirtualServer{
			vs("TCP 10.96.0.1:80", "rr", 0, "10.244.1.1:8080", "10.244.1.2:8080"),
			vs("TCP 10.96.0.2:443", "rr", 60, "10.244.1.3:8443"),
		},
		Sets: []*Set{
			{Name: SetIPs, Type: "hash:ip", Entries: []string{"10.96.0.1", "10.96.0.2"}},
			{Name: SetClusterIP, Type: "hash:ip,port", Entries: []string{"10.96.0.1,tcp:80", "10.96.0.2,tcp:443"}},
		},
	}
	inSync := func() *State {
		return &State{LinkExists: true, Addresses: want.Addresses, Services: want.Services,
			Sets: []*Set{
				{Name: SetIPs, Type: "hash:ip", Entries: []string{"10.96.0.2", "10.96.0.1"}},
				{Name: SetClusterIP, Type: "hash:ip,port", Entries: []string{"10.96.0.1,tcp:80", "10.96.0.2,tcp:443"}},
			}}
	}
	for _, tc := range []struct {
		name string
		have func() *State
		want string
	}{{
		name: "from nothing: link, sets, virtual servers, real servers, then addresses",
		have: func() *State { return &State{} },
		want: `
			ip link add svcproxy-ipvs0 type dummy
			ipset create SVCP-IPVS-IPS hash:ip
			ipset create SVCP-IPVS-CLUSTER-IP hash:ip,port
			ipset add SVCP-IPVS-IPS 10.96.0.1
			ipset add SVCP-IPVS-IPS 10.96.0.2
			ipset add SVCP-IPVS-CLUSTER-IP 10.96.0.1,tcp:80
			ipset add SVCP-IPVS-CLUSTER-IP 10.96.0.2,tcp:443
			ipvsadm -A -t 10.96.0.1:80 -s rr
			ipvsadm -A -t 10.96.0.2:443 -s rr -p 60
			ipvsadm -a -t 10.96.0.1:80 -r 10.244.1.1:8080 -m -w 1
			ipvsadm -a -t 10.96.0.1:80 -r 10.244.1.2:8080 -m -w 1
			ipvsadm -a -t 10.96.0.2:443 -r 10.244.1.3:8443 -m -w 1
			ip addr add 10.96.0.1/32 dev svcproxy-ipvs0
			ip addr add 10.96.0.2/32 dev svcproxy-ipvs0
		`,
	}, {
		name: "in sync (listing order does not matter): nothing",
		have: inSync,
	}, {
		name: "endpoint replaced, weight restored, scheduler and persistence changed",
		have: func() *State {
			st := inSync()
			st.Services = []*VirtualServer{
				vs("TCP 10.96.0.1:80", "lc", 0, "10.244.1.9:8080", "10.244.1.2:8080/0"),
				vs("TCP 10.96.0.2:443", "rr", 0, "10.244.1.3:8443"),
			}
			return st
		},
		want: `
			ipvsadm -E -t 10.96.0.1:80 -s rr
			ipvsadm -E -t 10.96.0.2:443 -s rr -p 60
			ipvsadm -a -t 10.96.0.1:80 -r 10.244.1.1:8080 -m -w 1
			ipvsadm -e -t 10.96.0.1:80 -r 10.244.1.2:8080 -m -w 1
			ipvsadm -d -t 10.96.0.1:80 -r 10.244.1.9:8080
		`,
	}, {
		name: "stale objects of ours: address first, then virtual server, entries, sets",
		have: func() *State {
			st := inSync()
			st.Addresses = addrs("10.96.0.1", "10.96.0.2", "10.96.0.3")
			st.Services = append(st.Services, vs("UDP 10.96.0.3:53", "rr", 0, "10.244.1.5:53"))
			st.Sets[0].Entries = append(st.Sets[0].Entries, "10.96.0.3")
			st.Sets = append(st.Sets, &Set{Name: "SVCP-IPVS-OLD", Type: "hash:ip"})
			return st
		},
		want: `
			ip addr del 10.96.0.3/32 dev svcproxy-ipvs0
			ipvsadm -D -u 10.96.0.3:53
			ipset del SVCP-IPVS-IPS 10.96.0.3
			ipset destroy SVCP-IPVS-OLD
		`,
	}, {
		name: "a set of another type is made again",
		have: func() *State {
			st := inSync()
			st.Sets[1] = &Set{Name: SetClusterIP, Type: "hash:ip", Entries: []string{"10.96.0.1"}}
			return st
		},
		want: `
			ipset destroy SVCP-IPVS-CLUSTER-IP
			ipset create SVCP-IPVS-CLUSTER-IP hash:ip,port
			ipset add SVCP-IPVS-CLUSTER-IP 10.96.0.1,tcp:80
			ipset add SVCP-IPVS-CLUSTER-IP 10.96.0.2,tcp:443
		`,
	}, {
		name: "link gone (someone deleted it): created again, addresses with it",
		have: func() *State {
			st := inSync()
			st.LinkExists, st.Addresses = false, nil
			return st
		},
		want: `
			ip link add svcproxy-ipvs0 type dummy
			ip addr add 10.96.0.1/32 dev svcproxy-ipvs0
			ip addr add 10.96.0.2/32 dev svcproxy-ipvs0
		`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(Diff(want, tc.have()).Strings(), "\n")
			if got != "" {
				got += "\n"
			}
			if d := cmp.Diff(dedent(tc.want), got); d != "" {
				t.Errorf("operations differ (-want +got):\n%s", d)
			}
		})
	}
}

// TestDiffAfterEndpointChange: one endpoint change between two renders of
// the example is a handful of operations, nothing else.
func TestDiffAfterEndpointChange(t *testing.T) {
	opts := testOptions()
	before := Render(snapshotOf(t,
		pt.Service("ns", "a", "10.96.0.1", "p", 80), pt.Slice("ns", "a", "a-1", "p", 8080, pt.Ready("10.244.1.10", "node1"), pt.Ready("10.244.2.10", "node2")),
		pt.Service("ns", "b", "10.96.0.2", "p", 80), pt.Slice("ns", "b", "b-1", "p", 8080, pt.Ready("10.244.2.11", "node2")),
	), opts)
	after := Render(snapshotOf(t,
		pt.Service("ns", "a", "10.96.0.1", "p", 80), pt.Slice("ns", "a", "a-1", "p", 8080, pt.Ready("10.244.2.10", "node2"), pt.Ready("10.244.2.12", "node2")),
		pt.Service("ns", "b", "10.96.0.2", "p", 80), pt.Slice("ns", "b", "b-1", "p", 8080, pt.Ready("10.244.2.11", "node2")),
	), opts)
	got := Diff(after, StateOf(before)).Strings()
	want := []string{
		"ipvsadm -a -t 10.96.0.1:80 -r 10.244.2.12:8080 -m -w 1",
		"ipvsadm -d -t 10.96.0.1:80 -r 10.244.1.10:8080",
		"ipset del SVCP-IPVS-LOOPBACK 10.244.1.10,tcp:8080,10.244.1.10",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("operations differ (-want +got):\n%s", d)
	}
	if c := Diff(after, StateOf(after)); !c.Empty() {
		t.Errorf("a plan against itself: %v", c.Strings())
	}
}
