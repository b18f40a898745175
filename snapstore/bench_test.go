package snapstore

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmarks. Ratios are measured within one run (same process, same
// files) and reported with b.ReportMetric. Record results in BENCHMARKS.md
// with the command used. Run them one at a time with -benchtime=1x; each
// iteration is a complete experiment.

func benchFiles(b *testing.B, originSize, storeSize int64) (*FileDevice, *FileDevice) {
	b.Helper()
	dir := b.TempDir()
	mk := func(name string, size int64) *FileDevice {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		return NewFileDevice(f)
	}
	return mk("origin", originSize), mk("store", storeSize)
}

// durableWrites has `workers` goroutines write each chunk of [base,
// base+n) once, as a client would: PrepareOriginWrite, write the origin,
// flush the origin. It returns the elapsed time and per-write latencies.
func durableWrites(b *testing.B, e *Engine, od Device, base, n uint64, workers int, prepare bool) (time.Duration, []time.Duration) {
	var next atomic.Uint64
	next.Store(base)
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	ctx := context.Background()
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, e.ChunkSize())
			for {
				c := next.Add(1) - 1
				if c >= base+n {
					return
				}
				buf[0], buf[1] = byte(c), byte(c>>8)
				t0 := time.Now()
				if prepare {
					if _, err := e.PrepareOriginWrite(ctx, c, 1); err != nil {
						b.Error(err)
						return
					}
				}
				if _, err := od.WriteAt(buf, int64(c)*int64(e.ChunkSize())); err != nil {
					b.Error(err)
					return
				}
				if err := od.Flush(); err != nil {
					b.Error(err)
					return
				}
				d := time.Since(t0)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return time.Since(start), lat
}

// waitIdle returns once mu is free: whoever holds it is done.
func waitIdle(mu *sync.Mutex) {
	mu.Lock()
	defer mu.Unlock()
}

func pct(l []time.Duration, p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkFirstWriteAfterSnapshot: durable 64 KiB origin writes by 16
// concurrent writers. Baseline: no snapshot (PrepareOriginWrite is called
// and returns at once). Then a snapshot is taken and the same number of
// writes go to chunks never written since: every one copies out.
// ratio = throughput after snapshot / throughput without (goal >= 0.4).
func BenchmarkFirstWriteAfterSnapshot(b *testing.B) {
	const cs = DefaultChunkSize
	const n = 512 // chunks per side (32 MiB)
	const workers = 16
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		od, sd := benchFiles(b, 3*n*cs, 4*n*cs)
		if err := Format(od, sd, FormatOptions{}); err != nil {
			b.Fatal(err)
		}
		e, err := Open(od, sd, Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		tBase, _ := durableWrites(b, e, od, 0, n, workers, true)
		if _, err := e.CreateSnapshot(context.Background(), "s", CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		st0 := e.Stats()
		tSnap, _ := durableWrites(b, e, od, n, n, workers, true)
		st := e.Stats()
		b.StopTimer()
		mbs := func(d time.Duration) float64 { return float64(n*cs) / d.Seconds() / (1 << 20) }
		b.ReportMetric(mbs(tBase), "MB/s-nosnap")
		b.ReportMetric(mbs(tSnap), "MB/s-firstwrite")
		b.ReportMetric(tBase.Seconds()/tSnap.Seconds(), "ratio")
		b.ReportMetric(float64(st.CopyOuts-st0.CopyOuts)/float64(max(1, st.Commits-st0.Commits)), "copyouts/commit")
		e.Close()
		b.StartTimer()
	}
}

// BenchmarkCopyOutSnapshots: cost of a copy-out (PrepareOriginWrite of a
// chunk every live snapshot shares) with 4096 live snapshots versus 1, on
// in-memory devices so only the engine's work is measured; the two
// engines are measured in alternating rounds of 16 copy-outs and the
// median round times compared.
// ratio = time with 1 snapshot / time with 4096 (goal >= 0.9).
func BenchmarkCopyOutSnapshots(b *testing.B) {
	const cs = DefaultChunkSize
	const chunks = 1024
	ctx := context.Background()
	mk := func(snaps int) (*Engine, error) {
		od, sd := NewMemDevice(chunks*cs), NewMemDevice(2*chunks*cs+64<<20)
		// Touch every page first: page faults on fresh memory would
		// otherwise dominate (and vary) the measurement.
		for _, d := range []*MemDevice{od, sd} {
			for i := range d.buf {
				d.buf[i] = 1
			}
		}
		if err := Format(od, sd, FormatOptions{}); err != nil {
			return nil, err
		}
		e, err := Open(od, sd, Options{})
		if err != nil {
			return nil, err
		}
		for i := 0; i < snaps; i++ {
			if _, err := e.CreateSnapshot(ctx, fmt.Sprintf("s%d", i), CreateOptions{}); err != nil {
				return nil, err
			}
		}
		return e, nil
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e1, err := mk(1)
		if err != nil {
			b.Fatal(err)
		}
		eN, err := mk(4096)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		// Alternate rounds between the engines; compare median round times
		// (robust against other load on the machine).
		var r1, rN []time.Duration
		const round = 16
		for c := uint64(0); c < chunks; c += round {
			for _, x := range []struct {
				e *Engine
				r *[]time.Duration
			}{{e1, &r1}, {eN, &rN}} {
				t0 := time.Now()
				for k := c; k < c+round; k++ {
					if _, err := x.e.PrepareOriginWrite(ctx, k, 1); err != nil {
						b.Fatal(err)
					}
				}
				*x.r = append(*x.r, time.Since(t0))
			}
		}
		t1, tN := pct(r1, 0.5), pct(rN, 0.5)
		b.StopTimer()
		if e1.Stats().CopyOuts != chunks || eN.Stats().CopyOuts != chunks {
			b.Fatalf("copy-outs %d / %d", e1.Stats().CopyOuts, eN.Stats().CopyOuts)
		}
		b.ReportMetric(float64(t1.Microseconds())/round, "us/copyout-1snap")
		b.ReportMetric(float64(tN.Microseconds())/round, "us/copyout-4096snaps")
		b.ReportMetric(t1.Seconds()/tN.Seconds(), "ratio")
		e1.Close()
		eN.Close()
		b.StartTimer()
	}
}

// BenchmarkSnapshotCreate: latency of CreateSnapshot (durable: one journal
// commit) on files.
func BenchmarkSnapshotCreate(b *testing.B) {
	od, sd := benchFiles(b, 64<<20, 256<<20)
	if err := Format(od, sd, FormatOptions{}); err != nil {
		b.Fatal(err)
	}
	e, err := Open(od, sd, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		si, err := e.CreateSnapshot(ctx, fmt.Sprintf("s%d", i), CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		if len(e.Snapshots()) > 4000 {
			b.StopTimer()
			e.DeleteSnapshot(ctx, si.ID-4000)
			b.StartTimer()
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(pct(lat, 0.5).Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(pct(lat, 0.99).Microseconds())/1000, "ms-p99")
}

// BenchmarkIOLatencyDuringDelete: snapshot A gets 1 GiB of unique chunks
// (every chunk of a 1 GiB origin written once after A); snapshot B is
// taken; A is deleted. While A is reclaimed in the background, 8 writers do
// durable first writes after B (each a copy-out) in alternating windows of
// 64 writes: in even windows the reclaimer is paused ("base"), in odd ones
// it runs ("deleting"). Interleaving makes both sides see the same disk and
// machine load, which on a shared VM varies more than the effect measured.
// ratio-p99 = p99 while deleting / p99 with reclamation paused (goal <= 1.2).
func BenchmarkIOLatencyDuringDelete(b *testing.B) {
	const cs = DefaultChunkSize
	const chunks = (1 << 30) / cs // 16384: 1 GiB
	const workers = 8
	const window = 64
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		od, sd := benchFiles(b, chunks*cs, 3*chunks*cs)
		if err := Format(od, sd, FormatOptions{}); err != nil {
			b.Fatal(err)
		}
		e, err := Open(od, sd, Options{})
		if err != nil {
			b.Fatal(err)
		}
		a, err := e.CreateSnapshot(ctx, "a", CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		durableWrites(b, e, od, 0, chunks, 16, true) // 1 GiB unique to A
		if _, err := e.CreateSnapshot(ctx, "b", CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		if u := e.Snapshots()[0].UniqueBytes; u != chunks*cs {
			b.Fatalf("snapshot a has %d unique bytes", u)
		}
		// Let the page cache write back the setup's 2 GiB before measuring.
		if err := od.Flush(); err != nil {
			b.Fatal(err)
		}
		if err := sd.Flush(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		b.StartTimer()
		e.pauseReclaim.Store(true)
		if err := e.DeleteSnapshot(ctx, a.ID); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		var base, during []time.Duration
		next := uint64(0)
		for w := 0; e.Reclaiming() && next+window <= chunks; w++ {
			paused := w%2 == 0
			e.pauseReclaim.Store(paused)
			_, l := durableWrites(b, e, od, next, window, workers, true)
			if paused {
				base = append(base, l...)
			} else {
				during = append(during, l...)
			}
			next += window
		}
		e.pauseReclaim.Store(false)
		reclaimTime := time.Since(t0)
		still := e.Reclaiming()
		b.StopTimer()
		if still {
			b.Logf("reclamation still running after %v (ran out of chunks to write)", reclaimTime)
		}
		b.ReportMetric(float64(pct(base, 0.5).Microseconds())/1000, "ms-p50-base")
		b.ReportMetric(float64(pct(base, 0.99).Microseconds())/1000, "ms-p99-base")
		b.ReportMetric(float64(pct(during, 0.5).Microseconds())/1000, "ms-p50-deleting")
		b.ReportMetric(float64(pct(during, 0.99).Microseconds())/1000, "ms-p99-deleting")
		b.ReportMetric(pct(during, 0.5).Seconds()/pct(base, 0.5).Seconds(), "ratio-p50")
		b.ReportMetric(pct(during, 0.99).Seconds()/pct(base, 0.99).Seconds(), "ratio-p99")
		b.ReportMetric(reclaimTime.Seconds(), "s-elapsed")
		b.ReportMetric(float64(len(base)), "writes-base")
		b.ReportMetric(float64(len(during)), "writes-deleting")
		e.Close()
		b.StartTimer()
	}
}

// BenchmarkIOLatencyDuringCheck: durable first writes after a snapshot
// (each a copy-out) by 8 goroutines on a store holding 1 GiB of exceptions
// (16384 chunks of 64 KiB), in alternating windows of 64 writes: in even
// windows nothing else runs, in odd ones consistency checks run back to
// back. ratio-p99 = p99 latency during checks ÷ without (goal <= 1.5).
func BenchmarkIOLatencyDuringCheck(b *testing.B) {
	const cs = DefaultChunkSize
	const chunks = (1 << 30) / cs // 16384: 1 GiB
	const workers = 8
	const window = 64
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		od, sd := benchFiles(b, 2*chunks*cs, 3*chunks*cs)
		if err := Format(od, sd, FormatOptions{}); err != nil {
			b.Fatal(err)
		}
		e, err := Open(od, sd, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.CreateSnapshot(ctx, "a", CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		durableWrites(b, e, od, 0, chunks, 16, true) // 1 GiB of exceptions
		if _, err := e.CreateSnapshot(ctx, "b", CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		if err := od.Flush(); err != nil {
			b.Fatal(err)
		}
		if err := sd.Flush(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		var checking atomic.Bool
		var running sync.Mutex // held by the checker while a check runs
		var checks atomic.Int64
		var checkTime atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !checking.Load() {
					time.Sleep(2 * time.Millisecond)
					continue
				}
				running.Lock()
				if !checking.Load() {
					running.Unlock()
					continue
				}
				t0 := time.Now()
				r, err := e.Check(ctx, nil)
				running.Unlock()
				if err != nil || !r.Clean() {
					b.Errorf("check: %v %v", err, r.Problems)
					return
				}
				checks.Add(1)
				checkTime.Add(int64(time.Since(t0)))
			}
		}()
		b.StartTimer()
		var base, during []time.Duration
		next := uint64(chunks) // chunks written after snapshot b: each copies out
		// Two windows of warm-up, not counted (the first writes after
		// the pause are slower whatever else runs).
		// Windows come in pairs, one with checks and one without, in an
		// order drawn at random per pair (seeded): the window after a
		// mode switch tends to be slower, whichever mode it is.
		rng := rand.New(rand.NewSource(1))
		flip := false
		for w := -2; next+window <= 2*chunks && w < 40; w++ {
			if w >= 0 && w%2 == 0 {
				flip = rng.Intn(2) == 0
			}
			on := w >= 0 && (w%2 == 1) != flip
			checking.Store(on)
			if !on {
				waitIdle(&running) // a check still running ends first
			}
			_, l := durableWrites(b, e, od, next, window, workers, true)
			if os.Getenv("CSNAP_BENCH_WINDOWS") != "" {
				b.Logf("window %d checking=%v p50 %v p99 %v", w, on, pct(l, 0.5), pct(l, 0.99))
			}
			if w < 0 {
				next += window
				continue
			}
			if on {
				during = append(during, l...)
			} else {
				base = append(base, l...)
			}
			next += window
		}
		b.StopTimer()
		checking.Store(false)
		close(stop)
		wg.Wait()
		if n := checks.Load(); n > 0 {
			b.ReportMetric(float64(n), "checks")
			b.ReportMetric(float64(checkTime.Load())/float64(n)/1e6, "ms/check")
		}
		b.ReportMetric(float64(pct(base, 0.5).Microseconds())/1000, "ms-p50-base")
		b.ReportMetric(float64(pct(base, 0.99).Microseconds())/1000, "ms-p99-base")
		b.ReportMetric(float64(pct(during, 0.5).Microseconds())/1000, "ms-p50-checking")
		b.ReportMetric(float64(pct(during, 0.99).Microseconds())/1000, "ms-p99-checking")
		b.ReportMetric(pct(during, 0.5).Seconds()/pct(base, 0.5).Seconds(), "ratio-p50")
		b.ReportMetric(pct(during, 0.99).Seconds()/pct(base, 0.99).Seconds(), "ratio-p99")
		e.Close()
		b.StartTimer()
	}
}
