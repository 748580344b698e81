// Package demo is the small workload that `hack/e2e.sh --up` starts on the
// e2e test bed (test/e2e/framework), so that there is something to reach
// and to explain, and that the e2e test of `svcproxy explain` checks
// against real connections (test/e2e/explain_test.go):
//
//	a/client   a pod on node1 whose resolv.conf points at CoreDNS
//	b/web      dual-stack NodePort (node port 30080), TCP and UDP 80 → 8080;
//	           endpoints b/web-1 on node1, b/web-2 and b/web-3 on node2
//	b/api      dual-stack NodePort (30081) with externalTrafficPolicy Local;
//	           its one endpoint b/api-1 runs on node2
//	b/empty    dual-stack ClusterIP, TCP and UDP 80, no endpoints
//
// No controller runs in the test bed: the EndpointSlices are written as the
// EndpointSlice controller would write them for these pods.
//
// The client pod gets a resolv.conf (CoreDNS's ClusterIP, the search path
// of namespace a, ndots:5) and an nsswitch.conf whose hosts line is "files
// dns", in /etc/netns/<its network namespace>/, which `ip netns exec`
// mounts over /etc for the command it runs: a shell, getent or bash's
// /dev/tcp inside the pod resolves names as the pod would. Close removes
// them (and Start removes those of runs that are gone).
package demo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// The demo's node ports, fixed so that the commands of the README work as
// they are printed (they lie in the range's lower band, which the API
// server leaves to Services that ask for a port).
const (
	WebNodePort = 30080
	APINodePort = 30081
)

// ServicePort is the port of every demo Service (TCP and UDP), in front of
// the pods' framework.PodPort.
const ServicePort = 80

// etcNetns is where `ip netns exec NAME` finds files to mount over /etc.
const etcNetns = "/etc/netns"

// Demo is the running demo.
type Demo struct {
	// Client is a/client on the first node.
	Client *framework.Pod
	// Web are b/web's endpoints: b/web-1 on the first node, b/web-2 and
	// b/web-3 on the last.
	Web []*framework.Pod
	// API is b/api's one endpoint, b/api-1 on the last node.
	API *framework.Pod
	// WebSvc, APISvc and EmptySvc are the Services as created (ClusterIPs
	// of both families, node ports).
	WebSvc, APISvc, EmptySvc *corev1.Service

	c        *framework.Cluster
	pods     []*framework.Pod
	services []*corev1.Service
	etcDirs  []string
	madeEtc  bool // Start created /etc/netns: Close removes it when empty
}

// Start creates the demo on c and waits until every node's svcproxy has
// programmed its Services. On error what was created is removed again.
func Start(ctx context.Context, c *framework.Cluster) (d *Demo, err error) {
	d = &Demo{c: c}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.Close(context.WithoutCancel(ctx)))
			d = nil
		}
	}()
	sweepStaleEtc()
	first, last := c.Nodes[0], c.Nodes[len(c.Nodes)-1]
	for _, ns := range []string{"a", "b"} {
		if err := c.EnsureNamespace(ctx, ns); err != nil {
			return d, fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	if d.Client, err = d.startPod(ctx, "a", "client", first); err != nil {
		return d, err
	}
	for i, n := range []*framework.Node{first, last, last} {
		p, err := d.startPod(ctx, "b", "web-"+strconv.Itoa(i+1), n)
		if err != nil {
			return d, err
		}
		d.Web = append(d.Web, p)
	}
	if d.API, err = d.startPod(ctx, "b", "api-1", last); err != nil {
		return d, err
	}

	web := nodePort(framework.DualStack(framework.NewService("b", "web", ServicePort, corev1.ProtocolTCP, corev1.ProtocolUDP)), WebNodePort)
	if d.WebSvc, err = d.createService(ctx, web, d.Web...); err != nil {
		return d, err
	}
	api := nodePort(framework.DualStack(framework.NewService("b", "api", ServicePort, corev1.ProtocolTCP, corev1.ProtocolUDP)), APINodePort)
	api.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	if d.APISvc, err = d.createService(ctx, api, d.API); err != nil {
		return d, err
	}
	empty := framework.DualStack(framework.NewService("b", "empty", ServicePort, corev1.ProtocolTCP, corev1.ProtocolUDP))
	if d.EmptySvc, err = d.createService(ctx, empty); err != nil {
		return d, err
	}

	for _, s := range []*corev1.Service{d.WebSvc, d.APISvc} {
		if err := c.WaitServiceProgrammed(ctx, s, false); err != nil {
			return d, err
		}
	}
	if err := c.WaitServiceProgrammed(ctx, d.EmptySvc, true); err != nil {
		return d, err
	}
	if err := d.writeResolvConf(d.Client); err != nil {
		return d, err
	}
	return d, nil
}

// nodePort makes svc a NodePort Service with port on each of its ports
// (TCP and UDP share the number).
func nodePort(svc *corev1.Service, port int32) *corev1.Service {
	svc.Spec.Type = corev1.ServiceTypeNodePort
	for i := range svc.Spec.Ports {
		svc.Spec.Ports[i].NodePort = port
	}
	return svc
}

func (d *Demo) startPod(ctx context.Context, namespace, name string, n *framework.Node) (*framework.Pod, error) {
	p, err := d.c.StartPod(ctx, namespace, name, n)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s on %s: %w", namespace, name, n.Name, err)
	}
	d.pods = append(d.pods, p)
	return p, nil
}

// createService creates svc, with the selector app=<name> a Deployment's
// pods would match, and the EndpointSlices of pods (empty ones with
// none, as the controller writes for a selector that matches no ready
// pod).
func (d *Demo) createService(ctx context.Context, svc *corev1.Service, pods ...*framework.Pod) (*corev1.Service, error) {
	svc.Spec.Selector = map[string]string{"app": svc.Name}
	created, err := d.c.Kube.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	d.services = append(d.services, created)
	if _, err := d.c.SetEndpoints(ctx, created, pods...); err != nil {
		return nil, fmt.Errorf("endpoints of %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return created, nil
}

// Close deletes the demo's Services and EndpointSlices, stops its pods and
// removes the client's /etc/netns files. The namespaces a and b stay (no
// namespace controller runs to finish their deletion).
func (d *Demo) Close(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var errs []error
	for _, s := range d.services {
		err := d.c.Kube.DiscoveryV1().EndpointSlices(s.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + s.Name})
		if err != nil {
			errs = append(errs, fmt.Errorf("deleting the EndpointSlices of %s/%s: %w", s.Namespace, s.Name, err))
		}
		if err := d.c.Kube.CoreV1().Services(s.Namespace).Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting service %s/%s: %w", s.Namespace, s.Name, err))
		}
	}
	d.services = nil
	for _, p := range d.pods {
		if err := d.c.RemovePod(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	d.pods = nil
	for _, dir := range d.etcDirs {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	d.etcDirs = nil
	if d.madeEtc {
		_ = os.Remove(etcNetns) // only if empty: another test bed may use it
		d.madeEtc = false
	}
	return errors.Join(errs...)
}

// Pods returns every pod of the demo.
func (d *Demo) Pods() []*framework.Pod { return append([]*framework.Pod(nil), d.pods...) }

// ResolvConf is the resolv.conf kubelet writes for a pod of p's
// namespace with the cluster DNS (ClusterFirst).
func ResolvConf(p *framework.Pod) string {
	return "search " + strings.Join(p.SearchDomains(), " ") + "\n" +
		"nameserver " + framework.DNSServiceIP + "\n" +
		"options ndots:5\n"
}

// writeResolvConf writes p's resolv.conf, and an nsswitch.conf that asks
// DNS for host names (a machine whose hosts line goes to systemd-resolved
// first would never read resolv.conf), into /etc/netns/<p's netns>/.
func (d *Demo) writeResolvConf(p *framework.Pod) error {
	dir := filepath.Join(etcNetns, p.NetNS.Name)
	if _, err := os.Stat(etcNetns); errors.Is(err, os.ErrNotExist) {
		d.madeEtc = true
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	d.etcDirs = append(d.etcDirs, dir)
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(ResolvConf(p)), 0o644); err != nil {
		return err
	}
	nss, err := os.ReadFile("/etc/nsswitch.conf")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "nsswitch.conf"), []byte(podNSSwitch(string(nss))), 0o644)
}

// podNSSwitch returns the machine's nsswitch.conf with its hosts line
// replaced by "hosts: files dns".
func podNSSwitch(machine string) string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(machine, "\n"), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "hosts:" {
			continue
		}
		if l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(append(out, "hosts: files dns"), "\n") + "\n"
}

// sweepStaleEtc removes /etc/netns/<framework.NamePrefix><pid>-... of runs
// whose process is gone (a killed test bed); their namespaces are removed
// by the framework's own sweep.
func sweepStaleEtc() {
	entries, err := os.ReadDir(etcNetns)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), framework.NamePrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue
		}
		_ = os.RemoveAll(filepath.Join(etcNetns, e.Name()))
	}
}

// ExplainArgv is `svcproxy explain` with the flags of node n's svcproxy
// (the binary under test, its ServiceAccount's kubeconfig,
// --hostname-override, --cluster-cidr and the test bed's extra flags such
// as --mode). It must run inside n's network namespace, where the API
// server's address is reachable: see ExplainCommand.
func ExplainArgv(c *framework.Cluster, n *framework.Node) []string {
	o := c.Options()
	argv := []string{o.Svcproxy, "explain",
		"--kubeconfig", c.ProxyKubeconfig,
		"--hostname-override", n.Name,
		"--cluster-cidr", framework.ClusterCIDRs}
	return append(argv, o.SvcproxyArgs...)
}

// ExplainCommand is ExplainArgv run in n's network namespace.
func ExplainCommand(c *framework.Cluster, n *framework.Node) []string {
	return append([]string{"ip", "netns", "exec", n.NetNS.Name}, ExplainArgv(c, n)...)
}

// ConnectCommand is a shell command line, to run inside a pod's network
// namespace (`ip netns exec`), that opens one TCP connection to name:port
// — name resolved through the pod's resolv.conf — and prints the first
// line the backend sends (podserver's "name=<ns>/<pod> src=<ip:port>"). It
// gives up after 3 s (a dropped SYN would wait minutes).
func ConnectCommand(name string, port int) []string {
	return []string{"timeout", "3", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d && head -1 <&3", name, port)}
}
