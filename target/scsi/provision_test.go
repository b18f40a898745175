package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func unmapParams(descs ...[2]uint64) []byte {
	p := make([]byte, 8+16*len(descs))
	binary.BigEndian.PutUint16(p[0:2], uint16(len(p)-2))
	binary.BigEndian.PutUint16(p[2:4], uint16(16*len(descs)))
	for i, d := range descs {
		binary.BigEndian.PutUint64(p[8+16*i:], d[0])
		binary.BigEndian.PutUint32(p[16+16*i:], uint32(d[1]))
	}
	return p
}

func unmapCDB(n int) []byte {
	c := make([]byte, 10)
	c[0] = opUnmap
	binary.BigEndian.PutUint16(c[7:9], uint16(n))
	return c
}

func getLBAStatus(lba uint64, alloc uint32) []byte {
	c := rw16(opServiceActionIn16, lba, alloc, 0)
	c[1] = saGetLBAStatus
	return c
}

func TestUnmap(t *testing.T) {
	f := newFixture(t, 256)
	f.ready(nexA)
	f.writeBlocks(0, pattern(256, 1))
	p := unmapParams([2]uint64{10, 5}, [2]uint64{100, 1}, [2]uint64{0, 0})
	r := f.run(nexA, unmapCDB(len(p)), p)
	wantGood(t, r)
	if r.DataOutLen != len(p) {
		t.Fatalf("DataOutLen %d", r.DataOutLen)
	}
	if !isZero(f.readBlocks(10, 5)) || !isZero(f.readBlocks(100, 1)) || isZero(f.readBlocks(15, 1)) || isZero(f.readBlocks(9, 1)) {
		t.Fatal("wrong blocks unmapped")
	}
	// GET LBA STATUS sees it.
	r = f.run(nexA, getLBAStatus(10, 24), nil)
	wantGood(t, r)
	if d := r.Data[8:]; binary.BigEndian.Uint64(d) != 10 || binary.BigEndian.Uint32(d[8:]) != 5 || d[12] != 1 {
		t.Fatalf("LBA status % x", r.Data)
	}
	r = f.run(nexA, getLBAStatus(0, 1024), nil)
	wantGood(t, r)
	if n := binary.BigEndian.Uint32(r.Data); n != 4+16*5 {
		t.Fatalf("%d bytes of descriptors, want 5 descriptors: % x", n, r.Data)
	}
	tests := []struct {
		name           string
		cdb, data      []byte
		key, asc, ascq byte
	}{
		{"beyond end", unmapCDB(24), unmapParams([2]uint64{250, 7}), SenseIllegalRequest, 0x21, 0},
		{"huge lba", unmapCDB(24), unmapParams([2]uint64{1 << 63, 1}), SenseIllegalRequest, 0x21, 0},
		{"too many blocks", unmapCDB(40), unmapParams([2]uint64{0, 1}, [2]uint64{0, maxUnmapBlocks}), SenseIllegalRequest, 0x26, 0},
		{"short list", unmapCDB(4), make([]byte, 4), SenseIllegalRequest, 0x1a, 0},
		{"list beyond data", unmapCDB(40), unmapParams([2]uint64{0, 1}), SenseIllegalRequest, 0x1a, 0},
		{"anchor", []byte{opUnmap, 1, 0, 0, 0, 0, 0, 0, 24, 0}, unmapParams([2]uint64{0, 1}), SenseIllegalRequest, 0x24, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantSense(t, f.run(nexA, tc.cdb, tc.data), tc.key, tc.asc, tc.ascq)
		})
	}
	many := make([][2]uint64, maxUnmapDescriptors+1)
	p = unmapParams(many...)
	wantSense(t, f.run(nexA, unmapCDB(len(p)), p), SenseIllegalRequest, 0x26, 0)
	wantGood(t, f.run(nexA, unmapCDB(0), nil))
	wantSense(t, f.run(nexA, getLBAStatus(256, 24), nil), SenseIllegalRequest, 0x21, 0)
}

func TestWriteSame(t *testing.T) {
	f := newFixture(t, 4096)
	f.ready(nexA)
	block := pattern(1, 5)
	for _, c := range [][]byte{rw10(opWriteSame10, 1, 3000, 0), rw16(opWriteSame16, 1, 3000, 0)} {
		r := f.run(nexA, c, block)
		wantGood(t, r)
		if r.DataOutLen != BlockSize {
			t.Fatalf("DataOutLen %d", r.DataOutLen)
		}
		if !bytes.Equal(f.readBlocks(1, 3000), bytes.Repeat(block, 3000)) || !isZero(f.readBlocks(0, 1)) || !isZero(f.readBlocks(3001, 1)) {
			t.Fatal("WRITE SAME wrote the wrong blocks")
		}
	}
	// UNMAP with a zero block deallocates.
	r := f.run(nexA, rw10(opWriteSame10, 10, 20, 0x08), make([]byte, BlockSize))
	wantGood(t, r)
	st := f.run(nexA, getLBAStatus(10, 24), nil)
	if d := st.Data[8:]; binary.BigEndian.Uint32(d[8:]) != 20 || d[12] != 1 {
		t.Fatalf("LBA status after WRITE SAME UNMAP % x", st.Data)
	}
	// UNMAP with a non-zero block writes it.
	wantGood(t, f.run(nexA, rw16(opWriteSame16, 10, 2, 0x08), block))
	if !bytes.Equal(f.readBlocks(10, 2), bytes.Repeat(block, 2)) {
		t.Fatal("WRITE SAME UNMAP with data did not write")
	}
	// NDOB: zeros, no data-out.
	r = f.run(nexA, rw16(opWriteSame16, 10, 2, 0x09), nil)
	wantGood(t, r)
	if r.DataOutLen != 0 || !isZero(f.readBlocks(10, 2)) {
		t.Fatal("NDOB")
	}
	tests := []struct {
		name      string
		cdb, data []byte
		asc       byte
	}{
		{"zero blocks", rw10(opWriteSame10, 0, 0, 0), block, 0x24},
		{"beyond end", rw10(opWriteSame10, 4095, 2, 0), block, 0x21},
		{"lba -1", rw16(opWriteSame16, 1<<64-1, 1, 0), block, 0x21},
		{"anchor", rw10(opWriteSame10, 0, 1, 0x18), block, 0x24},
		{"wrprotect", rw10(opWriteSame10, 0, 1, 0x20), block, 0x24},
		{"too long", rw16(opWriteSame16, 0, maxWriteSameBlocks+1, 0), block, 0x24},
		{"half block", rw10(opWriteSame10, 0, 1, 0x08), block[:256], 0x24},
		{"two blocks", rw10(opWriteSame10, 0, 1, 0x08), pattern(2, 1), 0x24},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantSense(t, f.run(nexA, tc.cdb, tc.data), SenseIllegalRequest, tc.asc, 0)
		})
	}
}

func TestGetLBAStatusPlainBackend(t *testing.T) {
	be := failingBackend{NewMemBackend(64*BlockSize, testIdentity()), nil}
	tgt, _ := NewTarget(map[uint64]*LU{0: NewLU(struct{ Backend }{be})}, NewMemStore())
	f := &fixture{t: t, tgt: tgt}
	f.ready(nexA)
	r := f.run(nexA, getLBAStatus(4, 1024), nil)
	wantGood(t, r)
	if d := r.Data[8:]; len(d) != 16 || binary.BigEndian.Uint32(d[8:]) != 60 || d[12] != 0 {
		t.Fatalf("LBA status % x", r.Data)
	}
}
