package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
)

// netnsDir is where `ip netns add` mounts named network namespaces.
const netnsDir = "/var/run/netns"

// NetNS is a named network namespace that the framework created
// (`ip netns add`). Every network change of the test bed goes through one:
// the root namespace is never touched.
type NetNS struct {
	// Name is the namespace's name under /var/run/netns.
	Name   string
	handle netns.NsHandle
}

// addNetNS creates the network namespace name, brings its loopback up and
// opens a handle on it for setns.
func addNetNS(ctx context.Context, name string) (*NetNS, error) {
	if _, err := run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, err
	}
	n := &NetNS{Name: name, handle: -1}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = n.delete(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("opening netns %s: %w", name, err)
	}
	n.handle = h
	if err := n.IP(ctx, "link", "set", "lo", "up"); err != nil {
		_ = n.delete(context.WithoutCancel(ctx))
		return nil, err
	}
	return n, nil
}

// delete closes the handle and removes the namespace. The kernel frees it
// once no process runs in it any more.
func (n *NetNS) delete(ctx context.Context) error {
	if n.handle >= 0 {
		_ = n.handle.Close()
		n.handle = -1
	}
	_, err := run(ctx, "ip", "netns", "delete", n.Name)
	return err
}

// IP runs `ip -n <ns> args...`.
func (n *NetNS) IP(ctx context.Context, args ...string) error {
	_, err := run(ctx, "ip", append([]string{"-n", n.Name}, args...)...)
	return err
}

// Exec runs a command inside the namespace (`ip netns exec`) and returns
// its combined output.
func (n *NetNS) Exec(ctx context.Context, name string, args ...string) (string, error) {
	return run(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Sysctl sets a sysctl inside the namespace only (`ip netns exec NS sysctl
// -w`). Only per-namespace keys (net.*) may be passed: others would change
// the machine.
func (n *NetNS) Sysctl(ctx context.Context, key, value string) error {
	if !strings.HasPrefix(key, "net.") {
		return fmt.Errorf("sysctl %s is not per network namespace; refusing", key)
	}
	_, err := n.Exec(ctx, "sysctl", "-q", "-w", key+"="+value)
	return err
}

// SysctlValue reads a sysctl inside the namespace.
func (n *NetNS) SysctlValue(ctx context.Context, key string) (string, error) {
	out, err := n.Exec(ctx, "sysctl", "-n", key)
	return strings.TrimSpace(out), err
}

// Do runs fn on an OS thread switched into the namespace. Sockets that fn
// creates belong to the namespace for their whole life, whatever thread
// later uses them. fn must not start goroutines that create sockets (they
// would run in the root namespace), which rules out dialing host names: use
// IP addresses.
func (n *NetNS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("getting current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering netns %s: %w", n.Name, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go ends it with this goroutine, so no
		// other goroutine ever runs in the wrong namespace.
		return errors.Join(fnErr, fmt.Errorf("leaving netns %s: %w", n.Name, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// DialContext dials addr (an IP:port, never a host name) from inside the
// namespace. It fits net.Resolver.Dial, http.Transport.DialContext and
// rest.Config.Dial.
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return n.DialWith(ctx, &d, network, addr)
}

// DialWith is DialContext with a caller's Dialer (for a local address or a
// timeout, say).
func (n *NetNS) DialWith(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if net.ParseIP(host) == nil {
		return nil, fmt.Errorf("dial %s from netns %s: only IP addresses can be dialed inside a namespace", addr, n.Name)
	}
	var c net.Conn
	err = n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// run runs a command and returns its combined output, or an error that
// contains it.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// sweepStale removes what an earlier run of the framework left behind when
// it was killed before it could clean up (a go test timeout, say): the
// network namespaces and temporary directories named prefix<pid>-... whose
// pid is gone. Its processes died with it (Pdeathsig).
func sweepStale(ctx context.Context, prefix string, logf func(string, ...any)) {
	stale := func(name string) (int, bool) {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			return 0, false
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() || processAlive(pid) {
			return 0, false
		}
		return pid, true
	}
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			if pid, ok := stale(e.Name()); ok {
				if _, err := run(ctx, "ip", "netns", "delete", e.Name()); err == nil {
					logf("e2e: removed network namespace %s of a run that is gone (pid %d)", e.Name(), pid)
				}
			}
		}
	}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if pid, ok := stale(e.Name()); ok && e.IsDir() {
				if err := os.RemoveAll(filepath.Join(os.TempDir(), e.Name())); err == nil {
					logf("e2e: removed directory %s of a run that is gone (pid %d)", filepath.Join(os.TempDir(), e.Name()), pid)
				}
			}
		}
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
