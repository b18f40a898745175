package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func modeSense6(dbd bool, pc, page, sub, alloc byte) []byte {
	c := []byte{opModeSense6, 0, pc<<6 | page, sub, alloc, 0}
	if dbd {
		c[1] = 0x08
	}
	return c
}

func modeSense10(llbaa, dbd bool, pc, page byte, alloc uint16) []byte {
	c := make([]byte, 10)
	c[0], c[2] = opModeSense10, pc<<6|page
	if dbd {
		c[1] |= 0x08
	}
	if llbaa {
		c[1] |= 0x10
	}
	binary.BigEndian.PutUint16(c[7:9], alloc)
	return c
}

// pagesOf splits mode parameter data after the header and block
// descriptors into pages by code.
func pagesOf(t *testing.T, d []byte, ten bool) map[byte][]byte {
	t.Helper()
	var off int
	if ten {
		if int(binary.BigEndian.Uint16(d[0:2])) != len(d)-2 {
			t.Fatalf("mode data length %d, data %d", binary.BigEndian.Uint16(d[0:2]), len(d))
		}
		off = 8 + int(binary.BigEndian.Uint16(d[6:8]))
	} else {
		if int(d[0]) != len(d)-1 {
			t.Fatalf("mode data length %d, data %d", d[0], len(d))
		}
		off = 4 + int(d[3])
	}
	pages := map[byte][]byte{}
	for off < len(d) {
		n := int(d[off+1]) + 2
		pages[d[off]&0x3f] = d[off : off+n]
		off += n
	}
	return pages
}

func TestModeSense(t *testing.T) {
	f := newFixture(t, 1000)
	f.ready(nexA)
	r := f.run(nexA, modeSense6(false, pcCurrent, 0x3f, 0, 255), nil)
	wantGood(t, r)
	d := r.Data
	if d[3] != 8 || binary.BigEndian.Uint32(d[4:8]) != 1000 || binary.BigEndian.Uint32(d[8:12]) != 512 {
		t.Fatalf("block descriptor % x", d[:12])
	}
	if d[2] != 0x10 {
		t.Fatalf("device-specific parameter %#x", d[2])
	}
	pages := pagesOf(t, d, false)
	if len(pages) != 3 || pages[0x08][2]&0x04 == 0 || len(pages[0x0a]) != 12 || len(pages[0x1c]) != 12 {
		t.Fatalf("pages %v", pages)
	}
	// All pages and subpages.
	wantGood(t, f.run(nexA, modeSense6(true, pcCurrent, 0x3f, 0xff, 255), nil))
	// Residual: 4 bytes only.
	if r := f.run(nexA, modeSense6(false, pcCurrent, 0x3f, 0, 4), nil); len(r.Data) != 4 {
		t.Fatalf("%d bytes", len(r.Data))
	}
	// Changeable: only WCE.
	r = f.run(nexA, modeSense6(true, pcChangeable, 0x08, 0, 255), nil)
	wantGood(t, r)
	if p := pagesOf(t, r.Data, false)[0x08]; p[2] != 0x04 || !isZero(p[3:]) {
		t.Fatalf("changeable caching % x", p)
	}
	r = f.run(nexA, modeSense6(true, pcDefault, 0x0a, 0, 255), nil)
	wantGood(t, r)
	if p := pagesOf(t, r.Data, false)[0x0a]; p[4]&0x08 != 0 {
		t.Fatalf("SWP set in control page % x", p)
	}
	// MODE SENSE(10) with long LBA descriptor.
	r = f.run(nexA, modeSense10(true, false, pcCurrent, 0x08, 512), nil)
	wantGood(t, r)
	if r.Data[4]&1 == 0 || binary.BigEndian.Uint16(r.Data[6:8]) != 16 || binary.BigEndian.Uint64(r.Data[8:16]) != 1000 {
		t.Fatalf("long LBA descriptor % x", r.Data[:24])
	}
	pagesOf(t, r.Data, true)
	r = f.run(nexA, modeSense10(false, true, pcCurrent, 0x1c, 512), nil)
	wantGood(t, r)
	if binary.BigEndian.Uint16(r.Data[6:8]) != 0 || len(pagesOf(t, r.Data, true)) != 1 {
		t.Fatalf("DBD % x", r.Data)
	}
	// Errors.
	wantSense(t, f.run(nexA, modeSense6(false, pcSaved, 0x08, 0, 255), nil), SenseIllegalRequest, 0x39, 0)
	wantSense(t, f.run(nexA, modeSense6(false, pcCurrent, 0x19, 0, 255), nil), SenseIllegalRequest, 0x24, 0)
	wantSense(t, f.run(nexA, modeSense6(false, pcCurrent, 0x08, 1, 255), nil), SenseIllegalRequest, 0x24, 0)
}

func TestModeSelect(t *testing.T) {
	f := newFixture(t, 1000)
	f.ready(nexA)
	f.ready(nexB)
	cur := f.run(nexA, modeSense6(false, pcCurrent, 0x08, 0, 255), nil).Data
	sel := func(data []byte, sp bool) []byte {
		c := []byte{opModeSelect6, 0x10, 0, 0, byte(len(data)), 0}
		if sp {
			c[1] |= 1
		}
		return c
	}
	// Clear WCE.
	p := bytes.Clone(cur)
	p[0] = 0
	p[2] = 0 // device-specific parameter
	p[12+2] &^= 0x04
	r := f.run(nexA, sel(p, false), p)
	wantGood(t, r)
	if r.DataOutLen != len(p) {
		t.Fatalf("DataOutLen %d", r.DataOutLen)
	}
	if f.lu.writeCache() {
		t.Fatal("WCE still set")
	}
	// The other nexus learns of it, not the one that changed it.
	wantGood(t, f.run(nexA, tur(), nil))
	wantSense(t, f.run(nexB, tur(), nil), SenseUnitAttention, 0x2a, 0x01)
	// With WCE clear writes are FUA.
	wantGood(t, f.run(nexA, rw10(opWrite10, 0, 1, 0), make([]byte, 512)))
	if _, fua := f.be.Stats(); fua != 1 {
		t.Fatal("write with WCE=0 not FUA")
	}
	// Same values again: no change, no unit attention.
	wantGood(t, f.run(nexA, sel(p, false), p))
	wantGood(t, f.run(nexB, tur(), nil))

	bad := func(name string, mutate func([]byte) []byte, asc byte) {
		t.Run(name, func(t *testing.T) {
			q := mutate(bytes.Clone(p))
			wantSense(t, f.run(nexA, sel(q, false), q), SenseIllegalRequest, asc, 0)
		})
	}
	bad("unchangeable bit", func(q []byte) []byte { q[12+2] |= 0x01; return q }, 0x26)
	bad("page length", func(q []byte) []byte { q[12+1] = 0x10; return q[:len(q)-2] }, 0x26)
	bad("unknown page", func(q []byte) []byte { q[12] = 0x19; return q }, 0x26)
	bad("block size", func(q []byte) []byte { q[4+6] = 0x10; return q }, 0x26)
	bad("capacity", func(q []byte) []byte { q[4+3] = 1; return q }, 0x26)
	bad("medium type", func(q []byte) []byte { q[1] = 1; return q }, 0x26)
	bad("truncated page", func(q []byte) []byte { return q[:len(q)-1] }, 0x1a)
	bad("short header", func(q []byte) []byte { return q[:3] }, 0x1a)
	wantSense(t, f.run(nexA, sel(p, true), p), SenseIllegalRequest, 0x24, 0)
	// Parameter list longer than the data-out.
	wantSense(t, f.run(nexA, []byte{opModeSelect6, 0x10, 0, 0, 200, 0}, p), SenseIllegalRequest, 0x1a, 0)
	// Zero length is a no-op.
	wantGood(t, f.run(nexA, []byte{opModeSelect6, 0x10, 0, 0, 0, 0}, nil))

	// MODE SELECT(10) sets WCE back; LUN reset would restore it too.
	cur10 := f.run(nexA, modeSense10(false, true, pcCurrent, 0x08, 255), nil).Data
	cur10[0], cur10[1], cur10[3] = 0, 0, 0
	cur10[8+2] |= 0x04
	c := make([]byte, 10)
	c[0], c[1] = opModeSelect10, 0x10
	binary.BigEndian.PutUint16(c[7:9], uint16(len(cur10)))
	wantGood(t, f.run(nexA, c, cur10))
	if !f.lu.writeCache() {
		t.Fatal("WCE not set by MODE SELECT(10)")
	}
	p[12+2] &^= 0x04
	wantGood(t, f.run(nexA, sel(p, false), p))
	f.tgt.TaskManagement(TMFLogicalUnitReset, 0, nexA)
	if !f.lu.writeCache() {
		t.Fatal("LUN reset did not restore WCE")
	}
}
