package framework

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// The address plan of the test bed. It lives only inside the framework's
// network namespaces; no link leads to the root namespace, so none of it can
// reach this machine's own network or leave it. The test bed is dual-stack:
// every host, node and pod has an address of each family (IPv4 first, the
// cluster's primary family).
//
//	underlay 192.168.77.0/24 and fd00:77::/64, a bridge in namespace <prefix>net:
//	  192.168.77.1    fd00:77::1    node1 eth0
//	  192.168.77.2    fd00:77::2    node2 eth0
//	  192.168.77.10   fd00:77::10   control plane: etcd (127.0.0.1:2379), kube-apiserver (:6443)
//	  192.168.77.100  fd00:77::100  outside client (no route to pods or services)
//	overlay: VXLAN id 1, UDP 4789 over the IPv4 underlay, device flannel.1 on
//	  each node, VTEP 10.244.N.0/32 and fd00:10:244:N::/128 with MAC
//	  02:00:0a:f4:0N:00, static FDB and neighbour entries as flannel's vxlan
//	  backend writes them; IPv6 pod traffic rides the same tunnel
//	pods 10.244.0.0/16 and fd00:10:244::/56: node N has bridge cni0
//	  10.244.N.1/24 and fd00:10:244:N::1/64, pods from 10.244.N.2 and
//	  fd00:10:244:N::2 up (the same host part, in hex for IPv6), each a
//	  namespace with eth0 and default routes of both families via cni0
//	services 10.96.0.0/12 and fd00:10:96::/112: kubernetes 10.96.0.1:443,
//	  kube-dns 10.96.0.10:53 (both single-stack IPv4, as in a dual-stack
//	  cluster whose primary family is IPv4)
//
// IPv6 addresses are added with nodad (usable at once, no duplicate address
// detection); nodes forward IPv6 and send ICMPv6 errors without a rate
// limit (net.ipv6.icmp.ratelimit=0), so that a REJECT is seen at once.
const (
	underlayBridge = "underlay"
	underlayPrefix = "192.168.77."
	controlPlaneIP = "192.168.77.10"
	clientIP       = "192.168.77.100"
	podNetPrefix   = "10.244."

	underlayPrefix6 = "fd00:77::"
	controlPlaneIP6 = "fd00:77::10"
	clientIP6       = "fd00:77::100"
	podNetPrefix6   = "fd00:10:244:"
	vxlanDevice     = "flannel.1"
	vxlanID         = "1"
	vxlanPort       = "4789"
	bridgeDevice    = "cni0"
	// MTU of the pod network: the underlay's 1500 minus VXLAN's 50 bytes.
	podMTU = "1450"

	// ClusterCIDR and ClusterCIDR6 are the pod network of each family:
	// svcproxy and kube-proxy get both in --cluster-cidr (ClusterCIDRs).
	ClusterCIDR  = "10.244.0.0/16"
	ClusterCIDR6 = "fd00:10:244::/56"
	// ClusterCIDRs is the --cluster-cidr value of a dual-stack node.
	ClusterCIDRs = ClusterCIDR + "," + ClusterCIDR6
	// ServiceCIDR and ServiceCIDR6 are the API server's
	// --service-cluster-ip-range, IPv4 first (the primary family: a
	// Service that asks for no family is IPv4).
	ServiceCIDR  = "10.96.0.0/12"
	ServiceCIDR6 = "fd00:10:96::/112"
	// KubernetesServiceIP is the ClusterIP of default/kubernetes.
	KubernetesServiceIP = "10.96.0.1"
	// DNSServiceIP is the ClusterIP of kube-system/kube-dns.
	DNSServiceIP = "10.96.0.10"
	// ClusterDomain is the cluster's DNS domain.
	ClusterDomain = "cluster.local"
)

// Host is a machine of the test bed: a network namespace with an address
// of each family.
type Host struct {
	// Name is the host's name: node1, client, b/web-1.
	Name string
	// NetNS is its network namespace.
	NetNS *NetNS
	// IP is its IPv4 address: on the underlay for nodes and the client, on
	// the pod network for pods.
	IP netip.Addr
	// IP6 is its IPv6 address, on the same network as IP.
	IP6 netip.Addr
}

// AddrOf returns the host's address of family (corev1.IPv4Protocol or
// IPv6Protocol; anything else is IPv4).
func (h *Host) AddrOf(family corev1.IPFamily) netip.Addr {
	if family == corev1.IPv6Protocol {
		return h.IP6
	}
	return h.IP
}

// Node is a node of the test bed: a namespace on the underlay with a bridge
// for its pods and a VXLAN device to the other nodes' pods.
type Node struct {
	Host
	// Index is N in nodeN.
	Index int
	// PodCIDR is 10.244.N.0/24, PodCIDR6 fd00:10:244:N::/64.
	PodCIDR, PodCIDR6 netip.Prefix
	// Gateway and Gateway6 are the bridge's addresses, the pods' default
	// routes.
	Gateway, Gateway6 netip.Addr
	// Proxy is the svcproxy running on the node, if any.
	Proxy *Process
	// ProxyArgs are extra flags for this node's svcproxy only, after
	// Options.SvcproxyArgs (so they win); they take effect at its next
	// start (RestartProxy, StartProxy). A test that sets them restores
	// them and restarts the proxy when it ends.
	ProxyArgs []string

	nextPod int // last octet of the next pod address
}

func vtepMAC(i int) string   { return fmt.Sprintf("02:00:0a:f4:%02x:00", i) }
func vtepAddr(i int) string  { return podNetPrefix + strconv.Itoa(i) + ".0" }
func vtepAddr6(i int) string { return podNetPrefix6 + strconv.Itoa(i) + "::" }

// underlay creates the switch namespace that stands for the nodes' L2
// network.
func (c *Cluster) buildUnderlay(ctx context.Context) error {
	sw, err := c.addNetNS(ctx, "net")
	if err != nil {
		return err
	}
	c.Underlay = sw
	// The switch only switches: bridged frames skip its (empty) iptables
	// and ip6tables.
	for _, key := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
		if err := sw.Sysctl(ctx, key, "0"); err != nil {
			return err
		}
	}
	if err := sw.IP(ctx, "link", "add", underlayBridge, "type", "bridge"); err != nil {
		return err
	}
	return sw.IP(ctx, "link", "set", underlayBridge, "up")
}

// plugUnderlay connects ns to the underlay switch with a veth pair: eth0 in
// ns with addr/24 and addr6/64, port on the switch's bridge.
func (c *Cluster) plugUnderlay(ctx context.Context, ns *NetNS, port, addr, addr6 string) error {
	sw := c.Underlay
	for _, args := range [][]string{
		{"link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.Name},
		{"link", "set", port, "master", underlayBridge, "up"},
	} {
		if err := sw.IP(ctx, args...); err != nil {
			return err
		}
	}
	for _, args := range [][]string{
		{"addr", "add", addr + "/24", "dev", "eth0"},
		{"addr", "add", addr6 + "/64", "dev", "eth0", "nodad"},
		{"link", "set", "eth0", "up"},
	} {
		if err := ns.IP(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// addNode creates node i: its namespace on the underlay, the pod bridge and
// the VXLAN device. Routes to the other nodes come from linkNodes.
func (c *Cluster) addNode(ctx context.Context, i int) (*Node, error) {
	name := "node" + strconv.Itoa(i)
	ns, err := c.addNetNS(ctx, name)
	if err != nil {
		return nil, err
	}
	ip := underlayPrefix + strconv.Itoa(i)
	ip6 := underlayPrefix6 + strconv.Itoa(i)
	n := &Node{
		Host:     Host{Name: name, NetNS: ns, IP: netip.MustParseAddr(ip), IP6: netip.MustParseAddr(ip6)},
		Index:    i,
		PodCIDR:  netip.MustParsePrefix(podNetPrefix + strconv.Itoa(i) + ".0/24"),
		PodCIDR6: netip.MustParsePrefix(podNetPrefix6 + strconv.Itoa(i) + "::/64"),
		Gateway:  netip.MustParseAddr(podNetPrefix + strconv.Itoa(i) + ".1"),
		Gateway6: netip.MustParseAddr(podNetPrefix6 + strconv.Itoa(i) + "::1"),
		nextPod:  2,
	}
	// A node routes for its pods, and bridged pod traffic goes through
	// iptables and ip6tables (br_netfilter), as kubeadm's preflight
	// demands: without it a same-node ClusterIP reply would bypass the
	// reverse NAT. ICMPv6 errors (a REJECT's) are not rate-limited, so
	// that a refusal is seen at once. Forwarding first: it turns every
	// interface of the namespace, and those created later, into a
	// router's.
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv6.conf.all.forwarding", "1"},
		{"net.bridge.bridge-nf-call-iptables", "1"},
		{"net.bridge.bridge-nf-call-ip6tables", "1"},
		{"net.ipv6.icmp.ratelimit", "0"},
	} {
		if err := ns.Sysctl(ctx, kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	if err := c.plugUnderlay(ctx, ns, name, ip, ip6); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "add", bridgeDevice, "mtu", podMTU, "type", "bridge"},
		{"addr", "add", n.Gateway.String() + "/24", "dev", bridgeDevice},
		{"addr", "add", n.Gateway6.String() + "/64", "dev", bridgeDevice, "nodad"},
		{"link", "set", bridgeDevice, "up"},
		{"link", "add", vxlanDevice, "address", vtepMAC(i), "mtu", podMTU, "type", "vxlan", "id", vxlanID,
			"local", ip, "dev", "eth0", "dstport", vxlanPort, "nolearning"},
		{"addr", "add", vtepAddr(i) + "/32", "dev", vxlanDevice},
		{"addr", "add", vtepAddr6(i) + "/128", "dev", vxlanDevice, "nodad"},
		{"link", "set", vxlanDevice, "up"},
		// Nodes have default routes of both families, as real ones do;
		// the kernel needs a route for a ClusterIP before the proxy's
		// DNAT picks the real destination. They lead to the control
		// plane, which forwards nothing.
		{"route", "add", "default", "via", controlPlaneIP},
		{"-6", "route", "add", "default", "via", controlPlaneIP6},
	} {
		if err := ns.IP(ctx, args...); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// linkNodes writes on every node what flannel's vxlan backend writes for
// each other node: a route to each of its pod CIDRs via its VTEP address of
// that family, the VTEP's MAC (ARP and NDP entries) and where to send
// frames for that MAC (FDB: the node's IPv4 underlay address; IPv6 pod
// traffic rides the same tunnel).
func (c *Cluster) linkNodes(ctx context.Context) error {
	for _, n := range c.Nodes {
		for _, o := range c.Nodes {
			if o == n {
				continue
			}
			if err := n.NetNS.IP(ctx, "route", "add", o.PodCIDR.String(), "via", vtepAddr(o.Index), "dev", vxlanDevice, "onlink"); err != nil {
				return err
			}
			if err := n.NetNS.IP(ctx, "neigh", "add", vtepAddr(o.Index), "lladdr", vtepMAC(o.Index), "dev", vxlanDevice, "nud", "permanent"); err != nil {
				return err
			}
			if err := n.NetNS.IP(ctx, "-6", "route", "add", o.PodCIDR6.String(), "via", vtepAddr6(o.Index), "dev", vxlanDevice, "onlink"); err != nil {
				return err
			}
			if err := n.NetNS.IP(ctx, "-6", "neigh", "add", vtepAddr6(o.Index), "lladdr", vtepMAC(o.Index), "dev", vxlanDevice, "nud", "permanent"); err != nil {
				return err
			}
			if _, err := n.NetNS.Exec(ctx, "bridge", "fdb", "append", vtepMAC(o.Index), "dev", vxlanDevice, "dst", o.IP.String()); err != nil {
				return err
			}
		}
	}
	return nil
}

// addControlPlaneHost creates the control plane's namespace on the underlay.
// It routes the pod network to the nodes, as a control-plane node of the
// cluster would: CoreDNS (a pod) talks to the API server.
func (c *Cluster) addControlPlaneHost(ctx context.Context) error {
	ns, err := c.addNetNS(ctx, "cp")
	if err != nil {
		return err
	}
	c.ControlPlane = &Host{Name: "control-plane", NetNS: ns, IP: netip.MustParseAddr(controlPlaneIP), IP6: netip.MustParseAddr(controlPlaneIP6)}
	if err := c.plugUnderlay(ctx, ns, "cp", controlPlaneIP, controlPlaneIP6); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		if err := ns.IP(ctx, "route", "add", n.PodCIDR.String(), "via", n.IP.String()); err != nil {
			return err
		}
		if err := ns.IP(ctx, "-6", "route", "add", n.PodCIDR6.String(), "via", n.IP6.String()); err != nil {
			return err
		}
	}
	return nil
}

// addClient creates the outside client: on the underlay, with no route to
// pods or services, so it reaches only the nodes' (and control plane's)
// addresses.
func (c *Cluster) addClient(ctx context.Context) error {
	ns, err := c.addNetNS(ctx, "client")
	if err != nil {
		return err
	}
	c.Client = &Host{Name: "client", NetNS: ns, IP: netip.MustParseAddr(clientIP), IP6: netip.MustParseAddr(clientIP6)}
	return c.plugUnderlay(ctx, ns, "client", clientIP, clientIP6)
}

// podNetwork creates a pod's namespace on node n: eth0 (a veth to cni0,
// hairpin on) with the next free address of each of the node's pod CIDRs
// and default routes of both families via the bridge.
func (c *Cluster) podNetwork(ctx context.Context, n *Node) (ns *NetNS, ip, ip6 netip.Addr, veth string, err error) {
	c.mu.Lock()
	if n.nextPod > 254 {
		c.mu.Unlock()
		return nil, netip.Addr{}, netip.Addr{}, "", fmt.Errorf("%s has no free pod address left", n.Name)
	}
	ip = netip.MustParseAddr(podNetPrefix + strconv.Itoa(n.Index) + "." + strconv.Itoa(n.nextPod))
	ip6 = netip.MustParseAddr(podNetPrefix6 + strconv.Itoa(n.Index) + "::" + strconv.FormatInt(int64(n.nextPod), 16))
	n.nextPod++
	c.podSeq++
	seq := c.podSeq
	c.mu.Unlock()

	ns, err = c.addNetNS(ctx, "pod"+strconv.Itoa(seq))
	if err != nil {
		return nil, ip, ip6, "", err
	}
	veth = "veth" + strconv.Itoa(seq)
	steps := []struct {
		ns   *NetNS
		args []string
	}{
		{n.NetNS, []string{"link", "add", veth, "mtu", podMTU, "type", "veth", "peer", "name", "eth0", "mtu", podMTU, "netns", ns.Name}},
		{n.NetNS, []string{"link", "set", veth, "master", bridgeDevice, "up"}},
		{n.NetNS, []string{"link", "set", veth, "type", "bridge_slave", "hairpin", "on"}},
		{ns, []string{"addr", "add", ip.String() + "/24", "dev", "eth0"}},
		{ns, []string{"addr", "add", ip6.String() + "/64", "dev", "eth0", "nodad"}},
		{ns, []string{"link", "set", "eth0", "up"}},
		{ns, []string{"route", "add", "default", "via", n.Gateway.String()}},
		{ns, []string{"-6", "route", "add", "default", "via", n.Gateway6.String()}},
	}
	for _, s := range steps {
		if err := s.ns.IP(ctx, s.args...); err != nil {
			return ns, ip, ip6, veth, err
		}
	}
	return ns, ip, ip6, veth, nil
}
