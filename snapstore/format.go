package snapstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// On-disk constants. The layout is documented in doc.go; keep the two in step.
const (
	// BlockSize is the size of every metadata block and the unit in which
	// the store device is addressed.
	BlockSize = 4096

	// FormatVersion is the on-disk format version this package writes and
	// the newest it reads.
	FormatVersion = 1

	// MinChunkSize, MaxChunkSize and DefaultChunkSize bound the chunk size.
	MinChunkSize     = 4 << 10
	MaxChunkSize     = 1 << 20
	DefaultChunkSize = 64 << 10

	hdrSize  = 48
	magicHdr = 0x424E5343 // "CSNB" little endian

	kindSuper      = 1
	kindState      = 2
	kindTable      = 3
	kindDataBitmap = 4
	kindMetaBitmap = 5
	kindLeaf       = 6
	kindBranch     = 7
	kindJournal    = 8

	superFlagClean = 1 << 0

	// Snapshot table.
	tableEntrySize     = 128
	tableEntriesPerBlk = (BlockSize - hdrSize) / tableEntrySize // 31
	maxNameLen         = 63

	// Bitmaps.
	bitsPerBitmapBlk = (BlockSize - hdrSize) * 8 // 32384

	// B+tree nodes.
	nodeHdr       = hdrSize + 8
	leafEntrySize = 24
	branchEntSize = 24
	maxNodeCap    = (BlockSize - nodeHdr) / leafEntrySize // 168

	// Journal descriptor.
	journalHdr     = hdrSize + 16
	maxTxBlocks    = (BlockSize - journalHdr) / 8 // 504
	dataEntSize    = 12                           // data chunk u64 + CRC32C u32
	minJournalBlks = 64
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Sentinel errors. Errors returned by this package wrap one of these where
// one applies, so callers can use errors.Is.
var (
	ErrNotStore         = errors.New("not a csnap snapshot store")
	ErrVersion          = errors.New("unsupported format version")
	ErrChunkSize        = errors.New("chunk size mismatch")
	ErrTruncated        = errors.New("device smaller than recorded")
	ErrCorrupt          = errors.New("corrupt metadata")
	ErrSnapshotDropped  = errors.New("snapshot was dropped because the store was full")
	ErrNoSuchSnapshot   = errors.New("no such snapshot")
	ErrSnapshotExists   = errors.New("snapshot name already in use")
	ErrReadOnlySnapshot = errors.New("snapshot is not writable")
	ErrTableFull        = errors.New("snapshot table full")
	ErrBadName          = errors.New("invalid snapshot name")
	ErrRange            = errors.New("chunk out of range")
	ErrClosed           = errors.New("engine closed")
	ErrFailed           = errors.New("engine failed (it recovers in place once the cause is gone)")
)

// blockHeader is the common 48-byte header of every metadata block.
type blockHeader struct {
	kind uint8
	addr uint64
	seq  uint64
	uuid [16]byte
}

func putHeader(b []byte, h blockHeader) {
	binary.LittleEndian.PutUint32(b[0:], magicHdr)
	b[4] = h.kind
	b[5] = FormatVersion
	b[6], b[7] = 0, 0
	binary.LittleEndian.PutUint32(b[8:], 0)
	binary.LittleEndian.PutUint32(b[12:], 0)
	binary.LittleEndian.PutUint64(b[16:], h.addr)
	binary.LittleEndian.PutUint64(b[24:], h.seq)
	copy(b[32:48], h.uuid[:])
}

var zero4 [4]byte

// blockCRC is the CRC32C of a block with its checksum field read as zero.
func blockCRC(b []byte) uint32 {
	c := crc32.Update(0, castagnoli, b[:8])
	c = crc32.Update(c, castagnoli, zero4[:])
	return crc32.Update(c, castagnoli, b[12:BlockSize])
}

// sealBlock computes and stores the CRC32C of a full block.
func sealBlock(b []byte) {
	binary.LittleEndian.PutUint32(b[8:], 0)
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b[:BlockSize], castagnoli))
}

var kindNames = map[uint8]string{
	kindSuper: "superblock", kindState: "state block", kindTable: "snapshot table block",
	kindDataBitmap: "data bitmap block", kindMetaBitmap: "metadata bitmap block",
	kindLeaf: "tree leaf", kindBranch: "tree branch", kindJournal: "journal descriptor",
}

func kindName(k uint8) string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("kind %d", k)
}

// BlockError describes a metadata block that failed verification.
type BlockError struct {
	Addr   uint64 // block number on the store device
	Want   string // what was expected there
	Reason string
	Err    error // ErrCorrupt, ErrNotStore or ErrVersion
}

func (e *BlockError) Error() string {
	return fmt.Sprintf("store block %d (%s): %s", e.Addr, e.Want, e.Reason)
}

func (e *BlockError) Unwrap() error { return e.Err }

// verifyBlock checks magic, version, checksum, kind, address and volume
// UUID. kinds lists acceptable kinds (any if empty). uuid==nil skips the
// UUID check (superblock discovery).
func verifyBlock(b []byte, addr uint64, uuid *[16]byte, kinds ...uint8) (blockHeader, error) {
	want := "metadata block"
	if len(kinds) > 0 {
		want = kindName(kinds[0])
	}
	bad := func(err error, f string, a ...any) (blockHeader, error) {
		return blockHeader{}, &BlockError{Addr: addr, Want: want, Reason: fmt.Sprintf(f, a...), Err: err}
	}
	if len(b) < BlockSize {
		return bad(ErrCorrupt, "short block (%d bytes)", len(b))
	}
	b = b[:BlockSize]
	if binary.LittleEndian.Uint32(b[0:]) != magicHdr {
		return bad(ErrCorrupt, "bad magic %#x", binary.LittleEndian.Uint32(b[0:]))
	}
	stored := binary.LittleEndian.Uint32(b[8:])
	sum := blockCRC(b)
	if sum != stored {
		return bad(ErrCorrupt, "checksum mismatch (stored %#08x, computed %#08x)", stored, sum)
	}
	if b[5] > FormatVersion || b[5] == 0 {
		return bad(ErrVersion, "format version %d (this build reads up to %d)", b[5], FormatVersion)
	}
	h := blockHeader{kind: b[4], addr: binary.LittleEndian.Uint64(b[16:]), seq: binary.LittleEndian.Uint64(b[24:])}
	copy(h.uuid[:], b[32:48])
	if len(kinds) > 0 {
		ok := false
		for _, k := range kinds {
			ok = ok || h.kind == k
		}
		if !ok {
			return bad(ErrCorrupt, "found a %s", kindName(h.kind))
		}
	}
	if h.addr != addr {
		return bad(ErrCorrupt, "misplaced: block says it belongs at %d", h.addr)
	}
	if uuid != nil && h.uuid != *uuid {
		return bad(ErrCorrupt, "belongs to another volume (uuid %x)", h.uuid)
	}
	return h, nil
}

// ---------------------------------------------------------------------------
// Superblock

type superblock struct {
	uuid          [16]byte
	seq           uint64 // superblock write sequence; the higher valid copy wins
	chunkSize     uint32
	originSize    uint64
	storeSize     uint64
	created       int64
	epoch         uint64
	flags         uint32
	tableCap      uint32
	tableStart    uint64
	tableBlocks   uint64
	journalStart  uint64
	journalBlocks uint64
	dbmStart      uint64
	dbmBlocks     uint64
	mbmStart      uint64
	mbmBlocks     uint64
	metaStart     uint64
	metaBlocks    uint64
	dataStart     uint64
	dataChunks    uint64
	jTailPos      uint64
	jTailSeq      uint64
	stateAddr     uint64
	attrs         []byte // volume attributes (SetVolumeAttrs); nil: none
}

const superMagic2 = "csnap snapshot store\x00\x00\x00\x00" // 24 bytes at offset 232

func encodeSuper(s *superblock, addr uint64) []byte {
	b := AlignedBuffer(BlockSize)
	putHeader(b, blockHeader{kind: kindSuper, addr: addr, seq: s.seq, uuid: s.uuid})
	le := binary.LittleEndian
	le.PutUint32(b[48:], s.chunkSize)
	le.PutUint32(b[52:], BlockSize)
	le.PutUint64(b[56:], s.originSize)
	le.PutUint64(b[64:], s.storeSize)
	le.PutUint64(b[72:], uint64(s.created))
	le.PutUint64(b[80:], s.epoch)
	le.PutUint32(b[88:], s.flags)
	le.PutUint32(b[92:], s.tableCap)
	for i, v := range []uint64{s.tableStart, s.tableBlocks, s.journalStart, s.journalBlocks,
		s.dbmStart, s.dbmBlocks, s.mbmStart, s.mbmBlocks, s.metaStart, s.metaBlocks,
		s.dataStart, s.dataChunks, s.jTailPos, s.jTailSeq, s.stateAddr} {
		le.PutUint64(b[96+8*i:], v)
	}
	copy(b[232:256], superMagic2)
	le.PutUint32(b[superAttrsOff:], uint32(len(s.attrs)))
	copy(b[superAttrsOff+4:], s.attrs)
	sealBlock(b)
	return b
}

// decodeSuper decodes and validates one superblock copy read from addr.
func decodeSuper(b []byte, addr uint64) (*superblock, error) {
	if len(b) < BlockSize {
		return nil, fmt.Errorf("superblock %d: short read: %w", addr, ErrNotStore)
	}
	if binary.LittleEndian.Uint32(b[0:]) != magicHdr || string(b[232:256]) != superMagic2 {
		return nil, fmt.Errorf("superblock %d: no csnap magic: %w", addr, ErrNotStore)
	}
	h, err := verifyBlock(b, addr, nil, kindSuper)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	s := &superblock{uuid: h.uuid, seq: h.seq}
	s.chunkSize = le.Uint32(b[48:])
	if bs := le.Uint32(b[52:]); bs != BlockSize {
		return nil, &BlockError{Addr: addr, Want: "superblock", Reason: fmt.Sprintf("block size %d, want %d", bs, BlockSize), Err: ErrVersion}
	}
	s.originSize = le.Uint64(b[56:])
	s.storeSize = le.Uint64(b[64:])
	s.created = int64(le.Uint64(b[72:]))
	s.epoch = le.Uint64(b[80:])
	s.flags = le.Uint32(b[88:])
	s.tableCap = le.Uint32(b[92:])
	vals := []*uint64{&s.tableStart, &s.tableBlocks, &s.journalStart, &s.journalBlocks,
		&s.dbmStart, &s.dbmBlocks, &s.mbmStart, &s.mbmBlocks, &s.metaStart, &s.metaBlocks,
		&s.dataStart, &s.dataChunks, &s.jTailPos, &s.jTailSeq, &s.stateAddr}
	for i, p := range vals {
		*p = le.Uint64(b[96+8*i:])
	}
	if n := le.Uint32(b[superAttrsOff:]); n > MaxVolumeAttrs {
		return nil, &BlockError{Addr: addr, Want: "superblock",
			Reason: fmt.Sprintf("volume attributes of %d bytes, over %d", n, MaxVolumeAttrs), Err: ErrCorrupt}
	} else if n > 0 {
		s.attrs = bytes.Clone(b[superAttrsOff+4 : superAttrsOff+4+int(n)])
	}
	if err := s.validate(); err != nil {
		return nil, &BlockError{Addr: addr, Want: "superblock", Reason: err.Error(), Err: ErrCorrupt}
	}
	return s, nil
}

// validate checks that the layout is self-consistent (regions in order,
// inside the store, sizes sane), so a decoded superblock can be trusted
// for address arithmetic.
func (s *superblock) validate() error {
	cs := uint64(s.chunkSize)
	if cs < MinChunkSize || cs > MaxChunkSize || cs&(cs-1) != 0 {
		return fmt.Errorf("chunk size %d is not a power of two in [%d, %d]", cs, MinChunkSize, MaxChunkSize)
	}
	if s.storeSize%BlockSize != 0 || s.storeSize/BlockSize < 16 {
		return fmt.Errorf("store size %d invalid", s.storeSize)
	}
	total := s.storeSize / BlockSize
	if s.stateAddr != 2 || s.tableStart != 3 {
		return fmt.Errorf("fixed block addresses wrong")
	}
	if s.tableCap == 0 || uint64(s.tableCap) > s.tableBlocks*tableEntriesPerBlk || s.tableBlocks > 1<<20 {
		return fmt.Errorf("snapshot table capacity %d in %d blocks invalid", s.tableCap, s.tableBlocks)
	}
	regions := []struct{ start, n uint64 }{
		{s.tableStart, s.tableBlocks}, {s.journalStart, s.journalBlocks}, {s.dbmStart, s.dbmBlocks},
		{s.mbmStart, s.mbmBlocks}, {s.metaStart, s.metaBlocks},
	}
	next := uint64(3)
	for i, r := range regions {
		if r.start != next || r.n > total || r.start+r.n > total {
			return fmt.Errorf("region %d [%d,+%d) out of order or outside the store", i, r.start, r.n)
		}
		next = r.start + r.n
	}
	cpb := cs / BlockSize
	if s.dataStart < next || s.dataStart%cpb != 0 {
		return fmt.Errorf("data area start %d invalid", s.dataStart)
	}
	if s.dataChunks > (total-s.dataStart)/cpb {
		return fmt.Errorf("data area (%d chunks) exceeds store", s.dataChunks)
	}
	if s.dbmBlocks < (s.dataChunks+bitsPerBitmapBlk-1)/bitsPerBitmapBlk ||
		s.mbmBlocks < (s.metaBlocks+bitsPerBitmapBlk-1)/bitsPerBitmapBlk {
		return fmt.Errorf("bitmaps too small for the areas they map")
	}
	if s.journalBlocks < minJournalBlks || s.jTailPos > s.journalBlocks {
		return fmt.Errorf("journal of %d blocks with tail %d invalid", s.journalBlocks, s.jTailPos)
	}
	if s.metaBlocks < 4 {
		return fmt.Errorf("metadata area too small")
	}
	return nil
}

func (s *superblock) originChunks() uint64 {
	return (s.originSize + uint64(s.chunkSize) - 1) / uint64(s.chunkSize)
}

// ---------------------------------------------------------------------------
// State block: the journaled root of all mutable metadata.

type key struct {
	chunk uint64
	lo    uint32
	priv  bool
}

func (a key) less(b key) bool {
	if a.chunk != b.chunk {
		return a.chunk < b.chunk
	}
	if a.lo != b.lo {
		return a.lo < b.lo
	}
	return !a.priv && b.priv
}

type state struct {
	root        uint64
	height      uint32
	nextID      uint32
	generation  uint64
	pendingDiff int64
	dataFree    uint64
	metaFree    uint64
	dataCursor  uint64
	metaCursor  uint64
	drops       uint64
	reclaiming  bool
	cursorSet   bool
	cursor      key
	exceptions  uint64
}

func encodeState(st *state, uuid [16]byte, addr, seq uint64) []byte {
	b := AlignedBuffer(BlockSize)
	putHeader(b, blockHeader{kind: kindState, addr: addr, seq: seq, uuid: uuid})
	le := binary.LittleEndian
	le.PutUint64(b[48:], st.root)
	le.PutUint32(b[56:], st.height)
	le.PutUint32(b[60:], st.nextID)
	le.PutUint64(b[64:], st.generation)
	le.PutUint64(b[72:], uint64(st.pendingDiff))
	le.PutUint64(b[80:], st.dataFree)
	le.PutUint64(b[88:], st.metaFree)
	le.PutUint64(b[96:], st.dataCursor)
	le.PutUint64(b[104:], st.metaCursor)
	le.PutUint64(b[112:], st.drops)
	if st.reclaiming {
		b[120] = 1
	}
	if st.cursorSet {
		b[121] = 1
	}
	le.PutUint64(b[128:], st.cursor.chunk)
	le.PutUint32(b[136:], st.cursor.lo)
	if st.cursor.priv {
		b[140] = 1
	}
	le.PutUint64(b[144:], st.exceptions)
	sealBlock(b)
	return b
}

func decodeState(b []byte, addr uint64, uuid [16]byte) (*state, error) {
	if _, err := verifyBlock(b, addr, &uuid, kindState); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	st := &state{
		root: le.Uint64(b[48:]), height: le.Uint32(b[56:]), nextID: le.Uint32(b[60:]),
		generation: le.Uint64(b[64:]), pendingDiff: int64(le.Uint64(b[72:])),
		dataFree: le.Uint64(b[80:]), metaFree: le.Uint64(b[88:]),
		dataCursor: le.Uint64(b[96:]), metaCursor: le.Uint64(b[104:]), drops: le.Uint64(b[112:]),
		reclaiming: b[120] == 1, cursorSet: b[121] == 1,
		cursor:     key{chunk: le.Uint64(b[128:]), lo: le.Uint32(b[136:]), priv: b[140] == 1},
		exceptions: le.Uint64(b[144:]),
	}
	if st.height == 0 || st.height > 32 || st.nextID == 0 || b[120] > 1 || b[121] > 1 || b[140] > 1 {
		return nil, &BlockError{Addr: addr, Want: "state block", Reason: "field out of range", Err: ErrCorrupt}
	}
	return st, nil
}

// ---------------------------------------------------------------------------
// Snapshot table

// Snapshot states as stored on disk.
const (
	slotFree       = 0
	slotLive       = 1
	slotQueued     = 2 // deleted or dropped; reclamation not yet started
	slotReclaiming = 3 // in the current reclamation pass
	slotDropped    = 4 // dropped and reclaimed; a tombstone until deleted
)

const (
	flagWritable = 1 << 0
	flagDropped  = 1 << 1
)

type tableEntry struct {
	id       uint32
	state    uint8
	flags    uint8
	priority int32
	ctime    int64
	diff     int64 // difference array for per-snapshot shared-exception counts
	uniq     int64 // exceptions whose only user is this snapshot
	priv     int64 // private exceptions of this snapshot
	name     string
}

func (t *tableEntry) privCount() int64 { return t.priv }

func encodeTableBlock(ents []tableEntry, uuid [16]byte, addr, seq uint64) []byte {
	b := AlignedBuffer(BlockSize)
	putHeader(b, blockHeader{kind: kindTable, addr: addr, seq: seq, uuid: uuid})
	le := binary.LittleEndian
	for i, t := range ents {
		if t.state == slotFree {
			continue
		}
		p := b[hdrSize+i*tableEntrySize:]
		le.PutUint32(p[0:], t.id)
		p[4] = t.state
		p[5] = t.flags
		p[6] = byte(len(t.name))
		le.PutUint32(p[8:], uint32(t.priority))
		le.PutUint64(p[16:], uint64(t.ctime))
		le.PutUint64(p[24:], uint64(t.diff))
		le.PutUint64(p[32:], uint64(t.uniq))
		copy(p[40:40+maxNameLen], t.name)
		le.PutUint64(p[104:], uint64(t.priv))
	}
	sealBlock(b)
	return b
}

func decodeTableBlock(b []byte, addr uint64, uuid [16]byte) ([]tableEntry, error) {
	if _, err := verifyBlock(b, addr, &uuid, kindTable); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	ents := make([]tableEntry, tableEntriesPerBlk)
	for i := range ents {
		p := b[hdrSize+i*tableEntrySize:]
		t := tableEntry{id: le.Uint32(p[0:]), state: p[4], flags: p[5]}
		if t.state == slotFree {
			if t.id != 0 {
				return nil, &BlockError{Addr: addr, Want: "snapshot table block", Reason: fmt.Sprintf("free slot %d has id %d", i, t.id), Err: ErrCorrupt}
			}
			continue
		}
		nl := int(p[6])
		if t.state > slotDropped || t.id == 0 || nl > maxNameLen || t.flags&^(flagWritable|flagDropped) != 0 {
			return nil, &BlockError{Addr: addr, Want: "snapshot table block", Reason: fmt.Sprintf("slot %d malformed", i), Err: ErrCorrupt}
		}
		t.priority = int32(le.Uint32(p[8:]))
		t.ctime = int64(le.Uint64(p[16:]))
		t.diff = int64(le.Uint64(p[24:]))
		t.uniq = int64(le.Uint64(p[32:]))
		t.name = string(p[40 : 40+nl])
		t.priv = int64(le.Uint64(p[104:]))
		ents[i] = t
	}
	return ents, nil
}

// ---------------------------------------------------------------------------
// Bitmaps

func encodeBitmap(bits []byte, kind uint8, uuid [16]byte, addr, seq uint64) []byte {
	b := AlignedBuffer(BlockSize)
	putHeader(b, blockHeader{kind: kind, addr: addr, seq: seq, uuid: uuid})
	copy(b[hdrSize:], bits)
	sealBlock(b)
	return b
}

func decodeBitmap(b []byte, kind uint8, addr uint64, uuid [16]byte) ([]byte, error) {
	if _, err := verifyBlock(b, addr, &uuid, kind); err != nil {
		return nil, err
	}
	bits := make([]byte, BlockSize-hdrSize)
	copy(bits, b[hdrSize:BlockSize])
	return bits, nil
}

// ---------------------------------------------------------------------------
// B+tree nodes

// exception records where a snapshot's copy of an origin chunk lives.
// A shared exception serves snapshot ids [lo, hi] (minus those with a
// private exception for the same chunk); a private one (lo == hi) belongs to
// one writable snapshot.
type exception struct {
	chunk uint64
	lo    uint32
	hi    uint32
	store uint64
	priv  bool
}

func (x exception) key() key { return key{chunk: x.chunk, lo: x.lo, priv: x.priv} }

type node struct {
	addr uint64
	leaf bool
	ents []exception // leaf
	keys []key       // branch: keys[i] is a lower bound of subtree i
	kids []uint64
}

const storeFlagPriv = uint64(1) << 63

func encodeNode(n *node, uuid [16]byte, seq uint64) []byte {
	b := AlignedBuffer(BlockSize)
	kind := uint8(kindBranch)
	if n.leaf {
		kind = kindLeaf
	}
	putHeader(b, blockHeader{kind: kind, addr: n.addr, seq: seq, uuid: uuid})
	le := binary.LittleEndian
	if n.leaf {
		le.PutUint16(b[hdrSize:], uint16(len(n.ents)))
		for i, x := range n.ents {
			p := b[nodeHdr+i*leafEntrySize:]
			le.PutUint64(p[0:], x.chunk)
			le.PutUint32(p[8:], x.lo)
			le.PutUint32(p[12:], x.hi)
			s := x.store
			if x.priv {
				s |= storeFlagPriv
			}
			le.PutUint64(p[16:], s)
		}
	} else {
		le.PutUint16(b[hdrSize:], uint16(len(n.kids)))
		for i := range n.kids {
			p := b[nodeHdr+i*branchEntSize:]
			k := n.keys[i]
			le.PutUint64(p[0:], k.chunk)
			le.PutUint32(p[8:], k.lo)
			if k.priv {
				p[12] = 1
			}
			le.PutUint64(p[16:], n.kids[i])
		}
	}
	sealBlock(b)
	return b
}

func decodeNode(b []byte, addr uint64, uuid [16]byte) (*node, error) {
	h, err := verifyBlock(b, addr, &uuid, kindLeaf, kindBranch)
	if err != nil {
		return nil, err
	}
	bad := func(f string, a ...any) (*node, error) {
		return nil, &BlockError{Addr: addr, Want: "tree node", Reason: fmt.Sprintf(f, a...), Err: ErrCorrupt}
	}
	le := binary.LittleEndian
	n := &node{addr: addr, leaf: h.kind == kindLeaf}
	cnt := int(le.Uint16(b[hdrSize:]))
	if cnt > maxNodeCap {
		return bad("entry count %d exceeds %d", cnt, maxNodeCap)
	}
	if n.leaf {
		n.ents = make([]exception, cnt)
		for i := range n.ents {
			p := b[nodeHdr+i*leafEntrySize:]
			s := le.Uint64(p[16:])
			x := exception{chunk: le.Uint64(p[0:]), lo: le.Uint32(p[8:]), hi: le.Uint32(p[12:]), store: s &^ storeFlagPriv, priv: s&storeFlagPriv != 0}
			if x.lo == 0 || x.hi < x.lo || (x.priv && x.hi != x.lo) {
				return bad("entry %d has invalid snapshot range [%d,%d]", i, x.lo, x.hi)
			}
			if i > 0 && !n.ents[i-1].key().less(x.key()) {
				return bad("entries %d and %d out of order", i-1, i)
			}
			n.ents[i] = x
		}
	} else {
		if cnt == 0 {
			return bad("empty branch")
		}
		n.keys = make([]key, cnt)
		n.kids = make([]uint64, cnt)
		for i := range n.kids {
			p := b[nodeHdr+i*branchEntSize:]
			if p[12] > 1 {
				return bad("key %d malformed", i)
			}
			n.keys[i] = key{chunk: le.Uint64(p[0:]), lo: le.Uint32(p[8:]), priv: p[12] == 1}
			n.kids[i] = le.Uint64(p[16:])
			if i > 0 && !n.keys[i-1].less(n.keys[i]) {
				return bad("keys %d and %d out of order", i-1, i)
			}
		}
	}
	return n, nil
}

// ---------------------------------------------------------------------------
// Journal descriptor

// dataCRC names a data chunk written for this transaction and its CRC32C.
type dataCRC struct {
	chunk uint64
	crc   uint32
}

type jdesc struct {
	seq   uint64
	crc   uint32 // CRC32C of the image blocks, concatenated
	homes []uint64
	// data lists the copied-out chunks of a transaction committed without
	// a flush before the journal write; recovery checks them.
	data []dataCRC
}

func jdescFits(n, m int) bool { return journalHdr+8*n+dataEntSize*m <= BlockSize }

func encodeJDesc(d *jdesc, uuid [16]byte, addr uint64) []byte {
	b := AlignedBuffer(BlockSize)
	putHeader(b, blockHeader{kind: kindJournal, addr: addr, seq: d.seq, uuid: uuid})
	le := binary.LittleEndian
	le.PutUint32(b[hdrSize:], uint32(len(d.homes)))
	le.PutUint32(b[hdrSize+4:], d.crc)
	le.PutUint32(b[hdrSize+8:], uint32(len(d.data)))
	for i, h := range d.homes {
		le.PutUint64(b[journalHdr+8*i:], h)
	}
	p := b[journalHdr+8*len(d.homes):]
	for i, x := range d.data {
		le.PutUint64(p[dataEntSize*i:], x.chunk)
		le.PutUint32(p[dataEntSize*i+8:], x.crc)
	}
	sealBlock(b)
	return b
}

func decodeJDesc(b []byte, addr uint64, uuid [16]byte) (*jdesc, error) {
	h, err := verifyBlock(b, addr, &uuid, kindJournal)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	n := int(le.Uint32(b[hdrSize:]))
	m := int(le.Uint32(b[hdrSize+8:]))
	if n == 0 || n > maxTxBlocks || m > BlockSize || !jdescFits(n, m) || le.Uint32(b[hdrSize+12:]) != 0 {
		return nil, &BlockError{Addr: addr, Want: "journal descriptor", Reason: fmt.Sprintf("%d blocks and %d data chunks", n, m), Err: ErrCorrupt}
	}
	d := &jdesc{seq: h.seq, crc: le.Uint32(b[hdrSize+4:]), homes: make([]uint64, n)}
	for i := range d.homes {
		d.homes[i] = le.Uint64(b[journalHdr+8*i:])
	}
	p := b[journalHdr+8*n:]
	for i := 0; i < m; i++ {
		d.data = append(d.data, dataCRC{chunk: le.Uint64(p[dataEntSize*i:]), crc: le.Uint32(p[dataEntSize*i+8:])})
	}
	return d, nil
}
