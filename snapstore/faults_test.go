package snapstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/faultdev"
)

// Tests of the engine under device faults: ENOSPC from a store that cannot
// allocate (a thin device, a sparse file on a full file system), IO errors
// and failed flushes, and recovery in place.

const faultChunk = 16 << 10

type eventLog struct {
	mu sync.Mutex
	ev []Event
}

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	l.ev = append(l.ev, e)
	l.mu.Unlock()
}

func (l *eventLog) count(k EventKind) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.ev {
		if e.Kind == k {
			n++
		}
	}
	return n
}

func faultEngine(t *testing.T, originSize, storeSize int64, o Options) (*faultdev.Power, *faultdev.Device, *faultdev.Device, *Engine, *eventLog) {
	t.Helper()
	p := faultdev.NewPower(1)
	od, sd := p.NewDevice(originSize), p.NewDevice(storeSize)
	data := make([]byte, originSize)
	rand.New(rand.NewSource(7)).Read(data)
	od.Load(data, 0)
	if err := Format(od, sd, FormatOptions{ChunkSize: faultChunk, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	log := &eventLog{}
	o.OnEvent = log.add
	e, err := Open(od, sd, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return p, od, sd, e, log
}

// writeOrigin does what a client does for an origin write.
func writeOrigin(ctx context.Context, e *Engine, od Device, off int64, b []byte) error {
	cs := int64(e.ChunkSize())
	if _, err := e.PrepareOriginWrite(ctx, uint64(off/cs), uint64((off+int64(len(b))-1)/cs-off/cs+1)); err != nil {
		return err
	}
	_, err := od.WriteAt(b, off)
	return err
}

// TestStoreENOSPCDropsSnapshot: a store that runs out of space underneath
// the engine (ENOSPC from the device, with free chunks in the bitmap) is
// treated as a full store: origin writes succeed, the lowest-priority
// snapshot is dropped (event, counter), and the volume stays writable
// after a reopen.
func TestStoreENOSPCDropsSnapshot(t *testing.T) {
	ctx := context.Background()
	const osize = 4 << 20
	_, od, sd, e, log := faultEngine(t, osize, 16<<20, Options{})
	if _, err := e.CreateSnapshot(ctx, "keep", CreateOptions{Priority: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSnapshot(ctx, "s1", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Room for 32 chunks: the snapshots need 256.
	sd.SetThin(32 * faultChunk / faultdev.ThinPage)
	buf := bytes.Repeat([]byte{0xAB}, 256<<10)
	for off := int64(0); off < osize; off += int64(len(buf)) {
		if err := writeOrigin(ctx, e, od, off, buf); err != nil {
			t.Fatalf("origin write at %d failed: %v", off, err)
		}
	}
	if st, err := e.State(); st != EngineOK {
		t.Fatalf("engine state %v (%v) after the store ran out of space", st, err)
	}
	s := e.Stats()
	if s.SnapshotsDropped < 1 || log.count(EventDropped) < 1 {
		t.Fatalf("dropped %d (events %d), want the snapshots dropped", s.SnapshotsDropped, log.count(EventDropped))
	}
	info, err := e.Lookup("s1")
	if err != nil || info.State != StateDropped {
		t.Fatalf("s1: %+v %v, want dropped", info, err)
	}
	// Every origin write succeeds after a reopen too, with a new snapshot.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e2, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	if _, err := e2.CreateSnapshot(ctx, "s2", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	buf2 := bytes.Repeat([]byte{0xCD}, 256<<10)
	for off := int64(0); off < osize; off += int64(len(buf2)) {
		if err := writeOrigin(ctx, e2, od, off, buf2); err != nil {
			t.Fatalf("origin write at %d after reopen failed: %v", off, err)
		}
	}
	r, err := e2.Check(ctx, nil)
	if err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
}

// TestEngineRecoversInPlace: an engine failed by an IO error of the store
// recovers by itself (with backoff) once the fault is gone, without a
// reopen by its caller, and its data and snapshots are intact.
func TestEngineRecoversInPlace(t *testing.T) {
	ctx := context.Background()
	const osize = 1 << 20
	p, od, _, e, log := faultEngine(t, osize, 8<<20, Options{RecoverBackoff: 10 * time.Millisecond})
	want := make([]byte, osize)
	od.ReadAt(want, 0)
	snap, err := e.CreateSnapshot(ctx, "s1", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.FailAt(1, faultdev.Fault{Err: syscall.EIO, FlushOnly: true, Sticky: true})
	err = writeOrigin(ctx, e, od, 0, make([]byte, 64<<10))
	if err == nil {
		t.Fatal("origin write succeeded with a failing store")
	}
	if st, ferr := e.State(); st != EngineFailed || ferr == nil {
		t.Fatalf("state %v (%v), want failed", st, ferr)
	}
	time.Sleep(50 * time.Millisecond) // recovery attempts fail meanwhile
	if st, _ := e.State(); st != EngineFailed {
		t.Fatalf("state %v while the device still fails", st)
	}
	p.Heal()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, ferr := e.State()
		if st == EngineOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine did not recover in place: %v %v", st, ferr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Events are delivered after the engine lock is released: allow for
	// the delivery to trail the state.
	for log.count(EventRecovered) < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if log.count(EventFailed) != 1 || log.count(EventRecovered) < 1 {
		t.Fatalf("events: failed %d recovered %d", log.count(EventFailed), log.count(EventRecovered))
	}
	if err := writeOrigin(ctx, e, od, 0, make([]byte, 64<<10)); err != nil {
		t.Fatalf("origin write after recovery: %v", err)
	}
	got := make([]byte, osize)
	if err := readSnap(ctx, e, od, snap.ID, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("snapshot data changed across the failure and recovery")
	}
	r, err := e.Check(ctx, nil)
	if err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
}

// TestDeleteWhileFailed: with automatic recovery off, deleting a snapshot
// of a failed engine whose store works again recovers it and deletes.
func TestDeleteWhileFailed(t *testing.T) {
	ctx := context.Background()
	p, od, _, e, _ := faultEngine(t, 1<<20, 8<<20, Options{RecoverBackoff: -1})
	snap, err := e.CreateSnapshot(ctx, "s1", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.FailAt(1, faultdev.Fault{Err: syscall.EIO, FlushOnly: true})
	if err := writeOrigin(ctx, e, od, 0, make([]byte, 64<<10)); err == nil {
		t.Fatal("origin write succeeded with a failed flush")
	}
	if err := e.Sync(); err == nil {
		t.Fatal("Sync after a failed flush returned nil (fsync error policy)")
	}
	if err := e.DeleteSnapshot(ctx, snap.ID); err != nil {
		t.Fatalf("delete on a failed engine with a readable store: %v", err)
	}
	if st, _ := e.State(); st != EngineOK {
		t.Fatalf("state %v", st)
	}
	if err := e.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readSnap(ctx context.Context, e *Engine, od Device, id SnapID, out []byte) error {
	cs := int64(e.ChunkSize())
	n := uint64((int64(len(out)) + cs - 1) / cs)
	locs, err := e.MapSnapshotRead(ctx, id, 0, n)
	if err != nil {
		return err
	}
	for i, l := range locs {
		lo := int64(i) * cs
		hi := min(lo+cs, int64(len(out)))
		var d Device = od
		if !l.Origin {
			d = e.store
		}
		if err := readFull(d, out[lo:hi], l.Offset); err != nil {
			return err
		}
	}
	return nil
}

// TestForeignFlushErrorFailsEngine: a flush of the store that failed for
// another user of the device (a client's writable-snapshot flush) dropped
// the engine's unflushed metadata writes too; the engine's next commit
// must not take its own good flush as proof, and fails (then recovers,
// rewriting what it relies on), so a later power cut loses nothing
// acknowledged.
func TestForeignFlushErrorFailsEngine(t *testing.T) {
	ctx := context.Background()
	p, od, sd, e, _ := faultEngine(t, 1<<20, 8<<20, Options{RecoverBackoff: -1})
	if _, err := e.CreateSnapshot(ctx, "s1", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := writeOrigin(ctx, e, od, 0, bytes.Repeat([]byte{1}, 64<<10)); err != nil {
		t.Fatal(err)
	}
	// Another user's flush fails: the engine's pending home writes are
	// dropped with it.
	p.FailAt(1, faultdev.Fault{Err: syscall.EIO, FlushOnly: true})
	if err := sd.Flush(); err == nil {
		t.Fatal("injected flush error not returned")
	}
	err := writeOrigin(ctx, e, od, 64<<10, bytes.Repeat([]byte{2}, 64<<10))
	if !errors.Is(err, ErrLostWrites) {
		t.Fatalf("commit after another user's failed flush: %v, want ErrLostWrites", err)
	}
	if err := e.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if err := writeOrigin(ctx, e, od, 64<<10, bytes.Repeat([]byte{2}, 64<<10)); err != nil {
		t.Fatal(err)
	}
	if err := od.Flush(); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	s1, _ := e.Lookup("s1")
	if err := readSnap(ctx, e, od, s1.ID, want); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	p.Restore()
	e2, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	r, err := e2.Check(ctx, nil)
	if err != nil || !r.Clean() {
		t.Fatalf("check after power cut: %v %v", err, r.Problems)
	}
	got := make([]byte, 1<<20)
	if err := readSnap(ctx, e2, od, s1.ID, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("snapshot lost data after a power cut")
	}
}

// TestErrSeesForeignFlushError: Err (what csnapd's health check and engine
// watch read) reports a store flush another user saw fail, before any
// commit of the engine runs into it.
func TestErrSeesForeignFlushError(t *testing.T) {
	p, _, sd, e, _ := faultEngine(t, 1<<20, 8<<20, Options{RecoverBackoff: -1})
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	p.FailAt(1, faultdev.Fault{Err: syscall.EIO, FlushOnly: true})
	sd.Flush()
	if err := e.Err(); !errors.Is(err, ErrLostWrites) {
		t.Fatalf("Err after another user's failed flush: %v", err)
	}
	if err := e.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.Err(); err != nil {
		t.Fatalf("Err after Recover: %v", err)
	}
}
