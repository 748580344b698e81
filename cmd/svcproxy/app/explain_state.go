package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"

	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/config"
	"github.com/svcproxy/svcproxy/proxy/source"
)

// --- the cluster's state ---

// cluster is what explain knows of the cluster: the Snapshot the rules are
// rendered from, and the objects DNS answers from.
type cluster struct {
	snap      *proxy.Snapshot
	services  []*v1.Service
	slices    []*discovery.EndpointSlice
	nodeAddrs []netip.Addr // this node's, from its status
}

// loadCluster reads --state, or lists the API server's objects, and builds
// the Snapshot of this node as the daemon would. dns reads a state file
// again for what only DNS answers and node addresses need (--all, on the
// node, takes this namespace's addresses and answers no name).
func loadCluster(ctx context.Context, o *config.Config, newClient newKubeClient, dns bool) (*cluster, error) {
	var st *source.State
	if o.State != "" {
		var err error
		if st, err = source.LoadFile(o.State); err != nil {
			return nil, err
		}
		// Loading strips what the rules never need; DNS needs some of it.
		if dns {
			if err := addUnstripped(o.State, st); err != nil {
				return nil, err
			}
		}
	} else {
		client, err := newClient(o)
		if err != nil {
			return nil, err
		}
		if st, err = listState(ctx, client, o.NodeName()); err != nil {
			return nil, err
		}
	}
	tracker := proxy.NewTracker(o.NodeName(), nil, nil)
	cl := &cluster{services: st.Services, slices: st.EndpointSlices}
	for _, n := range st.Nodes {
		tracker.OnNodeUpdate(n)
		if n.Name != o.NodeName() {
			continue
		}
		for _, a := range n.Status.Addresses {
			ip, err := netip.ParseAddr(a.Address)
			if err == nil && (a.Type == v1.NodeInternalIP || a.Type == v1.NodeExternalIP) && !slices.Contains(cl.nodeAddrs, ip) {
				cl.nodeAddrs = append(cl.nodeAddrs, ip)
			}
		}
	}
	for _, s := range st.Services {
		tracker.OnServiceUpdate(nil, s)
	}
	for _, s := range st.EndpointSlices {
		tracker.OnEndpointSliceUpdate(nil, s)
	}
	cl.snap, _ = tracker.Snapshot()
	return cl, nil
}

// listState lists the API server's Services and EndpointSlices and this
// node's Node (absent: no addresses).
func listState(ctx context.Context, client kubernetes.Interface, node string) (*source.State, error) {
	st := &source.State{}
	svcs, err := client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Services: %w", err)
	}
	for i := range svcs.Items {
		st.Services = append(st.Services, &svcs.Items[i])
	}
	eps, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing EndpointSlices: %w", err)
	}
	for i := range eps.Items {
		st.EndpointSlices = append(st.EndpointSlices, &eps.Items[i])
	}
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	switch {
	case err == nil:
		st.Nodes = []*v1.Node{n}
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading Node %s: %w", node, err)
	}
	return st, nil
}

// rawObject is the part of a state file's object that source.LoadFile
// strips and explain needs.
type rawObject struct {
	Kind     string      `json:"kind"`
	Items    []rawObject `json:"items"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		ExternalName             string `json:"externalName"`
		PublishNotReadyAddresses bool   `json:"publishNotReadyAddresses"`
	} `json:"spec"`
	Status struct {
		Addresses []v1.NodeAddress `json:"addresses"`
	} `json:"status"`
}

// addUnstripped reads path again for what LoadFile stripped and DNS needs:
// a Service's externalName and publishNotReadyAddresses, a Node's
// addresses. LoadFile has checked the file already.
func addUnstripped(path string, st *source.State) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	svcs := map[string]*v1.Service{}
	for _, s := range st.Services {
		svcs[s.Namespace+"/"+s.Name] = s
	}
	nodes := map[string]*v1.Node{}
	for _, n := range st.Nodes {
		nodes[n.Name] = n
	}
	var add func(o *rawObject, kind string)
	add = func(o *rawObject, kind string) {
		kind = cmp.Or(o.Kind, kind)
		for i := range o.Items {
			add(&o.Items[i], strings.TrimSuffix(kind, "List"))
		}
		switch kind {
		case "Service":
			if s := svcs[cmp.Or(o.Metadata.Namespace, v1.NamespaceDefault)+"/"+o.Metadata.Name]; s != nil {
				s.Spec.ExternalName = o.Spec.ExternalName
				s.Spec.PublishNotReadyAddresses = o.Spec.PublishNotReadyAddresses
			}
		case "Node":
			if n := nodes[o.Metadata.Name]; n != nil {
				n.Status.Addresses = o.Status.Addresses
			}
		}
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var o rawObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return &source.FileError{Path: path, Err: err}
		}
		add(&o, "")
	}
}
