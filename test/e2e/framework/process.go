package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a program the framework started inside one of its network
// namespaces. It is stopped by its PID only.
type Process struct {
	// Name identifies the process in logs, for example "svcproxy-node1".
	Name string
	// LogPath is the file that receives its stdout and stderr.
	LogPath string

	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // its exit status, valid after done
	stopped bool          // Stop or Kill was called: an exit is expected
	crashed bool          // it exited before Stop or Kill was called
	mu      sync.Mutex
}

// startProcess starts argv inside ns with `ip netns exec`, which execs the
// program in place so that the PID we hold is the program's. Output goes to
// logDir/name.log. The process gets SIGKILL if the test binary dies
// (Pdeathsig), so a killed `go test` leaves nothing running.
func startProcess(ns *NetNS, logDir, name string, argv ...string) (*Process, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== %s: netns %s: %s\n", time.Now().Format(time.RFC3339Nano), ns.Name, strings.Join(argv, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.crashed = !p.stopped
		p.mu.Unlock()
		fmt.Fprintf(f, "=== %s: exited: %v\n", time.Now().Format(time.RFC3339Nano), exitStatus(err))
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended and, if so, how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process (its PID only).
func (p *Process) Signal(sig syscall.Signal) error {
	if exited, _ := p.Exited(); exited {
		return nil
	}
	return syscall.Kill(p.PID(), sig)
}

// Stop sends SIGTERM, waits up to grace for the process to exit, then sends
// SIGKILL and waits for it. It returns nil once the process is gone.
func (p *Process) Stop(grace time.Duration) error {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	if exited, _ := p.Exited(); exited {
		return nil
	}
	if err := p.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping %s (pid %d): %w", p.Name, p.PID(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing %s (pid %d): %w", p.Name, p.PID(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.PID())
	}
}

// Kill sends SIGKILL and waits for the process to exit: a crash.
func (p *Process) Kill() error {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	<-p.done
	return nil
}

// Unexpected reports whether the process exited without Stop or Kill
// asking it to: a crash.
func (p *Process) Unexpected() bool {
	if exited, _ := p.Exited(); !exited {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.crashed
}

// Tail returns the last n lines of the process's log.
func (p *Process) Tail(n int) string { return tailFile(p.LogPath, n) }

// waitLine waits until the log contains line (a whole line), the process
// exits or ctx is done.
func (p *Process) waitLine(ctx context.Context, line string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	want := []byte("\n" + line + "\n")
	for {
		if b, err := os.ReadFile(p.LogPath); err == nil && bytes.Contains(b, want) {
			return nil
		}
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("%s exited (%v) before it printed %q; log %s:\n%s", p.Name, exitStatus(err), line, p.LogPath, p.Tail(20))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not print %q: %w; log %s:\n%s", p.Name, line, ctx.Err(), p.LogPath, p.Tail(20))
		case <-tick.C:
		}
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
