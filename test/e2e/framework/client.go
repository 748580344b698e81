package framework

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// DefaultRequestTimeout bounds one request (a connection and its answer, a
// datagram and its answer, a DNS lookup) when the context has no earlier
// deadline. A retry must be a new request: TCP's own SYN retransmits belong
// to the first packet's conntrack entry and never see rules added after it.
const DefaultRequestTimeout = 2 * time.Second

// Reply is what a podserver answered.
type Reply struct {
	// Name is the backend's "<namespace>/<pod>".
	Name string
	// Src is the source address the backend saw.
	Src netip.AddrPort
}

func parseReply(line string) (Reply, error) {
	var r Reply
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "name":
			r.Name = v
		case "src":
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return r, fmt.Errorf("reply %q: %w", line, err)
			}
			r.Src = ap
		}
	}
	if r.Name == "" || !r.Src.IsValid() {
		return r, fmt.Errorf("not a podserver reply: %q", line)
	}
	return r, nil
}

// IsRefused reports whether err is a connection refused at once (an ICMP
// port unreachable or a TCP reset), as opposed to a timeout.
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// IsTimeout reports whether err is a timeout.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, DefaultRequestTimeout)
}

// TCP opens a TCP connection from the host to addr ("ip:port"), reads the
// podserver's greeting and closes.
func (h *Host) TCP(ctx context.Context, addr string) (Reply, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	conn, err := h.NetNS.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Reply{}, fmt.Errorf("%s: tcp %s: %w", h.Name, addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return Reply{}, fmt.Errorf("%s: tcp %s: reading: %w", h.Name, addr, err)
	}
	return parseReply(line)
}

// UDP sends one datagram from the host to addr ("ip:port") and waits for
// the podserver's answer. It does not retry: a lost datagram is an error.
func (h *Host) UDP(ctx context.Context, addr string) (Reply, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	conn, err := h.NetNS.DialContext(ctx, "udp", addr)
	if err != nil {
		return Reply{}, fmt.Errorf("%s: udp %s: %w", h.Name, addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	token := hex.EncodeToString(nonce)
	if _, err := conn.Write([]byte(token)); err != nil {
		return Reply{}, fmt.Errorf("%s: udp %s: sending: %w", h.Name, addr, err)
	}
	buf := make([]byte, 2048)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return Reply{}, fmt.Errorf("%s: udp %s: reading: %w", h.Name, addr, err)
		}
		line := string(buf[:n])
		if !strings.Contains(line, "data="+token) {
			continue // a late answer to an earlier datagram
		}
		return parseReply(line)
	}
}

// reach checks that a backend behind addr answers: a TCP connection is
// accepted, or a UDP datagram (a DNS query) gets any reply.
func (h *Host) reach(ctx context.Context, proto corev1.Protocol, addr string) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	network := "tcp"
	if proto == corev1.ProtocolUDP {
		network = "udp"
	}
	conn, err := h.NetNS.DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if network == "tcp" {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write(DNSQuery(1, "kubernetes.default.svc."+ClusterDomain)); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 2048))
	return err
}

// Request is TCP or UDP by protocol.
func (h *Host) Request(ctx context.Context, proto corev1.Protocol, addr string) (Reply, error) {
	switch proto {
	case corev1.ProtocolTCP, "":
		return h.TCP(ctx, addr)
	case corev1.ProtocolUDP:
		return h.UDP(ctx, addr)
	default:
		return Reply{}, fmt.Errorf("protocol %s is not supported by the test client", proto)
	}
}
