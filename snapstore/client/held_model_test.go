package client

import (
	"errors"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

// The held-lock oracle keeps, per lock, when it was granted (in
// connection losses seen so far) and its trust time, and decides every
// answer from those: a lock is broken if a connection was lost after it
// was granted; a read is trusted if it is released no later than its
// trust time.
type oHeld struct {
	lock   wire.HeldLock
	losses int // connection losses before the grant
	until  time.Time
}

func TestHeldLocksModel(t *testing.T) {
	r := modelRand(t)
	iters := 200
	if testing.Short() {
		iters = 40
	}
	for it := 0; it < iters; it++ {
		h := newHeldLocks()
		reads, blocks := map[uint64]oHeld{}, map[uint64]oHeld{}
		losses := 0
		now := time.Unix(1000, 0)
		next := uint64(0)
		pick := func(m map[uint64]oHeld) uint64 {
			if len(m) == 0 || r.Intn(5) == 0 {
				return next + 1 + uint64(r.Intn(3)) // not held
			}
			ks := make([]uint64, 0, len(m))
			for k := range m {
				ks = append(ks, k)
			}
			slices.Sort(ks)
			return ks[r.Intn(len(ks))]
		}
		for step := 0; step < 300; step++ {
			now = now.Add(time.Duration(r.Intn(400)) * time.Millisecond)
			grants := 1
			op := r.Intn(7)
			bulk := r.Intn(300) == 0
			if bulk {
				// Enough at once to fill UPLOAD_LOCKS frames by count or size.
				op, grants = 0, 500+r.Intn(1500)
			}
			switch op {
			case 0, 1:
				for ; grants > 0; grants-- {
					next++
					var rs []wire.Range
					start := uint64(0)
					for i := 1 + r.Intn(wire.MaxRanges); i > 0; i-- {
						start += uint64(r.Intn(8))
						rs = append(rs, wire.Range{Start: start, Count: 1 + uint32(r.Intn(8))})
						start += uint64(rs[len(rs)-1].Count)
					}
					if grants > 1 && r.Intn(2) == 0 {
						rs = rs[:min(len(rs), 1)]
					}
					l := wire.HeldLock{Handle: next, Snapshot: 1 + uint32(r.Intn(3)), Ranges: rs}
					until := now.Add(wire.LockTrust)
					h.grantRead(l, until)
					reads[next] = oHeld{lock: l, losses: losses, until: until}
				}
				if bulk { // upload them, then release them, to keep the test quick
					checkUpload(t, h, reads)
					for k := range reads {
						if _, err := h.releaseRead(k, now); errors.Is(err, errLockBroken) != (reads[k].losses < losses) {
							t.Fatalf("step %d: releaseRead(%d): %v", step, k, err)
						}
						delete(reads, k)
					}
				}
			case 2:
				k := pick(reads)
				held, err := h.releaseRead(k, now)
				o, ok := reads[k]
				delete(reads, k)
				var want error
				switch {
				case !ok:
				case o.losses < losses:
					want = errLockBroken
				case now.After(o.until):
					want = errLockExpired
				}
				if held != ok || !errors.Is(err, want) || (want == nil) != (err == nil) {
					t.Fatalf("step %d: releaseRead(%d) = %v, %v; oracle %v, %v", step, k, held, err, ok, want)
				}
			case 3:
				next++
				until := now.Add(time.Duration(r.Intn(3000)) * time.Millisecond)
				h.grantBlock(next, until)
				blocks[next] = oHeld{losses: losses, until: until}
			case 4:
				k := pick(blocks)
				o, ok := blocks[k]
				want := ok && o.losses == losses && !now.After(o.until)
				if got := h.blockTrusted(k, now); got != want {
					t.Fatalf("step %d: blockTrusted(%d) = %v, oracle %v", step, k, got, want)
				}
				if r.Intn(2) == 0 {
					delete(blocks, k)
					if got := h.releaseBlock(k); got != ok {
						t.Fatalf("step %d: releaseBlock(%d) = %v, oracle %v", step, k, got, ok)
					}
				}
			case 5:
				h.connLost()
				losses++
			case 6:
				checkUpload(t, h, reads)
			}
			if h.readCount() != len(reads) || h.blockCount() != len(blocks) {
				t.Fatalf("step %d: %d read and %d block locks, oracle %d and %d", step, h.readCount(), h.blockCount(), len(reads), len(blocks))
			}
		}
	}
}

// checkUpload: the frames hold every read lock, once, ascending by
// handle; each frame is within the count and size bounds, and is full
// (the next lock would not have fitted).
func checkUpload(t *testing.T, h *heldLocks, reads map[uint64]oHeld) {
	t.Helper()
	frames, n := h.upload()
	var want []uint64
	for k := range reads {
		want = append(want, k)
	}
	sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
	var got []uint64
	for i, f := range frames {
		size := 0
		for _, l := range f {
			got = append(got, l.Handle)
			size += uploadLockSize(len(l.Ranges))
			if !slices.Equal(l.Ranges, reads[l.Handle].lock.Ranges) || l.Snapshot != reads[l.Handle].lock.Snapshot {
				t.Fatalf("upload: lock %d is %+v, granted %+v", l.Handle, l, reads[l.Handle].lock)
			}
		}
		if len(f) == 0 || len(f) > wire.MaxUploadLocks || size > wire.MaxBody-64 {
			t.Fatalf("upload frame %d: %d locks, %d bytes", i, len(f), size)
		}
		if i+1 < len(frames) {
			nx := uploadLockSize(len(frames[i+1][0].Ranges))
			if len(f) < wire.MaxUploadLocks && size+nx <= wire.MaxBody-64 {
				t.Fatalf("upload frame %d not full: %d locks, %d bytes, next lock %d bytes", i, len(f), size, nx)
			}
		}
	}
	if n != len(want) || !slices.Equal(got, want) {
		t.Fatalf("upload: %d locks %v, oracle %v", n, got, want)
	}
	// The size formula is the encoder's.
	for _, f := range frames {
		b, err := wire.Encode(0, &wire.UploadLocks{Locks: f})
		if err != nil {
			t.Fatalf("upload frame does not encode: %v", err)
		}
		size := 0
		for _, l := range f {
			size += uploadLockSize(len(l.Ranges))
		}
		if len(b) > wire.HeaderSize+size+8 {
			t.Fatalf("upload frame of %d bytes, computed body %d", len(b), size)
		}
	}
}
