package client

import (
	"bytes"
	"testing"
	"time"

	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/snapstore/wire"
)

// TestE2ERevokedLockReadsAgain: a connected client's snapshot read holds
// its read lock past the server's bound (its origin read is stuck); the
// server revokes the lock and the parked origin write lands; the read,
// when it resumes, must not return the new data as the snapshot's: it is
// done again (the lock was not trusted past wire.LockTrust) and returns
// the snapshot's.
func TestE2ERevokedLockReadsAgain(t *testing.T) {
	origin, store := snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(8<<20)
	if err := snapstore.Format(origin, store, snapstore.FormatOptions{ChunkSize: e2eChunk, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	eng, err := snapstore.Open(origin, store, snapstore.Options{ManualReclaim: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Engine: eng, Volume: "vol", Term: 1, Node: "srv", Log: testLog(),
		LockBound: wire.LockLease})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() }) // after serving stops
	addr, _ := testutil.Serve(t, srv, nil)
	e := &e2e{origin: origin, store: store, eng: eng, srv: srv, addr: addr}
	writer := e.client(t, wire.ClientID{1}, "node-1")
	ctx := ctx5(t)
	if err := writer.Origin().WriteAt(fill(e2eChunk, 'A'), 0, false); err != nil {
		t.Fatal(err)
	}
	si, err := writer.CreateSnapshot(ctx, "s", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	first := true
	reader, err := New(ctx, Config{Volume: "vol", Node: "node-2", ID: wire.ClientID{2}, Locator: StaticLocator(e.addr),
		Origin: hookDev{origin, func(off int64) {
			if off == 0 && first {
				first = false
				close(entered)
				<-release
			}
		}}, Store: store, Log: testLog(), IOTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	buf := make([]byte, e2eChunk)
	errc := make(chan error, 1)
	go func() { errc <- reader.Snapshot(si.ID, false).ReadAt(buf, 0) }()
	<-entered
	werr := make(chan error, 1)
	go func() { werr <- writer.Origin().WriteAt(fill(e2eChunk, 'C'), 0, false) }()
	select {
	case err := <-werr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wire.LockLease + 3*time.Second):
		t.Fatal("the origin write still waits for a connected client's lock held past the bound")
	}
	close(release) // the stuck read now reads 'C' from the origin
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, fill(e2eChunk, 'A')) {
		t.Fatalf("a snapshot read under a revoked lock returned %q..., want the snapshot's 'A'", buf[:4])
	}
}
