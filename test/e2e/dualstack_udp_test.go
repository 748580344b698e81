//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// udpFlow is one long-lived UDP socket (one conntrack entry, kept alive by
// its traffic) that sends a datagram every 20 ms and records who answered.
type udpFlow struct {
	what string
	from *framework.Host
	addr string
	conn net.Conn

	mu      sync.Mutex
	answers []udpAnswer
}

type udpAnswer struct {
	at      time.Time
	backend string // "" when unanswered
	err     error
}

// startUDPFlows opens each flow's socket (after one answer through a fresh
// socket shows the path works) and sends until stop is closed; wait
// returns once every sender is done.
func startUDPFlows(t *testing.T, flows []*udpFlow, stop <-chan struct{}) (wait func()) {
	t.Helper()
	var wg sync.WaitGroup
	for _, f := range flows {
		waitAnswer(t, f.from, corev1.ProtocolUDP, f.addr, 10*time.Second)
		c, err := f.from.NetNS.DialContext(context.Background(), "udp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		f.conn = c
		t.Cleanup(func() { c.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				token := fmt.Sprintf("q%d", i)
				at := time.Now()
				_ = f.conn.SetDeadline(at.Add(200 * time.Millisecond))
				_, err := f.conn.Write([]byte(token))
				var line string
				for err == nil {
					var n int
					if n, err = f.conn.Read(buf); err == nil {
						if line = string(buf[:n]); strings.Contains(line, "data="+token) {
							break
						}
					}
				}
				a := udpAnswer{at: at, err: err}
				if err == nil {
					if r, perr := parseReplyLine(line); perr == nil {
						a.backend = r
					}
				}
				f.mu.Lock()
				f.answers = append(f.answers, a)
				f.mu.Unlock()
			}
		}()
	}
	return wg.Wait
}

// parseReplyLine returns the backend name of a podserver answer.
func parseReplyLine(line string) (string, error) {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "name="); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("not a podserver answer: %q", line)
}

// between returns the answers sent in [from, to).
func (f *udpFlow) between(from, to time.Time) []udpAnswer {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []udpAnswer
	for _, a := range f.answers {
		if !a.at.Before(from) && a.at.Before(to) {
			out = append(out, a)
		}
	}
	return out
}

// TestDualStackStaleUDPFlows: one long-lived UDP socket per path — a pod to
// the IPv4 and to the IPv6 ClusterIP, the outside client to node1's IPv4
// and IPv6 node port — keeps sending while
//
//  1. the Service's only endpoint is replaced by another pod, in both
//     families' slices at once: the old pod keeps running, so a flow whose
//     conntrack entry svcproxy does not delete keeps reaching it; every
//     flow must reach the new endpoint within 1 s;
//  2. the Service is deleted: within 1 s no flow is answered any more (its
//     entry, DNATed to an endpoint of a port that no longer exists, is
//     deleted).
func TestDualStackStaleUDPFlows(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-udp"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	oldPod := cluster.MustStartPod(t, ns, "old", node2)
	newPod := cluster.MustStartPod(t, ns, "new", node2)
	s := framework.DualStack(framework.NewService(ns, "web", 80, corev1.ProtocolUDP))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := cluster.MustCreateService(t, s)
	mustBeDualStack(t, svc)
	cluster.MustSetEndpoints(t, svc, oldPod)
	cluster.MustWaitServing(t, svc)

	var flows []*udpFlow
	for _, family := range bothFamilies {
		flows = append(flows,
			&udpFlow{what: "ClusterIP " + string(family) + " from a pod", from: &client.Host, addr: framework.ClusterAddrFamily(svc, corev1.ProtocolUDP, family)},
			&udpFlow{what: "NodePort " + string(family) + " from the client", from: cluster.Client, addr: nodePortAddr(node1, svc, corev1.ProtocolUDP, family)})
	}
	stop := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(stop) })
	wait := startUDPFlows(t, flows, stop)
	time.Sleep(500 * time.Millisecond)
	switched := cluster.MustSetEndpoints(t, svc, newPod)
	time.Sleep(2 * time.Second)
	if err := cluster.Kube.CoreV1().Services(ns).Delete(context.Background(), svc.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	time.Sleep(2 * time.Second)
	once.Do(func() { close(stop) })
	wait()

	for _, f := range flows {
		var firstNew, lastOld time.Time
		for _, a := range f.between(switched, deleted) {
			switch a.backend {
			case newPod.Name:
				if firstNew.IsZero() {
					firstNew = a.at
				}
			case oldPod.Name:
				lastOld = a.at
			}
		}
		var lastAnswer time.Time
		for _, a := range f.between(deleted, deleted.Add(time.Hour)) {
			if a.err == nil {
				lastAnswer = a.at
			}
		}
		t.Logf("%s (%s): %d datagrams; after the switch: last answer from %s at +%v, first from %s at +%v; after the deletion: last answer at +%v",
			f.what, f.addr, len(f.between(time.Time{}, deleted.Add(time.Hour))), oldPod.Name, since(switched, lastOld), newPod.Name, since(switched, firstNew), since(deleted, lastAnswer))
		switch {
		case firstNew.IsZero():
			t.Errorf("%s (%s): the long-lived flow never reached the new endpoint in 2 s: its conntrack entry to the removed endpoint %s was not deleted", f.what, f.addr, oldPod.Name)
		case firstNew.Sub(switched) > time.Second:
			t.Errorf("%s (%s): the long-lived flow reached the new endpoint only %v after the switch, want within 1s", f.what, f.addr, firstNew.Sub(switched).Round(time.Millisecond))
		}
		if lastOld.After(switched.Add(time.Second)) {
			t.Errorf("%s (%s): still answered by the removed endpoint %v after the switch", f.what, f.addr, lastOld.Sub(switched).Round(time.Millisecond))
		}
		if lastAnswer.After(deleted.Add(time.Second)) {
			t.Errorf("%s (%s): still answered %v after the Service was deleted: its conntrack entry was not deleted", f.what, f.addr, lastAnswer.Sub(deleted).Round(time.Millisecond))
		}
	}
}

// since is t - from, "never" for a zero t.
func since(from, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Sub(from).Round(time.Millisecond).String()
}

// TestDualStackUDPFlowsSurviveRestart: long-lived UDP flows to a dual-stack
// Service with 4 endpoints (a pod to the IPv4 and the IPv6 ClusterIP, the
// client to node1's IPv4 and IPv6 node port) keep their conntrack entry,
// so their endpoint, while svcproxy on node1 restarts three times (SIGTERM,
// SIGKILL, SIGTERM): every full sync judges the entries, and one to an
// endpoint that is still there must be kept (kubernetes #122740), in IPv6
// as in IPv4. An entry deleted by mistake would send the flow to a random
// one of the 4 endpoints.
func TestDualStackUDPFlowsSurviveRestart(t *testing.T) {
	requireIPv6Proxy(t)
	const ns = "dualstack-udp-restart"
	node1, node2 := cluster.Nodes[0], cluster.Nodes[1]
	client := cluster.MustStartPod(t, ns, "client", node1)
	var backends []*framework.Pod
	for i, n := range []*framework.Node{node1, node2, node2, node1} {
		backends = append(backends, cluster.MustStartPod(t, ns, fmt.Sprintf("web-%d", i+1), n))
	}
	s := framework.DualStack(framework.NewService(ns, "web", 80, corev1.ProtocolUDP))
	s.Spec.Type = corev1.ServiceTypeNodePort
	svc := cluster.MustCreateService(t, s)
	mustBeDualStack(t, svc)
	cluster.MustSetEndpoints(t, svc, backends...)
	cluster.MustWaitServing(t, svc)

	var flows []*udpFlow
	for _, family := range bothFamilies {
		flows = append(flows,
			&udpFlow{what: "ClusterIP " + string(family) + " from a pod", from: &client.Host, addr: framework.ClusterAddrFamily(svc, corev1.ProtocolUDP, family)},
			&udpFlow{what: "NodePort " + string(family) + " from the client", from: cluster.Client, addr: nodePortAddr(node1, svc, corev1.ProtocolUDP, family)})
	}
	stop := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(stop) })
	wait := startUDPFlows(t, flows, stop)
	time.Sleep(500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, crash := range []bool{false, true, false} {
		if err := cluster.RestartProxy(ctx, node1, crash); err != nil {
			t.Fatalf("restarting svcproxy on node1 (crash %v): %v", crash, err)
		}
		// A periodic full sync (every 3 s) judges the entries again.
		time.Sleep(3500 * time.Millisecond)
	}
	once.Do(func() { close(stop) })
	wait()

	for _, f := range flows {
		answers := f.between(time.Time{}, time.Now().Add(time.Hour))
		seen := map[string]int{}
		var changes []string
		prev, failed := "", 0
		for _, a := range answers {
			if a.err != nil {
				failed++
				continue
			}
			seen[a.backend]++
			if prev != "" && a.backend != prev {
				changes = append(changes, fmt.Sprintf("%s: %s -> %s", a.at.Format("15:04:05.000"), prev, a.backend))
			}
			prev = a.backend
		}
		t.Logf("%s (%s): %d datagrams, %d unanswered, answered by %v", f.what, f.addr, len(answers), failed, seen)
		if len(changes) > 0 {
			t.Errorf("%s (%s): the long-lived flow changed endpoint across svcproxy restarts (its conntrack entry was deleted although its endpoint is still there):\n%s", f.what, f.addr, strings.Join(changes, "\n"))
		}
		if failed > 0 {
			t.Errorf("%s (%s): %d datagrams unanswered", f.what, f.addr, failed)
		}
	}
}
