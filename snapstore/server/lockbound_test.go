package server

import (
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/locks"
	"github.com/csnap/csnap/snapstore/wire"
)

// A connected client that never finishes its snapshot read keeps its
// read lock no longer than LockBound: the lock is revoked and the write
// parked behind it proceeds. The lock is not re-established by the
// client's upload after a reconnect, and its late FINISH is harmless.
func TestReadLockBound(t *testing.T) {
	e := start(t, Config{LockBound: wire.LockLease})
	lw := writeBehindReadLock(t, e)
	a, b, s, h, wch, granted := lw.a, lw.b, lw.snap, lw.handle, lw.wch, lw.granted
	select {
	case m := <-wch:
		mustType[*wire.OriginWriteOK](t, m)
	case <-time.After(wire.LockLease + waitLong):
		t.Fatal("the write is still parked behind a lock held past the bound")
	}
	if d := time.Since(granted); d < wire.LockLease {
		t.Fatalf("lock revoked after %v, before the lease (%v)", d, wire.LockLease)
	}
	if u := e.srv.Clients(); len(u) != 2 || u[0].Locks != 0 {
		t.Fatalf("clients after the revocation: %+v", u)
	}
	// A reconnect re-declaring the revoked lock does not bring it back.
	a.conn.Close()
	a2, m := dial(t, e.addr, hello(cid(1), "n1"))
	mustType[*wire.HelloOK](t, m)
	a2.notice(&wire.UploadLocks{Locks: []wire.HeldLock{{Handle: h, Snapshot: s.ID, Ranges: rng(5, 1)}}})
	mustType[*wire.OK](t, a2.call(&wire.UploadDone{Locks: 1}))
	if u := e.srv.Clients(); u[0].Locks != 0 {
		t.Fatalf("the revoked lock is back after the upload: %+v", u)
	}
	_, wch = b.send(&wire.OriginWrite{Ranges: rng(5, 1)})
	select {
	case m := <-wch:
		mustType[*wire.OriginWriteOK](t, m)
	case <-time.After(wire.LockLease / 2):
		t.Fatal("a write waits for a revoked lock re-declared by its client")
	}
	a2.notice(&wire.FinishSnapshotRead{Handle: h})
	mustType[*wire.Pong](t, a2.call(&wire.Ping{}))
}

// lockedWrite is an origin write (answer on wch) of client b parked
// behind client a's read lock (handle, granted at granted) on the
// unchanged chunk 5 of snapshot snap.
type lockedWrite struct {
	a, b    *client
	snap    wire.SnapshotEntry
	handle  uint64
	granted time.Time
	wch     chan wire.Message
}

// writeBehindReadLock connects clients a (n1) and b (n2); a takes
// snapshot s1 and a read lock on its unchanged chunk 5, and b's origin
// write of chunk 5 parks behind it.
func writeBehindReadLock(t *testing.T, e *env) lockedWrite {
	t.Helper()
	lw := lockedWrite{a: connect(t, e.addr, cid(1), "n1"), b: connect(t, e.addr, cid(2), "n2")}
	lw.snap = createSnap(t, lw.a, "s1")
	h, rch := lw.a.send(&wire.SnapshotRead{Snapshot: lw.snap.ID, Ranges: rng(5, 1)})
	if r := mustType[*wire.SnapshotReadOK](t, lw.a.wait(rch)); !r.HoldsLock() {
		t.Fatalf("unchanged chunk not on the origin: %+v", r.Extents)
	}
	lw.handle, lw.granted = h, time.Now()
	_, lw.wch = lw.b.send(&wire.OriginWrite{Ranges: rng(5, 1)})
	lw.b.pending(lw.wch, "write under a fresh read lock")
	return lw
}

// A granted block lock is honoured against a waiting request no longer
// than LockBound: then it is revoked and the waiting request granted.
func TestBlockLockBound(t *testing.T) {
	e := start(t, Config{LockBound: wire.LockLease})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	ha, ach := a.send(&wire.BlockLock{Offset: 0, Length: 4096})
	select {
	case m := <-ach:
		mustType[*wire.BlockLockOK](t, m)
	case <-time.After(wire.LockLease + waitLong):
		t.Fatal("first block lock not granted")
	}
	granted := time.Now()
	_, bch := b.send(&wire.BlockLock{Offset: 100, Length: 10})
	b.pending(bch, "a block lock behind a fresh one")
	select {
	case m := <-bch:
		mustType[*wire.BlockLockOK](t, m)
	case <-time.After(wire.LockLease + waitLong):
		t.Fatal("the waiting block lock is still waiting behind one held past the bound")
	}
	if d := time.Since(granted); d < wire.LockLease {
		t.Fatalf("block lock revoked after %v, before the lease", d)
	}
	a.notice(&wire.BlockUnlock{Handle: ha}) // late: harmless
	mustType[*wire.Pong](t, a.call(&wire.Ping{}))
}

// A client cannot lock more than Limits.MaxChunks chunks at once: a read
// beyond it is answered ERROR limit (the client retries after releasing).
func TestLockedChunksBound(t *testing.T) {
	e := start(t, Config{Limits: locks.Limits{MaxChunks: 8}})
	a := connect(t, e.addr, cid(1), "n1")
	s := createSnap(t, a, "s1")
	mustType[*wire.SnapshotReadOK](t, a.call(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(0, 6)}))
	wantErr(t, a.call(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(10, 6)}), wire.CodeLimit)
	if u := e.srv.Clients(); u[0].Locks != 1 {
		t.Fatalf("locks %d, want 1", u[0].Locks)
	}
	if DefaultMaxLockedChunks <= 0 || e.srv.cfg.Limits.MaxChunks != 8 {
		t.Fatal("limits")
	}
}
