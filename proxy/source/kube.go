package source

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy"
)

// BuildConfig returns the client configuration for a kubeconfig file and/or
// API server URL, or the in-cluster configuration when both are empty. It
// asks for protobuf, as kube-proxy does: at 10,000 services decoding the
// initial lists as JSON makes several times more garbage.
func BuildConfig(kubeconfig, master string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" && master == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig or master given and not running in a cluster: %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags(master, kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("building client config (kubeconfig %q, master %q): %w", kubeconfig, master, err)
		}
	}
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return cfg, nil
}

// KubeSource feeds a Handler from the API server: Services and
// EndpointSlices in all namespaces, and this node's Node.
//
// It keeps no objects: a client-go Reflector (list and watch, relist when
// the watch breaks) feeds an eventStore, which strips each object, hands it
// to the handler and remembers only its key and resourceVersion (and a
// slice's service label and trigger time, for old objects). An informer
// would cache every object besides the handler's own state. The client
// should ask for protobuf (BuildConfig does): decoding JSON makes several
// times more garbage.
type KubeSource struct {
	client   kubernetes.Interface
	nodeName string
	handler  proxy.Handler

	// OnAPIHealth, if set before Run, is told every HealthInterval whether
	// the API server answers /readyz: nil when it does, the error when not.
	// svcproxy's /healthz turns unhealthy when it fails for too long.
	OnAPIHealth    func(error)
	HealthInterval time.Duration
}

// NewKubeSource returns a source that watches through client and reports to
// h. The Node named nodeName is watched for its labels (none if nodeName is
// empty). resync is ignored: there are no cached objects to send again
// (svcproxy's periodic sync rebuilds the rules from the tracker anyway).
func NewKubeSource(client kubernetes.Interface, nodeName string, h proxy.Handler, resync time.Duration) *KubeSource {
	_ = resync
	return &KubeSource{client: client, nodeName: nodeName, handler: h}
}

// Run starts watching, waits until the handler has received every existing
// object, calls synced (if not nil), and then keeps sending events until
// ctx is done. It returns nil then, or an error if ctx was done before the
// initial sync.
func (k *KubeSource) Run(ctx context.Context, synced func()) error {
	type watched struct {
		name     string
		lw       cache.ListerWatcher
		expected runtime.Object
		store    cache.ReflectorStore
		synced   cache.InformerSynced
	}
	c := k.client
	services := newEventStore(serviceKind, k.handler.OnServiceUpdate)
	slices := newEventStore(sliceKind, k.handler.OnEndpointSliceUpdate)
	list := []watched{
		{"services", listWatch(c, nil,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.CoreV1().Services(metav1.NamespaceAll).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.CoreV1().Services(metav1.NamespaceAll).Watch(ctx, o)
			}), &v1.Service{}, services, services.HasSynced},
		{"endpointslices", listWatch(c, nil,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch(ctx, o)
			}), &discovery.EndpointSlice{}, slices, slices.HasSynced},
	}
	if k.nodeName != "" {
		// Only this node is listed and watched.
		nodes := newEventStore(nodeKind, k.onNode)
		selector := fields.OneTermEqualSelector("metadata.name", k.nodeName).String()
		list = append(list, watched{"node", listWatch(c, func(o *metav1.ListOptions) { o.FieldSelector = selector },
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.CoreV1().Nodes().List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.CoreV1().Nodes().Watch(ctx, o)
			}), &v1.Node{}, nodes, nodes.HasSynced})
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	var syncs []cache.InformerSynced
	for _, w := range list {
		r := cache.NewReflectorWithOptions(w.lw, w.expected, w.store, cache.ReflectorOptions{
			Name:            "svcproxy " + w.name,
			TypeDescription: fmt.Sprintf("%T", w.expected),
		})
		wg.Go(func() { r.RunWithContext(ctx) })
		syncs = append(syncs, w.synced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return fmt.Errorf("initial list not received: %w", ctx.Err())
	}
	klog.InfoS("Initial lists received", "node", k.nodeName, "services", services.len(), "endpointSlices", slices.len())
	if synced != nil {
		synced()
	}
	if k.OnAPIHealth != nil {
		k.probeAPIServer(ctx)
	}
	<-ctx.Done()
	return nil
}

// listWatch returns the ListerWatcher of one resource, with tweak (if not
// nil) applied to every request, as client-go's informers build it.
func listWatch(client kubernetes.Interface, tweak func(*metav1.ListOptions),
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.ListerWatcher {
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return list(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return watchFn(ctx, o)
		},
	}, client)
}

// onNode passes on the events of this node only (the field selector is the
// first filter, this the second).
func (k *KubeSource) onNode(old, cur *v1.Node) {
	if cur == nil {
		cur = removedNode(old.Name)
	}
	if cur.Name == k.nodeName {
		k.handler.OnNodeUpdate(cur)
	}
}

// probeAPIServer reports whether the API server is ready until ctx is done.
// The informers retry by themselves; this only makes an outage visible.
func (k *KubeSource) probeAPIServer(ctx context.Context) {
	interval := k.HealthInterval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, interval)
		err := k.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(pctx).Error()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			klog.V(2).InfoS("API server not ready", "err", err)
		}
		k.OnAPIHealth(err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// handlerFuncs adapts an old/cur callback to an informer event handler.
func handlerFuncs[T any](send func(old, cur *T)) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := typed[T](obj); ok {
				send(nil, o)
			}
		},
		UpdateFunc: func(oldObj, curObj any) {
			o, ok1 := typed[T](oldObj)
			c, ok2 := typed[T](curObj)
			if ok1 && ok2 {
				send(o, c)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if o, ok := typed[T](obj); ok {
				send(o, nil)
			}
		},
	}
}

func typed[T any](obj any) (*T, bool) {
	o, ok := obj.(*T)
	if !ok || o == nil {
		klog.ErrorS(nil, "Unexpected object in informer event", "type", fmt.Sprintf("%T", obj))
		return nil, false
	}
	return o, true
}
