package scsi

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
)

func orWriteCDB(lba uint64, blocks uint32, flags byte) []byte {
	return rw16(opOrWrite16, lba, blocks, flags)
}

func writeAtomicCDB(lba uint64, blocks uint16, boundary uint16, flags byte) []byte {
	c := make([]byte, 16)
	c[0], c[1] = opWriteAtomic16, flags
	binary.BigEndian.PutUint64(c[2:10], lba)
	binary.BigEndian.PutUint16(c[10:12], boundary)
	binary.BigEndian.PutUint16(c[12:14], blocks)
	return c
}

func TestOrWrite(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	f.writeBlocks(4, bytes.Repeat([]byte{0x0f}, 3*BlockSize))
	f.writeBlocks(3, bytes.Repeat([]byte{0x77}, BlockSize))
	r := f.run(nexA, orWriteCDB(4, 2, 0), bytes.Repeat([]byte{0xa0}, 2*BlockSize))
	wantGood(t, r)
	if r.DataOutLen != 2*BlockSize {
		t.Fatalf("DataOutLen %d", r.DataOutLen)
	}
	if !bytes.Equal(f.readBlocks(4, 2), bytes.Repeat([]byte{0xaf}, 2*BlockSize)) {
		t.Fatal("blocks are not the OR of old and new")
	}
	if !bytes.Equal(f.readBlocks(6, 1), bytes.Repeat([]byte{0x0f}, BlockSize)) ||
		!bytes.Equal(f.readBlocks(3, 1), bytes.Repeat([]byte{0x77}, BlockSize)) {
		t.Fatal("neighbouring blocks changed")
	}
	// OR onto unwritten (zero) blocks is a plain write; DPO and FUA are
	// accepted, FUA writes through.
	_, fuaBefore := f.be.Stats()
	data := pattern(2, 9)
	wantGood(t, f.run(nexA, orWriteCDB(62, 2, 0x18), data))
	if !bytes.Equal(f.readBlocks(62, 2), data) {
		t.Fatal("OR onto zeros")
	}
	if _, fua := f.be.Stats(); fua != fuaBefore+1 {
		t.Fatalf("FUA writes %d, want %d", fua, fuaBefore+1)
	}
	// Zero blocks: GOOD, and the LBA is still checked.
	r = f.run(nexA, orWriteCDB(0, 0, 0), nil)
	wantGood(t, r)
	if r.DataOutLen != 0 {
		t.Fatalf("DataOutLen %d", r.DataOutLen)
	}
	wantGood(t, f.run(nexA, orWriteCDB(64, 0, 0), nil))
	tests := []struct {
		name      string
		cdb, data []byte
		key, asc  byte
	}{
		{"beyond end", orWriteCDB(63, 2, 0), make([]byte, 2*BlockSize), SenseIllegalRequest, 0x21},
		{"zero blocks past end", orWriteCDB(65, 0, 0), nil, SenseIllegalRequest, 0x21},
		{"lba 2^63", orWriteCDB(1<<63, 1, 0), make([]byte, BlockSize), SenseIllegalRequest, 0x21},
		{"lba -1", orWriteCDB(1<<64-1, 1, 0), make([]byte, BlockSize), SenseIllegalRequest, 0x21},
		{"orprotect", orWriteCDB(0, 1, 0x20), make([]byte, BlockSize), SenseIllegalRequest, 0x24},
		{"orprotect 7", orWriteCDB(0, 1, 0xe0), make([]byte, BlockSize), SenseIllegalRequest, 0x24},
		{"too long", orWriteCDB(0, maxTransferBlocks+1, 0), nil, SenseIllegalRequest, 0x24},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantSense(t, f.run(nexA, tc.cdb, tc.data), tc.key, tc.asc, 0)
		})
	}
	// Write protected: DATA PROTECT, nothing written.
	f.be.SetReadOnly(true)
	wantSense(t, f.run(nexA, orWriteCDB(0, 1, 0), bytes.Repeat([]byte{0xff}, BlockSize)), SenseDataProtect, 0x27, 0)
	f.be.SetReadOnly(false)
	if !isZero(f.readBlocks(0, 1)) {
		t.Fatal("written while write protected")
	}
	// Short data-out: only the whole blocks sent are used.
	wantGood(t, f.run(nexA, orWriteCDB(10, 4, 0), bytes.Repeat([]byte{1}, BlockSize+100)))
	if !bytes.Equal(f.readBlocks(10, 1), bytes.Repeat([]byte{1}, BlockSize)) || !isZero(f.readBlocks(11, 3)) {
		t.Fatal("short data-out")
	}
}

// TestOrWriteAtomic runs ORWRITEs that each set one bit of a block against
// each other and against plain WRITEs of the same blocks that keep the
// bits already set: with the read-OR-write not atomic, bits would be lost.
func TestOrWriteAtomic(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	f.ready(nexB)
	const workers = 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := nexA
			if w%2 == 1 {
				n = nexB
			}
			for i := range BlockSize {
				if i%workers != w {
					continue
				}
				data := make([]byte, 2*BlockSize)
				data[i] = 1 << (i % 8)
				data[BlockSize+i] = 1 << (i % 8)
				if r := f.run(n, orWriteCDB(8, 2, 0), data); r.Status != StatusGood {
					t.Errorf("ORWRITE: status %#x", r.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	want := make([]byte, BlockSize)
	for i := range want {
		want[i] = 1 << (i % 8)
	}
	if got := f.readBlocks(8, 2); !bytes.Equal(got[:BlockSize], want) || !bytes.Equal(got[BlockSize:], want) {
		t.Fatal("ORWRITE lost bits: the read-OR-write is not atomic")
	}
}

func TestWriteAtomic(t *testing.T) {
	f := newFixture(t, 4096)
	f.ready(nexA)
	data := pattern(maxAtomicBlocks, 3)
	r := f.run(nexA, writeAtomicCDB(1, maxAtomicBlocks, 0, 0), data)
	wantGood(t, r)
	if r.DataOutLen != maxAtomicBlocks*BlockSize {
		t.Fatalf("DataOutLen %d", r.DataOutLen)
	}
	if !bytes.Equal(f.readBlocks(1, maxAtomicBlocks), data) || !isZero(f.readBlocks(0, 1)) ||
		!isZero(f.readBlocks(maxAtomicBlocks+1, 1)) {
		t.Fatal("WRITE ATOMIC wrote the wrong blocks")
	}
	// Unaligned LBA and odd lengths are fine (no alignment/granularity).
	wantGood(t, f.run(nexA, writeAtomicCDB(4093, 3, 0, 0), pattern(3, 4)))
	// DPO/FUA accepted; FUA writes through.
	_, fuaBefore := f.be.Stats()
	wantGood(t, f.run(nexA, writeAtomicCDB(0, 1, 0, 0x18), pattern(1, 5)))
	if _, fua := f.be.Stats(); fua != fuaBefore+1 {
		t.Fatalf("FUA writes %d, want %d", fua, fuaBefore+1)
	}
	r = f.run(nexA, writeAtomicCDB(0, 0, 0, 0), nil)
	wantGood(t, r)
	wantGood(t, f.run(nexA, writeAtomicCDB(4096, 0, 0, 0), nil))
	tests := []struct {
		name      string
		cdb, data []byte
		key, asc  byte
	}{
		{"beyond end", writeAtomicCDB(4095, 2, 0, 0), pattern(2, 1), SenseIllegalRequest, 0x21},
		{"zero blocks past end", writeAtomicCDB(4097, 0, 0, 0), nil, SenseIllegalRequest, 0x21},
		{"lba 2^63", writeAtomicCDB(1<<63, 1, 0, 0), pattern(1, 1), SenseIllegalRequest, 0x21},
		{"lba -1", writeAtomicCDB(1<<64-1, 1, 0, 0), pattern(1, 1), SenseIllegalRequest, 0x21},
		{"wrprotect", writeAtomicCDB(0, 1, 0, 0x20), pattern(1, 1), SenseIllegalRequest, 0x24},
		{"atomic boundary", writeAtomicCDB(0, 2, 1, 0), pattern(2, 1), SenseIllegalRequest, 0x24},
		{"too long", writeAtomicCDB(0, maxAtomicBlocks+1, 0, 0), pattern(maxAtomicBlocks+1, 1), SenseIllegalRequest, 0x24},
		{"short data-out", writeAtomicCDB(3000, 4, 0, 0), pattern(3, 1), SenseIllegalRequest, 0x24},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantSense(t, f.run(nexA, tc.cdb, tc.data), tc.key, tc.asc, 0)
		})
	}
	if !isZero(f.readBlocks(3000, 4)) {
		t.Fatal("a refused atomic write wrote blocks")
	}
	f.be.SetReadOnly(true)
	wantSense(t, f.run(nexA, writeAtomicCDB(0, 1, 0, 0), pattern(1, 1)), SenseDataProtect, 0x27, 0)
	// WRPROTECT is checked before write protection.
	wantSense(t, f.run(nexA, writeAtomicCDB(0, 1, 0, 0x40), pattern(1, 1)), SenseIllegalRequest, 0x24, 0)
}

// TestWriteAtomicIsAtomic races atomic writes of whole-range patterns with
// ORWRITEs and COMPARE AND WRITEs of one block inside the range: a COMPARE
// AND WRITE that read a torn range (blocks from two different atomic
// writes) would show the atomic write was split.
func TestWriteAtomicIsAtomic(t *testing.T) {
	f := newFixture(t, 1024)
	f.ready(nexA)
	f.ready(nexB)
	const blocks = 300 // spans three lock regions
	fill := func(b byte) []byte { return bytes.Repeat([]byte{b}, blocks*BlockSize) }
	wantGood(t, f.run(nexA, writeAtomicCDB(100, blocks, 0, 0), fill(1)))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			if r := f.run(nexA, writeAtomicCDB(100, blocks, 0, 0), fill(byte(i%250+1))); r.Status != StatusGood {
				t.Errorf("WRITE ATOMIC: status %#x", r.Status)
				break
			}
		}
		close(stop)
	}()
	for {
		select {
		case <-stop:
			wg.Wait()
			return
		default:
		}
		// Read the range with ORWRITE's lock discipline: an ORWRITE of
		// zeros rewrites the blocks unchanged, atomically, so a torn
		// atomic write would survive it; then check the whole range.
		if r := f.run(nexB, orWriteCDB(100, blocks, 0), make([]byte, blocks*BlockSize)); r.Status != StatusGood {
			t.Fatalf("ORWRITE: status %#x", r.Status)
		}
		unlock := f.lu.locks.lock(100, blocks, true)
		got := f.readBlocks(100, blocks)
		unlock()
		if !bytes.Equal(got, bytes.Repeat(got[:1], len(got))) {
			t.Fatal("torn atomic write")
		}
	}
}

func TestBlockLimitsAndGeometry(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	rc16 := make([]byte, 16)
	rc16[0], rc16[1], rc16[13] = opServiceActionIn16, saReadCapacity16, 32
	r := f.run(nexA, rc16, nil)
	wantGood(t, r)
	if binary.BigEndian.Uint32(r.Data[8:12]) != 512 || r.Data[13]&0x0f != physBlockExp ||
		binary.BigEndian.Uint16(r.Data[14:16])&0x3fff != 0 || r.Data[14]&0xc0 != 0xc0 {
		t.Fatalf("READ CAPACITY(16) % x", r.Data)
	}
	r = f.run(nexA, inquiry(true, 0xb0, 64), nil)
	wantGood(t, r)
	d := r.Data
	u32 := func(i int) uint32 { return binary.BigEndian.Uint32(d[i:]) }
	if binary.BigEndian.Uint16(d[6:8]) != blocksPerPhys {
		t.Fatalf("OPTIMAL TRANSFER LENGTH GRANULARITY %d", binary.BigEndian.Uint16(d[6:8]))
	}
	if u32(28) != blocksPerPhys || u32(32) != 0x80000000 {
		t.Fatalf("unmap granularity %d, alignment word %#x", u32(28), u32(32))
	}
	if u32(44) != maxAtomicBlocks || u32(44) > u32(8) || u32(48) != 0 || u32(52) != 0 || u32(56) != 0 || u32(60) != 0 {
		t.Fatalf("atomic fields % x", d[44:64])
	}
}

// TestUnmapUnaligned unmaps ranges that start and end inside 4 KiB
// (8-block) units, with UNMAP and with WRITE SAME's UNMAP bit: every block
// named reads zeros, every block around it keeps its data, whatever
// physBlockExp says.
func TestUnmapUnaligned(t *testing.T) {
	f := newFixture(t, 256)
	f.ready(nexA)
	data := pattern(256, 7)
	for i, c := range []struct {
		lba, blocks uint64
		cdb         func(lba, blocks uint64) ([]byte, []byte)
	}{
		{3, 2, nil}, {1, 7, nil}, {13, 20, nil}, {40, 8, nil}, {255, 1, nil},
		{5, 14, func(lba, blocks uint64) ([]byte, []byte) {
			return rw10(opWriteSame10, uint32(lba), uint16(blocks), 0x08), make([]byte, BlockSize)
		}},
		{97, 3, func(lba, blocks uint64) ([]byte, []byte) {
			return rw16(opWriteSame16, lba, uint32(blocks), 0x08), make([]byte, BlockSize)
		}},
		{120, 9, func(lba, blocks uint64) ([]byte, []byte) {
			return rw16(opWriteSame16, lba, uint32(blocks), 0x09), nil // NDOB
		}},
	} {
		f.writeBlocks(0, data)
		cdb, p := func() ([]byte, []byte) {
			if c.cdb != nil {
				return c.cdb(c.lba, c.blocks)
			}
			p := unmapParams([2]uint64{c.lba, c.blocks})
			return unmapCDB(len(p)), p
		}()
		wantGood(t, f.run(nexA, cdb, p))
		got := f.readBlocks(0, 256)
		for b := uint64(0); b < 256; b++ {
			blk := got[b*BlockSize : (b+1)*BlockSize]
			inside := b >= c.lba && b < c.lba+c.blocks
			if inside && !isZero(blk) {
				t.Fatalf("case %d: block %d in [%d,+%d) does not read zeros", i, b, c.lba, c.blocks)
			}
			if !inside && !bytes.Equal(blk, data[b*BlockSize:(b+1)*BlockSize]) {
				t.Fatalf("case %d: block %d outside [%d,+%d) changed", i, b, c.lba, c.blocks)
			}
		}
	}
	// WRITE SAME with UNMAP and a non-zero block, unaligned: it writes the
	// block (what libiscsi's UnmapUnaligned sends).
	for i := uint64(1); i < 8; i++ {
		blk := bytes.Repeat([]byte{0xa6}, BlockSize)
		wantGood(t, f.run(nexA, rw10(opWriteSame10, uint32(i), uint16(8-i), 0x08), blk))
		if !bytes.Equal(f.readBlocks(i, int(8-i)), bytes.Repeat(blk, int(8-i))) {
			t.Fatalf("WRITE SAME UNMAP at %d did not write the block", i)
		}
	}
}
