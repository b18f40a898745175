package server

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/wire"
)

// reclaimEnv: a server whose engine reclaims only when asked, with one
// read-only snapshot copied out to the store.
func reclaimEnv(t *testing.T, barrier time.Duration) (*env, snapstore.SnapID) {
	t.Helper()
	od, sd := snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(8<<20)
	if err := snapstore.Format(od, sd, snapstore.FormatOptions{ChunkSize: chunkSize, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	eng, err := snapstore.Open(od, sd, snapstore.Options{ManualReclaim: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	e := start(t, Config{Engine: eng, BarrierTimeout: barrier})
	e.origin, e.store = od, sd
	si, err := e.srv.CreateSnapshot(context.Background(), "s", snapstore.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.PrepareOriginWrite(context.Background(), 0, 4); err != nil {
		t.Fatal(err)
	}
	return e, si.ID
}

// reclaimAsync deletes snap and runs reclamation in the background; the
// channel gets its result.
func reclaimAsync(t *testing.T, e *env, snap snapstore.SnapID) chan error {
	t.Helper()
	if err := e.srv.DeleteSnapshot(context.Background(), wire.SnapshotRef{ID: uint32(snap)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.eng.Reclaim(context.Background()) }()
	return done
}

func (c *client) nextReclaim() frame {
	c.t.Helper()
	select {
	case f := <-c.reclaim:
		return f
	case <-time.After(waitLong):
		c.t.Fatal("no RECLAIM")
	}
	return frame{}
}

func notYet(t *testing.T, done chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s: reclamation finished (%v), want it held back", what, err)
	case <-time.After(waitShort):
	}
}

func finished(t *testing.T, done chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLong):
		t.Fatal("reclamation did not finish")
	}
}

// TestReclaimFanOut: every version-4 client gets RECLAIM with the ids and
// reclamation waits for every answer; a version-2 client gets none and is
// not waited for; the SNAPSHOT_READ answered before the delete precedes
// the RECLAIM on the connection.
func TestReclaimFanOut(t *testing.T) {
	e, snap := reclaimEnv(t, waitLong)
	c1 := connect(t, e.addr, cid(1), "n1")
	c2 := connect(t, e.addr, cid(2), "n2")
	h := hello(cid(3), "n3")
	h.MaxVersion = wire.VersionShared
	old, m := dial(t, e.addr, h)
	if ok := mustType[*wire.HelloOK](t, m); ok.Version != wire.VersionShared {
		t.Fatalf("old client negotiated %d", ok.Version)
	}
	if r := old.call(&wire.UploadDone{}); r.Type() != wire.TypeOK {
		t.Fatalf("UPLOAD_DONE: %#v", r)
	}
	readID, ch := c1.send(&wire.SnapshotRead{Snapshot: uint32(snap), Ranges: rng(0, 4)})
	ok := mustType[*wire.SnapshotReadOK](t, c1.wait(ch))
	if ok.HoldsLock() {
		t.Fatal("copied-out chunks answered with a lock")
	}

	done := reclaimAsync(t, e, snap)
	f1, f2 := c1.nextReclaim(), c2.nextReclaim()
	for _, f := range []frame{f1, f2} {
		if got := f.m.(*wire.Reclaim).Snapshots; !slices.Equal(got, []uint32{uint32(snap)}) {
			t.Fatalf("RECLAIM of %v, want [%d]", got, snap)
		}
	}
	c1.mu.Lock()
	if !slices.Contains(c1.order, readID) {
		t.Fatal("the SNAPSHOT_READ answer did not precede the RECLAIM")
	}
	c1.mu.Unlock()
	if err := c1.w.Write(f1.id, &wire.ReclaimOK{}); err != nil {
		t.Fatal(err)
	}
	notYet(t, done, "one client of two answered")
	if err := c2.w.Write(f2.id, &wire.ReclaimOK{}); err != nil {
		t.Fatal(err)
	}
	finished(t, done)
	select {
	case f := <-old.reclaim:
		t.Fatalf("version-2 client got %#v", f.m)
	default:
	}
	// Everyone is still connected and served.
	for _, c := range []*client{c1, c2, old} {
		if r := c.call(&wire.Status{}); r.Type() != wire.TypeStatusOK {
			t.Fatalf("after reclaim: %#v", r)
		}
	}
	wantErr(t, c1.call(&wire.SnapshotRead{Snapshot: uint32(snap), Ranges: rng(0, 1)}), wire.CodeNoSuchSnapshot)
}

// TestReclaimTimeout: a client that does not answer within BarrierTimeout
// is disconnected and reclamation goes on.
func TestReclaimTimeout(t *testing.T) {
	e, snap := reclaimEnv(t, 300*time.Millisecond)
	c1 := connect(t, e.addr, cid(1), "n1")
	t0 := time.Now()
	done := reclaimAsync(t, e, snap)
	c1.nextReclaim() // and never answer
	finished(t, done)
	if d := time.Since(t0); d < 250*time.Millisecond {
		t.Fatalf("reclamation took %v, want the barrier timeout", d)
	}
	c1.closedByServer()
}

// TestReclaimAwaitsDisconnectedReader: a client that lost its connection
// after being answered store locations is waited for until it is back and
// answers (or its lease lapses); one that never read the store is not.
func TestReclaimAwaitsDisconnectedReader(t *testing.T) {
	e, snap := reclaimEnv(t, waitLong)
	idle := connect(t, e.addr, cid(2), "n2")
	idle.conn.Close()
	readThenLeave(t, e, snap)
	done := reclaimAsync(t, e, snap)
	notYet(t, done, "a reader is away")
	back := connect(t, e.addr, cid(1), "n1")
	f := back.nextReclaim()
	notYet(t, done, "RECLAIM not answered yet")
	if err := back.w.Write(f.id, &wire.ReclaimOK{}); err != nil {
		t.Fatal(err)
	}
	finished(t, done)
}

// TestReclaimAwayLeaseLapses: an away reader that does not come back is
// waited for until BarrierTimeout after its connection was lost.
func TestReclaimAwayLeaseLapses(t *testing.T) {
	e, snap := reclaimEnv(t, 400*time.Millisecond)
	readThenLeave(t, e, snap)
	done := reclaimAsync(t, e, snap)
	notYet(t, done, "the away reader's lease runs")
	finished(t, done)
}

// readThenLeave connects client 1, has it answered store locations of
// snap, drops its connection and waits until the server counts it away.
func readThenLeave(t *testing.T, e *env, snap snapstore.SnapID) {
	t.Helper()
	c1 := connect(t, e.addr, cid(1), "n1")
	mustType[*wire.SnapshotReadOK](t, c1.call(&wire.SnapshotRead{Snapshot: uint32(snap), Ranges: rng(0, 4)}))
	c1.conn.Close()
	eventually(t, "disconnect noticed", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		_, away := e.srv.away[cid(1)]
		_, conn := e.srv.sessions[cid(1)]
		return away && !conn
	})
}
