package client

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/snapstore/wire"
)

// e2e is the real engine and server over in-memory devices, and a client
// sharing those devices (as every node shares the SAN).
type e2e struct {
	origin, store *snapstore.MemDevice
	srv           *server.Server
	eng           *snapstore.Engine
	addr          string
	c             *Client
}

const e2eChunk = 8192

func newE2E(t *testing.T) *e2e { return newE2EWith(t, server.AllowAll{}) }

// newE2EWith is newE2E with the server's cluster membership.
func newE2EWith(t *testing.T, mem server.Membership) *e2e {
	t.Helper()
	e := &e2e{origin: snapstore.NewMemDevice(1 << 20), store: snapstore.NewMemDevice(8 << 20)}
	if err := snapstore.Format(e.origin, e.store, snapstore.FormatOptions{ChunkSize: e2eChunk, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	eng, err := snapstore.Open(e.origin, e.store, snapstore.Options{ManualReclaim: true})
	if err != nil {
		t.Fatal(err)
	}
	return startE2E(t, e.origin, e.store, eng, mem)
}

// startE2E serves eng (over origin and store) on a loopback port with the
// server's cluster membership mem, and connects the main client.
func startE2E(t *testing.T, origin, store *snapstore.MemDevice, eng *snapstore.Engine, mem server.Membership) *e2e {
	t.Helper()
	e := &e2e{origin: origin, store: store, eng: eng}
	srv, err := server.New(server.Config{Engine: eng, Volume: "vol", Term: 1, Node: "srv", Log: testLog(),
		BarrierTimeout: 5 * time.Second, Membership: mem})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	t.Cleanup(func() { eng.Close() }) // after serving stops
	e.addr, _ = testutil.Serve(t, srv, nil)
	e.c = e.client(t, wire.ClientID{1}, "node-1")
	return e
}

func (e *e2e) client(t *testing.T, id wire.ClientID, node string) *Client {
	t.Helper()
	c, err := New(ctx5(t), Config{Volume: "vol", Node: node, ID: id, Locator: StaticLocator(e.addr),
		Origin: e.origin, Store: e.store, Log: testLog(), IOTimeout: 5 * time.Second,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestE2EWithRealServer(t *testing.T) {
	e := newE2E(t)
	ctx := ctx5(t)
	o := e.c.Origin()
	if e.c.ChunkSize() != e2eChunk || o.Size() != 1<<20 {
		t.Fatalf("geometry %d %d", e.c.ChunkSize(), o.Size())
	}
	if err := o.WriteAt(fill(4*e2eChunk, 'A'), 0, true); err != nil {
		t.Fatal(err)
	}
	si, err := e.c.CreateSnapshot(ctx, "snap1", 1, false)
	if err != nil {
		t.Fatal(err)
	}
	// Chunk 1 whole, chunk 2 in part: B; chunks 0 and 3 stay shared.
	if err := o.WriteAt(fill(e2eChunk+100, 'B'), e2eChunk, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4*e2eChunk)
	if err := e.c.Snapshot(si.ID, false).ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fill(4*e2eChunk, 'A')) {
		t.Fatal("snapshot does not hold A")
	}
	if err := o.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := fill(4*e2eChunk, 'A')
	copy(want[e2eChunk:], fill(e2eChunk+100, 'B'))
	if !bytes.Equal(got, want) {
		t.Fatal("origin does not hold B")
	}

	// A second node: its writes are in the next snapshot, and it sees
	// the first one's.
	c2 := e.client(t, wire.ClientID{2}, "node-2")
	if err := c2.Origin().WriteAt(fill(100, 'C'), 3*e2eChunk, false); err != nil {
		t.Fatal(err)
	}
	s2, err := c2.CreateSnapshot(ctx, "snap2", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.WriteAt(fill(100, 'D'), 3*e2eChunk, false); err != nil { // node 1's cache was invalidated
		t.Fatal(err)
	}
	if err := e.c.Snapshot(s2.ID, true).ReadAt(got[:100], 3*e2eChunk); err != nil || !bytes.Equal(got[:100], fill(100, 'C')) {
		t.Fatalf("snap2: %v %q", err, got[:4])
	}
	if err := e.c.Snapshot(si.ID, false).ReadAt(got[:100], 3*e2eChunk); err != nil || !bytes.Equal(got[:100], fill(100, 'A')) {
		t.Fatalf("snap1 after more writes: %v", err)
	}
	// Writable snapshot.
	w := c2.Snapshot(s2.ID, true)
	if err := w.WriteAt(fill(10, 'W'), 5, true); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Snapshot(s2.ID, true).ReadAt(got[:20], 0); err != nil || !bytes.Equal(got[:20], append(append(fill(5, 'A'), fill(10, 'W')...), fill(5, 'A')...)) {
		t.Fatalf("writable snapshot: %v %q", err, got[:20])
	}
	// Unmap on the origin keeps the snapshot.
	if err := o.Unmap(0, 2*e2eChunk+10); err != nil {
		t.Fatal(err)
	}
	if err := o.ReadAt(got[:2*e2eChunk+20], 0); err != nil || !bytes.Equal(got[:2*e2eChunk+10], make([]byte, 2*e2eChunk+10)) || got[2*e2eChunk+10] != 'B' {
		t.Fatalf("origin after unmap: %v", err)
	}
	if err := e.c.Snapshot(si.ID, false).ReadAt(got, 0); err != nil || !bytes.Equal(got, fill(4*e2eChunk, 'A')) {
		t.Fatalf("snapshot after origin unmap: %v", err)
	}

	// Admin.
	list, err := e.c.Snapshots(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "snap1" || !list[1].Writable {
		t.Fatalf("list %+v %v", list, err)
	}
	if err := e.c.SetPriority(ctx, "snap1", 9); err != nil {
		t.Fatal(err)
	}
	st, err := e.c.Status(ctx)
	if err != nil || st.Term != 1 || st.Volume != "vol" || len(st.Clients) != 2 {
		t.Fatalf("status %+v %v", st, err)
	}
	ck, err := e.c.Check(ctx)
	if err != nil || !ck.Clean() {
		t.Fatalf("check %+v %v", ck, err)
	}
	if err := e.c.DeleteSnapshot(ctx, "snap1"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Snapshot(si.ID, false).ReadAt(got[:10], 0); !errors.Is(err, ErrSnapshotGone) {
		t.Fatalf("deleted snapshot read: %v", err)
	}
	if _, err := e.c.CreateSnapshot(ctx, "snap2", 0, false); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate create: %v", err)
	}
}

// cuttableClient is client 3 on node-3 over origin: every connection it
// makes is sent on conns (for the test to cut), and every connection after
// the first waits until redial is closed.
func (e *e2e) cuttableClient(t *testing.T, origin Device, redial <-chan struct{}) (*Client, <-chan net.Conn) {
	t.Helper()
	conns := make(chan net.Conn, 10)
	dials := 0
	c, err := New(ctx5(t), Config{Volume: "vol", Node: "node-3", ID: wire.ClientID{3}, Locator: StaticLocator(e.addr),
		Origin: origin, Store: e.store, Log: testLog(), IOTimeout: 5 * time.Second, MinBackoff: 5 * time.Millisecond,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			if dials++; dials > 1 {
				<-redial
			}
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if err == nil {
				conns <- nc
			}
			return nc, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	return c, conns
}

func TestE2EPointInTime(t *testing.T) {
	e := newE2E(t)
	runPointInTime(t, e.c, e2eChunk)
}

// hookDev calls beforeRead before every read of the wrapped device.
type hookDev struct {
	Device
	beforeRead func(off int64)
}

func (d hookDev) ReadAt(p []byte, off int64) (int, error) {
	d.beforeRead(off)
	return d.Device.ReadAt(p, off)
}

// TestE2EConnectionCut cuts the client's connection while a snapshot read
// holds a read lock and is reading the origin, has another node overwrite
// that chunk, and checks the read still returns the snapshot's data and IO
// goes on over the new connection.
func TestE2EConnectionCut(t *testing.T) {
	e := newE2E(t)
	ctx := ctx5(t)
	if err := e.c.Origin().WriteAt(fill(2*e2eChunk, 'A'), 0, false); err != nil {
		t.Fatal(err)
	}
	si, err := e.c.CreateSnapshot(ctx, "s", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	first := true
	redial := make(chan struct{}) // reconnect only once the chunk was overwritten
	c3, conns := e.cuttableClient(t, hookDev{e.origin, func(off int64) {
		if off == 0 && first {
			first = false
			close(entered)
			<-release
		}
	}}, redial)
	defer c3.Close()
	nc := <-conns
	errc := make(chan error, 1)
	buf := make([]byte, e2eChunk)
	go func() { errc <- c3.Snapshot(si.ID, false).ReadAt(buf, 0) }()
	<-entered
	// The server may release the lock with the connection (then the write
	// goes through at once, and the read got data it must not trust) or
	// keep it for a grace period (then the write waits for the reconnected
	// client's FINISH). Either way the read must return the snapshot's data.
	nc.Close()
	werr := make(chan error, 1)
	go func() { werr <- e.c.Origin().WriteAt(fill(e2eChunk, 'C'), 0, false) }()
	select {
	case err := <-werr:
		werr <- err
	case <-time.After(300 * time.Millisecond):
	}
	close(redial)
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, fill(e2eChunk, 'A')) {
		t.Fatalf("snapshot read across a cut connection returned %q...", buf[:4])
	}
	select {
	case <-conns:
	case <-time.After(5 * time.Second):
		t.Fatal("no reconnection")
	}
	if err := c3.Origin().WriteAt(fill(10, 'E'), e2eChunk, false); err != nil {
		t.Fatal(err)
	}
	if err := c3.Snapshot(si.ID, false).ReadAt(buf, e2eChunk); err != nil || !bytes.Equal(buf, fill(e2eChunk, 'A')) {
		t.Fatalf("after reconnect: %v", err)
	}
}

// TestE2EStruckOffReaderReadsAgain: a client is frozen (as by SIGSTOP)
// while a snapshot read holds a read lock and has not read the origin
// yet, and struck off (its node left); another node overwrites the
// chunk. The server keeps the lock until it is wire.LockLease old, so
// the write lands no earlier. The client resumes: the read finishes
// before the client has noticed its connection is gone, but later than
// wire.LockTrust after it asked, so the client reads again and returns
// the snapshot's data, not the write's. (Before the lease, the write was
// approved at once and the resumed read returned its data.)
func TestE2EStruckOffReaderReadsAgain(t *testing.T) {
	var left atomic.Bool // node-3 has left the cluster
	e := newE2EWith(t, server.MembershipFunc(func(node string) bool { return node != "node-3" || !left.Load() }))
	ctx := ctx5(t)
	if err := e.c.Origin().WriteAt(fill(e2eChunk, 'A'), 0, false); err != nil {
		t.Fatal(err)
	}
	si, err := e.c.CreateSnapshot(ctx, "s", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	// The frozen client: its origin read waits for release, and what its
	// first connection reads (the server closing it) reaches it only
	// after thaw.
	entered, release, thaw := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var frozen atomic.Bool
	first, dials := true, 0
	c3, err := New(ctx, Config{Volume: "vol", Node: "node-3", ID: wire.ClientID{3}, Locator: StaticLocator(e.addr),
		Origin: hookDev{e.origin, func(off int64) {
			if off == 0 && first {
				first = false
				close(entered)
				<-release
			}
		}}, Store: e.store, Log: testLog(), IOTimeout: 10 * time.Second,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if dials++; err == nil && dials == 1 {
				nc = frozenConn{nc, &frozen, thaw}
			}
			return nc, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	buf := make([]byte, e2eChunk)
	errc := make(chan error, 1)
	asked := time.Now() // before the lock was granted
	go func() { errc <- c3.Snapshot(si.ID, false).ReadAt(buf, 0) }()
	<-entered
	frozen.Store(true)
	left.Store(true)
	e.srv.NodeLeft("node-3")
	werr := make(chan error, 1)
	go func() { werr <- e.c.Origin().WriteAt(fill(e2eChunk, 'C'), 0, false) }()
	select {
	case err := <-werr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wire.LockLease + 3*time.Second):
		t.Fatal("the origin write still waits for the struck-off client's lock")
	}
	if d := time.Since(asked); d < wire.LockLease {
		t.Fatalf("the origin write landed %v after the read lock was asked for, within the lock lease (%v)", d, wire.LockLease)
	}
	// Resume: the read finishes and releases its lock, then the client
	// learns its connection is gone, and its node is back.
	close(release)
	eventually(t, "the read lock released", func() bool {
		c3.mu.Lock()
		defer c3.mu.Unlock()
		return c3.held.readCount() == 0
	})
	close(thaw)
	left.Store(false)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, fill(e2eChunk, 'A')) {
		t.Fatalf("a snapshot read resumed after its client was struck off returned %q..., want the snapshot's 'A'", buf[:4])
	}
}

// frozenConn holds back what it reads while frozen is set, until thaw.
type frozenConn struct {
	net.Conn
	frozen *atomic.Bool
	thaw   <-chan struct{}
}

func (c frozenConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.frozen.Load() {
		<-c.thaw
	}
	return n, err
}

// writeHookDev calls beforeWrite before every write of the wrapped device.
type writeHookDev struct {
	Device
	beforeWrite func(off int64)
}

func (d writeHookDev) WriteAt(p []byte, off int64) (int, error) {
	d.beforeWrite(off)
	return d.Device.WriteAt(p, off)
}

// TestE2EBarrierAwaitsCutWriter: a client has an approved origin write in
// flight when its connection is cut; a snapshot created meanwhile must not
// count as taken until that write has landed (else the write would change
// the snapshot after its create returned). The client comes back, drains
// the write, acks, and only then does the create return; the snapshot
// keeps its content afterwards.
func TestE2EBarrierAwaitsCutWriter(t *testing.T) {
	e := newE2E(t)
	ctx := ctx5(t)
	if err := e.c.Origin().WriteAt(fill(e2eChunk, 'A'), 0, false); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	first := true
	redial := make(chan struct{})
	c3, conns := e.cuttableClient(t, writeHookDev{e.origin, func(off int64) {
		if off == 0 && first {
			first = false
			close(entered)
			<-release
		}
	}}, redial)
	defer c3.Close()
	var releaseOnce, redialOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	reconnect := func() { redialOnce.Do(func() { close(redial) }) }
	defer func() { reconnect(); unblock() }() // on failure too, before c3.Close
	nc := <-conns
	werr := make(chan error, 1)
	go func() { werr <- c3.Origin().WriteAt(fill(e2eChunk, 'B'), 0, false) }()
	<-entered // approved, now writing the origin
	nc.Close()
	var landed time.Time
	created := make(chan time.Time, 1)
	var si SnapshotInfo
	go func() {
		var err error
		if si, err = e.c.CreateSnapshot(ctx, "s", 0, false); err != nil {
			t.Error(err)
		}
		created <- time.Now()
	}()
	select {
	case <-created:
		t.Fatal("snapshot created while a disconnected client's approved write was in flight")
	case <-time.After(300 * time.Millisecond):
	}
	reconnect() // back, but its write is still in flight
	select {
	case <-created:
		t.Fatal("snapshot created before the reconnected client's approved write completed")
	case <-time.After(300 * time.Millisecond):
	}
	landed = time.Now()
	unblock()
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	var at time.Time
	select {
	case at = <-created:
	case <-time.After(5 * time.Second):
		t.Fatal("create did not return")
	}
	if at.Before(landed) {
		t.Fatalf("create returned at %v, before the write was released at %v", at, landed)
	}
	buf := make([]byte, e2eChunk)
	if err := e.c.Snapshot(si.ID, false).ReadAt(buf, 0); err != nil || !bytes.Equal(buf, fill(e2eChunk, 'B')) {
		t.Fatalf("snapshot reads %q... (%v), want the write that landed before create returned", buf[:4], err)
	}
	if err := e.c.Origin().WriteAt(fill(e2eChunk, 'C'), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Snapshot(si.ID, false).ReadAt(buf, 0); err != nil || !bytes.Equal(buf, fill(e2eChunk, 'B')) {
		t.Fatalf("snapshot changed after its create returned: %q... (%v)", buf[:4], err)
	}
}

// TestE2EOriginUnique: while the volume has no snapshot, one ORIGIN_WRITE
// tells the client so (ORIGIN_UNIQUE) and first writes of other chunks
// ask nothing; with a snapshot every first write asks again and is copied
// out; once it is deleted, one more question restores the fast path.
func TestE2EOriginUnique(t *testing.T) {
	e := newE2E(t)
	ctx := ctx5(t)
	c, f := e.countedClient(t, 4, e.store, nil)
	o := c.Origin()
	write := func(chunk int64, b byte) {
		t.Helper()
		if err := o.WriteAt(fill(e2eChunk, b), chunk*e2eChunk, false); err != nil {
			t.Fatal(err)
		}
	}
	wantAsked := func(n int64, what string) {
		t.Helper()
		if got := int64(f.count(wire.TypeOriginWrite)); got != n {
			t.Fatalf("%s: %d ORIGIN_WRITE queries, want %d", what, got, n)
		}
	}
	write(0, 'A')
	wantAsked(1, "first write")
	for ch := int64(1); ch < 20; ch++ {
		write(ch, 'A')
	}
	wantAsked(1, "first writes of 19 more chunks without a snapshot")

	si, err := c.CreateSnapshot(ctx, "s1", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	write(5, 'B')
	write(6, 'B')
	wantAsked(3, "first writes after a snapshot")
	write(5, 'C')
	wantAsked(3, "rewrite of a copied-out chunk")
	got := make([]byte, 3*e2eChunk)
	if err := c.Snapshot(si.ID, false).ReadAt(got, 5*e2eChunk); err != nil || !bytes.Equal(got, fill(3*e2eChunk, 'A')) {
		t.Fatalf("snapshot reads %q... (%v), want A", got[:4], err)
	}

	if err := c.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	write(7, 'D')
	wantAsked(4, "first write after the delete")
	write(8, 'D')
	write(9, 'D')
	wantAsked(4, "first writes with no snapshot left")
	if err := o.ReadAt(got, 7*e2eChunk); err != nil || !bytes.Equal(got, fill(3*e2eChunk, 'D')) {
		t.Fatalf("origin reads %q... (%v), want D", got[:4], err)
	}

	// Another client's snapshot turns the fast path off here too.
	if _, err := e.c.CreateSnapshot(ctx, "s2", 0, false); err != nil {
		t.Fatal(err)
	}
	write(10, 'E')
	wantAsked(5, "first write after another node's snapshot")
}
