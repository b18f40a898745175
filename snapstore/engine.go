package snapstore

import (
	"bytes"
	"container/list"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// SnapID identifies a snapshot. Ids are allocated monotonically from 1 and
// never reused.
type SnapID uint32

// Options configure Open.
type Options struct {
	// ChunkSize, if nonzero, must equal the store's chunk size; a store of
	// another chunk size is refused with ErrChunkSize.
	ChunkSize int
	// CacheBlocks bounds the metadata block cache (tree nodes and bitmap
	// blocks, 4 KiB each). Default 8192 (32 MiB). Minimum 256.
	CacheBlocks int
	// ManualReclaim disables the background reclaimer: deleted snapshots
	// are reclaimed only by Reclaim, ReclaimStep, or when space is needed.
	ManualReclaim bool
	// BeforeReclaim, if set, is called (without engine locks held) before
	// the store chunks of deleted or dropped snapshots may be reused. The
	// server uses it to finish reads of those snapshots it has in flight
	// (SetBeforeReclaim installs it after Open). ctx ends when the engine
	// is closed: the hook must then return promptly. Only one pass calls
	// it at a time; while it runs, reclamation (and an origin write that
	// needs the space) waits for it, so it should be bounded.
	BeforeReclaim func(ctx context.Context, ids []SnapID)
	// OnEvent, if set, receives events (drops, recovery, reclamation). It
	// is called without engine locks held, possibly from another goroutine
	// than the operation that caused the event, and must not block.
	OnEvent func(Event)
	// Now returns the current time (default time.Now).
	Now func() time.Time
	// RecoverBackoff is the first wait before an engine that failed on an
	// IO error tries to recover in place (Recover); it doubles after each
	// failed attempt up to maxRecoverBackoff. Default 1 s; negative turns
	// automatic recovery off (Recover, or DeleteSnapshot, still recover).
	RecoverBackoff time.Duration

	nodeCap int // test knob: split tree nodes above this many entries
}

// FormatOptions configure Format.
type FormatOptions struct {
	// ChunkSize: a power of two from 4 KiB to 1 MiB. Default 64 KiB.
	ChunkSize int
	// OriginSize in bytes. Default: the origin device's size.
	OriginSize int64
	// TableCapacity: snapshot table slots (live, deleting and dropped
	// snapshots). Default 8192; minimum 1.
	TableCapacity int
	// JournalBlocks: journal size in 4 KiB blocks. Default scales with the
	// store: store/512, clamped to [1024, 16384].
	JournalBlocks int
	// UUID of the volume; random if zero.
	UUID [16]byte
	// Now returns the current time (default time.Now).
	Now func() time.Time

	metaBlocks uint64 // test knob: size of the metadata area
}

// EventKind classifies an Event.
type EventKind int

const (
	// EventDropped: a snapshot was dropped because the store was full.
	EventDropped EventKind = iota + 1
	// EventRecovered: Open replayed journal transactions after an unclean
	// shutdown.
	EventRecovered
	// EventReclaimed: the space of deleted or dropped snapshots is free.
	EventReclaimed
	// EventFailed: the engine failed on an error (Message says which) and
	// refuses work until it recovers (EventRecovered).
	EventFailed
)

func (k EventKind) String() string {
	switch k {
	case EventDropped:
		return "dropped"
	case EventRecovered:
		return "recovered"
	case EventReclaimed:
		return "reclaimed"
	case EventFailed:
		return "failed"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event reports something callers may want to log or count.
type Event struct {
	Kind     EventKind
	Snapshot SnapID
	Name     string
	Message  string
}

// Stats are running counters since Open.
type Stats struct {
	CopyOuts      uint64 // chunks copied out for origin writes
	PrivateCopies uint64 // chunks made private for snapshot writes
	Commits       uint64 // journal transactions written
	CommitBlocks  uint64 // metadata blocks written to the journal
	Flushes       uint64 // store device flushes
	Drops         uint64 // snapshots dropped for space (persistent total)
	// SnapshotsDropped counts the snapshots dropped for space since Open
	// (csnap_snapshots_dropped_total).
	SnapshotsDropped uint64
	// Recoveries counts in-place recoveries since Open.
	Recoveries uint64
	FreeChunks uint64
	DataChunks uint64
	FreeMeta   uint64
	MetaBlocks uint64
	Exceptions uint64
}

// Engine is an open snapshot store. It is safe for concurrent use.
type Engine struct {
	origin, store Device
	opts          Options
	uuid          [16]byte
	cs            int64  // chunk size
	cpb           uint64 // blocks per chunk
	originChunks  uint64
	nodeCap       int
	cacheCap      int

	sbMu   sync.Mutex // serializes superblock writes; guards sb.seq/epoch/tail
	sb     superblock
	sbSlot uint64 // slot (0 or 1) holding the newest superblock copy

	mu         sync.Mutex
	cond       *sync.Cond // commit completion
	st         state
	stDirty    bool
	slots      []tableEntry
	tableDirty map[int]bool // table block index
	byID       map[uint32]int
	live       []uint32 // sorted ids by class
	queued     []uint32
	recl       []uint32 // the current reclamation pass (W)
	queuedAt   map[uint32]uint64
	passBusy   bool

	cache    map[uint64]*cblock
	lru      *list.List
	dirty    map[uint64]*cblock
	reserved map[uint64]bool

	openSeq    uint64 // logical transaction accumulating changes
	durableSeq uint64 // every change made in a transaction <= this is durable
	committing bool
	dataDirty  bool // data was written for changes in the open transaction
	txData     []dataCRC
	txPrivData bool // the open transaction has data copied for snapshot writes
	jPos, jSeq uint64
	failed     error
	closed     bool
	// copying counts operations doing copy-out IO without e.mu; Recover
	// waits for them (their reserved chunks are forgotten by it).
	copying int
	// replayData: the data chunks the last replayed transaction's
	// descriptor vouches for (Recover rewrites them).
	replayData []dataCRC
	// A running check's view (check.go): checkSem lets one run at a time;
	// ckPre holds pre-images of metadata blocks overwritten since it began.
	checkSem chan struct{}
	ckMu     sync.Mutex
	ckPre    map[uint64][]byte
	// flushErrBase is the store's count of failed flushes when the engine
	// last (re)started relying on it (flushStore).
	flushErrBase atomic.Uint64

	holds    map[uint64]int
	holdWait map[uint64]chan struct{}
	events   []Event

	lmu   sync.Mutex
	locks map[uint64]chan struct{}

	bufPool sync.Pool

	nCopyOuts, nPrivate, nCommits, nCommitBlocks, nFlushes atomic.Uint64
	nDrops, nRecoveries                                    atomic.Uint64

	failKick chan struct{} // wakes the recoverer
	recDone  chan struct{}

	fgWait atomic.Int32 // foreground goroutines waiting for mu
	// pauseReclaim holds the background reclaimer (benchmark hook).
	pauseReclaim atomic.Bool

	kick    chan struct{}
	stop    chan struct{}
	bgDone  chan struct{}
	closeMu sync.Mutex

	// beforeReclaim is Options.BeforeReclaim or what SetBeforeReclaim
	// installed (guarded by mu); hookCtx ends at Close; hookWait is the
	// time the last pass start spent in it (guarded by mu), which the
	// background reclaimer leaves out of its pacing.
	beforeReclaim func(ctx context.Context, ids []SnapID)
	hookCtx       context.Context
	hookCancel    context.CancelFunc
	hookWait      time.Duration
}

// ---------------------------------------------------------------------------
// Format

type layout struct {
	tableBlocks, journalBlocks, dbm, mbm, metaBlocks, metaStart, dataStart, dataChunks uint64
}

func computeLayout(storeBlocks, cpb uint64, tableCap, journal, metaOverride uint64) (layout, bool) {
	var L layout
	L.tableBlocks = (tableCap + tableEntriesPerBlk - 1) / tableEntriesPerBlk
	L.journalBlocks = journal
	fixed := 3 + L.tableBlocks + L.journalBlocks
	if fixed >= storeBlocks {
		return L, false
	}
	fit := func(d uint64) (layout, bool) {
		l := L
		l.dataChunks = d
		l.metaBlocks = metaOverride
		if l.metaBlocks == 0 {
			// Each exception owns one data chunk; non-root leaves hold at
			// least a quarter of 168 entries, so d/32 blocks (plus
			// branches and slack) always suffice.
			l.metaBlocks = d/32 + 256
		}
		l.dbm = (d + bitsPerBitmapBlk - 1) / bitsPerBitmapBlk
		if l.dbm == 0 {
			l.dbm = 1
		}
		l.mbm = (l.metaBlocks + bitsPerBitmapBlk - 1) / bitsPerBitmapBlk
		l.metaStart = fixed + l.dbm + l.mbm
		l.dataStart = (l.metaStart + l.metaBlocks + cpb - 1) / cpb * cpb
		return l, l.dataStart+d*cpb <= storeBlocks
	}
	lo, hi := uint64(0), storeBlocks/cpb
	if _, ok := fit(0); !ok {
		return L, false
	}
	for lo < hi { // largest d that fits
		mid := (lo + hi + 1) / 2
		if _, ok := fit(mid); ok {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return fit(lo)
}

// Format writes an empty snapshot store for origin onto store. Everything
// previously on the store device is lost.
func Format(origin, store Device, o FormatOptions) error {
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	cs := o.ChunkSize
	if cs < MinChunkSize || cs > MaxChunkSize || cs&(cs-1) != 0 {
		return fmt.Errorf("format: chunk size %d is not a power of two in [4 KiB, 1 MiB]: %w", cs, ErrChunkSize)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	osz, err := origin.Size()
	if err != nil {
		return fmt.Errorf("format: origin size: %w", err)
	}
	if o.OriginSize == 0 {
		o.OriginSize = osz
	}
	if o.OriginSize <= 0 || o.OriginSize > osz {
		return fmt.Errorf("format: origin size %d, device holds %d: %w", o.OriginSize, osz, ErrTruncated)
	}
	ssz, err := store.Size()
	if err != nil {
		return fmt.Errorf("format: store size: %w", err)
	}
	storeBlocks := uint64(ssz) / BlockSize
	if o.TableCapacity <= 0 {
		o.TableCapacity = 8192
	}
	jb := uint64(o.JournalBlocks)
	if jb == 0 {
		jb = storeBlocks / 512
		jb = max(1024, min(jb, 16384))
		if jb > storeBlocks/4 {
			jb = max(minJournalBlks, storeBlocks/4)
		}
	}
	if jb < minJournalBlks {
		return fmt.Errorf("format: journal of %d blocks is below the minimum %d", jb, minJournalBlks)
	}
	cpb := uint64(cs) / BlockSize
	L, ok := computeLayout(storeBlocks, cpb, uint64(o.TableCapacity), jb, o.metaBlocks)
	if !ok || L.dataChunks == 0 {
		return fmt.Errorf("format: store of %d bytes is too small for chunk size %d: %w", ssz, cs, ErrTruncated)
	}
	uuid := o.UUID
	if uuid == [16]byte{} {
		if _, err := rand.Read(uuid[:]); err != nil {
			return fmt.Errorf("format: uuid: %w", err)
		}
	}
	sb := superblock{
		uuid: uuid, seq: 1, chunkSize: uint32(cs), originSize: uint64(o.OriginSize),
		storeSize: storeBlocks * BlockSize, created: o.Now().UnixNano(), flags: superFlagClean,
		tableCap: uint32(o.TableCapacity), tableStart: 3, tableBlocks: L.tableBlocks,
		journalStart: 3 + L.tableBlocks, journalBlocks: L.journalBlocks,
		dbmStart: 3 + L.tableBlocks + L.journalBlocks, dbmBlocks: L.dbm,
		mbmStart: 3 + L.tableBlocks + L.journalBlocks + L.dbm, mbmBlocks: L.mbm,
		metaStart: L.metaStart, metaBlocks: L.metaBlocks, dataStart: L.dataStart, dataChunks: L.dataChunks,
		jTailPos: 0, jTailSeq: 1, stateAddr: 2,
	}
	if err := sb.validate(); err != nil {
		return fmt.Errorf("format: computed layout invalid: %v", err)
	}
	w := func(addr uint64, b []byte) error {
		if err := writeFull(store, b, int64(addr)*BlockSize); err != nil {
			return fmt.Errorf("format: write block %d: %w", addr, err)
		}
		return nil
	}
	// Invalidate any old superblocks first, so a failed format is not
	// mistaken for the previous store.
	zero := AlignedBuffer(BlockSize)
	if err := w(0, zero); err != nil {
		return err
	}
	if err := w(1, zero); err != nil {
		return err
	}
	// Write the journal and the metadata area once, so that a thin device
	// or a sparse file holds them: metadata writes then never meet ENOSPC
	// (data chunks may; the engine treats that as a full store).
	if err := zeroBlocks(store, sb.journalStart, sb.journalBlocks); err != nil {
		return fmt.Errorf("format: journal: %w", err)
	}
	if err := zeroBlocks(store, sb.metaStart, sb.metaBlocks); err != nil {
		return fmt.Errorf("format: metadata area: %w", err)
	}
	if err := store.Flush(); err != nil {
		return fmt.Errorf("format: flush: %w", err)
	}
	empty := make([]tableEntry, tableEntriesPerBlk)
	for i := uint64(0); i < L.tableBlocks; i++ {
		if err := w(sb.tableStart+i, encodeTableBlock(empty, uuid, sb.tableStart+i, 0)); err != nil {
			return err
		}
	}
	bits := make([]byte, BlockSize-hdrSize)
	for i := uint64(0); i < L.dbm; i++ {
		if err := w(sb.dbmStart+i, encodeBitmap(bits, kindDataBitmap, uuid, sb.dbmStart+i, 0)); err != nil {
			return err
		}
	}
	// metadata block 0 holds the empty root leaf
	for i := uint64(0); i < L.mbm; i++ {
		b := make([]byte, BlockSize-hdrSize)
		if i == 0 {
			bitSet(b, 0)
		}
		if err := w(sb.mbmStart+i, encodeBitmap(b, kindMetaBitmap, uuid, sb.mbmStart+i, 0)); err != nil {
			return err
		}
	}
	root := &node{addr: sb.metaStart, leaf: true}
	if err := w(root.addr, encodeNode(root, uuid, 0)); err != nil {
		return err
	}
	st := &state{root: root.addr, height: 1, nextID: 1, dataFree: L.dataChunks, metaFree: L.metaBlocks - 1, metaCursor: 1}
	if err := w(2, encodeState(st, uuid, 2, 0)); err != nil {
		return err
	}
	if err := store.Flush(); err != nil {
		return fmt.Errorf("format: flush: %w", err)
	}
	for slot := uint64(0); slot < 2; slot++ {
		if err := w(slot, encodeSuper(&sb, slot)); err != nil {
			return err
		}
	}
	if err := store.Flush(); err != nil {
		return fmt.Errorf("format: flush: %w", err)
	}
	return nil
}

// zeroBlocks writes zeros over n blocks from addr.
func zeroBlocks(d Device, addr, n uint64) error {
	z := AlignedBuffer(min(int(n)*BlockSize, 1<<20))
	for n > 0 {
		k := min(n, uint64(len(z)/BlockSize))
		if err := writeFull(d, z[:k*BlockSize], int64(addr)*BlockSize); err != nil {
			return fmt.Errorf("write zeros at block %d: %w", addr, err)
		}
		addr, n = addr+k, n-k
	}
	return nil
}

// ---------------------------------------------------------------------------
// Open

// StoreInfo is what a store's superblock says about it.
type StoreInfo struct {
	UUID       [16]byte
	ChunkSize  int
	OriginSize int64
	Epoch      uint64 // the newest server term recorded
}

// Inspect reads a store's superblock without opening the store or writing
// anything. The error wraps ErrNotStore when the device holds no store.
func Inspect(store Device) (StoreInfo, error) {
	sb, _, err := readSuper(store)
	if err != nil {
		return StoreInfo{}, err
	}
	return StoreInfo{UUID: sb.uuid, ChunkSize: int(sb.chunkSize), OriginSize: int64(sb.originSize), Epoch: sb.epoch}, nil
}

// readSuper returns the newest valid superblock copy and its slot.
func readSuper(store Device) (*superblock, uint64, error) {
	var best *superblock
	var bestSlot uint64
	var errs [2]error
	for slot := uint64(0); slot < 2; slot++ {
		b := AlignedBuffer(BlockSize)
		if err := readFull(store, b, int64(slot)*BlockSize); err != nil {
			errs[slot] = err
			continue
		}
		s, err := decodeSuper(b, slot)
		if err != nil {
			errs[slot] = err
			continue
		}
		if best == nil || s.seq > best.seq {
			best, bestSlot = s, slot
		}
	}
	if best != nil {
		return best, bestSlot, nil // a damaged other copy is rewritten by Open
	}
	for _, want := range []error{ErrVersion, ErrCorrupt, ErrTruncated} {
		for _, err := range errs {
			if errors.Is(err, want) {
				if want == ErrCorrupt {
					return nil, 0, fmt.Errorf("superblock damaged in both copies: %w (%w)", err, ErrNotStore)
				}
				return nil, 0, fmt.Errorf("superblock: %w", err)
			}
		}
	}
	return nil, 0, fmt.Errorf("superblock: %w", errs[0])
}

// Open opens a formatted store, replays its journal and starts the
// background reclaimer. On bad input (not a store, newer version, chunk
// size mismatch, truncated device) it returns an error naming the problem
// and writes nothing.
func Open(origin, store Device, o Options) (*Engine, error) {
	sb, slot, err := readSuper(store)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if o.ChunkSize != 0 && o.ChunkSize != int(sb.chunkSize) {
		return nil, fmt.Errorf("open store: store has chunk size %d, expected %d: %w", sb.chunkSize, o.ChunkSize, ErrChunkSize)
	}
	ssz, err := store.Size()
	if err != nil {
		return nil, fmt.Errorf("open store: size: %w", err)
	}
	if uint64(ssz) < sb.storeSize {
		return nil, fmt.Errorf("open store: store device is %d bytes, store was formatted for %d: %w", ssz, sb.storeSize, ErrTruncated)
	}
	osz, err := origin.Size()
	if err != nil {
		return nil, fmt.Errorf("open store: origin size: %w", err)
	}
	if uint64(osz) < sb.originSize {
		return nil, fmt.Errorf("open store: origin device is %d bytes, store was formatted for an origin of %d: %w", osz, sb.originSize, ErrTruncated)
	}
	if o.CacheBlocks <= 0 {
		o.CacheBlocks = 8192
	}
	if o.CacheBlocks < 256 {
		o.CacheBlocks = 256
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.nodeCap == 0 || o.nodeCap > maxNodeCap {
		o.nodeCap = maxNodeCap
	}
	if o.nodeCap < 4 {
		o.nodeCap = 4
	}
	e := &Engine{
		origin: origin, store: store, opts: o, uuid: sb.uuid, cs: int64(sb.chunkSize),
		cpb: uint64(sb.chunkSize) / BlockSize, originChunks: sb.originChunks(),
		nodeCap: o.nodeCap, cacheCap: o.CacheBlocks, sb: *sb, sbSlot: slot,
		tableDirty: map[int]bool{}, byID: map[uint32]int{}, queuedAt: map[uint32]uint64{},
		cache: map[uint64]*cblock{}, lru: list.New(), dirty: map[uint64]*cblock{},
		reserved: map[uint64]bool{}, holds: map[uint64]int{}, holdWait: map[uint64]chan struct{}{},
		locks: map[uint64]chan struct{}{}, openSeq: 1,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), bgDone: make(chan struct{}),
		failKick: make(chan struct{}, 1), recDone: make(chan struct{}),
		checkSem: make(chan struct{}, 1),
	}
	e.cond = sync.NewCond(&e.mu)
	e.beforeReclaim = o.BeforeReclaim
	e.hookCtx, e.hookCancel = context.WithCancel(context.Background())
	cs := int(e.cs)
	// Copy buffers hold one chunk, or a run of chunks copied together
	// (copyRun). Aligned, so that on O_DIRECT devices (chunk-aligned
	// offsets, whole chunks) copy-outs go straight to the device.
	e.bufPool.New = func() any { b := AlignedBuffer(max(cs, copyRunBytes)); return &b }

	// Journal recovery.
	e.setFlushBaseline()
	n, err := e.replay()
	if err != nil {
		return nil, fmt.Errorf("open store: journal recovery: %w", err)
	}
	if err := e.load(); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	wasClean := sb.flags&superFlagClean != 0
	// Mark the store in use (dirty) with the journal tail after replay.
	e.sbMu.Lock()
	e.sb.flags &^= superFlagClean
	e.sb.jTailPos, e.sb.jTailSeq = e.jPos, e.jSeq
	err = e.writeSuperLocked()
	e.sbMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if n > 0 || !wasClean {
		e.events = append(e.events, Event{Kind: EventRecovered, Message: fmt.Sprintf("unclean shutdown: replayed %d journal transactions", n)})
	}
	e.flushEvents()
	if !o.ManualReclaim {
		go e.reclaimer()
	} else {
		close(e.bgDone)
	}
	e.kickReclaim()
	if o.RecoverBackoff >= 0 {
		go e.recoverer()
	} else {
		close(e.recDone)
	}
	return e, nil
}

// load reads the state block and snapshot table into memory.
func (e *Engine) load() error {
	b, err := e.readBlock(e.sb.stateAddr)
	if err != nil {
		return err
	}
	st, err := decodeState(b, e.sb.stateAddr, e.uuid)
	if err != nil {
		return err
	}
	if !e.isMetaAddr(st.root) || st.dataFree > e.sb.dataChunks || st.metaFree > e.sb.metaBlocks {
		return fmt.Errorf("state block: root %d / free counts out of range: %w", st.root, ErrCorrupt)
	}
	e.st = *st
	e.slots = make([]tableEntry, e.sb.tableCap)
	for i := uint64(0); i < e.sb.tableBlocks; i++ {
		addr := e.sb.tableStart + i
		b, err := e.readBlock(addr)
		if err != nil {
			return err
		}
		ents, err := decodeTableBlock(b, addr, e.uuid)
		if err != nil {
			return err
		}
		for j, t := range ents {
			s := int(i)*tableEntriesPerBlk + j
			if t.state == slotFree {
				continue
			}
			if s >= len(e.slots) {
				return fmt.Errorf("snapshot table slot %d beyond capacity %d: %w", s, len(e.slots), ErrCorrupt)
			}
			if _, dup := e.byID[t.id]; dup || t.id >= e.st.nextID {
				return fmt.Errorf("snapshot table slot %d: id %d duplicated or not yet allocated: %w", s, t.id, ErrCorrupt)
			}
			e.slots[s] = t
			e.byID[t.id] = s
			switch t.state {
			case slotLive:
				e.live = append(e.live, t.id)
			case slotQueued:
				e.queued = append(e.queued, t.id)
			case slotReclaiming:
				e.recl = append(e.recl, t.id)
			}
		}
	}
	for _, s := range [][]uint32{e.live, e.queued, e.recl} {
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	}
	if (len(e.recl) > 0) != e.st.reclaiming && len(e.recl) > 0 {
		return fmt.Errorf("snapshot table has snapshots being reclaimed but no reclamation pass is recorded: %w", ErrCorrupt)
	}
	return nil
}

// writeSuperLocked writes the in-memory superblock to the older slot and
// flushes. Two copies with sequence numbers: a torn write leaves the other.
func (e *Engine) writeSuperLocked() error {
	e.sb.seq++
	slot := 1 - e.sbSlot
	e.preserve(slot)
	if err := writeFull(e.store, encodeSuper(&e.sb, slot), int64(slot)*BlockSize); err != nil {
		return fmt.Errorf("write superblock: %w", err)
	}
	if err := e.flushStore(); err != nil {
		return fmt.Errorf("flush superblock: %w", err)
	}
	e.nFlushes.Add(1)
	e.sbSlot = slot
	return nil
}

// Close commits outstanding changes, marks the store clean and stops the
// background reclaimer. The devices are not closed.
func (e *Engine) Close() error {
	e.closeMu.Lock()
	defer e.closeMu.Unlock()
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	e.closed = true
	e.mu.Unlock()
	close(e.stop)
	e.hookCancel() // a BeforeReclaim in progress returns
	<-e.bgDone
	<-e.recDone
	e.mu.Lock()
	err := e.waitDurableLocked(e.openSeq)
	failed := e.failed
	e.mu.Unlock()
	if err != nil {
		return err
	}
	if failed != nil {
		return failed
	}
	e.sbMu.Lock()
	defer e.sbMu.Unlock()
	if err := e.flushStore(); err != nil {
		return fmt.Errorf("close: flush: %w", err)
	}
	e.sb.flags |= superFlagClean
	e.sb.jTailPos, e.sb.jTailSeq = e.jPos, e.jSeq
	return e.writeSuperLocked()
}

// fail puts the engine in the failed state (e.mu held): every operation
// returns the error until Recover succeeds. Nothing more is written, so
// the store stays as a crash at this instant would leave it.
func (e *Engine) fail(err error) error {
	if e.failed == nil {
		e.failed = fmt.Errorf("%w: %w", ErrFailed, err)
		e.events = append(e.events, Event{Kind: EventFailed, Message: e.failed.Error()})
		select {
		case e.failKick <- struct{}{}:
		default:
		}
	}
	e.cond.Broadcast()
	return e.failed
}

// usable returns an error if the engine can no longer be used. e.mu held.
func (e *Engine) usable() error {
	if e.failed != nil {
		return e.failed
	}
	if e.closed {
		return ErrClosed
	}
	return nil
}

// lock takes e.mu for foreground work; the background reclaimer sees that
// it is wanted and ends its batch early.
func (e *Engine) lock() {
	e.fgWait.Add(1)
	e.mu.Lock()
	e.fgWait.Add(-1)
}

// unlock releases e.mu and delivers queued events.
func (e *Engine) unlock() {
	ev := e.events
	e.events = nil
	e.mu.Unlock()
	if e.opts.OnEvent != nil {
		for _, x := range ev {
			e.opts.OnEvent(x)
		}
	}
}

func (e *Engine) flushEvents() {
	e.mu.Lock()
	e.unlock()
}

// Epoch returns the server term last recorded in the superblock.
func (e *Engine) Epoch() uint64 {
	e.sbMu.Lock()
	defer e.sbMu.Unlock()
	return e.sb.epoch
}

// SetEpoch durably records the server term in the superblock. A new server
// calls it at takeover, after winning the cluster lock.
func (e *Engine) SetEpoch(ctx context.Context, epoch uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	err := e.usable()
	e.mu.Unlock()
	if err != nil {
		return err
	}
	e.sbMu.Lock()
	defer e.sbMu.Unlock()
	old := e.sb.epoch
	e.sb.epoch = epoch
	if err := e.writeSuperLocked(); err != nil {
		e.sb.epoch = old
		return fmt.Errorf("set epoch: %w", err)
	}
	return nil
}

// Volume attributes: a small blob the engine keeps for its user in the
// superblock (the snapshot server records there the shared state that
// must outlive a restart of every node), written durably by
// SetVolumeAttrs and read back by Open.
const (
	// MaxVolumeAttrs bounds the volume attributes, in bytes.
	MaxVolumeAttrs = 3072
	// superAttrsOff is where they live in the superblock: a u32 length,
	// then the bytes.
	superAttrsOff = 256
)

// VolumeAttrs returns the volume attributes last recorded (nil: none).
// The caller must not modify them.
func (e *Engine) VolumeAttrs() []byte {
	e.sbMu.Lock()
	defer e.sbMu.Unlock()
	return e.sb.attrs
}

// SetVolumeAttrs durably records b (at most MaxVolumeAttrs bytes; empty:
// none) as the volume attributes, in both superblock copies' rotation as
// SetEpoch does: when it returns nil they survive a crash.
func (e *Engine) SetVolumeAttrs(ctx context.Context, b []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(b) > MaxVolumeAttrs {
		return fmt.Errorf("set volume attributes: %d bytes, over %d", len(b), MaxVolumeAttrs)
	}
	e.mu.Lock()
	err := e.usable()
	e.mu.Unlock()
	if err != nil {
		return err
	}
	e.sbMu.Lock()
	defer e.sbMu.Unlock()
	old := e.sb.attrs
	e.sb.attrs = nil
	if len(b) > 0 {
		e.sb.attrs = bytes.Clone(b)
	}
	if err := e.writeSuperLocked(); err != nil {
		e.sb.attrs = old
		return fmt.Errorf("set volume attributes: %w", err)
	}
	return nil
}

// ChunkSize returns the chunk size in bytes.
func (e *Engine) ChunkSize() int { return int(e.cs) }

// OriginChunks returns the number of chunks of the origin.
func (e *Engine) OriginChunks() uint64 { return e.originChunks }

// OriginSize returns the origin size in bytes recorded at format time.
func (e *Engine) OriginSize() int64 { return int64(e.sb.originSize) }

// UUID returns the volume UUID.
func (e *Engine) UUID() [16]byte { return e.uuid }

// Generation returns the snapshot generation: the id of the newest snapshot
// ever created (0 if none). It changes on every snapshot create and never
// otherwise, so "chunk C needs no copy-out at generation G" stays true
// while Generation() == G.
func (e *Engine) Generation() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.generation
}

// LiveSnapshots returns the generation and the number of live snapshots,
// read together. With none, no origin chunk needs a copy-out while
// Generation() stays the same (a snapshot's creation changes it).
func (e *Engine) LiveSnapshots() (gen uint64, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.generation, len(e.live)
}

// Stats returns counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Stats{
		CopyOuts: e.nCopyOuts.Load(), PrivateCopies: e.nPrivate.Load(), Commits: e.nCommits.Load(),
		CommitBlocks: e.nCommitBlocks.Load(), Flushes: e.nFlushes.Load(), Drops: e.st.drops,
		SnapshotsDropped: e.nDrops.Load(), Recoveries: e.nRecoveries.Load(),
		FreeChunks: e.st.dataFree, DataChunks: e.sb.dataChunks, FreeMeta: e.st.metaFree,
		MetaBlocks: e.sb.metaBlocks, Exceptions: e.st.exceptions,
	}
}

// StoreOffset returns the byte offset on the store device of data chunk x.
func (e *Engine) storeOffset(x uint64) int64 {
	return int64(e.sb.dataStart+x*e.cpb) * BlockSize
}
