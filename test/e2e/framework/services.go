package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// ManagedBy is the endpointslice.kubernetes.io/managed-by value of the
// slices the tests write (no controller-manager runs to write them).
const ManagedBy = "e2e.svcproxy.io"

// NewService returns a Service of type ClusterIP in namespace/name with one
// port per protocol, each port → PodPort of the pods.
func NewService(namespace, name string, port int32, protocols ...corev1.Protocol) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP},
	}
	if len(protocols) == 0 {
		protocols = []corev1.Protocol{corev1.ProtocolTCP}
	}
	for _, p := range protocols {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name:       portName(p),
			Protocol:   p,
			Port:       port,
			TargetPort: intstr.FromInt32(PodPort),
		})
	}
	return svc
}

// DualStack makes svc dual-stack (RequireDualStack, IPv4 first, the
// cluster's primary family) and returns it: the API server gives it a
// ClusterIP of each family.
func DualStack(svc *corev1.Service) *corev1.Service {
	svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	return svc
}

// IPv6Only makes svc a single-stack IPv6 Service and returns it.
func IPv6Only(svc *corev1.Service) *corev1.Service {
	svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicySingleStack)
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	return svc
}

// Families returns svc's IP families as the API server set them; a
// Service not yet created (no families) is IPv4, the primary family.
func Families(svc *corev1.Service) []corev1.IPFamily {
	if len(svc.Spec.IPFamilies) == 0 {
		return []corev1.IPFamily{corev1.IPv4Protocol}
	}
	return svc.Spec.IPFamilies
}

func portName(p corev1.Protocol) string {
	switch p {
	case corev1.ProtocolUDP:
		return "udp"
	case corev1.ProtocolSCTP:
		return "sctp"
	default:
		return "tcp"
	}
}

// EndpointSliceFor returns the IPv4 EndpointSlice name of svc that a
// controller would write for pods: all ready, each on its node, one slice
// port per Service port (targetPort must be a number).
func EndpointSliceFor(svc *corev1.Service, name string, pods ...*Pod) *discoveryv1.EndpointSlice {
	return EndpointSliceOfFamily(svc, name, corev1.IPv4Protocol, pods...)
}

// EndpointSliceOfFamily is EndpointSliceFor with the pods' addresses of
// family: addressType IPv4 or IPv6, as the EndpointSlice controller writes
// one slice per family of a Service.
func EndpointSliceOfFamily(svc *corev1.Service, name string, family corev1.IPFamily, pods ...*Pod) *discoveryv1.EndpointSlice {
	addressType := discoveryv1.AddressTypeIPv4
	if family == corev1.IPv6Protocol {
		addressType = discoveryv1.AddressTypeIPv6
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: svc.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   ManagedBy,
			},
		},
		AddressType: addressType,
		Endpoints:   []discoveryv1.Endpoint{},
	}
	for _, sp := range svc.Spec.Ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{
			Name:     ptr.To(sp.Name),
			Protocol: ptr.To(sp.Protocol),
			Port:     ptr.To(int32(sp.TargetPort.IntValue())),
		})
	}
	for _, p := range pods {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p.AddrOf(family).String()},
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false),
			},
			NodeName:  ptr.To(p.Node.Name),
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.PodName},
		})
	}
	return slice
}

// MustCreateService creates svc (and its namespace if needed) and deletes it
// with its EndpointSlices when the test ends. It returns the Service as
// created, with its ClusterIP and NodePorts.
func (c *Cluster) MustCreateService(t testing.TB, svc *corev1.Service) *corev1.Service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.EnsureNamespace(ctx, svc.Namespace); err != nil {
		t.Fatalf("namespace %s: %v", svc.Namespace, err)
	}
	created, err := c.Kube.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := c.Kube.DiscoveryV1().EndpointSlices(svc.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc.Name})
		if err != nil {
			t.Errorf("deleting the EndpointSlices of %s/%s: %v", svc.Namespace, svc.Name, err)
		}
		if err := c.Kube.CoreV1().Services(svc.Namespace).Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting service %s/%s: %v", svc.Namespace, svc.Name, err)
		}
	})
	return created
}

// SetEndpoints writes svc's EndpointSlices with pods as their endpoints
// (creating or replacing them), one per IP family of svc as the controller
// does: "<svc>-e2e" of addressType IPv4, "<svc>-e2e-ipv6" of addressType
// IPv6. It returns the time the API server accepted the last. No pods
// means empty slices: a service without endpoints.
func (c *Cluster) SetEndpoints(ctx context.Context, svc *corev1.Service, pods ...*Pod) (time.Time, error) {
	var at time.Time
	for _, family := range Families(svc) {
		var err error
		if at, err = c.ApplyEndpointSlice(ctx, EndpointSliceOfFamily(svc, SliceName(svc, family), family, pods...)); err != nil {
			return at, err
		}
	}
	return at, nil
}

// SliceName is the name of svc's EndpointSlice of family that
// SetEndpoints writes.
func SliceName(svc *corev1.Service, family corev1.IPFamily) string {
	if family == corev1.IPv6Protocol {
		return svc.Name + "-e2e-ipv6"
	}
	return svc.Name + "-e2e"
}

// MustSetEndpoints is SetEndpoints for a test.
func (c *Cluster) MustSetEndpoints(t testing.TB, svc *corev1.Service, pods ...*Pod) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at, err := c.SetEndpoints(ctx, svc, pods...)
	if err != nil {
		t.Fatalf("setting the endpoints of %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	return at
}

// ApplyEndpointSlice creates slice, or replaces the existing one of that
// name, and returns when the API server accepted it.
func (c *Cluster) ApplyEndpointSlice(ctx context.Context, slice *discoveryv1.EndpointSlice) (time.Time, error) {
	slices := c.Kube.DiscoveryV1().EndpointSlices(slice.Namespace)
	// Like the EndpointSlice controller: the time of the change that
	// caused this update, from which proxies measure their network
	// programming latency.
	slice = slice.DeepCopy()
	if slice.Annotations == nil {
		slice.Annotations = map[string]string{}
	}
	slice.Annotations["endpoints.kubernetes.io/last-change-trigger-time"] = time.Now().UTC().Format(time.RFC3339Nano)
	_, err := slices.Create(ctx, slice, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var cur *discoveryv1.EndpointSlice
		cur, err = slices.Get(ctx, slice.Name, metav1.GetOptions{})
		if err == nil {
			slice = slice.DeepCopy()
			slice.ResourceVersion = cur.ResourceVersion
			_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
		}
	}
	return time.Now(), err
}

// WaitServiceProgrammed waits until every node's svcproxy has programmed
// svc: from each node itself (its host network), every TCP and UDP port of
// each of its ClusterIPs (both families of a dual-stack Service) answers,
// or, with refused set (a Service without endpoints), is refused. An IPv6
// TCP port is judged refused only after its SYN retransmit (the kernel
// does not fail a connect on the ICMPv6 error of a REJECT at once), so
// a refused IPv6 Service is judged on its UDP ports when it has some. Tests call it before their clients touch svc, so
// that no client tuple meets rules that are half written: a connection
// that does leaves a conntrack entry that blackholes its source port for
// minutes (TCP SYN_SENT lasts 120s), and the test would fail for a reason
// that is not its own. Any backend will do: a TCP connection must be
// accepted, a UDP datagram (a DNS query, which podserver echoes and CoreDNS
// answers) must get a reply.
func (c *Cluster) WaitServiceProgrammed(ctx context.Context, svc *corev1.Service, refused bool) error {
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	hasUDP := slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Protocol == corev1.ProtocolUDP })
	for _, n := range c.Nodes {
		for _, clusterIP := range clusterIPs {
			ipv6 := strings.Contains(clusterIP, ":")
			for _, sp := range svc.Spec.Ports {
				if sp.Protocol != corev1.ProtocolTCP && sp.Protocol != corev1.ProtocolUDP {
					continue
				}
				timeout := 300 * time.Millisecond
				if refused && ipv6 && sp.Protocol == corev1.ProtocolTCP {
					if hasUDP {
						continue
					}
					timeout = 1500 * time.Millisecond
				}
				addr := net.JoinHostPort(clusterIP, strconv.Itoa(int(sp.Port)))
				if err := c.waitPortProgrammed(ctx, n, sp.Protocol, addr, refused, timeout); err != nil {
					return fmt.Errorf("%s/%s %s %s not programmed on %s: %w", svc.Namespace, svc.Name, sp.Protocol, addr, n.Name, err)
				}
			}
		}
	}
	return nil
}

// waitPortProgrammed waits until addr answers from node n (or is refused,
// with refused), each try bounded by timeout.
func (c *Cluster) waitPortProgrammed(ctx context.Context, n *Node, proto corev1.Protocol, addr string, refused bool, timeout time.Duration) error {
	return Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		err := n.reach(ctx, proto, addr)
		switch {
		// A UDP datagram that an OUTPUT rule rejects fails to send
		// with EPERM: the node's own traffic.
		case refused && (IsRefused(err) || errors.Is(err, syscall.EPERM)):
			return nil
		case refused && err == nil:
			return fmt.Errorf("answered; want refused")
		}
		return err
	})
}

// MustWaitServing is WaitServiceProgrammed for a Service with endpoints, in
// a test.
func (c *Cluster) MustWaitServing(t testing.TB, svc *corev1.Service) {
	t.Helper()
	if err := c.WaitServiceProgrammed(context.Background(), svc, false); err != nil {
		t.Fatal(err)
	}
}

// MustWaitRefusing is WaitServiceProgrammed for a Service without
// endpoints, in a test.
func (c *Cluster) MustWaitRefusing(t testing.TB, svc *corev1.Service) {
	t.Helper()
	if err := c.WaitServiceProgrammed(context.Background(), svc, true); err != nil {
		t.Fatal(err)
	}
}

// ClusterAddr is "clusterIP:port" of svc's first port.
func ClusterAddr(svc *corev1.Service) string {
	return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(svc.Spec.Ports[0].Port)))
}

// ClusterAddrFamily is "clusterIP:port" of svc's port for proto on its
// ClusterIP of family ("" if svc has none of that family).
func ClusterAddrFamily(svc *corev1.Service, proto corev1.Protocol, family corev1.IPFamily) string {
	for i, f := range svc.Spec.IPFamilies {
		if f != family || i >= len(svc.Spec.ClusterIPs) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if p.Protocol == proto {
				return net.JoinHostPort(svc.Spec.ClusterIPs[i], strconv.Itoa(int(p.Port)))
			}
		}
	}
	return ""
}

// ClusterAddrOf is "clusterIP:port" of svc's port for proto.
func ClusterAddrOf(svc *corev1.Service, proto corev1.Protocol) string {
	for _, p := range svc.Spec.Ports {
		if p.Protocol == proto {
			return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port)))
		}
	}
	return ""
}

// NodePortOf is svc's node port for proto (0 if none).
func NodePortOf(svc *corev1.Service, proto corev1.Protocol) int32 {
	for _, p := range svc.Spec.Ports {
		if p.Protocol == proto {
			return p.NodePort
		}
	}
	return 0
}

// Eventually calls fn every 50ms until it returns nil or timeout passes, and
// returns fn's last error then.
func Eventually(ctx context.Context, timeout time.Duration, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
