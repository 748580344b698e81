//go:build !race

// Heap figures of -race builds are not svcproxy's: this file is left out
// of them (hack/test.sh runs it in a build without -race).

package source

import (
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestFileSourceMemory loads a 10,000-service kubectl List (12 MB of YAML)
// and samples the heap meanwhile: reading it as one YAML document peaked
// at 660 MiB of RSS.
func TestFileSourceMemory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.yaml")
	if err := os.WriteFile(path, []byte(bigList(10000)), 0o644); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	h := &countingHandler{}
	if err := NewFileSource(path, h, 0).Load(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-sampled
	peakMiB := (peak.Load() - base) >> 20
	t.Logf("%d services, %d slices; heap peak while loading: %d MiB over the start", h.services.Load(), h.slices.Load(), peakMiB)
	if h.services.Load() != 10000 || h.slices.Load() != 10000 {
		t.Errorf("handler got %d services, %d slices", h.services.Load(), h.slices.Load())
	}
	if peakMiB > 200 {
		t.Errorf("heap peak %d MiB while loading, want at most 200", peakMiB)
	}
}
