package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// TestPhysicalBlockSize: an LU set to 4 KiB physical blocks reports
// exponent 3 in READ CAPACITY(16) and 8-block granularities in Block
// Limits; UNMAP of a range inside a physical block still deallocates
// exactly that range. Bad sizes are refused.
func TestPhysicalBlockSize(t *testing.T) {
	be := NewMemBackend(256*BlockSize, testIdentity())
	lu := NewLU(be)
	for _, bad := range []int{0, 511, 1000, 3 * 512, 128 << 10} {
		if err := lu.SetPhysicalBlockSize(bad); err == nil {
			t.Errorf("physical block size %d accepted", bad)
		}
	}
	if err := lu.SetPhysicalBlockSize(4096); err != nil {
		t.Fatal(err)
	}
	tgt, err := NewTarget(map[uint64]*LU{0: lu}, NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tgt, be: be, lu: lu}
	f.ready(nexA)
	rc16 := make([]byte, 16)
	rc16[0], rc16[1], rc16[13] = opServiceActionIn16, saReadCapacity16, 32
	r := f.run(nexA, rc16, nil)
	wantGood(t, r)
	if r.Data[13]&0x0f != 3 || binary.BigEndian.Uint16(r.Data[14:16])&0x3fff != 0 {
		t.Fatalf("READ CAPACITY(16) exponent/alignment % x", r.Data[12:16])
	}
	r = f.run(nexA, inquiry(true, vpdBlockLimits, 64), nil)
	wantGood(t, r)
	if g, u := binary.BigEndian.Uint16(r.Data[6:8]), binary.BigEndian.Uint32(r.Data[28:32]); g != 8 || u != 8 {
		t.Fatalf("granularities %d, %d; want 8", g, u)
	}
	// A default LU is unchanged.
	if d := newFixture(t, 64); d.lu.blocksPerPhys() != blocksPerPhys {
		t.Fatal("default physical block size changed")
	}

	data := pattern(16, 7)
	f.writeBlocks(0, data)
	list := []byte{0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 0}
	wantGood(t, f.run(nexA, []byte{opUnmap, 0, 0, 0, 0, 0, 0, 0, byte(len(list)), 0}, list))
	got := f.readBlocks(0, 16)
	want := bytes.Clone(data)
	clear(want[3*BlockSize : 5*BlockSize])
	if !bytes.Equal(got, want) {
		t.Fatal("UNMAP inside a 4 KiB physical block did not deallocate exactly blocks 3-4")
	}
}
