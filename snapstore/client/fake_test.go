package client

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

// memDev is an in-memory Device with test hooks.
type memDev struct {
	mu      sync.RWMutex
	buf     []byte
	punched [][2]int64
	punch   bool // implements PunchHole successfully

	hookMu    sync.Mutex
	beforeW   func(off int64, n int) // called before a write, outside the lock
	beforeR   func(off int64, n int) // called before a read
	readErr   error
	flushes   int
	failPunch bool
}

func newMemDev(size int64) *memDev { return &memDev{buf: make([]byte, size), punch: true} }

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	m.hookMu.Lock()
	err, h := m.readErr, m.beforeR
	m.hookMu.Unlock()
	if h != nil {
		h(off, len(p))
	}
	if err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off > int64(len(m.buf)) {
		return 0, io.EOF
	}
	n := copy(p, m.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	m.hookMu.Lock()
	h := m.beforeW
	m.hookMu.Unlock()
	if h != nil {
		h(off, len(p))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.buf)) {
		return 0, fmt.Errorf("memdev: write [%d,+%d) beyond %d", off, len(p), len(m.buf))
	}
	return copy(m.buf[off:], p), nil
}

func (m *memDev) Flush() error {
	m.hookMu.Lock()
	m.flushes++
	m.hookMu.Unlock()
	return nil
}

func (m *memDev) Size() (int64, error) { return int64(len(m.buf)), nil }

func (m *memDev) PunchHole(off, n int64) error {
	m.hookMu.Lock()
	fail := m.failPunch
	m.hookMu.Unlock()
	if fail {
		return errors.New("punch not supported")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.buf[off : off+n])
	m.punched = append(m.punched, [2]int64{off, n})
	return nil
}

func (m *memDev) setBeforeWrite(f func(off int64, n int)) {
	m.hookMu.Lock()
	m.beforeW = f
	m.hookMu.Unlock()
}

func (m *memDev) setBeforeRead(f func(off int64, n int)) {
	m.hookMu.Lock()
	m.beforeR = f
	m.hookMu.Unlock()
}

func (m *memDev) setReadErr(err error) {
	m.hookMu.Lock()
	m.readErr = err
	m.hookMu.Unlock()
}

func (m *memDev) bytes(off, n int64) []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return bytes.Clone(m.buf[off : off+n])
}

// rec is one message the fake server received.
type rec struct {
	conn int // connection number, from 1
	id   uint64
	m    wire.Message
}

// fakeSnap is a snapshot of the fake server: the chunks copied out for it
// (chunk -> store offset); the others are still on the origin.
type fakeSnap struct {
	entry   wire.SnapshotEntry
	chunks  map[uint64]uint64
	private map[uint64]bool
}

// fakeServer speaks wire over loopback TCP and behaves like a (simple,
// unoptimised) snapshot server over the test's in-memory devices: copy-out
// per snapshot, read locks honoured by origin writes, the INVALIDATE
// barrier on create. Hooks let a test script anything else.
type fakeServer struct {
	t      *testing.T
	ln     net.Listener
	origin *memDev
	store  *memDev
	cs     int64
	size   int64

	mu        sync.Mutex
	closed    bool
	term      uint64
	gen       uint64
	nconn     int
	conns     map[int]*fakeConn
	snaps     map[uint32]*fakeSnap
	nextSnap  uint32
	nextStore int64
	hold      bool                   // approvals held (barrier running)
	locks     map[[2]uint64][]uint64 // (conn, handle) -> chunks
	maxIn     uint32
	maxLocks  uint32
	reject    *wire.HelloReject
	pageSize  int
	nextID    uint64

	// hook, if set, sees every message first; true means handled.
	hook func(fc *fakeConn, id uint64, m wire.Message) bool

	recv chan rec
	wg   sync.WaitGroup
}

type fakeConn struct {
	s    *fakeServer
	n    int
	nc   net.Conn
	w    *wire.Writer
	acks map[uint64]chan struct{}
	mu   sync.Mutex
	out  int // requests of the client outstanding
	peak int
}

func newFakeServer(t *testing.T, origin, store *memDev, cs int64) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	size, _ := origin.Size()
	s := &fakeServer{t: t, ln: ln, origin: origin, store: store, cs: cs, size: size,
		term: 7, gen: 1, conns: map[int]*fakeConn{}, snaps: map[uint32]*fakeSnap{},
		nextSnap: 1, locks: map[[2]uint64][]uint64{}, maxIn: 64, maxLocks: 64, pageSize: 2,
		recv: make(chan rec, 100000)}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

func (s *fakeServer) close() {
	s.mu.Lock()
	s.closed = true
	for _, fc := range s.conns {
		fc.nc.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	s.wg.Wait()
}

// dropAll closes every connection (the listener stays).
func (s *fakeServer) dropAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fc := range s.conns {
		fc.nc.Close()
	}
}

func (s *fakeServer) setHook(h func(fc *fakeConn, id uint64, m wire.Message) bool) {
	s.mu.Lock()
	s.hook = h
	s.mu.Unlock()
}

func (s *fakeServer) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.nconn++
		fc := &fakeConn{s: s, n: s.nconn, nc: nc, w: wire.NewWriter(nc), acks: map[uint64]chan struct{}{}}
		s.conns[fc.n] = fc
		s.mu.Unlock()
		s.wg.Add(1)
		go fc.serve()
	}
}

// reply answers a request of the client's.
func (fc *fakeConn) reply(id uint64, m wire.Message) {
	fc.mu.Lock()
	fc.out--
	fc.mu.Unlock()
	_ = fc.w.Write(id, m)
}

func (fc *fakeConn) serve() {
	s := fc.s
	defer s.wg.Done()
	defer func() {
		fc.nc.Close()
		s.mu.Lock()
		delete(s.conns, fc.n)
		for k := range s.locks { // locks die with the connection
			if k[0] == uint64(fc.n) {
				delete(s.locks, k)
			}
		}
		for _, ch := range fc.acks {
			close(ch)
		}
		fc.acks = map[uint64]chan struct{}{}
		s.mu.Unlock()
	}()
	rd := wire.NewReader(fc.nc)
	for {
		id, m, err := rd.Read()
		if err != nil {
			return
		}
		s.recv <- rec{fc.n, id, m}
		if m.Type().Kind() == wire.KindRequest {
			fc.mu.Lock()
			fc.out++
			fc.peak = max(fc.peak, fc.out)
			fc.mu.Unlock()
		}
		s.mu.Lock()
		h := s.hook
		s.mu.Unlock()
		if h != nil && h(fc, id, m) {
			continue
		}
		fc.handle(id, m)
	}
}

func (fc *fakeConn) handle(id uint64, m wire.Message) {
	s := fc.s
	switch m := m.(type) {
	case *wire.Hello:
		s.mu.Lock()
		rej := s.reject
		ok := &wire.HelloOK{Version: 1, Term: s.term, Node: "srv", ChunkSize: uint32(s.cs), VolumeSize: uint64(s.size),
			Generation: s.gen, MaxInFlight: s.maxIn, MaxLocks: s.maxLocks}
		s.mu.Unlock()
		if rej != nil {
			fc.reply(id, rej)
			fc.nc.Close()
			return
		}
		fc.reply(id, ok)
	case *wire.UploadLocks:
		s.mu.Lock()
		for _, l := range m.Locks {
			var cs []uint64
			for _, r := range l.Ranges {
				for i := uint64(0); i < uint64(r.Count); i++ {
					cs = append(cs, r.Start+i)
				}
			}
			s.locks[[2]uint64{uint64(fc.n), l.Handle}] = cs
		}
		s.mu.Unlock()
	case *wire.UploadDone:
		fc.reply(id, &wire.OK{})
	case *wire.Ping:
		fc.reply(id, &wire.Pong{})
	case *wire.OriginWrite:
		s.wg.Add(1)
		go func() { defer s.wg.Done(); fc.originWrite(id, m) }()
	case *wire.SnapshotRead:
		fc.reply(id, s.snapshotRead(fc, id, m))
	case *wire.FinishSnapshotRead:
		s.mu.Lock()
		delete(s.locks, [2]uint64{uint64(fc.n), m.Handle})
		s.mu.Unlock()
	case *wire.SnapshotWrite:
		fc.reply(id, s.snapshotWrite(m))
	case *wire.InvalidateAck:
		s.mu.Lock()
		if ch, ok := fc.acks[id]; ok {
			close(ch)
			delete(fc.acks, id)
		}
		s.mu.Unlock()
	case *wire.CreateSnapshot:
		s.wg.Add(1)
		go func() { defer s.wg.Done(); fc.reply(id, s.create(m)) }()
	case *wire.DeleteSnapshot:
		s.mu.Lock()
		sn := s.snaps[m.Snapshot.ID]
		for _, x := range s.snaps {
			if m.Snapshot.Name != "" && x.entry.Name == m.Snapshot.Name {
				sn = x
			}
		}
		if sn == nil {
			s.mu.Unlock()
			fc.reply(id, &wire.Error{Code: wire.CodeNoSuchSnapshot, Message: "no such snapshot"})
			return
		}
		delete(s.snaps, sn.entry.ID)
		s.mu.Unlock()
		fc.reply(id, &wire.OK{})
	case *wire.SetPriority:
		s.mu.Lock()
		var sn *fakeSnap
		for _, x := range s.snaps {
			if x.entry.Name == m.Snapshot.Name {
				sn = x
			}
		}
		if sn != nil {
			sn.entry.Priority = m.Priority
		}
		s.mu.Unlock()
		if sn == nil {
			fc.reply(id, &wire.Error{Code: wire.CodeNoSuchSnapshot, Message: "no such snapshot"})
			return
		}
		fc.reply(id, &wire.OK{})
	case *wire.ListSnapshots:
		s.mu.Lock()
		var ids []uint32
		for i := range s.snaps {
			if i > m.After {
				ids = append(ids, i)
			}
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		l := &wire.SnapshotList{}
		for _, i := range ids {
			if len(l.Entries) == min(s.pageSize, int(m.Max)) {
				l.More = true
				break
			}
			l.Entries = append(l.Entries, s.snaps[i].entry)
		}
		s.mu.Unlock()
		fc.reply(id, l)
	case *wire.Status:
		s.mu.Lock()
		st := &wire.StatusOK{Term: s.term, Since: 12345, Node: "srv", Volume: "vol", Generation: s.gen}
		s.mu.Unlock()
		fc.reply(id, st)
	case *wire.Check:
		fc.reply(id, &wire.CheckOK{Problems: []string{"leaf 3: bad"}, Omitted: 2})
	default:
		if m.Type().Kind() == wire.KindRequest {
			fc.reply(id, &wire.Error{Code: wire.CodeUnsupported, Message: "fake: unsupported"})
		}
	}
}

// originWrite copies the chunks out for every snapshot that still shares
// them, waits for read locks on them to drain, and approves.
func (fc *fakeConn) originWrite(id uint64, m *wire.OriginWrite) {
	s := fc.s
	var chunks []uint64
	for _, r := range m.Ranges {
		for i := uint64(0); i < uint64(r.Count); i++ {
			chunks = append(chunks, r.Start+i)
		}
	}
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		if !s.hold && !s.lockedLocked(chunks) {
			break
		}
		s.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	for _, ch := range chunks {
		for _, sn := range s.snaps {
			if _, ok := sn.chunks[ch]; !ok {
				sn.chunks[ch] = s.copyOutLocked(ch)
			}
		}
	}
	gen := s.gen
	s.mu.Unlock()
	fc.reply(id, &wire.OriginWriteOK{Generation: gen})
}

// foreignWrite is another client's origin write approved by a server that
// ignores read locks (as one that dropped them with a connection would).
func (s *fakeServer) foreignWrite(ch uint64, b byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sn := range s.snaps {
		if _, ok := sn.chunks[ch]; !ok {
			sn.chunks[ch] = s.copyOutLocked(ch)
		}
	}
	s.origin.mu.Lock()
	copy(s.origin.buf[int64(ch)*s.cs:], bytes.Repeat([]byte{b}, int(s.cs)))
	s.origin.mu.Unlock()
}

func (s *fakeServer) lockedLocked(chunks []uint64) bool {
	for _, held := range s.locks {
		for _, a := range held {
			for _, b := range chunks {
				if a == b {
					return true
				}
			}
		}
	}
	return false
}

func (s *fakeServer) copyOutLocked(ch uint64) uint64 {
	off := s.nextStore
	s.nextStore += s.cs
	buf := s.origin.bytes(int64(ch)*s.cs, s.cs)
	if _, err := s.store.WriteAt(buf, off); err != nil {
		panic(err)
	}
	return uint64(off)
}

func (s *fakeServer) snapshotRead(fc *fakeConn, id uint64, m *wire.SnapshotRead) wire.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := s.snaps[m.Snapshot]
	if sn == nil {
		return &wire.Error{Code: wire.CodeNoSuchSnapshot, Message: "deleted"}
	}
	if sn.entry.Dropped {
		return &wire.Error{Code: wire.CodeSnapshotDropped, Message: "dropped"}
	}
	var xs []wire.Extent
	var locked []uint64
	for _, r := range m.Ranges {
		for ch := r.Start; ch < r.Start+uint64(r.Count); ch++ {
			off, ok := sn.chunks[ch]
			n := len(xs) - 1
			switch {
			case !ok:
				locked = append(locked, ch)
				if n >= 0 && xs[n].Origin && xs[n].Start+uint64(xs[n].Count) == ch {
					xs[n].Count++
				} else {
					xs = append(xs, wire.Extent{Start: ch, Count: 1, Origin: true})
				}
			default:
				if n >= 0 && !xs[n].Origin && xs[n].Start+uint64(xs[n].Count) == ch && xs[n].StoreOffset+uint64(xs[n].Count)*uint64(s.cs) == off {
					xs[n].Count++
				} else {
					xs = append(xs, wire.Extent{Start: ch, Count: 1, StoreOffset: off})
				}
			}
		}
	}
	if len(locked) > 0 {
		s.locks[[2]uint64{uint64(fc.n), id}] = locked
	}
	return &wire.SnapshotReadOK{Extents: xs}
}

func (s *fakeServer) snapshotWrite(m *wire.SnapshotWrite) wire.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := s.snaps[m.Snapshot]
	if sn == nil {
		return &wire.Error{Code: wire.CodeNoSuchSnapshot, Message: "deleted"}
	}
	if !sn.entry.Writable {
		return &wire.Error{Code: wire.CodeNotWritable, Message: "read-only"}
	}
	var xs []wire.Extent
	for _, r := range m.Ranges {
		for ch := r.Start; ch < r.Start+uint64(r.Count); ch++ {
			if !sn.private[ch] {
				off, ok := sn.chunks[ch]
				if ok { // private copy of the shared copy
					buf := s.store.bytes(int64(off), s.cs)
					off = uint64(s.nextStore)
					s.nextStore += s.cs
					_, _ = s.store.WriteAt(buf, int64(off))
				} else {
					off = s.copyOutLocked(ch)
				}
				sn.chunks[ch] = off
				sn.private[ch] = true
			}
			xs = append(xs, wire.Extent{Start: ch, Count: 1, StoreOffset: sn.chunks[ch]})
		}
	}
	return &wire.SnapshotWriteOK{Extents: xs}
}

// create runs the barrier: hold approvals, INVALIDATE every client, wait
// for every acknowledgement, then record the snapshot.
func (s *fakeServer) create(m *wire.CreateSnapshot) wire.Message {
	s.mu.Lock()
	for _, sn := range s.snaps {
		if sn.entry.Name == m.Name {
			s.mu.Unlock()
			return &wire.Error{Code: wire.CodeExists, Message: "exists"}
		}
	}
	s.hold = true
	s.gen++
	gen := s.gen
	var waits []chan struct{}
	var targets []*fakeConn
	for _, fc := range s.conns {
		targets = append(targets, fc)
	}
	s.mu.Unlock()
	for _, fc := range targets {
		ch := fc.invalidate(gen)
		waits = append(waits, ch)
	}
	for _, ch := range waits {
		<-ch
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextSnap
	s.nextSnap++
	e := wire.SnapshotEntry{ID: id, Name: m.Name, Created: time.Now().UnixNano(), Priority: m.Priority, Writable: m.Writable}
	s.snaps[id] = &fakeSnap{entry: e, chunks: map[uint64]uint64{}, private: map[uint64]bool{}}
	s.hold = false
	return &wire.CreateSnapshotOK{Snapshot: e}
}

// invalidate sends INVALIDATE{gen}; the channel closes on its ack (or the
// connection's end).
func (fc *fakeConn) invalidate(gen uint64) chan struct{} {
	s := fc.s
	ch := make(chan struct{})
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	fc.acks[id] = ch
	s.mu.Unlock()
	if err := fc.w.Write(id, &wire.Invalidate{Generation: gen}); err != nil {
		s.mu.Lock()
		if _, ok := fc.acks[id]; ok {
			delete(fc.acks, id)
			close(ch)
		}
		s.mu.Unlock()
	}
	return ch
}

// await returns the next received message matching f, or fails the test.
func (s *fakeServer) await(t *testing.T, what string, f func(r rec) bool) rec {
	t.Helper()
	tm := time.NewTimer(5 * time.Second)
	defer tm.Stop()
	for {
		select {
		case r := <-s.recv:
			if f(r) {
				return r
			}
		case <-tm.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// drain returns the messages received so far.
func (s *fakeServer) drain() []rec {
	var out []rec
	for {
		select {
		case r := <-s.recv:
			out = append(out, r)
		default:
			return out
		}
	}
}

func isType(t wire.MsgType) func(r rec) bool {
	return func(r rec) bool { return r.m.Type() == t }
}
