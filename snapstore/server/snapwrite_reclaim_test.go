package server

import (
	"context"
	"testing"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/wire"
)

// TestReclaimAwaitsSnapshotWriter: a client answered SNAPSHOT_WRITE (store
// locations it writes after the answer) counts as using the store like a
// reader: a reclamation of that snapshot sends it RECLAIM after the
// answer, and, once it has lost its connection, waits for it to come back
// and answer (or for its lease to lapse).
func TestReclaimAwaitsSnapshotWriter(t *testing.T) {
	e, _ := reclaimEnv(t, waitLong)
	si, err := e.srv.CreateSnapshot(context.Background(), "w", snapstore.CreateOptions{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	snap := si.ID

	// Connected: RECLAIM comes after the answer, and is waited for.
	c2 := connect(t, e.addr, cid(2), "n2")
	mustType[*wire.SnapshotWriteOK](t, c2.call(&wire.SnapshotWrite{Snapshot: uint32(snap), Ranges: rng(0, 1)}))

	c1 := connect(t, e.addr, cid(1), "n1")
	mustType[*wire.SnapshotWriteOK](t, c1.call(&wire.SnapshotWrite{Snapshot: uint32(snap), Ranges: rng(1, 2)}))
	c1.conn.Close()
	eventually(t, "the writer counted away", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		_, away := e.srv.away[cid(1)]
		_, conn := e.srv.sessions[cid(1)]
		return away && !conn
	})
	done := reclaimAsync(t, e, snap)
	f2 := c2.nextReclaim()
	if err := c2.w.Write(f2.id, &wire.ReclaimOK{}); err != nil {
		t.Fatal(err)
	}
	notYet(t, done, "a writer is away")
	back := connect(t, e.addr, cid(1), "n1")
	f := back.nextReclaim()
	notYet(t, done, "RECLAIM not answered yet")
	if err := back.w.Write(f.id, &wire.ReclaimOK{}); err != nil {
		t.Fatal(err)
	}
	finished(t, done)
}
