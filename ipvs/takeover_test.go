package ipvs_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	iptablestest "github.com/svcproxy/svcproxy/iptables/testing"
	"github.com/svcproxy/svcproxy/ipvs"
	ipvstest "github.com/svcproxy/svcproxy/ipvs/testing"
)

func key(addr string, port uint16) ipvs.ServiceKey {
	return ipvs.ServiceKey{Address: netip.MustParseAddr(addr), Protocol: v1.ProtocolTCP, Port: port}
}

// kubeProxyLeftovers fabricates what kube-proxy's IPVS mode leaves: a
// kube-ipvs0 with two ClusterIPs and their virtual servers, a node-port
// virtual server, KUBE- sets, plus foreign objects that must stay.
func kubeProxyLeftovers(t *testing.T) *ipvstest.Fake {
	t.Helper()
	k := ipvstest.NewFake()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	k.AddLink(ipvs.KubeProxyDummyInterface, "dummy")
	for _, a := range []string{"10.96.0.10", "10.96.0.11"} {
		must(k.AddAddress(ipvs.KubeProxyDummyInterface, netip.MustParseAddr(a)))
	}
	for _, kk := range []ipvs.ServiceKey{key("10.96.0.10", 80), key("10.96.0.11", 443), key("192.168.0.1", 30080), key("192.168.0.1", 22), key("10.1.1.1", 80)} {
		must(k.AddService(&ipvs.VirtualServer{ServiceKey: kk, Scheduler: "rr"}))
		must(k.AddDestination(kk, &ipvs.RealServer{Address: netip.MustParseAddr("10.244.1.10"), Port: 8080, Weight: 1}))
	}
	must(k.RestoreSets([]byte("create KUBE-CLUSTER-IP hash:ip,port\nadd KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n" +
		"create KUBE-LOOP-BACK hash:ip,port,ip\ncreate KUBE-6-CLUSTER-IP hash:ip,port\ncreate OTHER hash:ip\ncreate SVCP-IPVS-IPS hash:ip\n")))
	k.ResetCalls()
	return k
}

func names(sets []*ipvs.Set) (out []string) {
	for _, s := range sets {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

func keys(svcs []*ipvs.VirtualServer) (out []string) {
	for _, vs := range svcs {
		out = append(out, vs.ServiceKey.String())
	}
	slices.Sort(out)
	return out
}

func TestRemoveKubeProxy(t *testing.T) {
	k := kubeProxyLeftovers(t)
	ours := key("10.96.0.11", 443)
	n, err := ipvs.RemoveKubeProxy(k, func(kk ipvs.ServiceKey) bool { return kk == ours })
	if err != nil {
		t.Fatal(err)
	}
	// one virtual server, the link, three sets
	if n != 5 {
		t.Errorf("removed %d, want 5; calls %q", n, k.Calls())
	}
	svcs, _ := k.ListServices()
	want := keys([]*ipvs.VirtualServer{{ServiceKey: ours}, {ServiceKey: key("192.168.0.1", 30080)}, {ServiceKey: key("192.168.0.1", 22)}, {ServiceKey: key("10.1.1.1", 80)}})
	if got := keys(svcs); !slices.Equal(got, want) {
		t.Errorf("virtual servers %v, want %v", got, want)
	}
	if k.Link(ipvs.KubeProxyDummyInterface) != "" {
		t.Error("kube-ipvs0 left")
	}
	sets, _ := k.ListSets()
	if got := names(sets); !slices.Equal(got, []string{"OTHER", "SVCP-IPVS-IPS"}) {
		t.Errorf("sets %v", got)
	}

	// Idempotent.
	k.ResetCalls()
	if n, err := ipvs.RemoveKubeProxy(k, nil); n != 0 || err != nil || len(k.Calls()) != 0 {
		t.Errorf("second run: %d, %v, calls %q", n, err, k.Calls())
	}
}

func TestRemoveKubeProxyNodePorts(t *testing.T) {
	k := kubeProxyLeftovers(t)
	n, err := ipvs.RemoveKubeProxyNodePorts(k, nil, options())
	if err != nil {
		t.Fatal(err)
	}
	if n != 7 {
		t.Errorf("removed %d, want 7; calls %q", n, k.Calls())
	}
	svcs, _ := k.ListServices()
	// Port 22 is outside the node-port range, 10.1.1.1 not a node address.
	if got, want := keys(svcs), keys([]*ipvs.VirtualServer{{ServiceKey: key("192.168.0.1", 22)}, {ServiceKey: key("10.1.1.1", 80)}}); !slices.Equal(got, want) {
		t.Errorf("virtual servers %v, want %v", got, want)
	}
}

func TestRemoveKubeProxyWithoutKubeIPVS0(t *testing.T) {
	k := ipvstest.NewFake()
	k.NoIPVS = true
	if err := k.AddService(&ipvs.VirtualServer{ServiceKey: key("10.96.0.10", 80), Scheduler: "rr"}); err != nil {
		t.Fatal(err)
	}
	k.ResetCalls()
	if n, err := ipvs.RemoveKubeProxy(k, nil); n != 0 || err != nil {
		t.Fatalf("%d, %v", n, err)
	}
	if c := k.Calls(); len(c) != 0 {
		t.Errorf("calls %q, want none", c)
	}
}

// A set still referenced (the fake's destroy fails as ipset's would) is
// reported; the others go.
func TestRemoveKubeProxySetInUse(t *testing.T) {
	k := kubeProxyLeftovers(t)
	k.FailNext("RestoreSets", errors.New("ipset v7.17: Error in line 1: Set cannot be destroyed: it is in use by a kernel component"))
	n, err := ipvs.RemoveKubeProxy(k, nil)
	if err != nil {
		t.Fatal(err) // the batch failed; one at a time all go
	}
	if n != 6 {
		t.Errorf("removed %d, want 6", n)
	}
	if !slices.Contains(k.Calls(), "RestoreSets destroy KUBE-LOOP-BACK") {
		t.Errorf("no per-set retry: %q", k.Calls())
	}
}

// A set another program's iptables rule still uses cannot be destroyed
// (the fake kernel refuses, as the real one does): it stays and is
// reported, every other set goes, and the count says what went.
func TestRemoveKubeProxySetUsedByARule(t *testing.T) {
	k := kubeProxyLeftovers(t)
	ipt := iptablestest.NewFake()
	if err := k.UseIPTables(ipt); err != nil {
		t.Fatal(err)
	}
	if err := ipt.Restore([]byte("*nat\n:OTHER - [0:0]\n-A OTHER -m set --match-set KUBE-LOOP-BACK dst,dst,src -j ACCEPT\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	k.ResetCalls()
	n, err := ipvs.RemoveKubeProxy(k, nil)
	if err == nil || !strings.Contains(err.Error(), "KUBE-LOOP-BACK") || !strings.Contains(err.Error(), "in use") {
		t.Errorf("error %v, want one reporting KUBE-LOOP-BACK in use", err)
	}
	if strings.Count(err.Error(), "destroying") != 1 {
		t.Errorf("error %v: want exactly one set reported", err)
	}
	if n != 5 {
		t.Errorf("removed %d, want 5 (2 virtual servers, kube-ipvs0, 2 sets); calls %q", n, k.Calls())
	}
	sets, _ := k.ListSets()
	if got, want := names(sets), []string{"KUBE-LOOP-BACK", "OTHER", "SVCP-IPVS-IPS"}; !slices.Equal(got, want) {
		t.Errorf("sets left %v, want %v", got, want)
	}
}

func TestRemoveKubeProxyListError(t *testing.T) {
	k := kubeProxyLeftovers(t)
	k.FailNext("ListAddresses", errors.New("netlink: boom"))
	if _, err := ipvs.RemoveKubeProxy(k, nil); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("err %v", err)
	}
}
