package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/snapstore/wire"
)

// frameCounter counts the frames of each type a client sends.
type frameCounter struct {
	mu     sync.Mutex
	counts map[wire.MsgType]int
	conns  chan net.Conn
}

func (f *frameCounter) count(t wire.MsgType) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[t]
}

type countingConn struct {
	net.Conn
	f   *frameCounter
	buf []byte
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.buf = append(c.buf, p...)
	c.f.mu.Lock()
	for len(c.buf) >= wire.HeaderSize {
		n := wire.HeaderSize + int(binary.BigEndian.Uint32(c.buf[12:16]))
		if len(c.buf) < n {
			break
		}
		c.f.counts[wire.MsgType(c.buf[3])]++
		c.buf = c.buf[n:]
	}
	c.f.mu.Unlock()
	return c.Conn.Write(p)
}

// countedClient is a client whose frames are counted and whose connections
// are handed to the test (to cut), with mod applied to its config.
func (e *e2e) countedClient(t *testing.T, id byte, store Device, mod func(*Config)) (*Client, *frameCounter) {
	t.Helper()
	f := &frameCounter{counts: map[wire.MsgType]int{}, conns: make(chan net.Conn, 10)}
	cfg := Config{Volume: "vol", Node: "node-c", ID: wire.ClientID{id}, Locator: StaticLocator(e.addr),
		Origin: e.origin, Store: store, Log: testLog(), IOTimeout: 5 * time.Second, MinBackoff: 5 * time.Millisecond,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			f.conns <- nc
			return &countingConn{Conn: nc, f: f}, nil
		}}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(ctx5(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, f
}

// snapOfA: the origin holds A, snapshot "a" is taken, the origin is
// overwritten with X, so every chunk of "a" lives in the store.
// cachedPass sets up the usual location-cache case: a snapshot of pattern
// A, a counted client without read-ahead, and one pass over the first four
// chunks of the snapshot (which fills the cache).
func (e *e2e) cachedPass(t *testing.T) (*Client, *frameCounter, *Volume) {
	t.Helper()
	snap := e.snapOfA(t)
	c, f := e.countedClient(t, 5, e.store, func(cfg *Config) { cfg.LocationReadahead = -1 })
	v := c.Snapshot(snap, false)
	readPass(t, v, 4*e2eChunk, 'A')
	return c, f, v
}

func (e *e2e) snapOfA(t *testing.T) uint32 {
	t.Helper()
	o := e.c.Origin()
	size := int(o.Size())
	if err := o.WriteAt(fill(size, 'A'), 0, true); err != nil {
		t.Fatal(err)
	}
	si, err := e.c.CreateSnapshot(ctx5(t), "a", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.WriteAt(fill(size, 'X'), 0, true); err != nil {
		t.Fatal(err)
	}
	return si.ID
}

// readPass reads the whole snapshot in reads of n bytes and checks it is
// all b.
func readPass(t *testing.T, v *Volume, n int, b byte) {
	t.Helper()
	buf := make([]byte, n)
	for off := int64(0); off < v.Size(); off += int64(n) {
		if err := v.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, fill(n, b)) {
			t.Fatalf("at %d: %q..., want %c", off, buf[:4], b)
		}
	}
}

// settle waits for background read-aheads.
func settle(t *testing.T, c *Client) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		n := len(c.raWin)
		c.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("read-ahead does not end")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestE2ELocationCacheHits(t *testing.T) {
	e := newE2E(t)
	c, f, v := e.cachedPass(t)
	first := f.count(wire.TypeSnapshotRead)
	if first == 0 {
		t.Fatal("first pass sent no SNAPSHOT_READ")
	}
	readPass(t, v, 4*e2eChunk, 'A')
	if n := f.count(wire.TypeSnapshotRead); n != first {
		t.Fatalf("second pass sent %d SNAPSHOT_READs", n-first)
	}
	st := c.LocationCacheStats()
	chunks := int(v.Size() / e2eChunk)
	if st.Hits != uint64(first) || st.Misses != uint64(first) || st.Entries != chunks || st.Bytes == 0 {
		t.Fatalf("stats %+v, want %d hits and misses, %d entries", st, first, chunks)
	}
	// A writable snapshot and the origin never use the cache.
	w, err := c.CreateSnapshot(ctx5(t), "w", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	readPass(t, c.Snapshot(w.ID, true), 4*e2eChunk, 'X')
	before := f.count(wire.TypeSnapshotRead)
	readPass(t, c.Snapshot(w.ID, true), 4*e2eChunk, 'X')
	if f.count(wire.TypeSnapshotRead) == before {
		t.Fatal("a writable snapshot was read from the cache")
	}
}

func TestE2ELocationReadahead(t *testing.T) {
	e := newE2E(t)
	snap := e.snapOfA(t)
	c, f := e.countedClient(t, 5, e.store, func(cfg *Config) { cfg.LocationReadahead = 32 * e2eChunk })
	v := c.Snapshot(snap, false)
	buf := make([]byte, 2*e2eChunk)
	reads := 0
	for off := int64(0); off < v.Size(); off += int64(len(buf)) {
		if err := v.ReadAt(buf, off); err != nil || !bytes.Equal(buf, fill(len(buf), 'A')) {
			t.Fatalf("at %d: %v", off, err)
		}
		reads++
		settle(t, c) // a sequential reader slower than a round trip
	}
	st := c.LocationCacheStats()
	if st.Misses > 2 || st.Hits < uint64(reads-2) {
		t.Fatalf("one pass of %d reads: %+v, want mostly hits", reads, st)
	}
	if n := f.count(wire.TypeSnapshotRead); n > reads/4 {
		t.Fatalf("%d SNAPSHOT_READs for %d reads", n, reads)
	}
	if f.count(wire.TypeFinishSnapshotRead) != 0 {
		t.Fatal("read locks on store-only chunks")
	}
}

// TestE2EReclaimedLocationsNotReused: a deleted snapshot's locations are
// dropped before its space is reused: after the reuse the client reads
// nothing of the store for it and reports it gone.
func TestE2EReclaimedLocationsNotReused(t *testing.T) {
	e := newE2E(t)
	snap := e.snapOfA(t)
	var storeReads atomic.Int64
	store := hookDev{Device: e.store, beforeRead: func(int64) { storeReads.Add(1) }}
	c, f := e.countedClient(t, 5, store, nil)
	v := c.Snapshot(snap, false)
	readPass(t, v, 4*e2eChunk, 'A')
	readPass(t, v, 4*e2eChunk, 'A')
	if c.LocationCacheStats().Entries == 0 {
		t.Fatal("nothing cached")
	}
	if err := e.c.DeleteSnapshotID(ctx5(t), snap); err != nil {
		t.Fatal(err)
	}
	if err := e.eng.Reclaim(ctx5(t)); err != nil {
		t.Fatal(err)
	}
	if st := c.LocationCacheStats(); st.Entries != 0 {
		t.Fatalf("locations left after the reclaim: %+v", st)
	}
	// Reuse the space: a new snapshot, and the origin overwritten again
	// copies X out into the chunks "a" had.
	if _, err := e.c.CreateSnapshot(ctx5(t), "b", 0, false); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Origin().WriteAt(fill(int(v.Size()), 'Y'), 0, true); err != nil {
		t.Fatal(err)
	}
	settle(t, c)
	storeReads.Store(0)
	err := v.ReadAt(make([]byte, e2eChunk), 0)
	if !errors.Is(err, ErrSnapshotGone) {
		t.Fatalf("read of the reclaimed snapshot: %v", err)
	}
	if n := storeReads.Load(); n != 0 {
		t.Fatalf("%d store reads for a reclaimed snapshot", n)
	}
	if f.count(wire.TypeReclaimOK) == 0 {
		t.Fatal("no RECLAIM_OK sent")
	}
}

// blockingDev blocks reads while armed.
type blockingDev struct {
	Device
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (d *blockingDev) ReadAt(p []byte, off int64) (int, error) {
	if d.armed.CompareAndSwap(true, false) {
		d.entered <- struct{}{}
		<-d.release
	}
	return d.Device.ReadAt(p, off)
}

// blockedCachedRead reads snapshot snap once through a counted client
// (config changed by mod) to fill its location cache, then starts a read
// of its first chunk that hits the cache and blocks in the store read
// until store.release is closed; its result and data come in readDone and
// buf.
func (e *e2e) blockedCachedRead(t *testing.T, snap uint32, mod func(*Config)) (f *frameCounter, v *Volume, store *blockingDev, readDone chan error, buf []byte) {
	t.Helper()
	store = &blockingDev{Device: e.store, entered: make(chan struct{}, 1), release: make(chan struct{})}
	c, f := e.countedClient(t, 5, store, mod)
	v = c.Snapshot(snap, false)
	readPass(t, v, 4*e2eChunk, 'A')
	sent := f.count(wire.TypeSnapshotRead)
	store.armed.Store(true)
	readDone, buf = make(chan error, 1), make([]byte, e2eChunk)
	go func() { readDone <- v.ReadAt(buf, 0) }()
	<-store.entered
	if f.count(wire.TypeSnapshotRead) != sent {
		t.Fatal("the blocked read was not a cache hit")
	}
	return f, v, store, readDone, buf
}

// TestE2EDeleteWaitsForInFlightRead: the delete returns at once, the
// reclamation waits for a cached read in flight.
func TestE2EDeleteWaitsForInFlightRead(t *testing.T) {
	e := newE2E(t)
	snap := e.snapOfA(t)
	_, v, store, readDone, buf := e.blockedCachedRead(t, snap, nil)
	if err := e.c.DeleteSnapshotID(ctx5(t), snap); err != nil { // does not wait
		t.Fatal(err)
	}
	reclaimed := make(chan error, 1)
	go func() { reclaimed <- e.eng.Reclaim(context.Background()) }()
	select {
	case err := <-reclaimed:
		t.Fatalf("reclaimed (%v) while a read of the snapshot was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(store.release)
	if err := <-readDone; err != nil || !bytes.Equal(buf, fill(e2eChunk, 'A')) {
		t.Fatalf("the read in flight: %v", err)
	}
	select {
	case err := <-reclaimed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reclamation did not finish after the read")
	}
	if err := v.ReadAt(buf, 0); !errors.Is(err, ErrSnapshotGone) {
		t.Fatalf("after reclaim: %v", err)
	}
}

func TestE2EReconnectDropsLocationCache(t *testing.T) {
	e := newE2E(t)
	c, f, v := e.cachedPass(t)
	if c.LocationCacheStats().Entries == 0 {
		t.Fatal("nothing cached")
	}
	(<-f.conns).Close()
	nc := <-f.conns // the new connection
	_ = nc
	if st := c.LocationCacheStats(); st.Entries != 0 {
		t.Fatalf("cache kept across a reconnect: %+v", st)
	}
	eventually(t, "reconnected", func() bool { ok, _ := c.Connected(); return ok })
	sent := f.count(wire.TypeSnapshotRead)
	readPass(t, v, 4*e2eChunk, 'A')
	if f.count(wire.TypeSnapshotRead) == sent {
		t.Fatal("read from the cache after a reconnect")
	}
}

// TestE2ELocationCacheLease: a connection silent for three ping intervals
// is not trusted with cached locations.
func TestE2ELocationCacheLease(t *testing.T) {
	e := newE2E(t)
	c, f, v := e.cachedPass(t)
	sent := f.count(wire.TypeSnapshotRead)
	c.mu.Lock()
	c.cn.lastRecv.Store(time.Now().Add(-3 * c.cfg.PingInterval).UnixNano())
	c.mu.Unlock()
	if err := v.ReadAt(make([]byte, e2eChunk), 0); err != nil {
		t.Fatal(err)
	}
	if f.count(wire.TypeSnapshotRead) != sent+1 {
		t.Fatal("cached locations used past the lease")
	}
}

// TestE2ECachedReadOutlastingLease: a read from cached locations that
// finishes after their lease (three ping intervals after the last frame
// received when it looked them up) is not trusted: the server may have
// struck this client off for not answering RECLAIM, and reused the space,
// while it was stuck (frozen) in the read. The batch is asked of the
// server again.
func TestE2ECachedReadOutlastingLease(t *testing.T) {
	e := newE2E(t)
	snap := e.snapOfA(t)
	const ping = 50 * time.Millisecond
	f, _, store, readDone, buf := e.blockedCachedRead(t, snap, func(cfg *Config) { cfg.LocationReadahead, cfg.PingInterval = -1, ping })
	sent := f.count(wire.TypeSnapshotRead)
	time.Sleep(4 * ping) // past the lease the lookup had
	close(store.release)
	if err := <-readDone; err != nil || !bytes.Equal(buf, fill(e2eChunk, 'A')) {
		t.Fatalf("the read: %v", err)
	}
	if got := f.count(wire.TypeSnapshotRead); got != sent+1 {
		t.Fatalf("%d SNAPSHOT_READs after a cached read outlasted its lease, want 1 (asked again)", got-sent)
	}
}

// TestE2EVersion2Client: a client speaking version 2 is served by the new
// server, caches nothing, and a reclamation does not wait for it.
func TestE2EVersion2Client(t *testing.T) {
	e := newE2E(t)
	snap := e.snapOfA(t)
	c, f := e.countedClient(t, 5, e.store, func(cfg *Config) { cfg.maxVersion = wire.VersionShared })
	v := c.Snapshot(snap, false)
	readPass(t, v, 4*e2eChunk, 'A')
	sent := f.count(wire.TypeSnapshotRead)
	readPass(t, v, 4*e2eChunk, 'A')
	if f.count(wire.TypeSnapshotRead) != 2*sent {
		t.Fatal("a version-2 client used a location cache")
	}
	if st := c.LocationCacheStats(); st.Entries != 0 || st.Hits != 0 {
		t.Fatalf("version-2 client cache: %+v", st)
	}
	if err := e.c.DeleteSnapshotID(ctx5(t), snap); err != nil {
		t.Fatal(err)
	}
	if err := e.eng.Reclaim(ctx5(t)); err != nil {
		t.Fatal(err)
	}
	if f.count(wire.TypeReclaimOK) != 0 {
		t.Fatal("a version-2 client answered RECLAIM")
	}
	if err := v.ReadAt(make([]byte, e2eChunk), 0); !errors.Is(err, ErrSnapshotGone) {
		t.Fatalf("after reclaim: %v", err)
	}
	if ok, _ := c.Connected(); !ok {
		t.Fatal("version-2 client disconnected")
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, what, cond)
}
