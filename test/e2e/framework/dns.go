package framework

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The RBAC of CoreDNS's kubernetes plugin, as in CoreDNS's own deployment
// manifest (deployment/kubernetes/coredns.yaml.sed).
const corednsRBAC = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
  - apiGroups: [""]
    resources: ["endpoints", "services", "pods", "namespaces"]
    verbs: ["list", "watch"]
  - apiGroups: ["discovery.k8s.io"]
    resources: ["endpointslices"]
    verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
  - kind: ServiceAccount
    name: coredns
    namespace: kube-system
`

// corefile is kubeadm's default Corefile without `forward`: the test bed
// sends no query outside the cluster. The kubeconfig reaches the API server
// through the kubernetes Service's ClusterIP, as CoreDNS's in-cluster
// configuration does, so CoreDNS depends on svcproxy like a real pod.
const corefile = `.:53 {
    errors
    health :8080
    ready :8181
    kubernetes %[1]s in-addr.arpa ip6.arpa {
        kubeconfig %[2]s e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    prometheus :9153
    cache 30
    loop
    loadbalance
}
`

// startDNS starts CoreDNS as pod kube-system/coredns-1 on the last node,
// behind Service kube-system/kube-dns (DNSServiceIP, UDP and TCP 53), with
// the EndpointSlice a controller would write, and waits until it is ready.
func (c *Cluster) startDNS(ctx context.Context) error {
	if _, err := ApplyManifest(ctx, c.Kube, []byte(corednsRBAC)); err != nil {
		return fmt.Errorf("CoreDNS RBAC: %w", err)
	}
	token, err := ServiceAccountToken(ctx, c.Kube, metav1.NamespaceSystem, "coredns")
	if err != nil {
		return err
	}
	// CoreDNS reaches the API server through the kubernetes Service, like
	// CoreDNS's in-cluster configuration (KUBERNETES_SERVICE_HOST).
	kubeconfig := c.path("coredns.kubeconfig")
	if err := writeKubeconfig(kubeconfig, c.pki.caPEM, "system:serviceaccount:kube-system:coredns", token); err != nil {
		return err
	}
	if err := rewriteServer(kubeconfig, APIServerURL, "https://"+KubernetesServiceIP+":443"); err != nil {
		return err
	}
	conf := c.path("Corefile")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(corefile, ClusterDomain, kubeconfig)), 0o644); err != nil {
		return err
	}

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: DNSServiceIP,
			Selector:  map[string]string{"k8s-app": "kube-dns"},
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
				{Name: "metrics", Port: 9153, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(9153)},
			},
		},
	}
	if svc, err = c.Kube.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}

	c.dnsService, c.dnsConf = svc, conf
	pod, err := c.startCoreDNS(ctx, c.Nodes[len(c.Nodes)-1])
	if err != nil {
		return err
	}
	c.DNS = pod
	if _, err = c.ApplyEndpointSlice(ctx, EndpointSliceFor(svc, dnsSliceName, pod)); err != nil {
		return err
	}
	return c.WaitServiceProgrammed(ctx, svc, false)
}

// dnsSliceName is the EndpointSlice of kube-dns.
const dnsSliceName = "kube-dns-e2e"

// startCoreDNS starts a CoreDNS pod kube-system/coredns-<n> on node and
// waits until it is ready: its /ready is ok once the kubernetes plugin has
// synced with the API server (through 10.96.0.1 and svcproxy).
func (c *Cluster) startCoreDNS(ctx context.Context, node *Node) (*Pod, error) {
	c.mu.Lock()
	c.dnsSeq++
	name := fmt.Sprintf("coredns-%d", c.dnsSeq)
	c.mu.Unlock()
	pod, err := c.startPod(ctx, metav1.NamespaceSystem, name, node, func(*Pod) []string {
		return []string{c.Tool("coredns"), "-conf", c.dnsConf}
	})
	if err != nil {
		return nil, err
	}
	httpc := &http.Client{Transport: &http.Transport{DialContext: node.NetNS.DialContext}, Timeout: time.Second}
	defer httpc.CloseIdleConnections()
	readyURL := "http://" + net.JoinHostPort(pod.IP.String(), "8181") + "/ready"
	if err := poll(ctx, 60*time.Second, pod.Process, func() error {
		resp, err := httpc.Get(readyURL)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s: %s", readyURL, resp.Status, strings.TrimSpace(string(b)))
		}
		return nil
	}); err != nil {
		return nil, errors.Join(fmt.Errorf("CoreDNS %s did not become ready: %w", pod.Name, err), c.RemovePod(context.WithoutCancel(ctx), pod))
	}
	return pod, nil
}

// ReplaceDNS replaces the CoreDNS pod as a rolling update does: a new pod
// (new address) on node, ready, joins kube-dns's EndpointSlice; the old one
// leaves it and is stopped a second later. It returns the new pod, which
// is Cluster.DNS from then on.
func (c *Cluster) ReplaceDNS(ctx context.Context, node *Node) (*Pod, error) {
	old := c.DNS
	pod, err := c.startCoreDNS(ctx, node)
	if err != nil {
		return nil, err
	}
	if _, err := c.ApplyEndpointSlice(ctx, EndpointSliceFor(c.dnsService, dnsSliceName, old, pod)); err != nil {
		return nil, err
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := c.ApplyEndpointSlice(ctx, EndpointSliceFor(c.dnsService, dnsSliceName, pod)); err != nil {
		return nil, err
	}
	c.DNS = pod
	time.Sleep(time.Second)
	return pod, c.RemovePod(ctx, old)
}

// rewriteServer replaces the server URL in a kubeconfig file.
func rewriteServer(path, from, to string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := strings.ReplaceAll(string(b), from, to)
	if s == string(b) {
		return fmt.Errorf("%s: no server %s to replace", path, from)
	}
	return os.WriteFile(path, []byte(s), 0o600)
}

// SearchDomains is the pod's DNS search path, as kubelet writes it into
// resolv.conf: <ns>.svc.<domain> svc.<domain> <domain>.
func (p *Pod) SearchDomains() []string {
	return []string{p.Namespace + ".svc." + ClusterDomain, "svc." + ClusterDomain, ClusterDomain}
}

// ndots is kubelet's resolv.conf option.
const ndots = 5

// SearchNames returns the absolute names a resolver with search path and
// ndots tries for name, in order, as glibc and musl do: a name with a
// trailing dot is only itself; one with at least ndots dots is tried as is
// first, then with each search domain; others with each search domain
// first and as is last.
func SearchNames(name string, search []string, ndots int) []string {
	if strings.HasSuffix(name, ".") {
		return []string{name}
	}
	var out []string
	asIs := strings.Count(name, ".") >= ndots
	if asIs {
		out = append(out, name+".")
	}
	for _, s := range search {
		out = append(out, name+"."+strings.TrimSuffix(s, ".")+".")
	}
	if !asIs {
		out = append(out, name+".")
	}
	return out
}

// Resolver returns a resolver that sends its queries from inside the pod
// to server (an "ip:port") over proto only: with TCP, the connection it
// hands Go's resolver is a stream, so every query goes over TCP.
func (p *Pod) Resolver(proto corev1.Protocol, server string) *net.Resolver {
	network := "udp"
	if proto == corev1.ProtocolTCP {
		network = "tcp"
	}
	return &net.Resolver{
		PreferGo:     true,
		StrictErrors: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return p.NetNS.DialContext(ctx, network, server)
		},
	}
}

// Resolve looks up the IPv4 addresses of name as a process in the pod
// would: through the cluster DNS Service (DNSServiceIP:53) over proto, with
// the pod's search path and ndots:5. It returns the addresses and the
// absolute name that answered.
func (p *Pod) Resolve(ctx context.Context, proto corev1.Protocol, name string) ([]netip.Addr, string, error) {
	return p.ResolveFamily(ctx, proto, name, corev1.IPv4Protocol)
}

// ResolveFamily is Resolve for the addresses of family: A records for
// IPv4, AAAA records for IPv6 (the query still goes to the kube-dns
// ClusterIP, an IPv4 one, as a dual-stack cluster's resolv.conf says).
func (p *Pod) ResolveFamily(ctx context.Context, proto corev1.Protocol, name string, family corev1.IPFamily) ([]netip.Addr, string, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	network := "ip4"
	if family == corev1.IPv6Protocol {
		network = "ip6"
	}
	r := p.Resolver(proto, net.JoinHostPort(DNSServiceIP, "53"))
	var tried []string
	for _, fqdn := range SearchNames(name, p.SearchDomains(), ndots) {
		addrs, err := r.LookupNetIP(ctx, network, fqdn)
		if err == nil && len(addrs) > 0 {
			for i := range addrs {
				addrs[i] = addrs[i].Unmap()
			}
			return addrs, fqdn, nil
		}
		var de *net.DNSError
		if err != nil && !(errors.As(err, &de) && de.IsNotFound) {
			return nil, fqdn, fmt.Errorf("%s: resolving %s (%s) over %s: %w", p.Name, fqdn, network, proto, err)
		}
		tried = append(tried, fqdn)
	}
	return nil, "", fmt.Errorf("%s: %s (%s) not found over %s (tried %s)", p.Name, name, network, proto, strings.Join(tried, ", "))
}

// DNSQuery is a DNS query for the A records of name (RD set).
func DNSQuery(id uint16, name string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = append(b, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD; one question
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(label)))
		b = append(b, label...)
	}
	return append(b, 0, 0, 1, 0, 1) // root; type A; class IN
}

// CheckDNSAnswer checks that resp answers query id with NOERROR and at
// least one record.
func CheckDNSAnswer(resp []byte, id uint16) error {
	switch {
	case len(resp) < 12:
		return fmt.Errorf("short DNS message (%d bytes)", len(resp))
	case binary.BigEndian.Uint16(resp) != id:
		return ErrStaleAnswer
	case resp[2]&0x80 == 0:
		return errors.New("not a DNS response")
	case resp[3]&0x0f != 0:
		return fmt.Errorf("DNS rcode %d", resp[3]&0x0f)
	case binary.BigEndian.Uint16(resp[6:]) == 0:
		return errors.New("DNS answer without records")
	}
	return nil
}

// ErrStaleAnswer is CheckDNSAnswer's error for an answer to another query id.
var ErrStaleAnswer = errors.New("answer to an earlier query")
