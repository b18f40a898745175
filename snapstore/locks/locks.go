package locks

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
)

// ClientID identifies a client. Same shape as wire.ClientID.
type ClientID [16]byte

// Range is Count chunks from chunk Start. Same shape as wire.Range, so
// locks.Range(r) converts.
type Range struct {
	Start uint64
	Count uint32
}

func (r Range) end() uint64 { return r.Start + uint64(r.Count) }

// Key names a read lock or a parked write: the client and an id unique
// among that client's locks (respectively writes). The server uses the
// request id of the SNAPSHOT_READ that granted a lock (its handle) and the
// request id of the ORIGIN_WRITE query. Locks and writes are separate
// namespaces.
type Key struct {
	Client ClientID
	ID     uint64
}

func (k Key) String() string { return fmt.Sprintf("%x/%d", k.Client[:], k.ID) }

func compareKeys(a, b Key) int {
	if c := bytes.Compare(a.Client[:], b.Client[:]); c != 0 {
		return c
	}
	switch {
	case a.ID < b.ID:
		return -1
	case a.ID > b.ID:
		return 1
	}
	return 0
}

// Lock is a read lock as a client declares it on Upload or sees it in Held.
type Lock struct {
	ID     uint64
	Ranges []Range
}

// Limits bound what one client can make the table hold. Zero fields take
// the defaults.
type Limits struct {
	MaxLocks  int // read locks held at once; default 4096
	MaxChunks int // chunks covered by all its read locks together; default 65536
	MaxWrites int // writes parked at once; default 1024
	MaxRanges int // ranges in one lock or write; default 256
}

func (l Limits) withDefaults() Limits {
	if l.MaxLocks <= 0 {
		l.MaxLocks = 4096
	}
	if l.MaxChunks <= 0 {
		l.MaxChunks = 65536
	}
	if l.MaxWrites <= 0 {
		l.MaxWrites = 1024
	}
	if l.MaxRanges <= 0 {
		l.MaxRanges = 256
	}
	return l
}

// Errors; every error returned wraps one of them.
var (
	ErrLimit    = errors.New("client limit exceeded")
	ErrExists   = errors.New("id already in use")
	ErrNotFound = errors.New("no such lock")
	ErrBadRange = errors.New("invalid ranges")
)

type lock struct {
	key     Key
	ranges  []Range
	chunks  int
	waiters map[*write]struct{} // parked writes waiting for this lock
}

type write struct {
	key      Key
	ranges   []Range
	seq      uint64             // arrival order, for reporting ready writes in order
	blockers map[*lock]struct{} // locks it still waits for
}

type client struct {
	locks  map[uint64]*lock
	writes map[uint64]*write
	chunks int // chunks covered by locks
}

// Table is the server's read-lock table for one volume. It is a plain
// state machine: no goroutines, no clock, no IO, not safe for concurrent
// use. The server calls it under the same mutex (or from the same event
// loop) that orders snapshot-read lookups against copy-outs. Its output
// depends only on the sequence of calls, so tests can replay it.
type Table struct {
	lim     Limits
	seq     uint64
	clients map[ClientID]*client
	holders map[uint64][]*lock // origin chunk -> read locks covering it
	nwrites int
}

// New returns an empty table.
func New(lim Limits) *Table {
	return &Table{lim: lim.withDefaults(), clients: map[ClientID]*client{}, holders: map[uint64][]*lock{}}
}

func (t *Table) client(c ClientID) *client {
	cl := t.clients[c]
	if cl == nil {
		cl = &client{locks: map[uint64]*lock{}, writes: map[uint64]*write{}}
		t.clients[c] = cl
	}
	return cl
}

// forget removes a client that holds nothing, so departed clients leave
// no trace.
func (t *Table) forget(c ClientID) {
	if cl := t.clients[c]; cl != nil && len(cl.locks) == 0 && len(cl.writes) == 0 {
		delete(t.clients, c)
	}
}

// checkRanges: non-empty, at most MaxRanges, each non-empty and not
// wrapping, ascending and disjoint. Returns the chunk total.
func (t *Table) checkRanges(rs []Range) (int, error) {
	if len(rs) == 0 {
		return 0, fmt.Errorf("empty range list: %w", ErrBadRange)
	}
	if len(rs) > t.lim.MaxRanges {
		return 0, fmt.Errorf("%d ranges, limit %d: %w", len(rs), t.lim.MaxRanges, ErrLimit)
	}
	total := 0
	for i, r := range rs {
		if r.Count == 0 || r.end() < r.Start {
			return 0, fmt.Errorf("range %d (%d,+%d) is empty or wraps: %w", i, r.Start, r.Count, ErrBadRange)
		}
		if i > 0 && r.Start < rs[i-1].end() {
			return 0, fmt.Errorf("range %d starts at %d before the end of range %d: %w", i, r.Start, i-1, ErrBadRange)
		}
		total += int(r.Count)
	}
	return total, nil
}

// Acquire grants read lock k on ranges. The server calls it when a
// snapshot read is answered "read the origin", atomically with the lookup
// that decided so. Writes already parked never wait for it: it was granted
// after they arrived, when their chunks had already been copied out.
func (t *Table) Acquire(k Key, ranges []Range) error {
	n, err := t.checkRanges(ranges)
	if err != nil {
		return fmt.Errorf("acquire lock %v: %w", k, err)
	}
	cl := t.clients[k.Client]
	var held, chunks int
	if cl != nil {
		if cl.locks[k.ID] != nil {
			return fmt.Errorf("acquire lock %v: %w", k, ErrExists)
		}
		held, chunks = len(cl.locks), cl.chunks
	}
	if held+1 > t.lim.MaxLocks {
		return fmt.Errorf("acquire lock %v: client holds %d locks, limit %d: %w", k, held, t.lim.MaxLocks, ErrLimit)
	}
	if chunks+n > t.lim.MaxChunks {
		return fmt.Errorf("acquire lock %v: %d more chunks on top of %d, limit %d: %w", k, n, chunks, t.lim.MaxChunks, ErrLimit)
	}
	t.insert(t.client(k.Client), k, slices.Clone(ranges), n)
	return nil
}

func (t *Table) insert(cl *client, k Key, ranges []Range, n int) *lock {
	l := &lock{key: k, ranges: ranges, chunks: n, waiters: map[*write]struct{}{}}
	cl.locks[k.ID] = l
	cl.chunks += n
	for _, r := range ranges {
		for c := r.Start; c < r.end(); c++ {
			t.holders[c] = append(t.holders[c], l)
		}
	}
	return l
}

// Release releases read lock k (FINISH_SNAPSHOT_READ) and returns the
// parked writes that no longer wait for anything, in arrival order. They
// have left the table: the server approves them now.
func (t *Table) Release(k Key) (ready []Key, err error) {
	cl := t.clients[k.Client]
	if cl == nil || cl.locks[k.ID] == nil {
		return nil, fmt.Errorf("release lock %v: %w", k, ErrNotFound)
	}
	ws := t.remove(cl, cl.locks[k.ID], nil)
	t.forget(k.Client)
	return sortWrites(ws), nil
}

// remove unindexes l and appends to ready the writes it unblocks. (During
// Upload, l may already have been replaced under its id by a new lock.)
func (t *Table) remove(cl *client, l *lock, ready []*write) []*write {
	if cl.locks[l.key.ID] == l {
		delete(cl.locks, l.key.ID)
	}
	cl.chunks -= l.chunks
	for _, r := range l.ranges {
		for c := r.Start; c < r.end(); c++ {
			hs := t.holders[c]
			i := slices.Index(hs, l)
			hs[i] = hs[len(hs)-1]
			hs[len(hs)-1] = nil
			if hs = hs[:len(hs)-1]; len(hs) == 0 {
				delete(t.holders, c)
			} else {
				t.holders[c] = hs
			}
		}
	}
	for w := range l.waiters {
		delete(w.blockers, l)
		if len(w.blockers) == 0 {
			t.unpark(w)
			ready = append(ready, w)
		}
	}
	l.waiters = nil
	return ready
}

func (t *Table) unpark(w *write) {
	cl := t.clients[w.key.Client]
	delete(cl.writes, w.key.ID)
	t.nwrites--
	t.forget(w.key.Client)
}

func sortWrites(ws []*write) []Key {
	if len(ws) == 0 {
		return nil
	}
	slices.SortFunc(ws, func(a, b *write) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	keys := make([]Key, len(ws))
	for i, w := range ws {
		keys[i] = w.key
	}
	return keys
}

// overlapping returns the locks covering any chunk of ranges. It walks
// whichever is smaller, the ranges or the index, so a write over a huge
// range costs no more than the locks that exist.
func (t *Table) overlapping(ranges []Range) map[*lock]struct{} {
	found := map[*lock]struct{}{}
	for _, r := range ranges {
		if uint64(r.Count) <= uint64(len(t.holders)) {
			for c := r.Start; c < r.end(); c++ {
				for _, l := range t.holders[c] {
					found[l] = struct{}{}
				}
			}
			continue
		}
		for c, hs := range t.holders {
			if c >= r.Start && c < r.end() {
				for _, l := range hs {
					found[l] = struct{}{}
				}
			}
		}
	}
	return found
}

// WaitFor registers origin write w over ranges and reports whether it may
// proceed at once. If not, it is parked until every read lock that covers
// one of its chunks now is released (or dropped); Release, DropClient and
// Upload report when. Locks granted after this call never delay it.
//
// Call it once the copy-out for w is committed: from then on snapshot
// reads of those chunks are sent to the store, so the locks held now are
// exactly the readers that may still be reading the old origin data.
func (t *Table) WaitFor(w Key, ranges []Range) (ready bool, err error) {
	if _, err := t.checkRanges(ranges); err != nil {
		return false, fmt.Errorf("wait for write %v: %w", w, err)
	}
	if cl := t.clients[w.Client]; cl != nil {
		if cl.writes[w.ID] != nil {
			return false, fmt.Errorf("wait for write %v: %w", w, ErrExists)
		}
		if len(cl.writes) >= t.lim.MaxWrites {
			return false, fmt.Errorf("wait for write %v: client has %d parked writes, limit %d: %w", w, len(cl.writes), t.lim.MaxWrites, ErrLimit)
		}
	}
	blockers := t.overlapping(ranges)
	if len(blockers) == 0 {
		return true, nil
	}
	t.seq++
	wr := &write{key: w, ranges: slices.Clone(ranges), seq: t.seq, blockers: blockers}
	for l := range blockers {
		l.waiters[wr] = struct{}{}
	}
	t.client(w.Client).writes[w.ID] = wr
	t.nwrites++
	return false, nil
}

// CancelWrite forgets parked write w (the server gave up on it). It
// reports whether w was parked. A cancelled write is never reported ready.
func (t *Table) CancelWrite(w Key) bool {
	cl := t.clients[w.Client]
	if cl == nil || cl.writes[w.ID] == nil {
		return false
	}
	t.cancel(cl.writes[w.ID])
	return true
}

func (t *Table) cancel(w *write) {
	for l := range w.blockers {
		delete(l.waiters, w)
	}
	w.blockers = nil
	t.unpark(w)
}

// DropClient removes everything client c has: its parked writes are
// cancelled first (never reported ready: there is nobody to answer), then
// its locks are released. It returns the other clients' writes this
// unblocks, in arrival order. The server calls it when a client's node
// has left the cluster, or when it decides not to await a client.
func (t *Table) DropClient(c ClientID) (ready []Key) {
	cl := t.clients[c]
	if cl == nil {
		return nil
	}
	for _, w := range cl.writes {
		t.cancel(w)
	}
	var ws []*write
	for _, l := range cl.locks {
		ws = t.remove(cl, l, ws)
	}
	delete(t.clients, c)
	return sortWrites(ws)
}

// Upload makes client c's read locks exactly the given set, as a client
// re-declares them after reconnecting (UPLOAD_LOCKS ... UPLOAD_DONE).
//
// A declared lock the table already has with the same ranges is kept as
// it is. Any other declared lock is new to the table, and the client may
// be reading the origin under it right now, so it is treated as granted
// before every write: each parked write it overlaps now waits for it too.
// Locks of c not declared are released (the client finished them while
// disconnected). It returns the writes that releasing unblocks. On error
// (bad ranges, duplicate id, over the limits) nothing changes.
//
// A new server must not approve writes before every client it knows has
// uploaded (or its node left): the table only orders locks against writes
// it has been shown.
func (t *Table) Upload(c ClientID, locks []Lock) (ready []Key, err error) {
	if len(locks) > t.lim.MaxLocks {
		return nil, fmt.Errorf("upload locks of %x: %d locks, limit %d: %w", c[:], len(locks), t.lim.MaxLocks, ErrLimit)
	}
	declared := make(map[uint64]int, len(locks)) // id -> index in locks
	sizes := make([]int, len(locks))
	total := 0
	for i, l := range locks {
		if _, dup := declared[l.ID]; dup {
			return nil, fmt.Errorf("upload locks of %x: lock %d declared twice: %w", c[:], l.ID, ErrExists)
		}
		declared[l.ID] = i
		n, err := t.checkRanges(l.Ranges)
		if err != nil {
			return nil, fmt.Errorf("upload locks of %x: lock %d: %w", c[:], l.ID, err)
		}
		sizes[i] = n
		total += n
	}
	if total > t.lim.MaxChunks {
		return nil, fmt.Errorf("upload locks of %x: %d chunks, limit %d: %w", c[:], total, t.lim.MaxChunks, ErrLimit)
	}

	cl := t.client(c)
	var stale []*lock
	for id, old := range cl.locks {
		if i, ok := declared[id]; !ok || !slices.Equal(old.ranges, locks[i].Ranges) {
			stale = append(stale, old)
		}
	}
	// Add the new locks before releasing the stale ones, so that a write
	// waiting for both never slips through in between.
	for i, l := range locks {
		if old := cl.locks[l.ID]; old != nil && slices.Equal(old.ranges, l.Ranges) {
			continue
		}
		nl := t.insert(cl, Key{Client: c, ID: l.ID}, slices.Clone(l.Ranges), sizes[i])
		for _, other := range t.clients {
			for _, w := range other.writes {
				if overlap(w.ranges, nl.ranges) {
					w.blockers[nl] = struct{}{}
					nl.waiters[w] = struct{}{}
				}
			}
		}
	}
	var ws []*write
	for _, old := range stale {
		ws = t.remove(cl, old, ws)
	}
	t.forget(c)
	return sortWrites(ws), nil
}

// overlap reports whether two ascending disjoint range lists share a chunk.
func overlap(a, b []Range) bool {
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case a[i].end() <= b[j].Start:
			i++
		case b[j].end() <= a[i].Start:
			j++
		default:
			return true
		}
	}
	return false
}

// Held returns client c's read locks, by id.
func (t *Table) Held(c ClientID) []Lock {
	cl := t.clients[c]
	if cl == nil {
		return nil
	}
	out := make([]Lock, 0, len(cl.locks))
	for _, l := range cl.locks {
		out = append(out, Lock{ID: l.key.ID, Ranges: slices.Clone(l.ranges)})
	}
	slices.SortFunc(out, func(a, b Lock) int { return compareKeys(Key{ID: a.ID}, Key{ID: b.ID}) })
	return out
}

// Parked returns client c's parked writes, by id.
func (t *Table) Parked(c ClientID) []Key {
	cl := t.clients[c]
	if cl == nil {
		return nil
	}
	out := make([]Key, 0, len(cl.writes))
	for _, w := range cl.writes {
		out = append(out, w.key)
	}
	slices.SortFunc(out, compareKeys)
	return out
}

// Blockers returns the read locks parked write w waits for, sorted; nil if
// w is not parked. The server logs them when a write waits long.
func (t *Table) Blockers(w Key) []Key {
	cl := t.clients[w.Client]
	if cl == nil || cl.writes[w.ID] == nil {
		return nil
	}
	out := make([]Key, 0, len(cl.writes[w.ID].blockers))
	for l := range cl.writes[w.ID].blockers {
		out = append(out, l.key)
	}
	slices.SortFunc(out, compareKeys)
	return out
}

// Usage is what one client holds in the table.
type Usage struct {
	Locks  int // read locks
	Chunks int // chunks covered by them (a chunk under two locks counts twice)
	Writes int // parked writes
}

// Usage returns what client c holds (the admin "clients" output).
func (t *Table) Usage(c ClientID) Usage {
	cl := t.clients[c]
	if cl == nil {
		return Usage{}
	}
	return Usage{Locks: len(cl.locks), Chunks: cl.chunks, Writes: len(cl.writes)}
}

// Clients returns the clients holding locks or parked writes, sorted.
func (t *Table) Clients() []ClientID {
	out := make([]ClientID, 0, len(t.clients))
	for c := range t.clients {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b ClientID) int { return bytes.Compare(a[:], b[:]) })
	return out
}

// Len returns the total number of read locks and parked writes.
func (t *Table) Len() (locks, writes int) {
	for _, cl := range t.clients {
		locks += len(cl.locks)
	}
	return locks, t.nwrites
}
