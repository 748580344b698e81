//go:build integration

package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const udpState = `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: kube-system}
  spec:
    clusterIP: 10.96.1.53
    ports: [{name: dns, port: 53, protocol: UDP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  ports: [{name: dns, port: 8080, protocol: UDP}]
  endpoints:
  - {addresses: [%s], conditions: {ready: true}, nodeName: node1}
`

// ask sends one datagram on c and returns the name of the server that
// answered.
func ask(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("q")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.Fields(line)[0], nil
}

// TestConntrackStaleUDPFlowsFollowEndpointChanges: a client that keeps one UDP socket
// (like a DNS stub resolver) is moved to the new endpoint when its endpoint
// is removed, because svcproxy deletes the conntrack entry that pinned it.
func TestConntrackStaleUDPFlowsFollowEndpointChanges(t *testing.T) {
	tp := newTopology(t)
	srv1 := tp.addPod(t, "srv1", "10.244.1.10")
	srv2 := tp.addPod(t, "srv2", "10.244.1.11")
	cli := tp.addPod(t, "cli", "10.244.1.20")
	startServer(t, srv1, "srv1", 8080)
	startServer(t, srv2, "srv2", 8080)

	state := filepath.Join(t.TempDir(), "state.yaml")
	write := func(ep string) {
		if err := os.WriteFile(state+".tmp", []byte(fmt.Sprintf(udpState, ep)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(state+".tmp", state); err != nil {
			t.Fatal(err)
		}
	}
	write("10.244.1.10")
	startProxy(t, tp, state)

	var c net.Conn
	eventually(t, "first sync", 10*time.Second, func() error {
		return inNS(cli, func() error {
			var err error
			c, err = net.Dial("udp4", "10.96.1.53:53")
			return err
		})
	})
	defer c.Close()
	eventually(t, "srv1 answers on the long-lived socket", 10*time.Second, func() error {
		got, err := ask(c)
		if err == nil && got != "srv1" {
			err = fmt.Errorf("answered by %s", got)
		}
		return err
	})

	write("10.244.1.11")
	eventually(t, "new sockets reach srv2", 5*time.Second, func() error {
		a, err := dial(cli, "udp", "10.96.1.53:53", time.Second)
		if err == nil && a.Server != "srv2" {
			err = fmt.Errorf("answered by %s", a.Server)
		}
		return err
	})
	// srv1 is still alive: without the conntrack cleanup it would keep
	// answering the old socket.
	eventually(t, "the long-lived socket moves to srv2", 2*time.Second, func() error {
		got, err := ask(c)
		if err == nil && got != "srv2" {
			err = fmt.Errorf("still answered by %s", got)
		}
		return err
	})
}
