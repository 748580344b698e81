package app

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxy/config"
	"github.com/svcproxy/svcproxy/proxy/source"
)

// recordStartEvent records "Starting svcproxy." on this node's Node, as
// kube-proxy records "Starting kube-proxy.", so that `kubectl describe node`
// shows when the proxy (re)started. Events go out in the background until
// ctx is done; failing to send one is only logged.
func recordStartEvent(ctx context.Context, o *config.Config) {
	if o.State != "" {
		return // no API server
	}
	logger := klog.FromContext(ctx)
	cfg, err := source.BuildConfig(o.Kubeconfig, o.Master)
	if err != nil {
		logger.V(2).Info("No start event", "err", err)
		return
	}
	cfg.UserAgent = "svcproxy"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		logger.V(2).Info("No start event", "err", err)
		return
	}
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	if err := broadcaster.StartRecordingToSinkWithContext(ctx); err != nil {
		logger.V(2).Info("No start event", "err", err)
		return
	}
	go func() {
		<-ctx.Done()
		broadcaster.Shutdown()
	}()
	recorder := broadcaster.NewRecorder(scheme.Scheme, "svcproxy")
	node := &v1.ObjectReference{Kind: "Node", Name: o.NodeName(), UID: types.UID(o.NodeName())}
	recorder.Eventf(node, nil, v1.EventTypeNormal, "Starting", "StartSvcproxy", "Starting svcproxy (%s mode).", o.Mode)
}
