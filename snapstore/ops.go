package snapstore

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"syscall"
)

// ---------------------------------------------------------------------------
// Chunk locks: a chunk is locked from the copy-out decision until the
// exception is durable, so a second writer of the chunk never sees an
// exception that could still vanish in a crash.

func (e *Engine) lockChunks(ctx context.Context, first, n uint64) (func(), error) {
	var held []uint64
	release := func() {
		e.lmu.Lock()
		for _, c := range held {
			close(e.locks[c])
			delete(e.locks, c)
		}
		e.lmu.Unlock()
	}
	for c := first; c < first+n; c++ {
		for {
			e.lmu.Lock()
			ch, busy := e.locks[c]
			if !busy {
				e.locks[c] = make(chan struct{})
				e.lmu.Unlock()
				held = append(held, c)
				break
			}
			e.lmu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				release()
				return nil, ctx.Err()
			}
		}
	}
	return release, nil
}

func (e *Engine) checkRange(first, n uint64) error {
	if n == 0 || first >= e.originChunks || n > e.originChunks-first {
		return fmt.Errorf("chunks [%d,+%d) outside origin of %d chunks: %w", first, n, e.originChunks, ErrRange)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Tree queries (e.mu held)

// lastShared returns the highest snapshot id covered by a shared exception
// of chunk c (0 if none) and the ids of c's private exceptions above it.
// Cost: O(log n) plus the private exceptions above that id; independent of
// the number of snapshots for origin-only workloads.
func (e *Engine) lastShared(c uint64) (uint32, []uint32, error) {
	cur, err := e.seekLE(key{chunk: c, lo: ^uint32(0), priv: true})
	if err != nil {
		return 0, nil, err
	}
	var privs []uint32
	var m uint32
	for cur.valid() {
		x := cur.entry()
		if x.chunk != c {
			break
		}
		if !x.priv {
			m = x.hi
			break
		}
		privs = append(privs, x.lo)
		if err := cur.prev(); err != nil {
			return 0, nil, err
		}
	}
	out := privs[:0]
	for _, p := range privs {
		if p > m {
			out = append(out, p)
		}
	}
	return m, out, nil
}

// gatherPrivs returns the ids of chunk c's private exceptions in [lo,hi].
func (e *Engine) gatherPrivs(c uint64, lo, hi uint32) ([]uint32, error) {
	cur, err := e.seekGE(key{chunk: c, lo: lo, priv: true})
	if err != nil {
		return nil, err
	}
	var privs []uint32
	for cur.valid() {
		x := cur.entry()
		if x.chunk != c || !x.priv || x.lo > hi {
			break
		}
		privs = append(privs, x.lo)
		if err := cur.next(); err != nil {
			return nil, err
		}
	}
	return privs, nil
}

// findPrivate returns snapshot s's private exception of chunk c.
func (e *Engine) findPrivate(c uint64, s uint32) (exception, bool, error) {
	k := key{chunk: c, lo: s, priv: true}
	cur, err := e.seekGE(k)
	if err != nil {
		return exception{}, false, err
	}
	if cur.valid() && cur.entry().key() == k {
		return cur.entry(), true, nil
	}
	return exception{}, false, nil
}

// findShared returns the shared exception of chunk c whose range holds s.
func (e *Engine) findShared(c uint64, s uint32) (exception, bool, error) {
	cur, err := e.seekLE(key{chunk: c, lo: s})
	if err != nil {
		return exception{}, false, err
	}
	for cur.valid() {
		x := cur.entry()
		if x.chunk != c {
			break
		}
		if !x.priv {
			return x, x.lo <= s && s <= x.hi, nil
		}
		if err := cur.prev(); err != nil {
			return exception{}, false, err
		}
	}
	return exception{}, false, nil
}

// ---------------------------------------------------------------------------
// Origin writes

type originNeed struct {
	need  bool
	m     uint32
	privs []uint32
}

func (e *Engine) decideOrigin(c uint64) (originNeed, error) {
	if len(e.live) == 0 {
		return originNeed{}, nil
	}
	newest := e.st.nextID - 1
	m, privs, err := e.lastShared(c)
	if err != nil {
		return originNeed{}, err
	}
	if m >= newest {
		return originNeed{}, nil
	}
	users := countRange(e.live, m+1, newest)
	for _, p := range privs {
		if has(e.live, p) {
			users--
		}
	}
	return originNeed{need: users > 0, m: m, privs: privs}, nil
}

// insertOrigin records a copy-out of chunk c to data chunk x serving every
// snapshot not yet covered.
func (e *Engine) insertOrigin(c uint64, d originNeed, x uint64, crc uint32) error {
	newest := e.st.nextID - 1
	ex := exception{chunk: c, lo: d.m + 1, hi: newest, store: x}
	if err := e.treeInsert(ex); err != nil {
		return err
	}
	if err := e.commitData(x); err != nil {
		return err
	}
	w := e.wCounted(ex.key())
	if u := e.users(ex.lo, ex.hi, d.privs, w); u == 1 {
		e.addUniq(e.soleUser(ex.lo, ex.hi, d.privs, w), 1)
	}
	e.addDiff(ex.lo, 1)
	e.addDiff(ex.hi+1, -1)
	for _, p := range d.privs {
		if has(e.live, p) {
			e.addDiff(p, -1)
			e.addDiff(p+1, 1)
		}
	}
	e.dataDirty = true
	e.txData = append(e.txData, dataCRC{chunk: x, crc: crc})
	e.nCopyOuts.Add(1)
	return nil
}

func (e *Engine) originExtent(c uint64) (int64, int) {
	off := int64(c) * e.cs
	n := e.cs
	if rem := int64(e.sb.originSize) - off; rem < n {
		n = rem
	}
	return off, int(n)
}

// copyChunk copies a chunk from src (origin or store) to data chunk x and
// returns the CRC32C of what it wrote.
func (e *Engine) copyChunk(src Device, off int64, n int, x uint64) (uint32, error) {
	bp := e.bufPool.Get().(*[]byte)
	defer e.bufPool.Put(bp)
	buf := (*bp)[:e.cs]
	if err := readFull(src, buf[:n], off); err != nil {
		return 0, fmt.Errorf("copy-out: read %d bytes at %d: %w", n, off, err)
	}
	clear(buf[n:])
	if err := writeFull(e.store, buf, e.storeOffset(x)); err != nil {
		return 0, fmt.Errorf("copy-out: write store chunk %d: %w", x, err)
	}
	return crc32.Checksum(buf, castagnoli), nil
}

// copyRunBytes bounds one copy-out IO: origin chunks that are adjacent and
// were given adjacent data chunks (the usual case: data chunks are handed
// out next-fit) are copied with one read and one write of up to this many
// bytes instead of a read and a write per chunk.
const copyRunBytes = 1 << 20

// copyJob is a copy-out of origin chunk c to data chunk x.
type copyJob struct{ c, x uint64 }

// copyOut does the copy-outs (jobs sorted by origin chunk) and returns the
// CRC32C of each chunk as written, in the order of jobs.
func (e *Engine) copyOut(jobs []copyJob) ([]uint32, error) {
	crcs := make([]uint32, len(jobs))
	maxRun := max(1, copyRunBytes/int(e.cs))
	for i := 0; i < len(jobs); {
		k := 1
		for k < maxRun && i+k < len(jobs) &&
			jobs[i+k].c == jobs[i].c+uint64(k) && jobs[i+k].x == jobs[i].x+uint64(k) {
			k++
		}
		if err := e.copyRun(jobs[i].c, jobs[i].x, crcs[i:i+k]); err != nil {
			return nil, err
		}
		i += k
	}
	return crcs, nil
}

// copyRun copies origin chunks [c, c+len(crcs)) to data chunks [x, ...)
// with one read and one write and sets crcs to each chunk's CRC32C.
func (e *Engine) copyRun(c, x uint64, crcs []uint32) error {
	bp := e.bufPool.Get().(*[]byte)
	defer e.bufPool.Put(bp)
	buf := (*bp)[:int64(len(crcs))*e.cs]
	off := int64(c) * e.cs
	n := min(int64(len(buf)), int64(e.sb.originSize)-off) // the origin's last chunk may be partial
	if err := readFull(e.origin, buf[:n], off); err != nil {
		return fmt.Errorf("copy-out: read origin chunks [%d,+%d): %w", c, len(crcs), err)
	}
	clear(buf[n:])
	if err := writeFull(e.store, buf, e.storeOffset(x)); err != nil {
		return fmt.Errorf("copy-out: write store chunks [%d,+%d): %w", x, len(crcs), err)
	}
	for i := range crcs {
		crcs[i] = crc32.Checksum(buf[int64(i)*e.cs:int64(i+1)*e.cs], castagnoli)
	}
	return nil
}

// PrepareOriginWrite makes chunks [first, first+n) of the origin safe to
// overwrite: every chunk a live snapshot still shares with the origin is
// copied to the store and the exception recording it is durable when it
// returns. It then waits until origin-read holds (see MapSnapshotReadHold)
// on those chunks are released. It returns the snapshot generation at which
// the answer holds: the chunks need no copy-out while Generation() is
// unchanged. Concurrent calls copy out in parallel and share journal
// commits. Origin writes never fail for lack of store space: the
// lowest-priority snapshot is dropped instead.
func (e *Engine) PrepareOriginWrite(ctx context.Context, first, n uint64) (uint64, error) {
	if err := e.checkRange(first, n); err != nil {
		return 0, fmt.Errorf("prepare origin write: %w", err)
	}
	unlockChunks, err := e.lockChunks(ctx, first, n)
	if err != nil {
		return 0, err
	}
	gen, err := e.prepareOrigin(ctx, first, n)
	unlockChunks()
	if err != nil {
		return 0, fmt.Errorf("prepare origin write [%d,+%d): %w", first, n, err)
	}
	if err := e.waitHolds(ctx, first, n); err != nil {
		return 0, err
	}
	return gen, nil
}

func (e *Engine) prepareOrigin(ctx context.Context, first, n uint64) (uint64, error) {
	res := map[uint64]uint64{} // chunk -> reserved data chunk
	copied := map[uint64]bool{}
	crcs := map[uint64]uint32{}
	e.lock()
	defer func() {
		for _, x := range res {
			e.unreserveData(x)
		}
		e.unlock()
	}()
	for {
		if err := e.usable(); err != nil {
			return 0, err
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		// Decide and reserve.
		var toCopy []uint64
		restart := false
		for c := first; c < first+n; c++ {
			d, err := e.decideOrigin(c)
			if err != nil {
				return 0, e.fail(err)
			}
			if !d.need {
				if x, ok := res[c]; ok {
					e.unreserveData(x)
					delete(res, c)
					delete(copied, c)
				}
				continue
			}
			if _, ok := res[c]; ok {
				if !copied[c] {
					toCopy = append(toCopy, c)
				}
				continue
			}
			x, err := e.reserveData()
			if errors.Is(err, errNoSpace) {
				if err := e.makeSpaceLocked(); err != nil {
					return 0, err
				}
				restart = true
				break
			}
			if err != nil {
				return 0, e.fail(err)
			}
			res[c] = x
			toCopy = append(toCopy, c)
		}
		if restart {
			continue
		}
		if len(toCopy) > 0 {
			jobs := make([]copyJob, len(toCopy)) // toCopy ascends
			for i, c := range toCopy {
				jobs[i] = copyJob{c: c, x: res[c]}
			}
			e.copying++
			e.mu.Unlock()
			sums, cerr := e.copyOut(jobs)
			e.lock()
			e.copyDone()
			if isNoSpace(cerr) {
				// The store device could not allocate (a thin device, a
				// sparse file on a full file system): a full store.
				for c, x := range res {
					e.unreserveData(x)
					delete(res, c)
				}
				clear(copied)
				if err := e.storeNoSpaceLocked(cerr); err != nil {
					return 0, err
				}
				continue
			}
			if cerr != nil {
				return 0, cerr
			}
			for i, j := range jobs {
				copied[j.c] = true
				crcs[j.c] = sums[i]
			}
			continue // re-decide: snapshots may have come or gone meanwhile
		}
		// Insert; every chunk that needs a copy-out has one ready.
		gen0 := e.st.generation
		for c := first; c < first+n && !restart; c++ {
			if err := e.throttleLocked(); err != nil {
				return 0, err
			}
			d, err := e.decideOrigin(c)
			if err != nil {
				return 0, e.fail(err)
			}
			if !d.need {
				continue
			}
			if !copied[c] {
				restart = true
				break
			}
			err = e.insertOrigin(c, d, res[c], crcs[c])
			if errors.Is(err, errNoSpace) {
				if err := e.makeSpaceLocked(); err != nil {
					return 0, err
				}
				restart = true
				break
			}
			if err != nil {
				return 0, e.fail(err)
			}
			delete(res, c)
			delete(copied, c)
		}
		if restart || e.st.generation != gen0 {
			continue
		}
		if err := e.waitDurableLocked(e.openSeq); err != nil {
			return 0, err
		}
		e.trimCache()
		return gen0, nil
	}
}

// makeSpaceLocked frees store space: it advances reclamation of deleted
// snapshots, or, when there is none, drops the lowest-priority snapshot.
func (e *Engine) makeSpaceLocked() error {
	if e.passBusy {
		e.cond.Wait()
		return nil
	}
	if e.st.reclaiming || len(e.queued) > 0 {
		_, err := e.reclaimOnceLocked(64, false)
		return err
	}
	if !e.dropVictimLocked("snapshot store full") {
		return fmt.Errorf("snapshot store full with no snapshot left to drop: %w", ErrFailed)
	}
	return nil
}

// isNoSpace reports whether err is the store device running out of space
// (ENOSPC from a file system or a thin device).
func isNoSpace(err error) bool { return err != nil && errors.Is(err, syscall.ENOSPC) }

// copyDone ends a copy-out begun with e.copying++ (e.mu held).
func (e *Engine) copyDone() {
	e.copying--
	if e.copying == 0 {
		e.cond.Broadcast()
	}
}

// storeNoSpaceLocked handles a store write that failed with ENOSPC while
// the bitmap still had free chunks: the device cannot allocate chunks it
// has never held. It is a full store: finish reclaiming deleted or
// dropped snapshots (their chunks were written before, so the device
// holds them), or else drop the lowest-priority snapshot and reclaim it,
// then allocate from the start of the data area again, where the chunks
// used before are. Each call frees space or drops a snapshot, so a caller
// retrying after it ends: at worst with no snapshot left, when origin
// writes need no copy-out.
func (e *Engine) storeNoSpaceLocked(cause error) error {
	if !e.st.reclaiming && len(e.queued) == 0 && !e.passBusy {
		if !e.dropVictimLocked(fmt.Sprintf("store device out of space (%v)", cause)) {
			return fmt.Errorf("snapshot store device out of space with no snapshot left to drop: %w", cause)
		}
	}
	for {
		if err := e.usable(); err != nil {
			return err
		}
		if e.passBusy {
			e.cond.Wait()
			continue
		}
		progressed, err := e.reclaimOnceLocked(1024, false)
		if err != nil {
			return err
		}
		if !progressed {
			break
		}
	}
	e.st.dataCursor = 0
	e.stDirty = true
	return nil
}

// ---------------------------------------------------------------------------
// Snapshot reads

// Location says where a snapshot's chunk is: on the origin (Origin true;
// Offset is the chunk's byte offset on the origin) or on the store device
// at byte Offset.
type Location struct {
	Origin bool
	Offset int64
}

// MapSnapshotRead maps chunks [first, first+n) of snapshot id: each is
// either on the origin (at the chunk's own offset) or on the store device.
// A dropped snapshot returns ErrSnapshotDropped, a deleted or unknown one
// ErrNoSuchSnapshot. It takes no locks the caller must release.
//
// An origin answer is only valid until the chunk is next overwritten. A
// server with its own read-lock table must call MapSnapshotRead and grant
// the lock under one mutex, and check for granted locks (after
// PrepareOriginWrite returned) under the same mutex; then either the lookup
// saw the new exception or the writer sees the lock. Alternatively use
// MapSnapshotReadHold, which does this inside the engine.
func (e *Engine) MapSnapshotRead(ctx context.Context, id SnapID, first, n uint64) ([]Location, error) {
	return e.mapRead(ctx, id, first, n, false)
}

// MapSnapshotReadHold is MapSnapshotRead that also takes an origin-read
// hold on every chunk mapped to the origin, atomically with the lookup.
// PrepareOriginWrite of such a chunk returns only after the hold is
// released with ReleaseOriginRead.
func (e *Engine) MapSnapshotReadHold(ctx context.Context, id SnapID, first, n uint64) ([]Location, error) {
	return e.mapRead(ctx, id, first, n, true)
}

func (e *Engine) mapRead(ctx context.Context, id SnapID, first, n uint64, hold bool) ([]Location, error) {
	if err := e.checkRange(first, n); err != nil {
		return nil, fmt.Errorf("map snapshot read: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e.lock()
	defer e.unlock()
	if err := e.usable(); err != nil {
		return nil, err
	}
	t, err := e.liveSnapshot(id)
	if err != nil {
		return nil, fmt.Errorf("map snapshot read: %w", err)
	}
	s := uint32(id)
	out := make([]Location, n)
	for i := range out {
		c := first + uint64(i)
		x, ok := exception{}, false
		if t.flags&flagWritable != 0 {
			if x, ok, err = e.findPrivate(c, s); err != nil {
				return nil, e.fail(err)
			}
		}
		if !ok {
			if x, ok, err = e.findShared(c, s); err != nil {
				return nil, e.fail(err)
			}
		}
		if ok {
			out[i] = Location{Offset: e.storeOffset(x.store)}
		} else {
			out[i] = Location{Origin: true, Offset: int64(c) * e.cs}
			if hold {
				e.holds[c]++
			}
		}
	}
	e.trimCache()
	return out, nil
}

// HoldOriginRead takes an origin-read hold on chunk c (a new server
// re-declares the holds its clients report after a takeover).
func (e *Engine) HoldOriginRead(c uint64) {
	e.lock()
	e.holds[c]++
	e.mu.Unlock()
}

// ReleaseOriginRead releases one origin-read hold on each chunk given.
func (e *Engine) ReleaseOriginRead(chunks ...uint64) {
	e.lock()
	defer e.mu.Unlock()
	for _, c := range chunks {
		if e.holds[c] <= 1 {
			delete(e.holds, c)
			if ch, ok := e.holdWait[c]; ok {
				close(ch)
				delete(e.holdWait, c)
			}
		} else {
			e.holds[c]--
		}
	}
}

func (e *Engine) waitHolds(ctx context.Context, first, n uint64) error {
	e.lock()
	for c := first; c < first+n; c++ {
		for e.holds[c] > 0 {
			ch, ok := e.holdWait[c]
			if !ok {
				ch = make(chan struct{})
				e.holdWait[c] = ch
			}
			e.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return ctx.Err()
			}
			e.lock()
		}
	}
	e.mu.Unlock()
	return nil
}

// ---------------------------------------------------------------------------
// Snapshot writes

const (
	swHave = iota + 1
	swConvert
	swCopyShared
	swCopyOrigin
)

type snapNeed struct {
	kind  int
	x     exception // the private (swHave) or shared exception involved
	privs []uint32
}

func (e *Engine) decideSnap(c uint64, s uint32) (snapNeed, error) {
	if p, ok, err := e.findPrivate(c, s); err != nil || ok {
		return snapNeed{kind: swHave, x: p}, err
	}
	x, ok, err := e.findShared(c, s)
	if err != nil {
		return snapNeed{}, err
	}
	if !ok {
		return snapNeed{kind: swCopyOrigin}, nil
	}
	privs, err := e.gatherPrivs(c, x.lo, x.hi)
	if err != nil {
		return snapNeed{}, err
	}
	if e.users(x.lo, x.hi, privs, e.wCounted(x.key())) == 1 {
		return snapNeed{kind: swConvert, x: x, privs: privs}, nil
	}
	return snapNeed{kind: swCopyShared, x: x, privs: privs}, nil
}

func (d snapNeed) source() uint64 {
	if d.kind == swCopyShared {
		return d.x.store
	}
	return ^uint64(0)
}

// applySnap makes chunk c private to snapshot s; y is the reserved chunk
// holding the copied data for the copy kinds.
func (e *Engine) applySnap(c uint64, s uint32, d snapNeed, y uint64) (uint64, error) {
	t := e.slotOf(s)
	switch d.kind {
	case swHave:
		return d.x.store, nil
	case swConvert:
		p := exception{chunk: c, lo: s, hi: s, store: d.x.store, priv: true}
		if err := e.treeInsert(p); err != nil {
			return 0, err
		}
		if err := e.treeDelete(d.x.key()); err != nil {
			return 0, err
		}
		t.priv++
		e.dirtySlot(s)
		e.addDiff(s, -1)
		e.addDiff(s+1, 1)
		return p.store, nil
	}
	p := exception{chunk: c, lo: s, hi: s, store: y, priv: true}
	if err := e.treeInsert(p); err != nil {
		return 0, err
	}
	if err := e.commitData(y); err != nil {
		return 0, err
	}
	t.priv++
	t.uniq++
	e.dirtySlot(s)
	if d.kind == swCopyShared {
		e.addDiff(s, -1)
		e.addDiff(s+1, 1)
		privs := append(append([]uint32(nil), d.privs...), s)
		w := e.wCounted(d.x.key())
		if e.users(d.x.lo, d.x.hi, privs, w) == 1 {
			e.addUniq(e.soleUser(d.x.lo, d.x.hi, privs, w), 1)
		}
	}
	e.dataDirty = true
	e.txPrivData = true
	e.nPrivate.Add(1)
	return y, nil
}

// PrepareSnapshotWrite makes chunks [first, first+n) of writable snapshot
// id private to it (copying the data it shared with the origin or with
// other snapshots) and returns, per chunk, the store byte offset the caller
// writes to. The mapping is durable when it returns; the caller's data
// write to the store is the caller's to flush.
func (e *Engine) PrepareSnapshotWrite(ctx context.Context, id SnapID, first, n uint64) ([]int64, error) {
	if err := e.checkRange(first, n); err != nil {
		return nil, fmt.Errorf("prepare snapshot write: %w", err)
	}
	unlockChunks, err := e.lockChunks(ctx, first, n)
	if err != nil {
		return nil, err
	}
	defer unlockChunks()
	s := uint32(id)
	type job struct {
		y   uint64
		src uint64
		ok  bool // data copied
	}
	jobs := map[uint64]*job{}
	e.lock()
	defer func() {
		for _, j := range jobs {
			e.unreserveData(j.y)
		}
		e.unlock()
	}()
	for {
		if err := e.usable(); err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t, err := e.liveSnapshot(id)
		if err != nil {
			return nil, fmt.Errorf("prepare snapshot write: %w", err)
		}
		if t.flags&flagWritable == 0 {
			return nil, fmt.Errorf("prepare snapshot write: snapshot %d (%s): %w", id, t.name, ErrReadOnlySnapshot)
		}
		// Decide, reserve, and collect copies to do.
		type cp struct {
			c, y, src uint64
		}
		var copies []cp
		restart := false
		for c := first; c < first+n; c++ {
			d, err := e.decideSnap(c, s)
			if err != nil {
				return nil, e.fail(err)
			}
			j := jobs[c]
			if d.kind == swHave || d.kind == swConvert {
				if j != nil {
					e.unreserveData(j.y)
					delete(jobs, c)
				}
				continue
			}
			if j != nil && j.src == d.source() && j.ok {
				continue
			}
			if j == nil {
				y, err := e.reserveData()
				if errors.Is(err, errNoSpace) {
					if err := e.makeSpaceLocked(); err != nil {
						return nil, err
					}
					restart = true
					break
				}
				if err != nil {
					return nil, e.fail(err)
				}
				j = &job{y: y}
				jobs[c] = j
			}
			j.src, j.ok = d.source(), false
			copies = append(copies, cp{c, j.y, j.src})
		}
		if restart {
			continue
		}
		if len(copies) > 0 {
			e.copying++
			e.mu.Unlock()
			var cerr error
			for _, k := range copies {
				if k.src == ^uint64(0) {
					off, ln := e.originExtent(k.c)
					_, cerr = e.copyChunk(e.origin, off, ln, k.y)
				} else {
					_, cerr = e.copyChunk(e.store, e.storeOffset(k.src), int(e.cs), k.y)
				}
				if cerr != nil {
					break
				}
			}
			e.lock()
			e.copyDone()
			if isNoSpace(cerr) {
				for c, j := range jobs {
					e.unreserveData(j.y)
					delete(jobs, c)
				}
				if err := e.storeNoSpaceLocked(cerr); err != nil {
					return nil, err
				}
				continue
			}
			if cerr != nil {
				return nil, cerr
			}
			for _, k := range copies {
				if j := jobs[k.c]; j != nil && j.y == k.y && j.src == k.src {
					j.ok = true
				}
			}
			continue
		}
		// Apply.
		out := make([]int64, n)
		for c := first; c < first+n && !restart; c++ {
			if err := e.throttleLocked(); err != nil {
				return nil, err
			}
			if _, err := e.liveSnapshot(id); err != nil {
				return nil, fmt.Errorf("prepare snapshot write: %w", err)
			}
			d, err := e.decideSnap(c, s)
			if err != nil {
				return nil, e.fail(err)
			}
			var y uint64
			if d.kind == swCopyShared || d.kind == swCopyOrigin {
				j := jobs[c]
				if j == nil || !j.ok || j.src != d.source() {
					restart = true
					break
				}
				y = j.y
			}
			x, err := e.applySnap(c, s, d, y)
			if errors.Is(err, errNoSpace) {
				if err := e.makeSpaceLocked(); err != nil {
					return nil, err
				}
				restart = true
				break
			}
			if err != nil {
				return nil, e.fail(err)
			}
			if d.kind == swCopyShared || d.kind == swCopyOrigin {
				delete(jobs, c)
			}
			out[c-first] = e.storeOffset(x)
		}
		if restart {
			continue
		}
		if err := e.waitDurableLocked(e.openSeq); err != nil {
			return nil, err
		}
		e.trimCache()
		return out, nil
	}
}
