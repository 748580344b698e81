package source

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy"
)

// BuildConfig returns the client configuration for a kubeconfig file and/or
// API server URL, or the in-cluster configuration when both are empty.
func BuildConfig(kubeconfig, master string) (*rest.Config, error) {
	if kubeconfig == "" && master == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig or master given and not running in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags(master, kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("building client config (kubeconfig %q, master %q): %w", kubeconfig, master, err)
	}
	return cfg, nil
}

// KubeSource feeds a Handler from the API server: Services and
// EndpointSlices in all namespaces, and this node's Node.
type KubeSource struct {
	client   kubernetes.Interface
	nodeName string
	handler  proxy.Handler
	resync   time.Duration

	// OnAPIHealth, if set before Run, is told every HealthInterval whether
	// the API server answers /readyz: nil when it does, the error when not.
	// svcproxy's /healthz turns unhealthy when it fails for too long.
	OnAPIHealth    func(error)
	HealthInterval time.Duration
}

// NewKubeSource returns a source that watches through client and reports to
// h. The Node named nodeName is watched for its labels (none if nodeName is
// empty). resync is the informers' resync period (0 for none); a resync
// sends every object again as an update with old == cur.
func NewKubeSource(client kubernetes.Interface, nodeName string, h proxy.Handler, resync time.Duration) *KubeSource {
	return &KubeSource{client: client, nodeName: nodeName, handler: h, resync: resync}
}

// Run starts the informers, waits until the handler has received every
// existing object, calls synced (if not nil), and then keeps sending events
// until ctx is done. It returns nil then, or an error if ctx was done before
// the initial sync.
func (k *KubeSource) Run(ctx context.Context, synced func()) error {
	factory := informers.NewSharedInformerFactory(k.client, k.resync)
	factories := []informers.SharedInformerFactory{factory}
	type watched struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}
	list := []watched{
		{factory.Core().V1().Services().Informer(), handlerFuncs(k.handler.OnServiceUpdate)},
		{factory.Discovery().V1().EndpointSlices().Informer(), handlerFuncs(k.handler.OnEndpointSliceUpdate)},
	}
	if k.nodeName != "" {
		// The Node needs its own factory: only this node is listed.
		nodeFactory := informers.NewSharedInformerFactoryWithOptions(k.client, k.resync,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.nodeName).String()
			}))
		factories = append(factories, nodeFactory)
		list = append(list, watched{nodeFactory.Core().V1().Nodes().Informer(), handlerFuncs(k.onNode)})
	}
	var syncs []cache.InformerSynced
	for _, w := range list {
		if err := w.informer.SetTransform(Strip); err != nil {
			return fmt.Errorf("setting informer transform: %w", err)
		}
		reg, err := w.informer.AddEventHandler(w.handler)
		if err != nil {
			return fmt.Errorf("adding event handler: %w", err)
		}
		// The registration has synced once the handler got the initial list.
		syncs = append(syncs, reg.HasSynced)
	}
	for _, f := range factories {
		f.Start(ctx.Done())
		defer f.Shutdown()
	}
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return fmt.Errorf("informer caches not synced: %w", ctx.Err())
	}
	klog.InfoS("Informer caches synced", "node", k.nodeName)
	if synced != nil {
		synced()
	}
	if k.OnAPIHealth != nil {
		k.probeAPIServer(ctx)
	}
	<-ctx.Done()
	return nil
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
