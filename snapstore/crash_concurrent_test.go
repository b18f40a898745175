package snapstore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/faultdev"
)

// TestCrashConcurrent cuts the power while several writers copy out
// concurrently (so journal transactions hold many operations, group
// committed), snapshots are created behind a write barrier and deleted,
// and the background reclaimer runs. After recovery the store must check
// clean, every acknowledged snapshot must hold exactly the origin as of its
// creation, and every acknowledged origin write must be there (a write in
// flight may be old or new per sector).
func TestCrashConcurrent(t *testing.T) {
	trials := 60
	if testing.Short() || raceEnabled {
		trials = 20
	}
	const cs = 4096
	const chunks = 48
	const writers = 8
	var totalCopies, totalCommits uint64
	defer func() {
		t.Logf("%d trials: %d copy-outs in %d journal commits before the cuts", trials, totalCopies, totalCommits)
	}()
	for trial := 0; trial < trials; trial++ {
		p := faultdev.NewPower(int64(trial))
		p.SetFlushDelay(100 * time.Microsecond)
		od := p.NewDevice(cs * chunks)
		sd := p.NewDevice(3 << 20)
		origin := make([]byte, cs*chunks)
		rand.New(rand.NewSource(int64(trial))).Read(origin)
		od.Load(origin, 0)
		if err := Format(od, sd, FormatOptions{ChunkSize: cs, JournalBlocks: 256, TableCapacity: 64, metaBlocks: 256}); err != nil {
			t.Fatal(err)
		}
		e, err := Open(od, sd, Options{CacheBlocks: 256, RecoverBackoff: -1})
		if err != nil {
			t.Fatal(err)
		}
		p.CrashAfter(int64(50 + rand.New(rand.NewSource(int64(trial))).Intn(1500)))
		ctx := context.Background()

		var barrier sync.RWMutex
		var mu sync.Mutex
		type flight struct {
			off  int
			data []byte
		}
		inflight := make([]*flight, writers)
		snaps := map[string][]byte{} // acknowledged
		var createFlight struct {
			name string
			img  []byte
		}
		deleteFlight := ""
		var wg sync.WaitGroup
		var acked atomic.Int64
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := rand.New(rand.NewSource(int64(trial*100 + w)))
				for !p.IsCut() {
					c := rng.Intn(chunks/writers)*writers + w
					off := c*cs + rng.Intn(cs/2)
					data := make([]byte, 1+rng.Intn(cs/2))
					rng.Read(data)
					barrier.RLock()
					mu.Lock()
					inflight[w] = &flight{off, data}
					mu.Unlock()
					_, err := e.PrepareOriginWrite(ctx, uint64(c), 1)
					if err == nil {
						_, err = od.WriteAt(data, int64(off))
					}
					if err == nil {
						err = od.Flush()
					}
					if err == nil {
						mu.Lock()
						copy(origin[off:], data)
						inflight[w] = nil
						mu.Unlock()
						acked.Add(1)
					}
					barrier.RUnlock()
					if err != nil {
						return
					}
				}
			}(w)
		}
		rng := rand.New(rand.NewSource(int64(trial)))
		for i := 0; !p.IsCut(); i++ {
			barrier.Lock()
			name := fmt.Sprintf("s%d", i)
			mu.Lock()
			img := append([]byte(nil), origin...)
			createFlight.name, createFlight.img = name, img
			mu.Unlock()
			_, err := e.CreateSnapshot(ctx, name, CreateOptions{})
			if err == nil {
				mu.Lock()
				snaps[name] = img
				createFlight.name = ""
				mu.Unlock()
			}
			barrier.Unlock()
			if err != nil {
				break
			}
			if rng.Intn(3) == 0 && len(snaps) > 2 {
				var victim string
				for n := range snaps {
					victim = n
					break
				}
				si, err := e.Lookup(victim)
				if err != nil {
					t.Fatal(err)
				}
				deleteFlight = victim
				if err := e.DeleteSnapshot(ctx, si.ID); err != nil {
					break
				}
				delete(snaps, victim)
				deleteFlight = ""
			}
			for w0 := acked.Load(); acked.Load() < w0+30 && !p.IsCut(); {
				time.Sleep(50 * time.Microsecond) // let the writers work
			}
		}
		wg.Wait()
		st := e.Stats()
		totalCopies += st.CopyOuts
		totalCommits += st.Commits
		e.Close() // stops the reclaimer; fails (no IO) because of the cut
		p.Restore()

		e, err = Open(od, sd, Options{CacheBlocks: 256, RecoverBackoff: -1})
		if err != nil {
			t.Fatalf("trial %d: reopen: %v", trial, err)
		}
		if r, err := e.Check(ctx, nil); err != nil || !r.Clean() {
			t.Fatalf("trial %d: check: %v %v", trial, err, r.Problems)
		}
		got := make([]byte, cs*chunks)
		od.ReadAt(got, 0)
		want := append([]byte(nil), origin...)
		for _, f := range inflight {
			if f == nil {
				continue
			}
			for s := f.off / faultdev.SectorSize * faultdev.SectorSize; s < f.off+len(f.data); s += faultdev.SectorSize {
				lo, hi := max(s, f.off), min(s+faultdev.SectorSize, f.off+len(f.data))
				if bytes.Equal(got[lo:hi], f.data[lo-f.off:hi-f.off]) {
					copy(want[lo:hi], got[lo:hi])
				}
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("trial %d: origin lost an acknowledged write", trial)
		}
		present := map[string]SnapshotInfo{}
		dropped := map[string]bool{}
		for _, si := range e.Snapshots() {
			switch si.State {
			case StateLive:
				present[si.Name] = si
			case StateDropped:
				dropped[si.Name] = true
			}
		}
		read := func(id SnapID) []byte {
			locs, err := e.MapSnapshotRead(ctx, id, 0, chunks)
			if err != nil {
				t.Fatalf("trial %d: %v", trial, err)
			}
			out := make([]byte, cs*chunks)
			for i, l := range locs {
				if l.Origin {
					od.ReadAt(out[i*cs:(i+1)*cs], l.Offset)
				} else {
					sd.ReadAt(out[i*cs:(i+1)*cs], l.Offset)
				}
			}
			return out
		}
		for name, img := range snaps {
			si, ok := present[name]
			if !ok {
				if name == deleteFlight || dropped[name] {
					continue
				}
				t.Fatalf("trial %d: snapshot %s lost", trial, name)
			}
			if !bytes.Equal(read(si.ID), img) {
				t.Fatalf("trial %d: snapshot %s differs from the origin at its creation", trial, name)
			}
			delete(present, name)
		}
		for name, si := range present {
			if name != createFlight.name || !bytes.Equal(read(si.ID), createFlight.img) {
				t.Fatalf("trial %d: unexpected or wrong snapshot %s", trial, name)
			}
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
