package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore/wire"
)

const (
	tcs     = 4096 // chunk size of the tests
	tchunks = 64
	tsize   = tcs * tchunks
)

type env struct {
	origin, store *memDev
	fs            *fakeServer
	c             *Client
	changes       chan uint64
	loc           *testLocator
}

// testLocator points wherever the test says.
type testLocator struct {
	mu    sync.Mutex
	addr  string
	calls int
}

func (l *testLocator) Server(context.Context) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	return l.addr, nil
}

func (l *testLocator) set(a string) {
	l.mu.Lock()
	l.addr = a
	l.mu.Unlock()
}

func testLog() *logrus.Entry {
	l := logrus.New()
	l.Out = io.Discard
	if os.Getenv("CSNAP_TEST_LOG") != "" {
		l.Out = os.Stderr
		l.Level = logrus.DebugLevel
	}
	return logrus.NewEntry(l)
}

func newEnv(t *testing.T, mod func(*Config), srv ...func(*fakeServer)) *env {
	t.Helper()
	e := &env{origin: newMemDev(tsize), store: newMemDev(4 * tsize), changes: make(chan uint64, 100)}
	e.fs = newFakeServer(t, e.origin, e.store, tcs)
	for _, f := range srv {
		f(e.fs)
	}
	e.loc = &testLocator{addr: e.fs.addr()}
	cfg := Config{
		Volume: "vol", Node: "node-1", ID: wire.ClientID{1}, Locator: e.loc,
		Origin: e.origin, Store: e.store, Log: testLog(),
		IOTimeout: 3 * time.Second, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		OnChange: func(g uint64) { e.changes <- g },
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	t.Cleanup(c.Close)
	e.fs.await(t, "UPLOAD_DONE", isType(wire.TypeUploadDone))
	return e
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// originWrites returns the ORIGIN_WRITE queries received so far.
func originWrites(fs *fakeServer) []rec {
	var out []rec
	for _, r := range fs.drain() {
		if r.m.Type() == wire.TypeOriginWrite {
			out = append(out, r)
		}
	}
	return out
}

func (s *fakeServer) conn(n int) *fakeConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[n]
}

func TestOriginWriteCache(t *testing.T) {
	e := newEnv(t, nil)
	v := e.c.Origin()
	if v.Size() != tsize || v.ReadOnly() || e.c.ChunkSize() != tcs {
		t.Fatalf("size %d readonly %v chunk %d", v.Size(), v.ReadOnly(), e.c.ChunkSize())
	}
	e.fs.drain()
	if err := v.WriteAt(fill(100, 'a'), 10, false); err != nil {
		t.Fatal(err)
	}
	ws := originWrites(e.fs)
	if len(ws) != 1 || !rangesEq(ws[0].m.(*wire.OriginWrite).Ranges, []wire.Range{{Start: 0, Count: 1}}) {
		t.Fatalf("first write: queries %v", ws)
	}
	// A rewrite of a cached chunk needs no query.
	if err := v.WriteAt(fill(100, 'b'), 500, true); err != nil {
		t.Fatal(err)
	}
	if ws := originWrites(e.fs); len(ws) != 0 {
		t.Fatalf("rewrite of a cached chunk asked the server: %v", ws)
	}
	if e.origin.flushes == 0 {
		t.Fatal("FUA write did not flush the origin")
	}
	// Chunks 0..2: only 1 and 2 are asked for.
	if err := v.WriteAt(fill(5000, 'c'), 4000, false); err != nil {
		t.Fatal(err)
	}
	ws = originWrites(e.fs)
	if len(ws) != 1 || !rangesEq(ws[0].m.(*wire.OriginWrite).Ranges, []wire.Range{{Start: 1, Count: 2}}) {
		t.Fatalf("spanning write: queries %v", ws)
	}
	got := make([]byte, 9000)
	if err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 9000)
	copy(want[10:], fill(100, 'a'))
	copy(want[500:], fill(100, 'b'))
	copy(want[4000:], fill(5000, 'c'))
	if !bytes.Equal(got, want) {
		t.Fatal("origin data differs")
	}
	// Reads never ask the server.
	for _, r := range e.fs.drain() {
		if r.m.Type() != wire.TypePing {
			t.Fatalf("origin read sent %v", r.m.Type())
		}
	}
	if err := v.WriteAt(fill(10, 'x'), tsize-5, false); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
}

func rangesEq(a, b []wire.Range) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStaleApprovalAskedAgain(t *testing.T) {
	e := newEnv(t, nil)
	e.fs.drain()
	var once sync.Once
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool {
		if _, ok := m.(*wire.OriginWrite); !ok {
			return false
		}
		handled := false
		once.Do(func() {
			// A snapshot begins between the approval and its delivery:
			// INVALIDATE{2} overtakes ORIGIN_WRITE_OK{1}.
			fc.s.mu.Lock()
			fc.s.gen = 2
			fc.s.mu.Unlock()
			fc.invalidate(2)
			fc.reply(id, &wire.OriginWriteOK{Generation: 1})
			handled = true
		})
		return handled
	})
	if err := e.c.Origin().WriteAt(fill(10, 'a'), 0, false); err != nil {
		t.Fatal(err)
	}
	// The ack is sent asynchronously (once old writes are done): collect
	// what the server received until it arrives, within a bound.
	var ws, acks int
	for deadline := time.Now().Add(5 * time.Second); acks == 0 && time.Now().Before(deadline); {
		for _, r := range e.fs.drain() {
			switch m := r.m.(type) {
			case *wire.OriginWrite:
				ws++
			case *wire.InvalidateAck:
				acks++
				if m.Generation != 2 {
					t.Fatalf("ack for generation %d", m.Generation)
				}
			}
		}
		if acks == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if ws != 2 || acks != 1 {
		t.Fatalf("%d origin write queries (want 2: the stale approval re-asked), %d acks", ws, acks)
	}
	if g := e.c.Generation(); g != 2 {
		t.Fatalf("generation %d", g)
	}
	select {
	case g := <-e.changes:
		if g != 2 {
			t.Fatalf("OnChange(%d)", g)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no OnChange")
	}
	// Approved under 2 and cached now.
	if err := e.c.Origin().WriteAt(fill(10, 'b'), 0, false); err != nil {
		t.Fatal(err)
	}
	if ws := originWrites(e.fs); len(ws) != 0 {
		t.Fatalf("cached after fresh approval, yet asked: %v", ws)
	}
}

func TestInvalidateWaitsForOldWrites(t *testing.T) {
	e := newEnv(t, nil)
	v := e.c.Origin()
	if err := v.WriteAt(fill(10, 'a'), 0, false); err != nil { // cache chunk 0 under gen 1
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.origin.setBeforeWrite(func(off int64, n int) {
		once.Do(func() { close(entered); <-release })
	})
	werr := make(chan error, 1)
	go func() { werr <- v.WriteAt(fill(10, 'b'), 0, false) }() // cached: no query, blocks in the device
	<-entered
	e.fs.drain()

	e.fs.mu.Lock()
	e.fs.gen = 2
	e.fs.mu.Unlock()
	ack := e.fs.conn(1).invalidate(2)
	select {
	case <-ack:
		t.Fatal("INVALIDATE acknowledged while a write approved under the old generation is in flight")
	case <-time.After(150 * time.Millisecond):
	}
	close(release)
	select {
	case <-ack:
	case <-time.After(3 * time.Second):
		t.Fatal("no INVALIDATE_ACK after the write completed")
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	// The cache was cleared: the next write asks.
	e.fs.drain()
	if err := v.WriteAt(fill(10, 'c'), 0, false); err != nil {
		t.Fatal(err)
	}
	if ws := originWrites(e.fs); len(ws) != 1 {
		t.Fatalf("%d queries after INVALIDATE, want 1", len(ws))
	}
	select {
	case g := <-e.changes:
		if g != 2 {
			t.Fatalf("OnChange(%d)", g)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no OnChange")
	}
}

// setupSnapshot writes 'A' over chunks 0..3, takes snapshot 1, then writes
// 'B' over chunks 1..2 (copied out to the store).
func setupSnapshot(t *testing.T, e *env, writable bool) SnapshotInfo {
	t.Helper()
	v := e.c.Origin()
	if err := v.WriteAt(fill(4*tcs, 'A'), 0, false); err != nil {
		t.Fatal(err)
	}
	si, err := e.c.CreateSnapshot(ctx5(t), "s1", 5, writable)
	if err != nil {
		t.Fatal(err)
	}
	if si.ID != 1 || si.Name != "s1" || si.Priority != 5 || si.Writable != writable {
		t.Fatalf("created %+v", si)
	}
	if err := v.WriteAt(fill(2*tcs, 'B'), tcs, false); err != nil {
		t.Fatal(err)
	}
	e.fs.drain()
	return si
}

func TestSnapshotReadStoreAndOrigin(t *testing.T) {
	e := newEnv(t, nil)
	si := setupSnapshot(t, e, false)
	s := e.c.Snapshot(si.ID, false)
	if !s.ReadOnly() || s.Size() != tsize {
		t.Fatal("snapshot volume attributes")
	}
	got := make([]byte, 3*tcs)
	if err := s.ReadAt(got, tcs/2); err != nil { // chunks 0..3: origin, store, store, origin
		t.Fatal(err)
	}
	if !bytes.Equal(got, fill(3*tcs, 'A')) {
		t.Fatal("snapshot data differs")
	}
	rd := e.fs.await(t, "SNAPSHOT_READ", isType(wire.TypeSnapshotRead))
	if m := rd.m.(*wire.SnapshotRead); m.Snapshot != si.ID || !rangesEq(m.Ranges, []wire.Range{{Start: 0, Count: 4}}) {
		t.Fatalf("SNAPSHOT_READ %+v", m)
	}
	fin := e.fs.await(t, "FINISH_SNAPSHOT_READ", isType(wire.TypeFinishSnapshotRead))
	if h := fin.m.(*wire.FinishSnapshotRead).Handle; h != rd.id {
		t.Fatalf("read id %d, finish handle %d", rd.id, h)
	}
	// The origin has the new data.
	if err := e.c.Origin().ReadAt(got[:tcs], tcs); err != nil || !bytes.Equal(got[:tcs], fill(tcs, 'B')) {
		t.Fatalf("origin: %v", err)
	}
	// All from the store: no lock, no FINISH.
	if err := s.ReadAt(got[:2*tcs], tcs); err != nil || !bytes.Equal(got[:2*tcs], fill(2*tcs, 'A')) {
		t.Fatalf("store-only read: %v", err)
	}
	for _, r := range e.fs.drain() {
		if r.m.Type() == wire.TypeFinishSnapshotRead {
			t.Fatal("FINISH_SNAPSHOT_READ without a lock")
		}
	}
	e.fs.waitNoLocks(t)
}

func TestSnapshotReadFailureStillFinishes(t *testing.T) {
	e := newEnv(t, nil)
	si := setupSnapshot(t, e, false)
	e.origin.setReadErr(errors.New("medium error"))
	err := e.c.Snapshot(si.ID, false).ReadAt(make([]byte, tcs), 0)
	if err == nil {
		t.Fatal("read of a failing origin succeeded")
	}
	r := e.fs.await(t, "SNAPSHOT_READ", isType(wire.TypeSnapshotRead))
	f := e.fs.await(t, "FINISH_SNAPSHOT_READ", isType(wire.TypeFinishSnapshotRead))
	if f.m.(*wire.FinishSnapshotRead).Handle != r.id {
		t.Fatalf("finish handle %d, read id %d", f.m.(*wire.FinishSnapshotRead).Handle, r.id)
	}
	e.origin.setReadErr(nil)
	// Extents not tiling the request: refused, lock still released.
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool {
		if _, ok := m.(*wire.SnapshotRead); ok {
			fc.reply(id, &wire.SnapshotReadOK{Extents: []wire.Extent{{Start: 7, Count: 1, Origin: true}}})
			return true
		}
		return false
	})
	if err := e.c.Snapshot(si.ID, false).ReadAt(make([]byte, tcs), 0); !errors.Is(err, ErrProtocol) {
		t.Fatalf("bad extents: %v", err)
	}
	r = e.fs.await(t, "SNAPSHOT_READ", isType(wire.TypeSnapshotRead))
	f = e.fs.await(t, "FINISH_SNAPSHOT_READ", isType(wire.TypeFinishSnapshotRead))
	if f.m.(*wire.FinishSnapshotRead).Handle != r.id {
		t.Fatal("no FINISH for the bad answer's lock")
	}
}

func TestSnapshotGone(t *testing.T) {
	e := newEnv(t, nil)
	si := setupSnapshot(t, e, true)
	s2, err := e.c.CreateSnapshot(ctx5(t), "s2", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	// Dropped.
	e.fs.mu.Lock()
	e.fs.snaps[s2.ID].entry.Dropped = true
	e.fs.mu.Unlock()
	err = e.c.Snapshot(s2.ID, false).ReadAt(make([]byte, 10), 0)
	var we *wire.Error
	if !errors.Is(err, ErrSnapshotGone) || !errors.As(err, &we) || we.Code != wire.CodeSnapshotDropped {
		t.Fatalf("dropped: %v", err)
	}
	// Deleted.
	s := e.c.Snapshot(si.ID, true)
	if err := e.c.DeleteSnapshot(ctx5(t), "s1"); err != nil {
		t.Fatal(err)
	}
	if err := s.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrSnapshotGone) {
		t.Fatalf("deleted: %v", err)
	}
	// Remembered: no further query.
	e.fs.drain()
	if err := s.WriteAt(make([]byte, 10), 0, false); !errors.Is(err, ErrSnapshotGone) {
		t.Fatalf("write to deleted: %v", err)
	}
	if err := e.c.Snapshot(si.ID, true).WriteAt(make([]byte, 10), 0, false); !errors.Is(err, ErrSnapshotGone) {
		t.Fatalf("write to deleted (new handle): %v", err)
	}
	if err := e.c.DeleteSnapshot(ctx5(t), "s1"); !errors.Is(err, ErrSnapshotGone) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestWritableSnapshot(t *testing.T) {
	e := newEnv(t, nil)
	si := setupSnapshot(t, e, true)
	s := e.c.Snapshot(si.ID, true)
	if s.ReadOnly() {
		t.Fatal("writable snapshot is read-only")
	}
	// Partial writes of chunk 0 (shared with the origin) and chunk 1 (in
	// the store, shared copy).
	if err := s.WriteAt(fill(tcs, 'w'), tcs/2, true); err != nil {
		t.Fatal(err)
	}
	if e.store.flushes == 0 {
		t.Fatal("FUA did not flush the store")
	}
	got := make([]byte, 3*tcs)
	if err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := fill(3*tcs, 'A')
	copy(want[tcs/2:], fill(tcs, 'w'))
	if !bytes.Equal(got, want) {
		t.Fatal("writable snapshot data differs")
	}
	if err := e.c.Origin().ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want = fill(3*tcs, 'A')
	copy(want[tcs:], fill(2*tcs, 'B'))
	if !bytes.Equal(got, want) {
		t.Fatal("snapshot write changed the origin")
	}
	// Unmap on a writable snapshot: zeros.
	if err := s.Unmap(100, 200); err != nil {
		t.Fatal(err)
	}
	if err := s.ReadAt(got[:300], 0); err != nil || !bytes.Equal(got[100:300], make([]byte, 200)) || got[99] != 'A' {
		t.Fatalf("unmapped snapshot: %v", err)
	}
	// Read-only snapshots refuse writes without asking.
	ro := e.c.Snapshot(si.ID, false)
	if err := ro.WriteAt(fill(10, 'x'), 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only write: %v", err)
	}
	if err := ro.Unmap(0, 10); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only unmap: %v", err)
	}
	// The server's verdict counts too.
	s2, err := e.c.CreateSnapshot(ctx5(t), "ro", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.Snapshot(s2.ID, true).WriteAt(fill(10, 'x'), 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("server-refused write: %v", err)
	}
}

func TestOriginUnmap(t *testing.T) {
	for _, punch := range []bool{true, false} {
		e := newEnv(t, nil)
		e.origin.failPunch = !punch
		si := setupSnapshot(t, e, false)
		v := e.c.Origin()
		off, n := int64(1000), int64(3*tcs-1000+100) // [1000, 3*tcs+100): chunks 0..3
		if err := v.Unmap(off, n); err != nil {
			t.Fatal(err)
		}
		ws := originWrites(e.fs)
		if len(ws) != 1 || !rangesEq(ws[0].m.(*wire.OriginWrite).Ranges, []wire.Range{{Start: 0, Count: 1}, {Start: 3, Count: 1}}) {
			t.Fatalf("unmap queries %+v (chunks 1,2 were cached)", ws)
		}
		if punch && (len(e.origin.punched) != 1 || e.origin.punched[0] != [2]int64{tcs, 2 * tcs}) {
			t.Fatalf("punched %v", e.origin.punched)
		}
		got := make([]byte, 4*tcs)
		if err := v.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 4*tcs)
		copy(want, fill(1000, 'A'))
		copy(want[3*tcs+100:], fill(tcs-100, 'A'))
		if !bytes.Equal(got, want) {
			t.Fatalf("punch %v: origin after unmap differs", punch)
		}
		if err := e.c.Snapshot(si.ID, false).ReadAt(got, 0); err != nil || !bytes.Equal(got, fill(4*tcs, 'A')) {
			t.Fatalf("snapshot after origin unmap: %v", err)
		}
	}
}

func TestReconnectUploadsLocksAndResends(t *testing.T) {
	e := newEnv(t, nil)
	si := setupSnapshot(t, e, false)
	s := e.c.Snapshot(si.ID, false)

	// Read A holds a lock on origin chunk 0 and is stuck reading it.
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.origin.setBeforeRead(func(off int64, n int) {
		if off == 0 {
			once.Do(func() { close(entered); <-release })
		}
	})
	errA := make(chan error, 1)
	bufA := make([]byte, tcs)
	go func() { errA <- s.ReadAt(bufA, 0) }()
	<-entered
	readA := e.fs.await(t, "SNAPSHOT_READ A", isType(wire.TypeSnapshotRead))

	// The server dies on read B's query, unanswered.
	var droppedID atomic.Uint64
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool {
		if r, ok := m.(*wire.SnapshotRead); ok && fc.n == 1 && r.Ranges[0].Start == 3 {
			droppedID.Store(id)
			fc.nc.Close()
			return true
		}
		return false
	})
	errB := make(chan error, 1)
	bufB := make([]byte, tcs)
	go func() { errB <- s.ReadAt(bufB, 3*tcs) }()

	hello := e.fs.await(t, "HELLO on a new connection", func(r rec) bool { return r.conn == 2 && r.m.Type() == wire.TypeHello })
	if h := hello.m.(*wire.Hello); h.Term != 7 || h.Client != (wire.ClientID{1}) {
		t.Fatalf("reconnect HELLO %+v", h)
	}
	up := e.fs.await(t, "UPLOAD_LOCKS", isType(wire.TypeUploadLocks))
	locks := up.m.(*wire.UploadLocks).Locks
	if up.conn != 2 || len(locks) != 1 || locks[0].Handle != readA.id || locks[0].Snapshot != si.ID ||
		!rangesEq(locks[0].Ranges, []wire.Range{{Start: 0, Count: 1}}) {
		t.Fatalf("upload %+v, read A id %d", up, readA.id)
	}
	done := e.fs.await(t, "UPLOAD_DONE", isType(wire.TypeUploadDone))
	if done.m.(*wire.UploadDone).Locks != 1 {
		t.Fatalf("UPLOAD_DONE %+v", done.m)
	}
	again := e.fs.await(t, "SNAPSHOT_READ B again", isType(wire.TypeSnapshotRead))
	if again.conn != 2 || again.id == droppedID.Load() || again.id <= readA.id {
		t.Fatalf("re-sent read on conn %d id %d (dropped id %d)", again.conn, again.id, droppedID.Load())
	}
	if err := <-errB; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bufB, fill(tcs, 'A')) {
		t.Fatal("read B data")
	}
	// While read A was stuck, its lock could have been dropped with the
	// connection and chunk 0 overwritten: A must not trust what it read.
	e.fs.foreignWrite(0, 'C')
	close(release)
	if err := <-errA; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bufA, fill(tcs, 'A')) {
		t.Fatalf("read A returned %q..., not the snapshot's data", bufA[:4])
	}
	fin := e.fs.await(t, "FINISH for A", func(r rec) bool {
		f, ok := r.m.(*wire.FinishSnapshotRead)
		return ok && f.Handle == readA.id
	})
	if fin.conn != 2 {
		t.Fatalf("finish for A on connection %d", fin.conn)
	}
	redo := e.fs.await(t, "SNAPSHOT_READ A again", isType(wire.TypeSnapshotRead))
	if r := redo.m.(*wire.SnapshotRead); redo.conn != 2 || r.Ranges[0].Start != 0 {
		t.Fatalf("redo %+v", redo)
	}
	select {
	case <-e.changes:
	case <-time.After(2 * time.Second):
		t.Fatal("no OnChange after reconnect")
	}
	e.fs.waitNoLocks(t)
}

// waitNoLocks waits for the server to hold no read lock (FINISH is a
// notice: the client does not wait for it to be applied).
func (s *fakeServer) waitNoLocks(t *testing.T) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		n := len(s.locks)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("%d read locks left on the server", n)
		}
	}
}

func TestOriginWriteResentAfterDrop(t *testing.T) {
	e := newEnv(t, nil)
	e.fs.drain()
	var first atomic.Uint64
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool {
		if _, ok := m.(*wire.OriginWrite); ok && first.CompareAndSwap(0, id) {
			fc.nc.Close()
			return true
		}
		return false
	})
	if err := e.c.Origin().WriteAt(fill(10, 'z'), 5*tcs, true); err != nil {
		t.Fatal(err)
	}
	ws := originWrites(e.fs)
	if len(ws) != 2 || ws[1].conn != 2 || ws[1].id != first.Load() {
		t.Fatalf("queries %+v", ws)
	}
	if !bytes.Equal(e.origin.bytes(5*tcs, 10), fill(10, 'z')) {
		t.Fatal("data not written")
	}
}

func TestNotServerReconnects(t *testing.T) {
	e := newEnv(t, nil)
	var n atomic.Int32
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool {
		if _, ok := m.(*wire.OriginWrite); ok && n.Add(1) == 1 {
			fc.reply(id, &wire.Error{Code: wire.CodeNotServer, Message: "deposed"})
			return true
		}
		return false
	})
	if err := e.c.Origin().WriteAt(fill(10, 'z'), 0, false); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 2 {
		t.Fatalf("%d queries", n.Load())
	}
	e.fs.mu.Lock()
	conns := e.fs.nconn
	e.fs.mu.Unlock()
	if conns != 2 {
		t.Fatalf("%d connections", conns)
	}
}

func TestFailoverToAnotherServer(t *testing.T) {
	e := newEnv(t, nil)
	v := e.c.Origin()
	if err := v.WriteAt(fill(10, 'a'), 0, false); err != nil {
		t.Fatal(err)
	}
	fs2 := newFakeServer(t, e.origin, e.store, tcs)
	fs2.term, fs2.gen = 9, 3
	e.loc.set(fs2.addr())
	e.fs.close()
	h := fs2.await(t, "HELLO", isType(wire.TypeHello))
	if h.m.(*wire.Hello).Term != 7 {
		t.Fatalf("HELLO to the new server carries term %d", h.m.(*wire.Hello).Term)
	}
	fs2.await(t, "UPLOAD_DONE", isType(wire.TypeUploadDone))
	if err := v.WriteAt(fill(10, 'b'), 0, false); err != nil { // new generation: asks again
		t.Fatal(err)
	}
	fs2.await(t, "ORIGIN_WRITE", isType(wire.TypeOriginWrite))
	if e.c.Term() != 9 || e.c.Generation() != 3 {
		t.Fatalf("term %d gen %d", e.c.Term(), e.c.Generation())
	}
	if ok, addr := e.c.Connected(); !ok || addr != fs2.addr() {
		t.Fatalf("connected %v to %s", ok, addr)
	}
}

func TestRejectedThenAccepted(t *testing.T) {
	e := newEnv(t, nil)
	e.fs.mu.Lock()
	e.fs.reject = &wire.HelloReject{Reason: wire.RejectNotServer, Term: 8, Message: "ask consul"}
	e.fs.mu.Unlock()
	e.fs.dropAll()
	e.fs.await(t, "rejected HELLO", func(r rec) bool { return r.conn >= 2 && r.m.Type() == wire.TypeHello })
	e.fs.mu.Lock()
	e.fs.reject = nil
	e.fs.term = 8
	e.fs.mu.Unlock()
	if err := e.c.Origin().WriteAt(fill(10, 'b'), 0, false); err != nil {
		t.Fatal(err)
	}
	if e.c.Term() != 8 {
		t.Fatalf("term %d", e.c.Term())
	}
}

func TestServerGoneTimesOut(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.IOTimeout = 400 * time.Millisecond })
	si := setupSnapshot(t, e, false)
	e.fs.close()
	start := time.Now()
	err := e.c.Origin().WriteAt(fill(10, 'x'), 9*tcs, false)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("write with the server gone: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Fatalf("timed out after %v", d)
	}
	// Origin reads need no server.
	if err := e.c.Origin().ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	// Past IOTimeout without a server, IO fails at once.
	time.Sleep(200 * time.Millisecond)
	start = time.Now()
	if err := e.c.Snapshot(si.ID, false).ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrTimeout) {
		t.Fatalf("snapshot read: %v", err)
	}
	if _, err := e.c.Snapshots(context.Background()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("admin: %v", err)
	}
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Fatalf("fail-fast took %v", d)
	}
}

func TestServerBackWithinTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.IOTimeout = 3 * time.Second })
	fs2 := newFakeServer(t, e.origin, e.store, tcs)
	e.loc.set("127.0.0.1:1") // nobody there
	e.fs.close()
	errc := make(chan error, 1)
	go func() { errc <- e.c.Origin().WriteAt(fill(10, 'x'), 0, false) }()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("IO finished while no server: %v", err)
	default:
	}
	e.loc.set(fs2.addr())
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestAdmin(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctx5(t)
	for i, n := range []string{"a", "b", "c"} {
		si, err := e.c.CreateSnapshot(ctx, n, int32(i), i == 1)
		if err != nil || si.ID != uint32(i+1) {
			t.Fatalf("create %s: %+v %v", n, si, err)
		}
	}
	if _, err := e.c.CreateSnapshot(ctx, "b", 0, false); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	list, err := e.c.Snapshots(ctx) // pages of 2
	if err != nil || len(list) != 3 || list[0].Name != "a" || list[2].Name != "c" || !list[1].Writable {
		t.Fatalf("list %+v %v", list, err)
	}
	if err := e.c.SetPriority(ctx, "c", 42); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteSnapshot(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteSnapshotID(ctx, 2); err != nil {
		t.Fatal(err)
	}
	list, err = e.c.Snapshots(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "c" || list[0].Priority != 42 {
		t.Fatalf("list %+v %v", list, err)
	}
	st, err := e.c.Status(ctx)
	if err != nil || st.Term != 7 || st.Generation != 4 || st.Node != "srv" {
		t.Fatalf("status %+v %v", st, err)
	}
	ck, err := e.c.Check(ctx)
	if err != nil || ck.Clean() || ck.Omitted != 2 || len(ck.Problems) != 1 {
		t.Fatalf("check %+v %v", ck, err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool { return m.Type() == wire.TypeStatus }) // never answered
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := e.c.Status(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled status: %v", err)
	}
}

func TestFlowControl(t *testing.T) {
	e := newEnv(t, nil, func(s *fakeServer) { s.maxIn = 3 })
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool {
		if ow, ok := m.(*wire.OriginWrite); ok {
			fc.s.wg.Add(1)
			go func() {
				defer fc.s.wg.Done()
				time.Sleep(5 * time.Millisecond)
				fc.originWrite(id, ow)
			}()
			return true
		}
		return false
	})
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.c.Origin().WriteAt(fill(10, 'q'), int64(i)*tcs, false); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	fc := e.fs.conn(1)
	fc.mu.Lock()
	peak := fc.peak
	fc.mu.Unlock()
	if peak > 3 {
		t.Fatalf("%d requests in flight, server allows 3", peak)
	}
}

func TestMaxLocks(t *testing.T) {
	e := newEnv(t, nil, func(s *fakeServer) { s.maxLocks = 1 })
	si := setupSnapshot(t, e, false)
	s := e.c.Snapshot(si.ID, false)
	var held, peak atomic.Int32
	e.origin.setBeforeRead(func(off int64, n int) {
		peak.Store(max(peak.Load(), held.Add(1)))
		time.Sleep(10 * time.Millisecond)
		held.Add(-1)
	})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ReadAt(make([]byte, tcs), 0); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if peak.Load() != 1 {
		t.Fatalf("%d origin reads under lock at once with MaxLocks 1", peak.Load())
	}
}

// TestConcurrentPointInTime runs writers, snapshot creations and
// snapshot readers at once against the fake server.
func TestConcurrentPointInTime(t *testing.T) {
	e := newEnv(t, nil)
	runPointInTime(t, e.c, tcs)
}

// runPointInTime runs writers, snapshot creations and snapshot readers at
// once, and checks that every snapshot holds, for each writer, a value
// acknowledged no earlier than the creation began and issued no later than
// it returned, and that each write lands whole.
func runPointInTime(t *testing.T, c *Client, cs int64) {
	const writers = 6
	const per = 2 // chunks per writer
	var issued, acked [writers]atomic.Uint32
	type snapRec struct {
		id     uint32
		lo, hi [writers]uint32
	}
	var (
		smu   sync.Mutex
		snaps []snapRec
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	value := func(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
	checkWhole := func(b []byte) (uint32, bool) {
		v := value(b)
		for i := 0; i < len(b); i += 4 {
			if value(b[i:]) != v {
				return 0, false
			}
		}
		return v, true
	}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, per*cs)
			for k := uint32(1); ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				for i := 0; i < len(buf); i += 4 {
					binary.BigEndian.PutUint32(buf[i:], k)
				}
				issued[w].Store(k)
				if err := c.Origin().WriteAt(buf, int64(w*per)*cs, k%7 == 0); err != nil {
					t.Error(err)
					return
				}
				acked[w].Store(k)
			}
		}()
	}
	check := func(sr snapRec) {
		buf := make([]byte, per*cs)
		for w := range writers {
			if err := c.Snapshot(sr.id, false).ReadAt(buf, int64(w*per)*cs); err != nil {
				t.Error(err)
				return
			}
			v, ok := checkWhole(buf)
			if !ok {
				t.Errorf("snapshot %d writer %d: torn write", sr.id, w)
				return
			}
			if v < sr.lo[w] || v > sr.hi[w] {
				t.Errorf("snapshot %d writer %d: value %d outside [%d,%d]", sr.id, w, v, sr.lo[w], sr.hi[w])
			}
		}
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				smu.Lock()
				var sr snapRec
				if len(snaps) > 0 {
					sr = snaps[rand.IntN(len(snaps))]
				}
				smu.Unlock()
				if sr.id == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				check(sr)
			}
		}()
	}
	for i := range 5 {
		time.Sleep(40 * time.Millisecond)
		var sr snapRec
		for w := range writers {
			sr.lo[w] = acked[w].Load()
		}
		si, err := c.CreateSnapshot(ctx5(t), "s"+string(rune('a'+i)), 0, false)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		for w := range writers {
			sr.hi[w] = issued[w].Load()
		}
		sr.id = si.ID
		smu.Lock()
		snaps = append(snaps, sr)
		smu.Unlock()
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	for _, sr := range snaps {
		check(sr)
	}
	for w := range writers {
		if acked[w].Load() < 5 {
			t.Errorf("writer %d made only %d writes", w, acked[w].Load())
		}
	}
}

func TestCloseFailsWaitingIO(t *testing.T) {
	e := newEnv(t, nil)
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool { return m.Type() == wire.TypeOriginWrite }) // never answered
	errc := make(chan error, 1)
	go func() { errc <- e.c.Origin().WriteAt(fill(10, 'x'), 0, false) }()
	e.fs.await(t, "ORIGIN_WRITE", isType(wire.TypeOriginWrite))
	e.c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestChunkCache(t *testing.T) {
	c := newChunkCache(2 * pageBytes)
	c.add(5, 3)
	if !c.has(5) || !c.has(7) || c.has(8) || c.has(4) {
		t.Fatal("membership")
	}
	c.add(pageBits*10, 1)
	c.add(pageBits*20, 1) // evicts one page
	if c.len() != 2 {
		t.Fatalf("%d pages, bound 2", c.len())
	}
	c.clear()
	if c.has(5) || c.len() != 0 {
		t.Fatal("clear")
	}
}

func TestSplitRanges(t *testing.T) {
	var rs []wire.Range
	for i := range 300 {
		rs = append(rs, wire.Range{Start: uint64(i * 2), Count: 1})
	}
	rs = append(rs, wire.Range{Start: 1000, Count: wire.MaxChunks + 5})
	out := splitRanges(rs)
	total := 0
	for _, l := range out {
		n := 0
		for _, r := range l {
			n += int(r.Count)
		}
		if len(l) > wire.MaxRanges || n > wire.MaxChunks {
			t.Fatalf("batch of %d ranges, %d chunks", len(l), n)
		}
		if _, err := wire.Encode(1, &wire.OriginWrite{Ranges: l}); err != nil {
			t.Fatal(err)
		}
		total += n
	}
	if total != 300+wire.MaxChunks+5 {
		t.Fatalf("%d chunks", total)
	}
	// lockRanges merges to fit an upload.
	var xs []wire.Extent
	for i := range 600 {
		xs = append(xs, wire.Extent{Start: uint64(i), Count: 1, Origin: i%2 == 0, StoreOffset: uint64(i%2) * 4096})
	}
	lr := lockRanges(xs)
	if len(lr) > wire.MaxRanges || lr[0].Start != 0 || lr[len(lr)-1].Start+uint64(lr[len(lr)-1].Count) != 599 {
		t.Fatalf("lock ranges %d: %v..", len(lr), lr[:2])
	}
	if _, err := wire.Encode(0, &wire.UploadLocks{Locks: []wire.HeldLock{{Handle: 1, Snapshot: 1, Ranges: lr}}}); err != nil {
		t.Fatal(err)
	}
}

func TestBusyRetried(t *testing.T) {
	e := newEnv(t, nil)
	var n atomic.Int32
	e.fs.setHook(func(fc *fakeConn, id uint64, m wire.Message) bool {
		if _, ok := m.(*wire.OriginWrite); ok && n.Add(1) <= 2 {
			fc.reply(id, &wire.Error{Code: wire.CodeLimit, Message: "busy"})
			return true
		}
		return false
	})
	if err := e.c.Origin().WriteAt(fill(10, 'z'), 0, false); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 3 {
		t.Fatalf("%d queries", n.Load())
	}
}

func TestNewFails(t *testing.T) {
	origin, store := newMemDev(tsize), newMemDev(tsize)
	fs := newFakeServer(t, origin, store, tcs)
	small := newMemDev(tcs) // smaller than the volume
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := New(ctx, Config{Volume: "vol", Node: "n", ID: wire.ClientID{1}, Locator: StaticLocator(fs.addr()),
		Origin: small, Store: store, Log: testLog(), MinBackoff: 10 * time.Millisecond})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("origin device holds")) {
		t.Fatalf("New with a small origin: %v", err)
	}
	fs.mu.Lock()
	fs.reject = &wire.HelloReject{Reason: wire.RejectForeignVolume, Message: "not here"}
	fs.mu.Unlock()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	_, err = New(ctx2, Config{Volume: "vol", Node: "n", ID: wire.ClientID{1}, Locator: StaticLocator(fs.addr()),
		Origin: origin, Store: store, Log: testLog(), MinBackoff: 10 * time.Millisecond})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("foreign volume")) {
		t.Fatalf("New rejected: %v", err)
	}
	if _, err := New(context.Background(), Config{Volume: "vol"}); err == nil {
		t.Fatal("New without a node name")
	}
}
