package ipvs_test

import (
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

// A Service's scheduler annotation overrides --ipvs-scheduler for its
// virtual servers only; an unknown one leaves the default.
func TestPerServiceScheduler(t *testing.T) {
	annotate := func(k, v string) func(*v1.Service) {
		return func(s *v1.Service) { s.Annotations = map[string]string{k: v} }
	}
	snap := snapshot(t,
		pt.Service("ns", "plain", "10.96.0.10", "http", 80),
		pt.Service("ns", "maglev", "10.96.0.11", "http", 80, annotate(proxy.IPVSSchedulerAnnotation, "mh")),
		pt.Service("ns", "router", "10.96.0.12", "http", 80, annotate(proxy.KubeRouterSchedulerAnnotation, "lc")),
		pt.Service("ns", "bogus", "10.96.0.13", "http", 80, annotate(proxy.IPVSSchedulerAnnotation, "fastest")),
	)
	opts := options()
	opts.Scheduler = "wlc"
	want := map[string]string{"10.96.0.10": "wlc", "10.96.0.11": "mh", "10.96.0.12": "lc", "10.96.0.13": "wlc"}
	for _, vs := range ipvs.Render(snap, opts).Services {
		if w, ok := want[vs.Address.String()]; ok && vs.Scheduler != w {
			t.Errorf("%s: scheduler %q, want %q", vs.ServiceKey, vs.Scheduler, w)
		}
	}
}
