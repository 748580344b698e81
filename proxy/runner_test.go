package proxy

import (
	"context"
	"errors"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// runnerHarness drives a Runner with a fake clock; every sync reports
// whether it was full and returns the next queued error (nil by default).
type runnerHarness struct {
	t       *testing.T
	clock   *clocktesting.FakeClock
	r       *Runner
	calls   chan bool
	errs    chan error // errors for the next syncs the test expects
	replies chan error
	cancel  context.CancelFunc
}

func newRunnerHarness(t *testing.T, minI, maxI time.Duration) *runnerHarness {
	h := &runnerHarness{t: t, clock: clocktesting.NewFakeClock(time.Unix(1000, 0)), calls: make(chan bool, 100), errs: make(chan error, 100),
		replies: make(chan error, 1)}
	h.r = NewRunner(func(ctx context.Context, full bool) error {
		// Each sync waits for the test to see it (expectSync), which
		// answers with the next queued error or nil: an error queued
		// before an expectSync is that sync's, whatever the timing.
		h.calls <- full
		select {
		case err := <-h.replies:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}, minI, maxI, h.clock)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	done := make(chan struct{})
	go func() { h.r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// expectSync waits for one sync and checks whether it was full.
func (h *runnerHarness) expectSync(full bool) {
	h.t.Helper()
	select {
	case got := <-h.calls:
		var err error
		select {
		case err = <-h.errs:
		default:
		}
		h.replies <- err
		if got != full {
			h.t.Fatalf("sync full=%v, want full=%v", got, full)
		}
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no sync happened (want full=%v)", full)
	}
}

// expectNoSync checks that no sync is pending once the runner is idle.
func (h *runnerHarness) expectNoSync() {
	h.t.Helper()
	h.waitIdle()
	select {
	case full := <-h.calls:
		h.t.Fatalf("unexpected sync (full=%v)", full)
	default:
	}
}

// waitIdle waits until the runner sleeps on the fake clock.
func (h *runnerHarness) waitIdle() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !h.clock.HasWaiters() {
		if len(h.calls) > 0 {
			h.t.Fatal("unexpected sync")
		}
		if time.Now().After(deadline) {
			h.t.Fatal("runner never went idle")
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *runnerHarness) step(d time.Duration) {
	h.waitIdle()
	h.clock.Step(d)
}

func TestRunnerBatchesBursts(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second)
	h.expectSync(true) // the first sync is full
	for i := 0; i < 10; i++ {
		h.r.Request()
	}
	h.expectNoSync() // still within min-sync-period
	h.step(999 * time.Millisecond)
	h.expectNoSync()
	h.step(time.Millisecond)
	h.expectSync(false) // ten requests, one partial sync
	h.expectNoSync()

	// A request long after the last sync runs at once.
	h.step(5 * time.Second)
	h.r.Request()
	h.expectSync(false)
}

func TestRunnerPeriodicFullSync(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second)
	h.expectSync(true)
	h.step(29 * time.Second)
	h.expectNoSync()
	h.step(time.Second)
	h.expectSync(true)
}

func TestRunnerRetriesWithBackoff(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second)
	h.expectSync(true)
	h.errs <- errors.New("iptables-restore: boom")
	h.errs <- errors.New("iptables-restore: boom again")
	h.r.Request()
	h.step(time.Second)
	h.expectSync(false) // fails
	// Retry after min-sync-period (1s), as a full sync; it fails again.
	h.step(999 * time.Millisecond)
	h.expectNoSync()
	h.step(time.Millisecond)
	h.expectSync(true)
	// Back-off doubles: 2s. Requests meanwhile wait for the retry.
	h.r.Request()
	h.step(1999 * time.Millisecond)
	h.expectNoSync()
	h.step(time.Millisecond)
	h.expectSync(true) // succeeds
	// Back to normal: partial syncs.
	h.step(time.Second)
	h.r.Request()
	h.expectSync(false)
}

func TestRunnerBackoffIsCapped(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 4*time.Second)
	h.errs <- errors.New("1")
	h.expectSync(true)
	for i, wait := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		if i < 3 {
			h.errs <- errors.New("again")
		}
		h.step(wait - time.Millisecond)
		h.expectNoSync()
		h.step(time.Millisecond)
		h.expectSync(true)
	}
}

// Partial syncs for a steady stream of changes do not put off the periodic
// full sync: it comes maxInterval after the last full one.
func TestRunnerPeriodicFullSyncUnderChurn(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second)
	h.expectSync(true)
	for i := 1; i < 6; i++ { // a change every 5 s: partial syncs at 5..25 s
		h.step(5 * time.Second)
		h.r.Request()
		h.expectSync(false)
	}
	h.step(5 * time.Second) // 30 s after the full sync
	h.expectSync(true)
}

func TestRunnerRequestFull(t *testing.T) {
	h := newRunnerHarness(t, time.Second, 30*time.Second)
	h.expectSync(true)
	h.step(2 * time.Second)
	h.r.RequestFull()
	h.expectSync(true)
	// Within min-sync-period it waits like any request.
	h.r.RequestFull()
	h.expectNoSync()
	h.step(time.Second)
	h.expectSync(true)
	h.step(2 * time.Second)
	h.r.Request()
	h.expectSync(false)
}
