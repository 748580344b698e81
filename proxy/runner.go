package proxy

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// SyncFunc programs the node. full asks for a full resync (at start, after a
// failure and every sync period); otherwise only what changed may be sent.
type SyncFunc func(ctx context.Context, full bool) error

// Runner calls a SyncFunc no more often than minInterval (batching bursts of
// changes), with a full resync (which repairs drift) at most maxInterval
// after the last full one whatever the churn, and after a failure again
// with exponential back-off, starting at minInterval and capped at
// maxInterval; the retry is a full sync. RequestFull asks for a full sync
// early (drift was detected).
type Runner struct {
	fn          SyncFunc
	minInterval time.Duration
	maxInterval time.Duration
	clock       clock.WithTicker

	mu      sync.Mutex
	pending bool
	// fullWanted is set by RequestFull: the next sync is full.
	fullWanted bool
	kick       chan struct{}
}

// NewRunner returns a Runner; call Run to start it. A nil clock means the
// real one.
func NewRunner(fn SyncFunc, minInterval, maxInterval time.Duration, clk clock.WithTicker) *Runner {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if minInterval <= 0 {
		minInterval = time.Millisecond
	}
	if maxInterval < minInterval {
		maxInterval = minInterval
	}
	return &Runner{fn: fn, minInterval: minInterval, maxInterval: maxInterval, clock: clk, kick: make(chan struct{}, 1)}
}

// Request asks for a sync soon: at once if the last one was at least
// minInterval ago, otherwise when that much time has passed. It never blocks.
func (r *Runner) Request() {
	r.mu.Lock()
	r.pending = true
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// RequestFull asks for a full sync soon, with the same pacing as Request:
// something outside svcproxy changed the kernel (drift), and every rule is
// to be rewritten.
func (r *Runner) RequestFull() {
	r.mu.Lock()
	r.fullWanted = true
	r.mu.Unlock()
	r.Request()
}

// TakeFullRequest reports, and clears, a RequestFull not yet served. A
// sync function calls it once it may touch the kernel: a request made while
// the sync waited to start (drift found meanwhile) makes it full.
func (r *Runner) TakeFullRequest() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.fullWanted
	r.fullWanted = false
	return f
}

// takePending reports whether a sync and whether a full one was asked for;
// clear resets both.
func (r *Runner) takePending(clear bool) (pending, full bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, f := r.pending, r.fullWanted
	if clear {
		r.pending, r.fullWanted = false, false
	}
	return p, f
}

// Run syncs at once (a full sync), then loops until ctx is done.
func (r *Runner) Run(ctx context.Context) {
	logger := klog.FromContext(ctx)
	full := true
	var backoff time.Duration
	var lastFull time.Time // start of the last successful full sync
	for {
		if _, f := r.takePending(true); f {
			full = true
		}
		lastRun := r.clock.Now()
		var retryAt time.Time
		if err := r.fn(ctx, full); err != nil {
			backoff = min(max(2*backoff, r.minInterval), r.maxInterval)
			retryAt = lastRun.Add(backoff)
			full = true
			logger.Error(err, "Sync failed; retrying with a full sync", "retryIn", backoff)
		} else {
			if full {
				lastFull = lastRun
			}
			backoff = 0
			full = false
		}
		// Counted from the last full sync, so that a steady stream of
		// changes (each a partial sync) cannot put it off.
		periodicAt := lastFull.Add(r.maxInterval)
		for {
			due := periodicAt
			if !retryAt.IsZero() {
				due = retryAt // a retry is full and picks up pending changes too
			} else if pending, _ := r.takePending(false); pending {
				if soon := lastRun.Add(r.minInterval); soon.Before(due) {
					due = soon
				}
			}
			now := r.clock.Now()
			if !now.Before(due) {
				if due.Equal(periodicAt) {
					full = true
				}
				break
			}
			timer := r.clock.NewTimer(due.Sub(now))
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-r.kick:
			case <-timer.C():
			}
			timer.Stop()
		}
	}
}
