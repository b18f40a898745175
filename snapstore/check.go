package snapstore

import (
	"context"
	"fmt"
	"sort"
)

// CheckResult summarizes a consistency check.
type CheckResult struct {
	Problems   []string
	Exceptions uint64
	TreeNodes  uint64
	UsedChunks uint64
	Snapshots  int
}

// Clean reports whether the check found no problem.
func (r *CheckResult) Clean() bool { return len(r.Problems) == 0 }

// Check commits outstanding changes and then verifies the whole store as
// it is on disk at that point: both superblock copies, the state block,
// the snapshot table, every tree node (checksum, address, ordering, key
// bounds, depth), every exception (ranges, owners, users, coverage of live
// snapshots), allocation (double use, leaks, chunks in use but marked
// free, free counts) and the per-snapshot counters. report, if not nil, is
// called with each problem as it is found. The error is for failures to
// run the check, not for problems found.
//
// The engine is locked only to commit and to copy its in-memory state;
// copy-outs, snapshot operations and commits go on while the check reads
// the store. It checks a point-in-time view: from the start until it ends,
// every metadata block the engine overwrites (home writes of commits,
// superblock writes) is first read and kept for the check (checkView), so
// the check sees each block as it was when it started, consistent with the
// state it copied. Memory: one bit per data chunk and per metadata block,
// plus 4 KiB per metadata block overwritten during the check. Checks run
// one at a time (a second waits for the first). A recovery in place
// during the check ends it with an error.
func (e *Engine) Check(ctx context.Context, report func(problem string)) (*CheckResult, error) {
	select {
	case e.checkSem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-e.checkSem }()
	e.lock()
	if err := e.usable(); err != nil {
		e.unlock()
		return nil, err
	}
	for e.dirtyCount() > 0 || e.committing {
		if err := e.waitDurableLocked(e.openSeq); err != nil {
			e.unlock()
			return nil, err
		}
	}
	// Everything is on disk now; freeze the view and copy the state.
	view := e.freezeForCheck()
	recoveries := e.nRecoveries.Load()
	e.unlock()
	defer e.endCheck()
	r := &CheckResult{}
	bad := func(f string, a ...any) {
		p := fmt.Sprintf(f, a...)
		r.Problems = append(r.Problems, p)
		if report != nil {
			report(p)
		}
	}
	c := &checker{e: view, r: r, bad: bad, ctx: ctx}
	if err := c.run(); err != nil {
		return r, err
	}
	if e.nRecoveries.Load() != recoveries {
		return r, fmt.Errorf("check: the engine recovered in place meanwhile: run it again")
	}
	return r, nil
}

// freezeForCheck starts keeping pre-images of overwritten metadata blocks
// and returns an engine value holding a copy of the in-memory state whose
// store device reads the view (e.mu held, nothing dirty).
func (e *Engine) freezeForCheck() *Engine {
	e.ckMu.Lock()
	e.ckPre = map[uint64][]byte{}
	e.ckMu.Unlock()
	v := &Engine{
		uuid: e.uuid, cs: e.cs, cpb: e.cpb, originChunks: e.originChunks,
		st: e.st, slots: append([]tableEntry(nil), e.slots...), byID: make(map[uint32]int, len(e.byID)),
		live: append([]uint32(nil), e.live...), queued: append([]uint32(nil), e.queued...),
		recl: append([]uint32(nil), e.recl...),
	}
	e.sbMu.Lock()
	v.sb = e.sb
	e.sbMu.Unlock()
	for id, i := range e.byID {
		v.byID[id] = i
	}
	v.store = &checkView{e: e}
	return v
}

func (e *Engine) endCheck() {
	e.ckMu.Lock()
	e.ckPre = nil
	e.ckMu.Unlock()
}

// preserve keeps block addr as it is on disk for a running check, before
// the engine overwrites it.
func (e *Engine) preserve(addr uint64) {
	e.ckMu.Lock()
	defer e.ckMu.Unlock()
	if e.ckPre == nil {
		return
	}
	if _, ok := e.ckPre[addr]; ok {
		return
	}
	b := AlignedBuffer(BlockSize)
	if err := readFull(e.store, b, int64(addr)*BlockSize); err != nil {
		b = nil // the check reports the block unreadable
	}
	e.ckPre[addr] = b
}

// checkView is the store as it was when the running check started.
type checkView struct{ e *Engine }

// ReadAt reads a block of the view. The device is read without the lock
// and the pre-images looked at again afterwards: preserve keeps a block
// before the engine starts overwriting it, so a read that may have seen
// the overwrite finds the pre-image then, and one that finds none read
// the block before any overwrite began.
func (v *checkView) ReadAt(p []byte, off int64) (int, error) {
	e := v.e
	if off%BlockSize != 0 || len(p) != BlockSize {
		return 0, fmt.Errorf("check view: read of %d bytes at %d is not one block", len(p), off)
	}
	addr := uint64(off / BlockSize)
	pre := func() (int, bool, error) {
		e.ckMu.Lock()
		defer e.ckMu.Unlock()
		b, ok := e.ckPre[addr]
		switch {
		case !ok:
			return 0, false, nil
		case b == nil:
			return 0, true, fmt.Errorf("block %d was unreadable when the engine overwrote it", addr)
		}
		return copy(p, b), true, nil
	}
	if n, ok, err := pre(); ok {
		return n, err
	}
	n, err := e.store.ReadAt(p, off)
	if m, ok, perr := pre(); ok {
		return m, perr
	}
	return n, err
}

func (v *checkView) WriteAt([]byte, int64) (int, error) {
	return 0, fmt.Errorf("check view is read-only")
}
func (v *checkView) Flush() error         { return nil }
func (v *checkView) Size() (int64, error) { return v.e.store.Size() }

type checker struct {
	e    *Engine
	r    *CheckResult
	bad  func(string, ...any)
	ctx  context.Context
	data []byte // used data chunks
	meta []byte // used metadata blocks
	// counters recomputed per live snapshot (indexed like e.live)
	rDiff []int64
	uniq  []int64
	priv  []int64
	// current chunk group
	group  []exception
	groupC uint64
	nodes  uint64
}

func (c *checker) read(addr uint64) ([]byte, bool) {
	b := AlignedBuffer(BlockSize)
	if err := readFull(c.e.store, b, int64(addr)*BlockSize); err != nil {
		c.bad("block %d: read failed: %v", addr, err)
		return nil, false
	}
	return b, true
}

func (c *checker) run() error {
	e := c.e
	// Superblocks.
	for slot := uint64(0); slot < 2; slot++ {
		if b, ok := c.read(slot); ok {
			if s, err := decodeSuper(b, slot); err != nil {
				c.bad("superblock copy %d: %v", slot, err)
			} else if s.uuid != e.uuid {
				c.bad("superblock copy %d belongs to volume %x", slot, s.uuid)
			}
		}
	}
	// State block on disk must equal memory (everything is committed).
	if b, ok := c.read(e.sb.stateAddr); ok {
		if st, err := decodeState(b, e.sb.stateAddr, e.uuid); err != nil {
			c.bad("%v", err)
		} else if *st != e.st {
			c.bad("state block on disk differs from memory after commit")
		}
	}
	// Snapshot table.
	for i := uint64(0); i < e.sb.tableBlocks; i++ {
		addr := e.sb.tableStart + i
		b, ok := c.read(addr)
		if !ok {
			continue
		}
		ents, err := decodeTableBlock(b, addr, e.uuid)
		if err != nil {
			c.bad("%v", err)
			continue
		}
		for j, t := range ents {
			s := int(i)*tableEntriesPerBlk + j
			if s >= len(e.slots) {
				if t.state != slotFree {
					c.bad("snapshot table slot %d beyond capacity is in use", s)
				}
				continue
			}
			if t != e.slots[s] {
				c.bad("snapshot table slot %d on disk differs from memory", s)
			}
		}
	}
	c.checkTable()
	// Tree.
	c.data = make([]byte, (e.sb.dataChunks+7)/8)
	c.meta = make([]byte, (e.sb.metaBlocks+7)/8)
	c.rDiff = make([]int64, len(e.live)+1)
	c.uniq = make([]int64, len(e.live))
	c.priv = make([]int64, len(e.live))
	if err := c.walkTree(); err != nil {
		return err
	}
	c.flushGroup()
	if c.r.Exceptions != e.st.exceptions {
		c.bad("state block counts %d exceptions, tree holds %d", e.st.exceptions, c.r.Exceptions)
	}
	c.r.TreeNodes = c.nodes
	c.checkCounters()
	c.checkBitmap("data", kindDataBitmap, e.sb.dbmStart, e.sb.dbmBlocks, e.sb.dataChunks, c.data, e.st.dataFree, func(i uint64) uint64 { return i })
	c.checkBitmap("metadata", kindMetaBitmap, e.sb.mbmStart, e.sb.mbmBlocks, e.sb.metaBlocks, c.meta, e.st.metaFree, func(i uint64) uint64 { return e.sb.metaStart + i })
	return nil
}

func (c *checker) checkTable() {
	e := c.e
	names := map[string]uint32{}
	var live, queued, recl []uint32
	for i, t := range e.slots {
		if t.state == slotFree {
			continue
		}
		c.r.Snapshots++
		if t.id == 0 || t.id >= e.st.nextID {
			c.bad("snapshot slot %d: id %d not allocated (next id %d)", i, t.id, e.st.nextID)
		}
		if e.byID[t.id] != i {
			c.bad("snapshot %d: index points to slot %d, found in slot %d", t.id, e.byID[t.id], i)
		}
		if t.state == slotLive || t.state == slotDropped {
			if o, dup := names[t.name]; dup {
				c.bad("snapshots %d and %d share the name %q", o, t.id, t.name)
			}
			names[t.name] = t.id
			if !ValidName(t.name) {
				c.bad("snapshot %d has an invalid name %q", t.id, t.name)
			}
		}
		switch t.state {
		case slotLive:
			live = append(live, t.id)
		case slotQueued:
			queued = append(queued, t.id)
		case slotReclaiming:
			recl = append(recl, t.id)
		case slotDropped:
			if t.diff != 0 || t.uniq != 0 || t.priv != 0 {
				c.bad("dropped snapshot %d still has counters", t.id)
			}
		}
	}
	if len(e.byID) != c.r.Snapshots {
		c.bad("snapshot index has %d entries, table %d", len(e.byID), c.r.Snapshots)
	}
	for _, s := range [][]uint32{live, queued, recl} {
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	}
	eq := func(a, b []uint32) bool {
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
	if !eq(live, e.live) || !eq(queued, e.queued) || !eq(recl, e.recl) {
		c.bad("in-memory snapshot state sets disagree with the table")
	}
	if e.st.reclaiming != (len(recl) > 0) {
		c.bad("reclamation pass flag %v but %d snapshots in the pass", e.st.reclaiming, len(recl))
	}
	if e.st.generation != uint64(e.st.nextID-1) {
		c.bad("generation %d, but the newest snapshot id is %d", e.st.generation, e.st.nextID-1)
	}
	sum := e.st.pendingDiff
	for _, id := range e.live {
		sum += e.slotOf(id).diff
	}
	if sum != 0 {
		c.bad("snapshot difference counters sum to %d, want 0", sum)
	}
}

func (c *checker) walkTree() error {
	e := c.e
	leafDepth := int(e.st.height) - 1
	var prevKey *key
	var walk func(addr uint64, depth int, lo, hi *key) error
	walk = func(addr uint64, depth int, lo, hi *key) error {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		if !e.isMetaAddr(addr) {
			c.bad("tree node address %d outside the metadata area", addr)
			return nil
		}
		i := addr - e.sb.metaStart
		if bitGet(c.meta, i) {
			c.bad("metadata block %d referenced twice in the tree", addr)
			return nil
		}
		bitSet(c.meta, i)
		c.nodes++
		b, ok := c.read(addr)
		if !ok {
			return nil
		}
		n, err := decodeNode(b, addr, e.uuid)
		if err != nil {
			c.bad("%v", err)
			return nil
		}
		if n.leaf != (depth == leafDepth) {
			c.bad("tree node %d: leaf=%v at depth %d, tree height %d", addr, n.leaf, depth, e.st.height)
			return nil
		}
		if depth > 0 && n.count() == 0 {
			c.bad("tree node %d is empty", addr)
		}
		inBounds := func(k key) bool {
			return (lo == nil || !k.less(*lo)) && (hi == nil || k.less(*hi))
		}
		if n.leaf {
			for _, x := range n.ents {
				k := x.key()
				if !inBounds(k) {
					c.bad("tree leaf %d: entry %v outside its parent's key range", addr, k)
				}
				if prevKey != nil && !prevKey.less(k) {
					c.bad("tree leaf %d: entry %v not after %v", addr, k, *prevKey)
				}
				kk := k
				prevKey = &kk
				c.entry(x)
			}
			return nil
		}
		for j := range n.kids {
			if j > 0 && !inBounds(n.keys[j]) {
				c.bad("tree branch %d: key %d outside its parent's range", addr, j)
			}
			clo, chi := lo, hi
			if j > 0 {
				k := n.keys[j]
				clo = &k
			}
			if j+1 < len(n.keys) {
				k := n.keys[j+1]
				chi = &k
			}
			if err := walk(n.kids[j], depth+1, clo, chi); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(e.st.root, 0, nil, nil)
}

// entry checks one exception and adds it to its chunk's group.
func (c *checker) entry(x exception) {
	e := c.e
	c.r.Exceptions++
	if x.chunk >= e.originChunks {
		c.bad("exception %v: chunk beyond the origin (%d chunks)", x.key(), e.originChunks)
	}
	if x.hi >= e.st.nextID {
		c.bad("exception %v: snapshot range [%d,%d] includes ids never allocated", x.key(), x.lo, x.hi)
	}
	if x.store >= e.sb.dataChunks {
		c.bad("exception %v: store chunk %d beyond the data area", x.key(), x.store)
	} else if bitGet(c.data, x.store) {
		c.bad("store chunk %d used twice (second by exception %v)", x.store, x.key())
	} else {
		bitSet(c.data, x.store)
		c.r.UsedChunks++
	}
	if x.priv {
		t := e.slotOf(x.lo)
		switch {
		case t == nil || !e.counted(x.lo, e.wCounted(x.key())):
			c.bad("private exception %v: snapshot %d does not exist or was reclaimed (leaked chunk %d)", x.key(), x.lo, x.store)
		case t.flags&flagWritable == 0:
			c.bad("private exception %v: snapshot %d is not writable", x.key(), x.lo)
		}
	}
	if len(c.group) > 0 && c.groupC != x.chunk {
		c.flushGroup()
	}
	c.groupC = x.chunk
	c.group = append(c.group, x)
}

func (c *checker) liveIdx(id uint32) int {
	return sort.Search(len(c.e.live), func(i int) bool { return c.e.live[i] >= id })
}

// flushGroup checks all exceptions of one chunk together.
func (c *checker) flushGroup() {
	e := c.e
	g := c.group
	c.group = nil
	if len(g) == 0 {
		return
	}
	var shared []exception
	var privIDs []uint32
	for _, x := range g {
		if x.priv {
			privIDs = append(privIDs, x.lo)
			if t := e.slotOf(x.lo); t != nil && t.state == slotLive {
				c.priv[c.liveIdx(x.lo)]++
				c.uniq[c.liveIdx(x.lo)]++
			}
		} else {
			shared = append(shared, x)
		}
	}
	var m uint32
	for i, x := range shared {
		if i > 0 && x.lo <= shared[i-1].hi {
			c.bad("chunk %d: shared exceptions [%d,%d] and [%d,%d] overlap", x.chunk, shared[i-1].lo, shared[i-1].hi, x.lo, x.hi)
		}
		m = max(m, x.hi)
		w := e.wCounted(x.key())
		u := e.users(x.lo, x.hi, privIDs, w)
		if u <= 0 {
			c.bad("chunk %d: exception [%d,%d] at store chunk %d serves no snapshot (leak)", x.chunk, x.lo, x.hi, x.store)
			continue
		}
		// R: +1 for every live user.
		a, b := c.liveIdx(x.lo), c.liveIdx(x.hi+1)
		c.rDiff[a]++
		c.rDiff[b]--
		for _, p := range privIDs {
			if p >= x.lo && p <= x.hi && has(e.live, p) {
				k := c.liveIdx(p)
				c.rDiff[k]--
				c.rDiff[k+1]++
			}
		}
		if u == 1 {
			if s := e.soleUser(x.lo, x.hi, privIDs, w); has(e.live, s) {
				c.uniq[c.liveIdx(s)]++
			}
		}
	}
	// Coverage: a live snapshot at or below the highest shared id, without
	// a private exception, must be inside a shared range (else it would
	// read origin data written after it was taken).
	next := uint32(1)
	gap := func(lo, hi uint32) {
		if lo > hi {
			return
		}
		i := sort.Search(len(e.live), func(i int) bool { return e.live[i] >= lo })
		for ; i < len(e.live) && e.live[i] <= hi; i++ {
			s := e.live[i]
			isPriv := false
			for _, p := range privIDs {
				isPriv = isPriv || p == s
			}
			if !isPriv {
				c.bad("chunk %d: live snapshot %d is not covered by any exception below the newest copy-out (%d)", g[0].chunk, s, m)
			}
		}
	}
	for _, x := range shared {
		gap(next, x.lo-1)
		next = x.hi + 1
	}
}

func (c *checker) checkCounters() {
	e := c.e
	var r, want int64
	for i, id := range e.live {
		t := e.slotOf(id)
		r += t.diff
		want += c.rDiff[i]
		if r != want {
			c.bad("snapshot %d: shared-exception count %d recorded, %d found", id, r, want)
			r = want // report each deviation once
		}
		if t.uniq != c.uniq[i] {
			c.bad("snapshot %d: unique-chunk count %d recorded, %d found", id, t.uniq, c.uniq[i])
		}
		if t.priv != c.priv[i] {
			c.bad("snapshot %d: private-chunk count %d recorded, %d found", id, t.priv, c.priv[i])
		}
	}
}

func (c *checker) checkBitmap(what string, kind uint8, start, nblocks, total uint64, used []byte, free uint64, name func(uint64) uint64) {
	var set uint64
	for b := uint64(0); b < nblocks; b++ {
		raw, ok := c.read(start + b)
		if !ok {
			continue
		}
		bits, err := decodeBitmap(raw, kind, start+b, c.e.uuid)
		if err != nil {
			c.bad("%v", err)
			continue
		}
		for off := uint64(0); off < bitsPerBitmapBlk; off++ {
			i := b*bitsPerBitmapBlk + off
			on := bitGet(bits, off)
			if i >= total {
				if on {
					c.bad("%s bitmap: bit %d beyond the area is set", what, i)
				}
				continue
			}
			if on {
				set++
			}
			u := bitGet(used, i)
			switch {
			case on && !u:
				c.bad("%s block/chunk %d allocated but unreferenced (leak)", what, name(i))
			case !on && u:
				c.bad("%s block/chunk %d in use but marked free", what, name(i))
			}
		}
	}
	if total-set != free {
		c.bad("%s free count %d recorded, bitmap has %d free", what, free, total-set)
	}
}
