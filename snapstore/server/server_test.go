package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/wire"
)

func TestHandshake(t *testing.T) {
	var deposed atomic.Uint64
	e := start(t, Config{Term: 3,
		Membership: MembershipFunc(func(n string) bool { return n != "stranger" }),
		OnDeposed:  func(term uint64) { deposed.Store(term) },
		// The lock is lost: a newer term's claim is confirmed.
		LockCheck: LockCheckFunc(func(context.Context) (bool, error) { return false, nil })})

	c, m := dial(t, e.addr, hello(cid(1), "n1"))
	ok := mustType[*wire.HelloOK](t, m)
	if ok.Term != 3 || ok.Node != "srv" || ok.ChunkSize != chunkSize || ok.VolumeSize != 1<<20 ||
		ok.StoreUUID != e.eng.UUID() || ok.MaxInFlight != DefaultMaxInFlight || ok.Version != wire.MaxVersion {
		t.Fatalf("HELLO_OK %+v", ok)
	}
	// Requests before UPLOAD_DONE are refused; then it works.
	wantErr(t, c.call(&wire.OriginWrite{Ranges: rng(0, 1)}), wire.CodeBadRequest)
	mustType[*wire.OK](t, c.call(&wire.UploadDone{}))
	mustType[*wire.Pong](t, c.call(&wire.Ping{}))
	mustType[*wire.OriginWriteOK](t, c.call(&wire.OriginWrite{Ranges: rng(0, 1)}))

	reject := func(name string, h wire.Hello, want wire.RejectReason) {
		t.Helper()
		c, m := dial(t, e.addr, h)
		r, ok := m.(*wire.HelloReject)
		if !ok || r.Reason != want || r.Term != 3 {
			t.Fatalf("%s: got %#v, want reject %v", name, m, want)
		}
		t.Logf("%s: %v: %s", name, r.Reason, r.Message)
		c.closedByServer()
	}
	h := hello(cid(2), "n2")
	h.Volume = "other"
	reject("foreign volume", h, wire.RejectForeignVolume)
	h = hello(cid(2), "n2")
	h.Term = 4
	reject("stale term", h, wire.RejectStaleTerm)
	if deposed.Load() != 4 {
		t.Errorf("OnDeposed got %d, want 4", deposed.Load())
	}
	reject("non-member", hello(cid(2), "stranger"), wire.RejectNotMember)
	h = hello(cid(2), "n2")
	h.MinVersion, h.MaxVersion = wire.MaxVersion+1, wire.MaxVersion+3
	reject("version", h, wire.RejectVersion)
	// An older client term is fine: the client learns ours.
	h = hello(cid(2), "n2")
	h.Term = 2
	_, m = dial(t, e.addr, h)
	mustType[*wire.HelloOK](t, m)

	// Something else than HELLO first: ERROR and close.
	c2, m := dial(t, e.addr, hello(cid(3), "n3"))
	mustType[*wire.HelloOK](t, m)
	_ = c2
}

func TestNotHelloFirst(t *testing.T) {
	e := start(t, Config{})
	conn, err := net.DialTimeout("tcp", e.addr, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := wire.NewWriter(conn).Write(1, &wire.Ping{}); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(waitLong))
	r := wire.NewReader(bufio.NewReader(conn))
	_, m, err := r.Read()
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, m, wire.CodeBadRequest)
	if _, _, err := r.Read(); err == nil {
		t.Fatal("connection still open")
	}
}

func TestNewTerm(t *testing.T) {
	eng, _, _ := newEngine(t)
	if err := eng.SetEpoch(context.Background(), 5); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{Engine: eng, Volume: "dev", Term: 4, Node: "a", Log: testLog(t)})
	if !errors.Is(err, ErrStaleTerm) {
		t.Fatalf("got %v, want ErrStaleTerm", err)
	}
	t.Log(err)
	s, err := New(Config{Engine: eng, Volume: "dev", Term: 7, Node: "a", Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if eng.Epoch() != 7 {
		t.Fatalf("epoch %d, want 7", eng.Epoch())
	}
}

func createSnap(t *testing.T, c *client, name string) wire.SnapshotEntry {
	t.Helper()
	return mustType[*wire.CreateSnapshotOK](t, c.call(&wire.CreateSnapshot{Name: name, Priority: 1})).Snapshot
}

func TestOriginWriteCopyOut(t *testing.T) {
	e := start(t, Config{})
	c := connect(t, e.addr, cid(1), "n1")
	old := bytes.Repeat([]byte{0x11}, chunkSize)
	if _, err := e.origin.WriteAt(old, 3*chunkSize); err != nil {
		t.Fatal(err)
	}
	s := createSnap(t, c, "s1")
	ok := mustType[*wire.OriginWriteOK](t, c.call(&wire.OriginWrite{Ranges: rng(3, 2)}))
	if ok.Generation != uint64(s.ID) {
		t.Fatalf("generation %d, want %d", ok.Generation, s.ID)
	}
	// The client writes the origin now.
	if _, err := e.origin.WriteAt(bytes.Repeat([]byte{0x22}, chunkSize), 3*chunkSize); err != nil {
		t.Fatal(err)
	}
	h, rch := c.send(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(2, 3)})
	r := mustType[*wire.SnapshotReadOK](t, c.wait(rch))
	if len(r.Extents) != 2 || !r.Extents[0].Origin || r.Extents[0].Start != 2 || r.Extents[0].Count != 1 ||
		r.Extents[1].Origin || r.Extents[1].Start != 3 || r.Extents[1].Count != 2 {
		t.Fatalf("extents %+v", r.Extents)
	}
	if err := wire.CheckExtents(r.Extents, rng(2, 3)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, chunkSize)
	if _, err := e.store.ReadAt(got, int64(r.Extents[1].StoreOffset)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, old) {
		t.Fatal("store copy does not hold the data of the snapshot")
	}
	// The read holds a lock on chunk 2 until finished.
	if cl := e.srv.Clients(); len(cl) != 1 || cl[0].Locks != 1 {
		t.Fatalf("clients %+v", cl)
	}
	c.notice(&wire.FinishSnapshotRead{Handle: h})
	eventually(t, "lock released", func() bool { return e.srv.Clients()[0].Locks == 0 })
	// Errors map to codes.
	wantErr(t, c.call(&wire.SnapshotRead{Snapshot: 99, Ranges: rng(0, 1)}), wire.CodeNoSuchSnapshot)
	wantErr(t, c.call(&wire.OriginWrite{Ranges: rng(1000, 1)}), wire.CodeOutOfRange)
	wantErr(t, c.call(&wire.SnapshotWrite{Snapshot: s.ID, Ranges: rng(0, 1)}), wire.CodeNotWritable)
}

// TestOriginUnique: an origin write approved while the volume has no live
// snapshot and no read lock is preceded by ORIGIN_UNIQUE of its
// generation, for version-3 clients only; not while a snapshot lives or a
// read lock is held.
func TestOriginUnique(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	h := hello(cid(2), "n2")
	h.MaxVersion = wire.VersionUnique - 1
	old, m := dial(t, e.addr, h)
	mustType[*wire.HelloOK](t, m)
	mustType[*wire.OK](t, old.call(&wire.UploadDone{}))

	// wantUnique asks for chunk ch through c and checks the notice that
	// came before the approval (the reader records it first).
	wantUnique := func(c *client, ch uint64, gen uint64, want bool) {
		t.Helper()
		ok := mustType[*wire.OriginWriteOK](t, c.call(&wire.OriginWrite{Ranges: rng(ch, 1)}))
		if ok.Generation != gen {
			t.Fatalf("approved under %d, want %d", ok.Generation, gen)
		}
		ns := c.takeNotices()
		switch {
		case want && (len(ns) != 1 || mustType[*wire.OriginUnique](t, ns[0]).Generation != gen):
			t.Fatalf("chunk %d: notices %#v, want ORIGIN_UNIQUE{%d}", ch, ns, gen)
		case !want && len(ns) != 0:
			t.Fatalf("chunk %d: notices %#v, want none", ch, ns)
		}
	}
	wantUnique(a, 1, 0, true)
	wantUnique(old, 2, 0, false) // a version-2 client is never told

	s := createSnap(t, a, "s1")
	wantUnique(a, 3, 1, false) // a live snapshot

	// A read lock on chunk 5, then the snapshot goes: no live snapshot,
	// but the lock is still held.
	hd, rch := a.send(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(5, 1)})
	if r := mustType[*wire.SnapshotReadOK](t, a.wait(rch)); !r.HoldsLock() {
		t.Fatalf("chunk 5 not read from the origin: %+v", r.Extents)
	}
	mustType[*wire.OK](t, a.call(&wire.DeleteSnapshot{Snapshot: wire.SnapshotRef{ID: s.ID}}))
	wantUnique(a, 6, 1, false)
	a.notice(&wire.FinishSnapshotRead{Handle: hd})
	eventually(t, "lock released", func() bool {
		for _, c := range e.srv.Clients() {
			if c.Locks != 0 {
				return false
			}
		}
		return true
	})
	wantUnique(a, 7, 1, true) // the generation stays: deletes do not change it
}

func TestReadLockParksWrite(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	c := connect(t, e.addr, cid(3), "n3")
	s := createSnap(t, a, "s1")

	h, rch := a.send(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(5, 1)})
	r := mustType[*wire.SnapshotReadOK](t, a.wait(rch))
	if !r.HoldsLock() {
		t.Fatalf("unchanged chunk not on the origin: %+v", r.Extents)
	}
	_, wch := b.send(&wire.OriginWrite{Ranges: rng(4, 3)})
	b.pending(wch, "write under a read lock")

	// A later read of the chunk is answered (from the store: the copy-out
	// is committed) and does not hold the write back.
	r2 := mustType[*wire.SnapshotReadOK](t, c.call(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(5, 1)}))
	if r2.HoldsLock() {
		t.Fatalf("later read still on the origin: %+v", r2.Extents)
	}
	b.pending(wch, "write after a later read")

	a.notice(&wire.FinishSnapshotRead{Handle: h})
	ok := mustType[*wire.OriginWriteOK](t, b.wait(wch))
	if ok.Generation != uint64(s.ID) {
		t.Fatalf("generation %d", ok.Generation)
	}
}

func TestDisconnectReleasesWrite(t *testing.T) {
	e := start(t, Config{DetachGrace: -1})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	s := createSnap(t, a, "s1")
	r := mustType[*wire.SnapshotReadOK](t, a.call(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(7, 2)}))
	if !r.HoldsLock() {
		t.Fatal("no lock")
	}
	if _, err := e.reg.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l, _ := e.reg.List(context.Background()); len(l) != 2 || !l[0].HoldsLocks || l[1].HoldsLocks {
		t.Fatalf("registry %+v", l)
	}
	_, wch := b.send(&wire.OriginWrite{Ranges: rng(8, 1)})
	b.pending(wch, "write under a read lock")
	a.conn.Close()
	mustType[*wire.OriginWriteOK](t, b.wait(wch))
	eventually(t, "registry entry deleted", func() bool {
		l, _ := e.reg.List(context.Background())
		return len(l) == 1 && l[0].ID == cid(2)
	})
}

func TestNodeLeft(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	a2 := connect(t, e.addr, cid(4), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	s := createSnap(t, a, "s1")
	mustType[*wire.SnapshotReadOK](t, a.call(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(1, 1)}))
	_, wch := b.send(&wire.OriginWrite{Ranges: rng(1, 1)})
	b.pending(wch, "write under a read lock")
	e.srv.NodeLeft("n1")
	mustType[*wire.OriginWriteOK](t, b.wait(wch))
	a.closedByServer()
	a2.closedByServer()
	if cl := e.srv.Clients(); len(cl) != 1 || cl[0].ID != cid(2) {
		t.Fatalf("clients %+v", cl)
	}
	if l, _ := e.reg.List(context.Background()); len(l) != 1 || l[0].ID != cid(2) {
		t.Fatalf("registry %+v", l)
	}
}

func TestBarrier(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	a.mu.Lock()
	a.autoAck = false
	a.mu.Unlock()

	_, cch := b.send(&wire.CreateSnapshot{Name: "s1"})
	var inv frame
	select {
	case inv = <-a.inval:
	case <-time.After(waitLong):
		t.Fatal("no INVALIDATE")
	}
	if g := inv.m.(*wire.Invalidate).Generation; g != 1 {
		t.Fatalf("INVALIDATE generation %d", g)
	}
	b.pending(cch, "create before every ack")
	// Origin writes wait for the barrier too (point in time).
	_, wch := b.send(&wire.OriginWrite{Ranges: rng(6, 1)})
	b.pending(wch, "write during the barrier")
	if err := a.w.Write(inv.id, &wire.InvalidateAck{Generation: 1}); err != nil {
		t.Fatal(err)
	}
	s := mustType[*wire.CreateSnapshotOK](t, b.wait(cch)).Snapshot
	if s.Name != "s1" || s.ID != 1 {
		t.Fatalf("created %+v", s)
	}
	ok := mustType[*wire.OriginWriteOK](t, b.wait(wch))
	if ok.Generation != 1 {
		t.Fatalf("write approved under generation %d, want 1", ok.Generation)
	}
	// The write was copied out for the new snapshot.
	r := mustType[*wire.SnapshotReadOK](t, b.call(&wire.SnapshotRead{Snapshot: 1, Ranges: rng(6, 1)}))
	if r.HoldsLock() {
		t.Fatalf("chunk written after the barrier is not copied out: %+v", r.Extents)
	}
}

func TestBarrierTimeout(t *testing.T) {
	e := start(t, Config{BarrierTimeout: 300 * time.Millisecond})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	a.mu.Lock()
	a.autoAck = false
	a.mu.Unlock()
	t0 := time.Now()
	s := createSnap(t, b, "s1")
	if d := time.Since(t0); d < 300*time.Millisecond {
		t.Fatalf("create returned after %v, before the barrier timeout", d)
	}
	if s.ID != 1 {
		t.Fatalf("snapshot %+v", s)
	}
	a.closedByServer()
	eventually(t, "client struck off", func() bool { return len(e.srv.Clients()) == 1 })
	// The server is still fine for the others.
	mustType[*wire.OriginWriteOK](t, b.call(&wire.OriginWrite{Ranges: rng(0, 1)}))
}

func TestAwaitedClients(t *testing.T) {
	for _, how := range []string{"reconnect", "nodeleft", "timeout"} {
		t.Run(how, func(t *testing.T) {
			reg := NewMemRegistry()
			ctx := context.Background()
			_ = reg.Put(ctx, Entry{ID: cid(1), Node: "n1", HoldsLocks: true})
			_ = reg.Put(ctx, Entry{ID: cid(3), Node: "n3", HoldsLocks: false})
			cfg := Config{Registry: reg, Term: 2}
			if how == "timeout" {
				cfg.AwaitTimeout = 300 * time.Millisecond
			}
			t0 := time.Now()
			e := start(t, cfg)
			// Both are awaited: cid(1) by origin writes and snapshots,
			// cid(3) (no locks) by snapshots only (TestBarrierAwaitsRegistryClients).
			cl := e.srv.Clients()
			if len(cl) != 2 || cl[0].ID != cid(1) || cl[0].Connected || cl[0].State() != "awaited" ||
				cl[1].ID != cid(3) || cl[1].State() != "awaited" {
				t.Fatalf("clients %+v", cl)
			}
			b := connect(t, e.addr, cid(2), "n2")
			// Everything but origin writes is served.
			mustType[*wire.StatusOK](t, b.call(&wire.Status{}))
			_, wch := b.send(&wire.OriginWrite{Ranges: rng(2, 1)})
			b.pending(wch, "write before the awaited client is back")
			switch how {
			case "reconnect":
				a := connect(t, e.addr, cid(1), "n1",
					wire.HeldLock{Handle: 77, Snapshot: 1, Ranges: rng(9, 1)})
				mustType[*wire.OriginWriteOK](t, b.wait(wch))
				// Its uploaded lock holds back a write of chunk 9.
				_, w9 := b.send(&wire.OriginWrite{Ranges: rng(9, 1)})
				b.pending(w9, "write under an uploaded lock")
				a.notice(&wire.FinishSnapshotRead{Handle: 77})
				mustType[*wire.OriginWriteOK](t, b.wait(w9))
			case "nodeleft":
				// Its locks, granted by the previous server, are kept
				// until wire.LockLease after this one started.
				e.srv.NodeLeft("n1")
				mustType[*wire.OriginWriteOK](t, b.wait(wch))
				if d := time.Since(t0); d < wire.LockLease {
					t.Fatalf("write approved %v after the server started, within the awaited client's lock lease", d)
				}
			case "timeout":
				mustType[*wire.OriginWriteOK](t, b.wait(wch))
			}
			if cl := e.srv.Clients(); slices.ContainsFunc(cl, func(c ClientInfo) bool { return !c.Connected && c.ID == cid(1) }) {
				t.Fatalf("still awaited: %+v", cl)
			}
		})
	}
}

func TestPipelinedOutOfOrder(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	s := createSnap(t, a, "s1")
	h, rch := a.send(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(3, 1)})
	a.wait(rch)
	w1, wch := b.send(&wire.OriginWrite{Ranges: rng(3, 1)})
	p, pch := b.send(&wire.Ping{})
	r, sch := b.send(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(10, 2)})
	l, lch := b.send(&wire.ListSnapshots{Max: 10})
	mustType[*wire.Pong](t, b.wait(pch))
	rr := mustType[*wire.SnapshotReadOK](t, b.wait(sch))
	mustType[*wire.SnapshotList](t, b.wait(lch))
	b.pending(wch, "parked write")
	a.notice(&wire.FinishSnapshotRead{Handle: h})
	mustType[*wire.OriginWriteOK](t, b.wait(wch))
	b.notice(&wire.FinishSnapshotRead{Handle: r})
	_ = rr
	b.mu.Lock()
	order := slices.Clone(b.order)
	b.mu.Unlock()
	if i := slices.Index(order, w1); i < 0 || i < slices.Index(order, p) || i < slices.Index(order, r) || i < slices.Index(order, l) {
		t.Fatalf("reply order %v: the parked write (%d) should come last", order, w1)
	}
}

func TestInFlightLimit(t *testing.T) {
	e := start(t, Config{MaxInFlight: 2})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	s := createSnap(t, a, "s1")
	h, rch := a.send(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(0, 4)})
	a.wait(rch)
	_, w1 := b.send(&wire.OriginWrite{Ranges: rng(0, 1)})
	_, w2 := b.send(&wire.OriginWrite{Ranges: rng(1, 1)})
	b.pending(w1, "parked write")
	wantErr(t, b.call(&wire.OriginWrite{Ranges: rng(2, 1)}), wire.CodeLimit)
	a.notice(&wire.FinishSnapshotRead{Handle: h})
	b.wait(w1)
	b.wait(w2)
}

func TestAdmin(t *testing.T) {
	e := start(t, Config{})
	c := connect(t, e.addr, cid(1), "n1")
	for _, n := range []string{"a", "b", "c"} {
		createSnap(t, c, n)
	}
	wantErr(t, c.call(&wire.CreateSnapshot{Name: "b"}), wire.CodeExists)
	ws := mustType[*wire.CreateSnapshotOK](t, c.call(&wire.CreateSnapshot{Name: "w", Priority: 5, Writable: true})).Snapshot
	if !ws.Writable || ws.Priority != 5 || ws.ID != 4 {
		t.Fatalf("%+v", ws)
	}
	// Writable snapshot write: store extents.
	sw := mustType[*wire.SnapshotWriteOK](t, c.call(&wire.SnapshotWrite{Snapshot: ws.ID, Ranges: rng(0, 2)}))
	if err := wire.CheckExtents(sw.Extents, rng(0, 2)); err != nil || sw.Extents[0].Origin {
		t.Fatalf("%+v %v", sw.Extents, err)
	}

	mustType[*wire.OK](t, c.call(&wire.SetPriority{Snapshot: wire.SnapshotRef{Name: "a"}, Priority: 9}))
	mustType[*wire.OK](t, c.call(&wire.DeleteSnapshot{Snapshot: wire.SnapshotRef{Name: "b"}}))
	mustType[*wire.OK](t, c.call(&wire.DeleteSnapshot{Snapshot: wire.SnapshotRef{ID: 3}}))
	wantErr(t, c.call(&wire.DeleteSnapshot{Snapshot: wire.SnapshotRef{Name: "nope"}}), wire.CodeNoSuchSnapshot)
	wantErr(t, c.call(&wire.SetPriority{Snapshot: wire.SnapshotRef{ID: 3}, Priority: 1}), wire.CodeNoSuchSnapshot)

	// Paged list.
	var all []wire.SnapshotEntry
	after := uint32(0)
	for {
		l := mustType[*wire.SnapshotList](t, c.call(&wire.ListSnapshots{After: after, Max: 1}))
		all = append(all, l.Entries...)
		if !l.More {
			break
		}
		after = l.Entries[len(l.Entries)-1].ID
	}
	live := 0
	for _, s := range all {
		if !s.Deleting {
			live++
		}
		if s.Name == "a" && s.Priority != 9 {
			t.Fatalf("priority not set: %+v", s)
		}
	}
	if live != 2 {
		t.Fatalf("list %+v", all)
	}

	st := mustType[*wire.StatusOK](t, c.call(&wire.Status{}))
	if st.Term != 1 || st.Node != "srv" || st.Volume != "dev" || st.Generation != 4 || len(st.Clients) != 1 ||
		!st.Clients[0].Connected || st.Clients[0].Client != cid(1) || st.Clients[0].Node != "n1" {
		t.Fatalf("status %+v", st)
	}
	ck := mustType[*wire.CheckOK](t, c.call(&wire.Check{}))
	if len(ck.Problems) != 0 || ck.Omitted != 0 {
		t.Fatalf("check %+v", ck)
	}
	// The Go API agrees.
	if si := e.srv.Snapshots(); len(si) < 2 {
		t.Fatalf("%+v", si)
	}
	if _, err := e.srv.CreateSnapshot(context.Background(), "Bad!", snapstore.CreateOptions{}); !errors.Is(err, snapstore.ErrBadName) {
		t.Fatalf("bad name: %v", err)
	}
}

func TestReconnectReplacesSession(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	s := createSnap(t, a, "s1")
	h, rch := a.send(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(4, 1)})
	a.wait(rch)
	// The same client reconnects (the old connection looks alive) and
	// re-declares the lock: the old connection is closed, the lock kept.
	a2 := connect(t, e.addr, cid(1), "n1", wire.HeldLock{Handle: h, Snapshot: s.ID, Ranges: rng(4, 1)})
	a.closedByServer()
	_, wch := b.send(&wire.OriginWrite{Ranges: rng(4, 1)})
	b.pending(wch, "write under the re-declared lock")
	a2.notice(&wire.FinishSnapshotRead{Handle: h})
	mustType[*wire.OriginWriteOK](t, b.wait(wch))
	if l, _ := e.reg.List(context.Background()); len(l) != 2 {
		t.Fatalf("registry %+v", l)
	}
}

// A write parked across a snapshot creation is copied out again for the new
// snapshot before it is approved, under the new generation.
func TestParkedWriteAcrossCreate(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	s1 := createSnap(t, a, "s1")
	h, rch := a.send(&wire.SnapshotRead{Snapshot: s1.ID, Ranges: rng(5, 1)})
	a.wait(rch)
	_, wch := b.send(&wire.OriginWrite{Ranges: rng(5, 1)})
	b.pending(wch, "write under a read lock")
	s2 := createSnap(t, a, "s2")
	b.pending(wch, "write under a read lock after create")
	a.notice(&wire.FinishSnapshotRead{Handle: h})
	ok := mustType[*wire.OriginWriteOK](t, b.wait(wch))
	if ok.Generation != uint64(s2.ID) {
		t.Fatalf("approved under generation %d, want %d", ok.Generation, s2.ID)
	}
	for _, id := range []uint32{s1.ID, s2.ID} {
		r := mustType[*wire.SnapshotReadOK](t, b.call(&wire.SnapshotRead{Snapshot: id, Ranges: rng(5, 1)}))
		if r.HoldsLock() {
			t.Fatalf("snapshot %d: chunk 5 not copied out: %+v", id, r.Extents)
		}
	}
}

// A client that completes its handshake while a barrier waits is
// invalidated too.
func TestJoinDuringBarrier(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	a.mu.Lock()
	a.autoAck = false
	a.mu.Unlock()
	_, cch := a.send(&wire.CreateSnapshot{Name: "s1"})
	var inv frame
	select {
	case inv = <-a.inval:
	case <-time.After(waitLong):
		t.Fatal("no INVALIDATE")
	}
	c, m := dial(t, e.addr, hello(cid(2), "n2"))
	mustType[*wire.HelloOK](t, m)
	c.mu.Lock()
	c.autoAck = false
	c.mu.Unlock()
	mustType[*wire.OK](t, c.call(&wire.UploadDone{}))
	var inv2 frame
	select {
	case inv2 = <-c.inval:
	case <-time.After(waitLong):
		t.Fatal("late joiner got no INVALIDATE")
	}
	_ = a.w.Write(inv.id, &wire.InvalidateAck{Generation: 1})
	a.pending(cch, "create before the late joiner acked")
	_ = c.w.Write(inv2.id, &wire.InvalidateAck{Generation: 1})
	mustType[*wire.CreateSnapshotOK](t, a.wait(cch))
}

// Malformed frames get ERROR and, repeated, a closed connection; other
// clients are not disturbed.
func TestBadRequests(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	// A FINISH of an unknown lock is logged, not fatal.
	a.notice(&wire.FinishSnapshotRead{Handle: 12345})
	mustType[*wire.Pong](t, a.call(&wire.Ping{}))
	// An INVALIDATE_ACK nobody asked for is fatal.
	if err := a.w.Write(999, &wire.InvalidateAck{Generation: 1}); err != nil {
		t.Fatal(err)
	}
	a.closedByServer()
	mustType[*wire.OriginWriteOK](t, b.call(&wire.OriginWrite{Ranges: rng(0, 1)}))
	// Garbage bytes: connection closed.
	if _, err := b.conn.Write(bytes.Repeat([]byte{0xff}, 64)); err != nil {
		t.Fatal(err)
	}
	b.closedByServer()
	c := connect(t, e.addr, cid(3), "n3")
	mustType[*wire.Pong](t, c.call(&wire.Ping{}))
}

// A client whose connection is lost keeps its locks for DetachGrace: if it
// comes back and re-declares them, writes keep waiting for them; if not,
// they are released when the grace ends.
func TestDetachGrace(t *testing.T) {
	for _, back := range []bool{true, false} {
		t.Run(map[bool]string{true: "reconnect", false: "expire"}[back], func(t *testing.T) {
			e := start(t, Config{DetachGrace: 400 * time.Millisecond})
			a := connect(t, e.addr, cid(1), "n1")
			b := connect(t, e.addr, cid(2), "n2")
			s := createSnap(t, a, "s1")
			h, rch := a.send(&wire.SnapshotRead{Snapshot: s.ID, Ranges: rng(7, 1)})
			a.wait(rch)
			_, wch := b.send(&wire.OriginWrite{Ranges: rng(7, 1)})
			b.pending(wch, "write under a read lock")
			a.conn.Close()
			eventually(t, "client detached", func() bool {
				cl := e.srv.Clients()
				return len(cl) == 2 && !cl[0].Connected && cl[0].Locks == 1
			})
			if l, _ := e.reg.List(context.Background()); len(l) != 2 || !l[0].HoldsLocks {
				t.Fatalf("registry while detached: %+v", l)
			}
			if !back {
				b.pending(wch, "write under a detached client's lock")
				mustType[*wire.OriginWriteOK](t, b.wait(wch))
				eventually(t, "registry entry deleted", func() bool {
					l, _ := e.reg.List(context.Background())
					return len(l) == 1
				})
				return
			}
			a2 := connect(t, e.addr, cid(1), "n1", wire.HeldLock{Handle: h, Snapshot: s.ID, Ranges: rng(7, 1)})
			time.Sleep(600 * time.Millisecond) // past the grace: the lock is the client's again
			b.pending(wch, "write under the re-declared lock")
			a2.notice(&wire.FinishSnapshotRead{Handle: h})
			mustType[*wire.OriginWriteOK](t, b.wait(wch))
		})
	}
}

// A client approved an origin write that then lost its connection may still
// be writing: a snapshot waits for it to come back and drain (its ack of the
// new generation), for its node to leave, or for the barrier timeout.
func TestBarrierAwaitsDisconnectedWriter(t *testing.T) {
	for _, how := range []string{"reconnect", "nodeleft", "timeout"} {
		t.Run(how, func(t *testing.T) {
			cfg := Config{}
			if how == "timeout" {
				cfg.BarrierTimeout = 400 * time.Millisecond
			}
			e := start(t, cfg)
			a := connect(t, e.addr, cid(1), "n1")
			b := connect(t, e.addr, cid(2), "n2")
			mustType[*wire.OriginWriteOK](t, a.call(&wire.OriginWrite{Ranges: rng(3, 1)}))
			a.conn.Close()
			eventually(t, "client listed as awaited", func() bool {
				cl := e.srv.Clients()
				return len(cl) == 2 && cl[0].ID == cid(1) && cl[0].State() == "awaited"
			})
			if l, _ := e.reg.List(context.Background()); len(l) != 2 {
				t.Fatalf("registry dropped the disconnected writer: %+v", l)
			}
			t0 := time.Now()
			_, cch := b.send(&wire.CreateSnapshot{Name: "s1"})
			b.pending(cch, "create while an approved writer is away")
			switch how {
			case "reconnect":
				a2, m := dial(t, e.addr, hello(cid(1), "n1"))
				mustType[*wire.HelloOK](t, m)
				a2.mu.Lock()
				a2.autoAck = false
				a2.mu.Unlock()
				mustType[*wire.OK](t, a2.call(&wire.UploadDone{}))
				var inv frame
				select {
				case inv = <-a2.inval:
				case <-time.After(waitLong):
					t.Fatal("reconnected writer got no INVALIDATE")
				}
				b.pending(cch, "create before the reconnected writer drained")
				a2.mu.Lock()
				a2.autoAck = true
				a2.mu.Unlock()
				_ = a2.w.Write(inv.id, &wire.InvalidateAck{Generation: inv.m.(*wire.Invalidate).Generation})
				mustType[*wire.CreateSnapshotOK](t, b.wait(cch))
			case "nodeleft":
				e.srv.NodeLeft("n1")
				mustType[*wire.CreateSnapshotOK](t, b.wait(cch))
			case "timeout":
				mustType[*wire.CreateSnapshotOK](t, b.wait(cch))
				if d := time.Since(t0); d < 400*time.Millisecond {
					t.Fatalf("create returned after %v, before the barrier timeout", d)
				}
			}
			if how != "reconnect" {
				eventually(t, "writer struck off", func() bool {
					l, _ := e.reg.List(context.Background())
					return len(e.srv.Clients()) == 1 && len(l) == 1
				})
			}
			// Settled: the next snapshot does not wait.
			t1 := time.Now()
			createSnap(t, b, "s2")
			if d := time.Since(t1); d > waitShort*2 {
				t.Fatalf("second create took %v", d)
			}
		})
	}
}

// Clients that acknowledged a newer generation after their last approval,
// or never had one, hold no snapshot back when they disconnect.
func TestBarrierSkipsSettledClients(t *testing.T) {
	e := start(t, Config{BarrierTimeout: 2 * time.Second})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	c := connect(t, e.addr, cid(3), "n3")
	mustType[*wire.OriginWriteOK](t, a.call(&wire.OriginWrite{Ranges: rng(3, 1)}))
	createSnap(t, b, "s1") // a acks generation 1: settled
	a.conn.Close()
	c.conn.Close() // never approved anything
	eventually(t, "disconnected clients gone", func() bool { return len(e.srv.Clients()) == 1 })
	t0 := time.Now()
	createSnap(t, b, "s2")
	if d := time.Since(t0); d > time.Second {
		t.Fatalf("create waited %v for settled clients", d)
	}
}

// A client that loses its connection during the barrier, before acking,
// is still waited for.
func TestBarrierAwaitsWriterCutMidBarrier(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	mustType[*wire.OriginWriteOK](t, a.call(&wire.OriginWrite{Ranges: rng(3, 1)}))
	a.mu.Lock()
	a.autoAck = false
	a.mu.Unlock()
	_, cch := b.send(&wire.CreateSnapshot{Name: "s1"})
	select {
	case <-a.inval:
	case <-time.After(waitLong):
		t.Fatal("no INVALIDATE")
	}
	a.conn.Close()
	b.pending(cch, "create after the unacked writer's connection was cut")
	connect(t, e.addr, cid(1), "n1") // acks at once
	mustType[*wire.CreateSnapshotOK](t, b.wait(cch))
}

// A newly elected server takes every registry client on a member node as
// possibly writing under the old server's approvals.
func TestBarrierAwaitsRegistryClients(t *testing.T) {
	reg := NewMemRegistry()
	_ = reg.Put(context.Background(), Entry{ID: cid(3), Node: "n3"})
	e := start(t, Config{Registry: reg, Term: 2})
	b := connect(t, e.addr, cid(2), "n2")
	// Origin writes are not held back (it held no read locks)...
	mustType[*wire.OriginWriteOK](t, b.call(&wire.OriginWrite{Ranges: rng(1, 1)}))
	// ...but a snapshot waits for it.
	_, cch := b.send(&wire.CreateSnapshot{Name: "s1"})
	b.pending(cch, "create before the registry client is back")
	connect(t, e.addr, cid(3), "n3")
	mustType[*wire.CreateSnapshotOK](t, b.wait(cch))
}
