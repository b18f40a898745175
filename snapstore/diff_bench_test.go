package snapstore

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"sort"
	"sync"
	"testing"
	"time"
)

// discardDev is a device of any size that keeps nothing at or above
// discardFrom (writes there are dropped, reads return zeros) and keeps the
// rest sparsely in 4 KiB blocks (all-zero blocks are not stored). It lets
// an engine benchmark run a 1 TiB origin whose data does not matter.
type discardDev struct {
	size        int64
	mu          sync.RWMutex
	discardFrom int64
	blocks      map[int64][]byte
}

func newDiscardDev(size, discardFrom int64) *discardDev {
	return &discardDev{size: size, discardFrom: discardFrom, blocks: map[int64][]byte{}}
}

func (d *discardDev) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, io.EOF
	}
	clear(p)
	d.mu.RLock()
	defer d.mu.RUnlock()
	for o := off; o < off+int64(len(p)) && o < d.discardFrom; {
		b := o / BlockSize
		n := min(off+int64(len(p)), (b+1)*BlockSize) - o
		if blk, ok := d.blocks[b]; ok {
			copy(p[o-off:o-off+n], blk[o-b*BlockSize:])
		}
		o += n
	}
	return len(p), nil
}

func (d *discardDev) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("discarddev: write [%d,+%d) beyond size %d", off, len(p), d.size)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for o := off; o < off+int64(len(p)) && o < d.discardFrom; {
		b := o / BlockSize
		n := min(off+int64(len(p)), (b+1)*BlockSize) - o
		blk, ok := d.blocks[b]
		if !ok {
			blk = make([]byte, BlockSize)
		}
		copy(blk[o-b*BlockSize:], p[o-off:o-off+n])
		if allZero(blk) {
			delete(d.blocks, b)
		} else {
			d.blocks[b] = blk
		}
		o += n
	}
	return len(p), nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func (d *discardDev) Flush() error         { return nil }
func (d *discardDev) Size() (int64, error) { return d.size, nil }

// BenchmarkDiff1TiB: the engine's diff between two snapshots of a 1 TiB
// volume (64 KiB chunks) with 1% of its chunks, scattered at random,
// written between them: every page of the answer (DefaultDiffLimit
// extents) until the end. Goal: under 1 s. The origin discards its data
// and the store keeps only its metadata (discardDev).
func BenchmarkDiff1TiB(b *testing.B) {
	const cs = DefaultChunkSize
	const volume = 1 << 40
	const chunks = volume / cs
	const changed = chunks / 100
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		od := newDiscardDev(volume, 0)
		sd := newDiscardDev(int64(changed)*cs*12/10+256<<20, 1<<62)
		if err := Format(od, sd, FormatOptions{ChunkSize: cs}); err != nil {
			b.Fatal(err)
		}
		sb, _, err := readSuper(sd)
		if err != nil {
			b.Fatal(err)
		}
		sd.discardFrom = int64(sb.dataStart) * BlockSize
		e, err := Open(od, sd, Options{})
		if err != nil {
			b.Fatal(err)
		}
		a, err := e.CreateSnapshot(ctx, "a", CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewSource(int64(i)))
		picked := map[uint64]bool{}
		for len(picked) < changed {
			picked[uint64(rng.Int63n(chunks))] = true
		}
		list := make([]uint64, 0, changed)
		for c := range picked {
			list = append(list, c)
		}
		sort.Slice(list, func(i, j int) bool { return list[i] < list[j] })
		rng.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
		t0 := time.Now()
		var wg sync.WaitGroup
		const workers = 16
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for k := w; k < len(list); k += workers {
					if _, err := e.PrepareOriginWrite(ctx, list[k], 1); err != nil {
						errs <- err
						return
					}
				}
			}(w)
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		setup := time.Since(t0)
		bs, err := e.CreateSnapshot(ctx, "b", CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		// Cold: a reopened engine, every tree node read from the store.
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
		if e, err = Open(od, sd, Options{}); err != nil {
			b.Fatal(err)
		}
		var cold, warm time.Duration
		for round := 0; round < 2; round++ {
			b.StartTimer()
			t1 := time.Now()
			var n, pages int
			var total int64
			for off := int64(0); off >= 0; pages++ {
				exts, next, err := e.Diff(ctx, a.ID, bs.ID, off, 0)
				if err != nil {
					b.Fatal(err)
				}
				for _, x := range exts {
					total += x.Length
				}
				n += len(exts)
				off = next
			}
			el := time.Since(t1)
			b.StopTimer()
			if total != int64(changed)*cs {
				b.Fatalf("diff covers %d bytes, want %d (%d chunks)", total, int64(changed)*cs, changed)
			}
			if round == 0 {
				cold = el
				b.ReportMetric(float64(n), "extents")
				b.ReportMetric(float64(pages), "pages")
			} else {
				warm = el
			}
		}
		b.ReportMetric(cold.Seconds(), "s/diff-cold")
		b.ReportMetric(warm.Seconds(), "s/diff-warm")
		b.ReportMetric(float64(e.Stats().Exceptions), "exceptions")
		b.ReportMetric(setup.Seconds(), "s/setup")
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
