package scsi

import (
	"encoding/binary"
	"testing"
)

func readDefect10(flags byte, alloc uint16) []byte {
	c := make([]byte, 10)
	c[0], c[2] = opReadDefectData10, flags
	binary.BigEndian.PutUint16(c[7:9], alloc)
	return c
}

func readDefect12(flags byte, index, alloc uint32) []byte {
	c := make([]byte, 12)
	c[0], c[1] = opReadDefectData12, flags
	binary.BigEndian.PutUint32(c[2:6], index)
	binary.BigEndian.PutUint32(c[6:10], alloc)
	return c
}

func TestReadDefectData10(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	for _, tc := range []struct {
		flags byte
		want  byte
	}{
		{0x00, 0x00},                      // neither list, short block format
		{0x10 | 0x08 | 0x03, 0x18 | 0x03}, // both lists, long block format
		{0x08 | 0x05, 0x08 | 0x05},        // grown list, physical sector format
		{0x10 | 0x04, 0x10 | 0x04},        // primary list, bytes from index
	} {
		r := f.run(nexA, readDefect10(tc.flags, 512), nil)
		wantGood(t, r)
		if len(r.Data) != 4 || r.Data[1] != tc.want || binary.BigEndian.Uint16(r.Data[2:4]) != 0 {
			t.Fatalf("flags %#x: header % x", tc.flags, r.Data)
		}
	}
	// The allocation length cuts the header; 0 returns nothing.
	r := f.run(nexA, readDefect10(0x18, 2), nil)
	wantGood(t, r)
	if len(r.Data) != 2 || r.Data[1] != 0x18 {
		t.Fatalf("alloc 2: % x", r.Data)
	}
	r = f.run(nexA, readDefect10(0x18, 0), nil)
	wantGood(t, r)
	if len(r.Data) != 0 {
		t.Fatalf("alloc 0: % x", r.Data)
	}
	// Reserved format.
	r = f.run(nexA, readDefect10(0x07, 512), nil)
	wantSense(t, r, SenseIllegalRequest, 0x24, 0)
	if r.Sense[15] != 0xc8|2 || binary.BigEndian.Uint16(r.Sense[16:18]) != 2 {
		t.Fatalf("field pointer % x", r.Sense[15:18])
	}
}

func TestReadDefectData12(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	r := f.run(nexA, readDefect12(0x18|0x03, 0, 1024), nil)
	wantGood(t, r)
	if len(r.Data) != 8 || r.Data[1] != 0x1b || binary.BigEndian.Uint16(r.Data[2:4]) != 0 ||
		binary.BigEndian.Uint32(r.Data[4:8]) != 0 {
		t.Fatalf("header % x", r.Data)
	}
	// Any descriptor index is past the end of the empty list.
	r = f.run(nexA, readDefect12(0x08, 1000, 1024), nil)
	wantGood(t, r)
	if len(r.Data) != 8 || r.Data[1] != 0x08 || binary.BigEndian.Uint32(r.Data[4:8]) != 0 {
		t.Fatalf("index 1000: % x", r.Data)
	}
	r = f.run(nexA, readDefect12(0, 0, 5), nil)
	wantGood(t, r)
	if len(r.Data) != 5 {
		t.Fatalf("alloc 5: % x", r.Data)
	}
	r = f.run(nexA, readDefect12(0, 0, 0), nil)
	wantGood(t, r)
	if len(r.Data) != 0 {
		t.Fatalf("alloc 0: % x", r.Data)
	}
	wantSense(t, f.run(nexA, readDefect12(0x1f, 0, 1024), nil), SenseIllegalRequest, 0x24, 0)
}

// TestReadDefectDataReservation: READ DEFECT DATA only reads, so it is
// allowed under a write exclusive reservation held by another nexus and
// conflicts under exclusive access (SBC-3 table 13).
func TestReadDefectDataReservation(t *testing.T) {
	for _, tc := range []struct {
		typ      byte
		conflict bool
	}{{prTypeWE, false}, {prTypeEA, true}} {
		f := newFixture(t, 64)
		f.ready(nexA)
		f.ready(nexB)
		wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
		wantGood(t, f.prOut(nexA, proutReserve, tc.typ, 0xa, 0))
		for _, cdb := range [][]byte{readDefect10(0, 64), readDefect12(0, 0, 64)} {
			r := f.run(nexB, cdb, nil)
			if tc.conflict {
				wantConflict(t, r)
			} else {
				wantGood(t, r)
			}
		}
	}
}
