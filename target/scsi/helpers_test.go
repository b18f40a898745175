package scsi

import (
	"context"
	"encoding/binary"
	"testing"
)

var (
	portA = Port{Name: "iqn.2025-01.io.csnap:vol,t,0x0001", TargetName: "iqn.2025-01.io.csnap:vol", RelativeID: 1, GroupID: 1}
	portB = Port{Name: "iqn.2025-01.io.csnap:vol,t,0x0002", TargetName: "iqn.2025-01.io.csnap:vol", RelativeID: 2, GroupID: 2}
	nexA  = Nexus{InitiatorPort: "iqn.1993-08.org.debian:a,i,0x23d000000001", Port: portA}
	nexB  = Nexus{InitiatorPort: "iqn.1993-08.org.debian:b,i,0x23d000000002", Port: portA}
	nexC  = Nexus{InitiatorPort: "iqn.1993-08.org.debian:c,i,0x23d000000003", Port: portB}
)

func testIdentity() Identity {
	id := Identity{Serial: "csnap0001", Product: "csnap volume"}
	id.NAA[0] = 0x60
	id.NAA[15] = 0x01
	return id
}

type fixture struct {
	t   testing.TB
	tgt *Target
	be  *MemBackend
	lu  *LU
}

// newFixture returns a target with one LU of blocks blocks at LUN 0.
func newFixture(t testing.TB, blocks int64) *fixture {
	t.Helper()
	be := NewMemBackend(blocks*BlockSize, testIdentity())
	lu := NewLU(be)
	tgt, err := NewTarget(map[uint64]*LU{0: lu}, NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, tgt: tgt, be: be, lu: lu}
}

// run sends cdb with data-out data from nexus n to LUN 0.
func (f *fixture) run(n Nexus, cdb []byte, data []byte) Result {
	return f.runLUN(0, n, cdb, data)
}

func (f *fixture) runLUN(lun uint64, n Nexus, cdb []byte, data []byte) Result {
	return f.tgt.Execute(context.Background(), &Command{CDB: cdb, LUN: lun, Nexus: n,
		Attr: TaskSimple, DataOut: data, ExpectedLen: uint32(len(data))})
}

// ready clears pending unit attentions of n with TEST UNIT READY.
func (f *fixture) ready(n Nexus) {
	f.t.Helper()
	for range 20 {
		if r := f.run(n, tur(), nil); r.Status == StatusGood {
			return
		}
	}
	f.t.Fatalf("unit attentions of %v do not clear", n)
}

func senseOf(r Result) (key, asc, ascq byte) {
	if len(r.Sense) < 14 {
		return 0xff, 0xff, 0xff
	}
	return r.Sense[2] & 0x0f, r.Sense[12], r.Sense[13]
}

func wantGood(t testing.TB, r Result) {
	t.Helper()
	if r.Status != StatusGood {
		k, a, q := senseOf(r)
		t.Fatalf("status %#x sense %x/%02x/%02x, want GOOD", r.Status, k, a, q)
	}
}

func wantSense(t testing.TB, r Result, key, asc, ascq byte) {
	t.Helper()
	if r.Status != StatusCheckCondition {
		t.Fatalf("status %#x, want CHECK CONDITION %x/%02x/%02x", r.Status, key, asc, ascq)
	}
	if k, a, q := senseOf(r); k != key || a != asc || q != ascq {
		t.Fatalf("sense %x/%02x/%02x, want %x/%02x/%02x", k, a, q, key, asc, ascq)
	}
	if len(r.Sense) != 18 || r.Sense[0]&0x7f != 0x70 || r.Sense[7] != 10 {
		t.Fatalf("sense data not 18-byte fixed format: % x", r.Sense)
	}
}

func wantConflict(t testing.TB, r Result) {
	t.Helper()
	if r.Status != StatusReservationConflict {
		k, a, q := senseOf(r)
		t.Fatalf("status %#x (sense %x/%02x/%02x), want RESERVATION CONFLICT", r.Status, k, a, q)
	}
}

// CDB builders.
func tur() []byte { return []byte{opTestUnitReady, 0, 0, 0, 0, 0} }

func inquiry(evpd bool, page byte, alloc uint16) []byte {
	c := []byte{opInquiry, 0, page, 0, 0, 0}
	if evpd {
		c[1] = 1
	}
	binary.BigEndian.PutUint16(c[3:5], alloc)
	return c
}

func rw10(op byte, lba uint32, blocks uint16, flags byte) []byte {
	c := make([]byte, 10)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint32(c[2:6], lba)
	binary.BigEndian.PutUint16(c[7:9], blocks)
	return c
}

func rw12(op byte, lba uint32, blocks uint32, flags byte) []byte {
	c := make([]byte, 12)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint32(c[2:6], lba)
	binary.BigEndian.PutUint32(c[6:10], blocks)
	return c
}

func rw16(op byte, lba uint64, blocks uint32, flags byte) []byte {
	c := make([]byte, 16)
	c[0], c[1] = op, flags
	binary.BigEndian.PutUint64(c[2:10], lba)
	binary.BigEndian.PutUint32(c[10:14], blocks)
	return c
}

func rw6(op byte, lba uint32, blocks byte) []byte {
	return []byte{op, byte(lba >> 16 & 0x1f), byte(lba >> 8), byte(lba), blocks, 0}
}

func pattern(blocks int, seed byte) []byte {
	b := make([]byte, blocks*BlockSize)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func (f *fixture) readBlocks(lba uint64, blocks int) []byte {
	f.t.Helper()
	p := make([]byte, blocks*BlockSize)
	if err := f.be.ReadAt(p, int64(lba)*BlockSize); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) writeBlocks(lba uint64, data []byte) {
	f.t.Helper()
	if err := f.be.WriteAt(data, int64(lba)*BlockSize, false); err != nil {
		f.t.Fatal(err)
	}
}
