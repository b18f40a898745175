package client

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/snapstore/wire"
)

// Writable snapshots against reclamation: a client writes the store
// chunks SNAPSHOT_WRITE_OK named after the answer came. If the snapshot is
// deleted or dropped meanwhile, the reclaimer must not free (and a
// copy-out reuse) those chunks before the write has landed.

// e2eChunks is the volume of the tests below, in chunks (1 MiB).
const e2eChunks = 128

// newE2EExactStore is newE2E whose store has exactly e2eChunks free data
// chunks: one overwrite of the whole origin with a snapshot present uses
// every chunk, so a chunk freed before it is certainly reused by it.
func newE2EExactStore(t *testing.T) *e2e {
	t.Helper()
	size := int64(e2eChunks*e2eChunk + 4<<20) // a first guess, too big
	for try := 0; ; try++ {
		if try == 20 {
			t.Fatal("no store size gives the wanted number of data chunks")
		}
		origin, store := snapstore.NewMemDevice(e2eChunks*e2eChunk), snapstore.NewMemDevice(size)
		if err := snapstore.Format(origin, store, snapstore.FormatOptions{ChunkSize: e2eChunk, JournalBlocks: 256}); err != nil {
			t.Fatal(err)
		}
		eng, err := snapstore.Open(origin, store, snapstore.Options{ManualReclaim: true})
		if err != nil {
			t.Fatal(err)
		}
		free := int64(eng.Stats().FreeChunks)
		if free != e2eChunks {
			eng.Close()
			size += (e2eChunks - free) * e2eChunk
			continue
		}
		return startE2E(t, origin, store, eng, server.AllowAll{})
	}
}

// heldStoreWrite is a store device whose first write while armed signals
// entered and then waits for release.
type heldStoreWrite struct {
	Device
	mu      sync.Mutex
	armed   bool
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newHeldStoreWrite(d Device) *heldStoreWrite {
	return &heldStoreWrite{Device: d, entered: make(chan struct{}, 1), release: make(chan struct{})}
}

func (d *heldStoreWrite) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	hold := d.armed
	d.armed = false
	d.mu.Unlock()
	if hold {
		d.entered <- struct{}{}
		<-d.release
	}
	return d.Device.WriteAt(p, off)
}

func (d *heldStoreWrite) arm() {
	d.mu.Lock()
	d.armed = true
	d.mu.Unlock()
}

func (d *heldStoreWrite) unblock() { d.once.Do(func() { close(d.release) }) }

// writableRace sets up the race: the origin holds A; writable snapshot w
// (priority 0, dropped first) and read-only snapshot r (priority 1) are
// taken; a second client starts a write of W to chunk 0 of w, which is
// approved (chunk 0 made private to w in the store) and then held in its
// store write. It returns the snapshots, the store, and the write's result.
func (e *e2e) writableRace(t *testing.T) (w, r uint32, store *heldStoreWrite, werr chan error) {
	t.Helper()
	ctx := ctx5(t)
	if err := e.c.Origin().WriteAt(fill(e2eChunks*e2eChunk, 'A'), 0, true); err != nil {
		t.Fatal(err)
	}
	wi, err := e.c.CreateSnapshot(ctx, "w", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	ri, err := e.c.CreateSnapshot(ctx, "r", 1, false)
	if err != nil {
		t.Fatal(err)
	}
	store = newHeldStoreWrite(e.store)
	t.Cleanup(store.unblock)
	c2, _ := e.countedClient(t, 7, store, nil)
	store.arm()
	werr = make(chan error, 1)
	go func() { werr <- c2.Snapshot(wi.ID, true).WriteAt(fill(e2eChunk, 'W'), 0, false) }()
	select {
	case <-store.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the snapshot write never reached the store")
	}
	return wi.ID, ri.ID, store, werr
}

// checkSnapshotR checks that every chunk of snapshot r reads A.
func (e *e2e) checkSnapshotR(t *testing.T, r uint32) {
	t.Helper()
	buf := make([]byte, e2eChunk)
	v := e.c.Snapshot(r, false)
	for ch := int64(0); ch < e2eChunks; ch++ {
		if err := v.ReadAt(buf, ch*e2eChunk); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, fill(e2eChunk, 'A')) {
			t.Fatalf("snapshot r, chunk %d, reads %q..., want its own data (A): "+
				"a write to another snapshot landed in a chunk reused for it", ch, buf[:4])
		}
	}
}

// TestE2ESnapshotWriteRacesDelete: a writable snapshot is deleted while a
// write to it is approved but not yet in the store. The reclamation must
// wait for that write; else the chunk is freed, a copy-out for another
// snapshot reuses it, and the late write overwrites that snapshot's data.
func TestE2ESnapshotWriteRacesDelete(t *testing.T) {
	e := newE2EExactStore(t)
	w, r, store, werr := e.writableRace(t)
	if err := e.c.DeleteSnapshotID(ctx5(t), w); err != nil {
		t.Fatal(err)
	}
	reclaimed := make(chan error, 1)
	go func() { reclaimed <- e.eng.Reclaim(context.Background()) }()
	waited := false
	select {
	case err := <-reclaimed:
		if err != nil {
			t.Fatal(err)
		}
		t.Log("reclaimed while a write to the snapshot was in flight")
	case <-time.After(300 * time.Millisecond):
		waited = true
		store.unblock()
		select {
		case err := <-reclaimed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("reclamation did not finish after the write landed")
		}
	}
	// Every chunk of r is copied out now, into every free chunk: w's
	// private chunk, if it was freed, included.
	if err := e.c.Origin().WriteAt(fill(e2eChunks*e2eChunk, 'X'), 0, true); err != nil {
		t.Fatal(err)
	}
	store.unblock()
	if err := <-werr; err != nil {
		t.Logf("the write to the deleted snapshot: %v", err)
	}
	e.checkSnapshotR(t, r)
	if !waited {
		t.Fatal("reclamation did not wait for the snapshot write in flight")
	}
}

// TestE2ESnapshotWriteRacesDrop: the same when the snapshot is dropped
// because the store is full: the origin write that needs the space waits
// (the reclamation pass it starts waits for the snapshot write).
func TestE2ESnapshotWriteRacesDrop(t *testing.T) {
	e := newE2EExactStore(t)
	_, r, store, werr := e.writableRace(t)
	// r and w share the copy-outs of chunks 1..127, r needs one more for
	// chunk 0: 129 chunks in a store of 128. w (priority 0) is dropped.
	overwrote := make(chan error, 1)
	go func() { overwrote <- e.c.Origin().WriteAt(fill(e2eChunks*e2eChunk, 'X'), 0, true) }()
	waited := false
	select {
	case err := <-overwrote:
		if err != nil {
			t.Fatal(err)
		}
		t.Log("the dropped snapshot's space was reused while a write to it was in flight")
	case <-time.After(500 * time.Millisecond):
		waited = true
	}
	store.unblock()
	if waited {
		if err := <-overwrote; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-werr; err != nil {
		t.Logf("the write to the dropped snapshot: %v", err)
	}
	if d := e.eng.Stats().Drops; d != 1 {
		t.Fatalf("%d snapshots dropped, want 1 (the test's store size is off)", d)
	}
	e.checkSnapshotR(t, r)
	if !waited {
		t.Fatal("the drop's reclamation did not wait for the snapshot write in flight")
	}
}

// TestE2ESnapshotWriteOutlastingTrust: a store write that would start
// later than wire.LockTrust after its SNAPSHOT_WRITE was sent is not
// issued (the server may have struck the client off and reused the space
// meanwhile): the batch is asked of the server again.
func TestE2ESnapshotWriteOutlastingTrust(t *testing.T) {
	e := newE2E(t)
	ctx := ctx5(t)
	if err := e.c.Origin().WriteAt(fill(4*e2eChunk, 'A'), 0, true); err != nil {
		t.Fatal(err)
	}
	wi, err := e.c.CreateSnapshot(ctx, "w", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	// Chunk 1 made private first, then chunk 0: two store extents, not
	// adjacent in chunk order, so one write covering both is two store
	// writes.
	for _, ch := range []int64{1, 0} {
		if err := e.c.Snapshot(wi.ID, true).WriteAt(fill(e2eChunk, 'B'), ch*e2eChunk, false); err != nil {
			t.Fatal(err)
		}
	}
	store := newHeldStoreWrite(e.store)
	t.Cleanup(store.unblock)
	c2, f := e.countedClient(t, 7, store, nil)
	sent := f.count(wire.TypeSnapshotWrite)
	store.arm()
	werr := make(chan error, 1)
	go func() { werr <- c2.Snapshot(wi.ID, true).WriteAt(fill(2*e2eChunk, 'C'), 0, false) }()
	<-store.entered
	time.Sleep(wire.LockTrust + 100*time.Millisecond)
	store.unblock()
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if got := f.count(wire.TypeSnapshotWrite) - sent; got != 2 {
		t.Fatalf("%d SNAPSHOT_WRITEs for a write whose approval outlived wire.LockTrust, want 2 (asked again)", got)
	}
	buf := make([]byte, 2*e2eChunk)
	if err := e.c.Snapshot(wi.ID, true).ReadAt(buf, 0); err != nil || !bytes.Equal(buf, fill(2*e2eChunk, 'C')) {
		t.Fatalf("snapshot reads %q... (%v), want C", buf[:4], err)
	}
}
