package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// PodPort is the port every podserver listens on, TCP and UDP, IPv4 and
// IPv6.
const PodPort = 8080

// Pod is a pod of the test bed: a network namespace on a node's bridge
// running one program (podserver, or CoreDNS). No Pod object exists in the
// API: tests point EndpointSlices at pods themselves.
type Pod struct {
	Host
	// Namespace and PodName are the pod's Kubernetes namespace and name;
	// Host.Name is "<namespace>/<name>", what podserver answers with.
	Namespace, PodName string
	// Node is the node the pod runs on.
	Node *Node
	// Process is the pod's program.
	Process *Process

	cluster *Cluster
	veth    string
}

// StartPod starts a pod running podserver (TCP and UDP on PodPort) on node
// and waits until it answers.
func (c *Cluster) StartPod(ctx context.Context, namespace, name string, node *Node) (*Pod, error) {
	p, err := c.startPod(ctx, namespace, name, node, func(p *Pod) []string {
		return []string{c.podserver, "--name=" + p.Name, "--ports=" + strconv.Itoa(PodPort)}
	})
	if err != nil {
		return nil, err
	}
	if err := p.Process.waitLine(ctx, "ready"); err != nil {
		return nil, errors.Join(err, c.RemovePod(context.WithoutCancel(ctx), p))
	}
	return p, nil
}

// MustStartPod is StartPod for a test: it fails the test on error and
// removes the pod when the test ends.
func (c *Cluster) MustStartPod(t testing.TB, namespace, name string, node *Node) *Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := c.StartPod(ctx, namespace, name, node)
	if err != nil {
		t.Fatalf("starting pod %s/%s on %s: %v", namespace, name, node.Name, err)
	}
	t.Cleanup(func() {
		if err := c.RemovePod(context.Background(), p); err != nil {
			t.Errorf("removing pod %s: %v", p.Name, err)
		}
	})
	return p
}

// startPod creates the pod's network and starts argv(pod) in it.
func (c *Cluster) startPod(ctx context.Context, namespace, name string, node *Node, argv func(*Pod) []string) (*Pod, error) {
	ns, ip, ip6, veth, err := c.podNetwork(ctx, node)
	p := &Pod{
		Host:      Host{Name: namespace + "/" + name, NetNS: ns, IP: ip, IP6: ip6},
		Namespace: namespace,
		PodName:   name,
		Node:      node,
		cluster:   c,
		veth:      veth,
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("pod %s network: %w", p.Name, err), c.RemovePod(context.WithoutCancel(ctx), p))
	}
	p.Process, err = c.start(ns, "pod-"+namespace+"-"+name+"-"+ip.String(), argv(p)...)
	if err != nil {
		return nil, errors.Join(err, c.RemovePod(context.WithoutCancel(ctx), p))
	}
	return p, nil
}

// RemovePod stops the pod's program and deletes its namespace and veth.
func (c *Cluster) RemovePod(ctx context.Context, p *Pod) error {
	var errs []error
	if p.Process != nil {
		if err := p.Process.Stop(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if p.NetNS != nil {
		// Deleting the namespace deletes eth0 and with it its peer on
		// the node's bridge.
		if err := c.removeNetNS(ctx, p.NetNS); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Addr is the pod's IPv4 address with PodPort, as "ip:port".
func (p *Pod) Addr() string { return net.JoinHostPort(p.IP.String(), strconv.Itoa(PodPort)) }

// Addr6 is the pod's IPv6 address with PodPort, as "[ip]:port".
func (p *Pod) Addr6() string { return net.JoinHostPort(p.IP6.String(), strconv.Itoa(PodPort)) }
