package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
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

// EndpointSliceFor returns the EndpointSlice name of svc that a controller
// would write for pods: all ready, each on its node, one slice port per
// Service port (targetPort must be a number).
func EndpointSliceFor(svc *corev1.Service, name string, pods ...*Pod) *discoveryv1.EndpointSlice {
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: svc.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   ManagedBy,
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
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
			Addresses: []string{p.IP.String()},
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

// SetEndpoints writes svc's EndpointSlice "<svc>-e2e" with pods as its
// endpoints (creating or replacing it) and returns the time the API server
// accepted it. No pods means an empty slice: a service without endpoints.
func (c *Cluster) SetEndpoints(ctx context.Context, svc *corev1.Service, pods ...*Pod) (time.Time, error) {
	return c.ApplyEndpointSlice(ctx, EndpointSliceFor(svc, svc.Name+"-e2e", pods...))
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
// the ClusterIP answers, or, with refused set (a Service without
// endpoints), is refused. Tests call it before their clients touch svc, so
// that no client tuple meets rules that are half written: a connection
// that does leaves a conntrack entry that blackholes its source port for
// minutes (TCP SYN_SENT lasts 120s), and the test would fail for a reason
// that is not its own. Any backend will do: a TCP connection must be
// accepted, a UDP datagram (a DNS query, which podserver echoes and CoreDNS
// answers) must get a reply.
func (c *Cluster) WaitServiceProgrammed(ctx context.Context, svc *corev1.Service, refused bool) error {
	for _, n := range c.Nodes {
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != corev1.ProtocolTCP && sp.Protocol != corev1.ProtocolUDP {
				continue
			}
			addr := net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(sp.Port)))
			var last error
			err := Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
				last = n.reach(ctx, sp.Protocol, addr)
				switch {
				// A UDP datagram that an OUTPUT rule rejects fails
				// to send with EPERM: the node's own traffic.
				case refused && (IsRefused(last) || errors.Is(last, syscall.EPERM)):
					return nil
				case refused && last == nil:
					return fmt.Errorf("answered; want refused")
				}
				return last
			})
			if err != nil {
				return fmt.Errorf("%s/%s %s %s not programmed on %s: %w", svc.Namespace, svc.Name, sp.Protocol, addr, n.Name, err)
			}
		}
	}
	return nil
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
