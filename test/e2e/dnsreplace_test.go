//go:build e2e

package e2e

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/test/e2e/framework"
)

// dnsOutage tracks the longest stretch without a successful query: from
// the start of the first failed query to the end of the next successful
// one (or to the end, if none came).
type dnsOutage struct {
	queries, failed int
	longest         time.Duration
	firstErr        error
	failingSince    time.Time
}

func (o *dnsOutage) record(start time.Time, err error) {
	o.queries++
	if err != nil {
		o.failed++
		if o.firstErr == nil {
			o.firstErr = err
		}
		if o.failingSince.IsZero() {
			o.failingSince = start
		}
		return
	}
	o.finish()
}

// finish closes an outage still open.
func (o *dnsOutage) finish() {
	if !o.failingSince.IsZero() {
		o.longest = max(o.longest, time.Since(o.failingSince))
		o.failingSince = time.Time{}
	}
}

// TestDNSAcrossCoreDNSReplacement: CoreDNS is replaced by a new pod with a
// new address on another node (rolling-update style: the new pod joins
// kube-dns, the old one leaves and stops) while a pod keeps resolving. No
// query fails for longer than a second — neither a client with a fresh
// socket per query nor one that keeps one UDP socket (one conntrack entry,
// kept alive by its traffic: it reaches the new pod only if the proxy
// deletes the stale entry; kubernetes issue #48370 and friends).
func TestDNSAcrossCoreDNSReplacement(t *testing.T) {
	const ns = "dnsreplace"
	const name = "kubernetes.default.svc.cluster.local."
	node1 := cluster.Nodes[0]
	client := cluster.MustStartPod(t, ns, "client", node1)
	dnsAddr := net.JoinHostPort(framework.DNSServiceIP, "53")
	old := cluster.DNS
	target := node1
	if old.Node == node1 {
		target = cluster.Nodes[1]
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The client pod was just started: give its first query a few tries
	// (a single lost datagram is not what this test is about).
	for try := 1; ; try++ {
		_, _, err := client.Resolve(ctx, corev1.ProtocolUDP, name)
		if err == nil {
			break
		}
		if try == 5 {
			t.Fatalf("DNS does not work before the replacement (5 tries): %v", err)
		}
		t.Logf("try %d before the replacement: %v", try, err)
	}

	stop := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(stop) })
	var wg sync.WaitGroup
	var longLived, fresh dnsOutage

	// One UDP socket for every query, like a caching resolver.
	conn, err := client.NetNS.DialContext(ctx, "udp", dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for id := uint16(1); ; id++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			_ = conn.SetDeadline(start.Add(200 * time.Millisecond))
			_, err := conn.Write(framework.DNSQuery(id, name))
			for err == nil {
				var n int
				if n, err = conn.Read(buf); err == nil {
					if err = framework.CheckDNSAnswer(buf[:n], id); errors.Is(err, framework.ErrStaleAnswer) {
						err = nil
						continue
					}
					break
				}
			}
			longLived.record(start, err)
		}
	}()
	// A fresh socket (new source port) per query, through Go's resolver.
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			qctx, qcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			_, _, err := client.Resolve(qctx, corev1.ProtocolUDP, name)
			qcancel()
			fresh.record(start, err)
		}
	}()

	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	pod, err := cluster.ReplaceDNS(ctx, target)
	if err != nil {
		t.Fatalf("replacing CoreDNS: %v", err)
	}
	t.Logf("CoreDNS %s (%s on %s) replaced by %s (%s on %s) in %v", old.Name, old.IP, old.Node.Name, pod.Name, pod.IP, pod.Node.Name, time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // the old pod is gone: keep asking
	once.Do(func() { close(stop) })
	wg.Wait()

	for _, c := range []struct {
		what string
		o    *dnsOutage
	}{{"one long-lived UDP socket", &longLived}, {"a fresh socket per query", &fresh}} {
		stillFailing := !c.o.failingSince.IsZero()
		c.o.finish()
		t.Logf("%s: %d queries, %d failed, longest outage %v (first error: %v)", c.what, c.o.queries, c.o.failed, c.o.longest.Round(time.Millisecond), c.o.firstErr)
		if stillFailing {
			t.Errorf("%s: DNS still failed at the end, 2s after the replacement", c.what)
		}
		if c.o.longest > time.Second {
			t.Errorf("%s: DNS failed for %v in a row, want at most 1s", c.what, c.o.longest.Round(time.Millisecond))
		}
		if c.o.queries < 50 {
			t.Errorf("%s: only %d queries were made", c.what, c.o.queries)
		}
	}
}
