package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/proxy"
	pt "github.com/svcproxy/svcproxy/proxy/proxytest"
)

func created(sec int64) func(*v1.Service) {
	return func(s *v1.Service) { s.CreationTimestamp = metav1.Unix(sec, 0) }
}

func externalIP(ip string) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.ExternalIPs = []string{ip} }
}

func nodePort(n int32) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = n
	}
}

// Two Services claiming one destination: the oldest keeps it, whatever the
// names, and the conflict is reported once.
func TestConflictsTheOldestWins(t *testing.T) {
	for _, tc := range []struct {
		name       string
		objs       []*v1.Service
		want       []string
		noConflict bool
	}{
		{
			name: "external IP: the older keeps it although it sorts last",
			objs: []*v1.Service{
				pt.Service("a", "young", "10.96.0.1", "http", 80, created(200), externalIP("192.0.2.1")),
				pt.Service("z", "old", "10.96.0.2", "http", 80, created(100), externalIP("192.0.2.1")),
			},
			want: []string{"a/young 10.96.0.1 ext=[] np=0", "z/old 10.96.0.2 ext=[192.0.2.1] np=0"},
		},
		{
			name: "other port of the same external IP is no conflict",
			objs: []*v1.Service{
				pt.Service("a", "one", "10.96.0.1", "http", 80, created(200), externalIP("192.0.2.1")),
				pt.Service("a", "two", "10.96.0.2", "http", 81, created(100), externalIP("192.0.2.1")),
			},
			want:       []string{"a/one 10.96.0.1 ext=[192.0.2.1] np=0", "a/two 10.96.0.2 ext=[192.0.2.1] np=0"},
			noConflict: true,
		},
		{
			name: "node port",
			objs: []*v1.Service{
				pt.Service("a", "young", "10.96.0.1", "http", 80, created(200), nodePort(30080)),
				pt.Service("b", "old", "10.96.0.2", "http", 80, created(100), nodePort(30080)),
			},
			want: []string{"a/young 10.96.0.1 ext=[] np=0", "b/old 10.96.0.2 ext=[] np=30080"},
		},
		{
			name: "a cluster IP:port taken (only a --state file can say so): the younger port goes",
			objs: []*v1.Service{
				pt.Service("a", "young", "10.96.0.1", "http", 80, created(200)),
				pt.Service("b", "old", "10.96.0.1", "http", 80, created(100)),
			},
			want: []string{"b/old 10.96.0.1 ext=[] np=0"},
		},
		{
			name: "same age: name order",
			objs: []*v1.Service{
				pt.Service("b", "second", "10.96.0.2", "http", 80, created(100), externalIP("192.0.2.1")),
				pt.Service("a", "first", "10.96.0.1", "http", 80, created(100), externalIP("192.0.2.1")),
			},
			want: []string{"a/first 10.96.0.1 ext=[192.0.2.1] np=0", "b/second 10.96.0.2 ext=[] np=0"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reasons []string
			tr := proxy.NewTracker("node1", nil, func(kind, reason string) { reasons = append(reasons, kind+"/"+reason) })
			for _, s := range tc.objs {
				tr.OnServiceUpdate(nil, s)
			}
			snap, _ := tr.Snapshot()
			var got []string
			for _, sp := range snap.ServicePorts() {
				got = append(got, fmt.Sprintf("%s/%s %s ext=%v np=%d", sp.Name.Namespace, sp.Name.Name, sp.ClusterIP, sp.ExternalIPs, sp.NodePort))
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("ports (-want +got):\n%s", d)
			}
			conflicts := strings.Count(strings.Join(reasons, " "), "Service/conflict")
			if wantConflict := !tc.noConflict; wantConflict != (conflicts == 1) {
				t.Errorf("conflicts reported %d times (%v)", conflicts, reasons)
			}
			// Reported once: a later Snapshot with another change does not
			// report it again.
			reasons = nil
			tr.OnServiceUpdate(nil, pt.Service("x", "other", "10.96.9.9", "http", 80, created(time.Now().Unix())))
			tr.Snapshot()
			if strings.Contains(strings.Join(reasons, " "), "Service/conflict") {
				t.Errorf("the same conflict reported again: %v", reasons)
			}
		})
	}
}
