//go:build e2e

package e2e

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// refusedWithin is how fast "refused at once" must be.
const refusedWithin = 500 * time.Millisecond

// TestNoEndpointsRefused: a Service without endpoints (an empty
// EndpointSlice, or none at all) is refused at once — TCP and UDP, by
// ClusterIP from a pod and by NodePort from outside — never left to time
// out.
func TestNoEndpointsRefused(t *testing.T) {
	const ns = "noendpoints"
	liftICMPRateLimit(t)
	client := cluster.MustStartPod(t, ns, "client", cluster.Nodes[0])
	newSvc := func(name string) *corev1.Service {
		s := framework.NewService(ns, name, 80, corev1.ProtocolTCP, corev1.ProtocolUDP)
		s.Spec.Type = corev1.ServiceTypeNodePort
		return cluster.MustCreateService(t, s)
	}
	empty := newSvc("empty-slice")
	cluster.MustSetEndpoints(t, empty)
	noSlice := newSvc("no-slice")
	cluster.MustWaitRefusing(t, empty)
	cluster.MustWaitRefusing(t, noSlice)

	for _, svc := range []*corev1.Service{empty, noSlice} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			targets := []struct {
				from *framework.Host
				addr string
			}{{&client.Host, framework.ClusterAddrOf(svc, proto)}}
			for _, n := range cluster.Nodes {
				targets = append(targets, struct {
					from *framework.Host
					addr string
				}{cluster.Client, net.JoinHostPort(n.IP.String(), strconv.Itoa(int(framework.NodePortOf(svc, proto))))})
			}
			for _, tg := range targets {
				t.Run(svc.Name+"/"+string(proto)+"/"+tg.from.Name+"->"+tg.addr, func(t *testing.T) {
					// The rules are in place (MustWaitRefusing): every
					// try must be refused at once.
					for i := 0; i < 10; i++ {
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						start := time.Now()
						r, err := tg.from.Request(ctx, proto, tg.addr)
						took := time.Since(start)
						cancel()
						switch {
						case err == nil:
							t.Fatalf("%s %s from %s: answered by %s, want refused", proto, tg.addr, tg.from.Name, r.Name)
						case !framework.IsRefused(err):
							t.Fatalf("%s %s from %s: %v after %v, want connection refused", proto, tg.addr, tg.from.Name, err, took)
						case took > refusedWithin:
							t.Fatalf("%s %s from %s: refused after %v, want within %v", proto, tg.addr, tg.from.Name, took, refusedWithin)
						}
					}
				})
			}
		}
	}
}

// probe is one try of a prober.
type probe struct {
	at    time.Time
	took  time.Duration
	reply framework.Reply
	err   error
}

// prober makes requests from h to addr, each bounded by timeout and gap
// apart, until stop is closed, and returns every try.
func prober(h *framework.Host, proto corev1.Protocol, addr string, timeout, gap time.Duration, stop <-chan struct{}) <-chan []probe {
	out := make(chan []probe, 1)
	go func() {
		var probes []probe
		for {
			select {
			case <-stop:
				out <- probes
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			start := time.Now()
			r, err := h.Request(ctx, proto, addr)
			cancel()
			probes = append(probes, probe{at: start, took: time.Since(start), reply: r, err: err})
			time.Sleep(gap)
		}
	}()
	return out
}

// TestScaleFromZero: a Service with no endpoints gets three through an
// EndpointSlice update; new connections work within a second of the
// update (min-sync-period 100ms), every backend is then used, and no
// connection attempt during the switch is blackholed: each is refused or
// answered.
func TestScaleFromZero(t *testing.T) {
	const ns = "scale"
	liftICMPRateLimit(t) // the prober below is refused thousands of times
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	client2 := cluster.MustStartPod(t, ns, "client-2", node1)
	backends := []*framework.Pod{
		cluster.MustStartPod(t, ns, "web-1", node1),
		cluster.MustStartPod(t, ns, "web-2", node2),
		cluster.MustStartPod(t, ns, "web-3", node2),
	}
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
		t.Run(string(proto), func(t *testing.T) {
			svc := cluster.MustCreateService(t, framework.NewService(ns, "web-"+strings.ToLower(string(proto)), 80, proto))
			addr := framework.ClusterAddr(svc)
			cluster.MustSetEndpoints(t, svc)
			cluster.MustWaitRefusing(t, svc) // zero endpoints

			stop := make(chan struct{})
			var once sync.Once
			defer once.Do(func() { close(stop) })
			results := prober(&client.Host, proto, addr, 300*time.Millisecond, time.Millisecond, stop)
			time.Sleep(100 * time.Millisecond)
			updated := cluster.MustSetEndpoints(t, svc, backends...)
			time.Sleep(1500 * time.Millisecond)
			once.Do(func() { close(stop) })
			probes := <-results

			var firstOK time.Time
			var blackholed []probe
			for _, p := range probes {
				switch {
				case p.err == nil:
					if firstOK.IsZero() {
						firstOK = p.at.Add(p.took)
					}
				case framework.IsRefused(p.err):
				default:
					blackholed = append(blackholed, p)
				}
			}
			t.Run("works-within-1s", func(t *testing.T) {
				if firstOK.IsZero() {
					t.Fatalf("%s %s: no answer in 1.5s after the EndpointSlice update (%d tries)", proto, addr, len(probes))
				}
				latency := firstOK.Sub(updated)
				t.Logf("%s %s: first answer %v after the EndpointSlice update (%d tries in all)", proto, addr, latency.Round(time.Millisecond), len(probes))
				if latency > time.Second {
					t.Errorf("%s %s: first answer %v after the EndpointSlice update, want within 1s", proto, addr, latency)
				}
			})
			t.Run("no-try-blackholed", func(t *testing.T) {
				// A try that meets the rules half written (the
				// REJECT gone, the DNAT not there yet) leaves a
				// conntrack entry without NAT: it and every later try
				// that reuses its source port (while the entry lives:
				// TCP SYN_SENT 120s, UDP 30s unless cleaned up) are
				// blackholed.
				for _, p := range blackholed {
					t.Errorf("%s %s: a try started %v after the update got neither an answer nor a refusal: %v",
						proto, addr, p.at.Sub(updated).Round(time.Millisecond), p.err)
				}
			})
			t.Run("proxy-reported-latency", func(t *testing.T) {
				// What node1's svcproxy itself reports, from the
				// slice's last-change-trigger-time to the rules
				// applied: kubeproxy_network_programming_duration_seconds.
				sum, count := scrapeHistogram(t, node1, "kubeproxy_network_programming_duration_seconds")
				if count == 0 {
					t.Fatalf("node1's svcproxy observed no network programming latency")
				}
				avg := time.Duration(sum / count * float64(time.Second))
				t.Logf("node1 svcproxy: network programming latency %v on average over %.0f changes", avg.Round(time.Millisecond), count)
				if avg > time.Second {
					t.Errorf("average network programming latency %v, want under 1s", avg)
				}
			})
			t.Run("all-backends", func(t *testing.T) {
				// A fresh client: the first one may hold a
				// blackholed source port (see above).
				waitAnswer(t, &client2.Host, proto, addr, 5*time.Second)
				got, _ := tally(t, &client2.Host, proto, addr, 60)
				expectBackends(t, string(proto)+" "+addr+" after scaling to 3", got, backends...)
			})
		})
	}
}
