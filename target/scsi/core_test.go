package scsi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestFirstCommandReportsPowerOnUA(t *testing.T) {
	f := newFixture(t, 1024)
	// INQUIRY neither reports nor clears the unit attention.
	wantGood(t, f.run(nexA, inquiry(false, 0, 96), nil))
	wantSense(t, f.run(nexA, tur(), nil), SenseUnitAttention, 0x29, 0x00)
	wantGood(t, f.run(nexA, tur(), nil))
	// Another nexus gets its own.
	wantSense(t, f.run(nexB, rw10(opRead10, 0, 1, 0), nil), SenseUnitAttention, 0x29, 0x00)
	wantGood(t, f.run(nexB, rw10(opRead10, 0, 1, 0), nil))
}

func TestRequestSense(t *testing.T) {
	f := newFixture(t, 64)
	r := f.run(nexA, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil)
	wantGood(t, r)
	if len(r.Data) != 18 || r.Data[2] != SenseUnitAttention || r.Data[12] != 0x29 {
		t.Fatalf("REQUEST SENSE data % x, want the power on unit attention", r.Data)
	}
	r = f.run(nexA, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil)
	wantGood(t, r)
	if r.Data[2] != SenseNoSense || r.Data[12] != 0 {
		t.Fatalf("second REQUEST SENSE % x, want NO SENSE", r.Data)
	}
	// Allocation length cuts the data.
	if r := f.run(nexA, []byte{opRequestSense, 0, 0, 0, 8, 0}, nil); len(r.Data) != 8 {
		t.Fatalf("got %d bytes, want 8", len(r.Data))
	}
	wantSense(t, f.run(nexA, []byte{opRequestSense, 1, 0, 0, 252, 0}, nil), SenseIllegalRequest, 0x24, 0)
}

func TestInquiryStandard(t *testing.T) {
	f := newFixture(t, 64)
	r := f.run(nexA, inquiry(false, 0, 255), nil)
	wantGood(t, r)
	d := r.Data
	if len(d) < 36 || int(d[4]) != len(d)-5 {
		t.Fatalf("bad length: %d bytes, additional length %d", len(d), d[4])
	}
	if d[0] != 0 || d[2] != 6 || d[3]&0x0f != 2 || d[3]&0x10 == 0 || d[5]&0x30 != 0x10 || d[7]&0x02 == 0 {
		t.Fatalf("bad flags % x", d[:8])
	}
	if string(d[8:16]) != "CSNAP   " || string(d[16:32]) != "csnap volume    " {
		t.Fatalf("vendor/product %q %q", d[8:16], d[16:32])
	}
	var sbc3 bool
	for i := 58; i < 74; i += 2 {
		if binary.BigEndian.Uint16(d[i:]) == 0x04c0 {
			sbc3 = true
		}
	}
	if !sbc3 {
		t.Fatal("no SBC-3 version descriptor")
	}
	for _, n := range []uint16{0, 1, 5, 36, 95, 96, 1000} {
		r := f.run(nexA, inquiry(false, 0, n), nil)
		wantGood(t, r)
		if len(r.Data) != min(int(n), 96) {
			t.Fatalf("alloc %d: got %d bytes", n, len(r.Data))
		}
	}
}

func TestInquiryErrors(t *testing.T) {
	f := newFixture(t, 64)
	tests := []struct {
		name string
		cdb  []byte
	}{
		{"page without EVPD", inquiry(false, 0x80, 255)},
		{"unknown VPD page", inquiry(true, 0x42, 255)},
		{"CmdDt", []byte{opInquiry, 0x02, 0, 0, 255, 0}},
		{"NACA", []byte{opInquiry, 0, 0, 0, 255, 0x04}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantSense(t, f.run(nexA, tc.cdb, nil), SenseIllegalRequest, 0x24, 0)
		})
	}
}

func TestInquiryVPD(t *testing.T) {
	f := newFixture(t, 64)
	r := f.run(nexA, inquiry(true, 0, 255), nil)
	wantGood(t, r)
	pages := r.Data[4 : 4+int(r.Data[3])]
	for _, p := range pages {
		r := f.run(nexA, inquiry(true, p, 1024), nil)
		wantGood(t, r)
		if r.Data[1] != p {
			t.Fatalf("page %#x: page code %#x", p, r.Data[1])
		}
		if n := int(binary.BigEndian.Uint16(r.Data[2:4])) + 4; n != len(r.Data) {
			t.Fatalf("page %#x: page length %d, data %d", p, n, len(r.Data))
		}
	}
	if !bytes.Contains(pages, []byte{0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2}) {
		t.Fatalf("supported pages % x", pages)
	}
	r = f.run(nexA, inquiry(true, 0x80, 255), nil)
	if string(r.Data[4:]) != "csnap0001" {
		t.Fatalf("serial %q", r.Data[4:])
	}
	r = f.run(nexA, inquiry(true, 0x83, 1024), nil)
	d := r.Data[4:]
	var naa, tpn, rtp, tpg, tdn bool
	for len(d) >= 4 {
		n := int(d[3])
		desc := d[4 : 4+n]
		switch d[1] & 0x3f {
		case 0x03:
			naa = n == 16 && desc[0] == 0x60
		case 0x18:
			tpn = bytes.HasPrefix(desc, []byte(portA.Name))
		case 0x14:
			rtp = binary.BigEndian.Uint16(desc[2:]) == 1
		case 0x15:
			tpg = binary.BigEndian.Uint16(desc[2:]) == 1
		case 0x28:
			tdn = bytes.HasPrefix(desc, []byte(portA.TargetName))
		}
		d = d[4+n:]
	}
	if !naa || !tpn || !rtp || !tpg || !tdn {
		t.Fatalf("designators: naa %v port name %v rel port %v group %v target name %v", naa, tpn, rtp, tpg, tdn)
	}
	r = f.run(nexA, inquiry(true, 0xb0, 64), nil)
	if len(r.Data) != 64 || r.Data[3] != 0x3c || binary.BigEndian.Uint32(r.Data[20:24]) == 0 || r.Data[5] == 0 {
		t.Fatalf("block limits % x", r.Data)
	}
	r = f.run(nexA, inquiry(true, 0xb2, 64), nil)
	if r.Data[5]&0xe4 != 0xe4 || r.Data[6]&7 != 2 {
		t.Fatalf("provisioning % x", r.Data)
	}
	r = f.run(nexA, inquiry(true, 0xb1, 64), nil)
	if binary.BigEndian.Uint16(r.Data[4:6]) != 1 {
		t.Fatalf("rotation rate % x", r.Data[4:6])
	}
}

func TestNoSuchLUN(t *testing.T) {
	f := newFixture(t, 64)
	r := f.runLUN(7, nexA, inquiry(false, 0, 96), nil)
	wantGood(t, r)
	if r.Data[0] != 0x7f {
		t.Fatalf("peripheral byte %#x, want 0x7f", r.Data[0])
	}
	wantSense(t, f.runLUN(7, nexA, tur(), nil), SenseIllegalRequest, 0x25, 0)
	wantSense(t, f.runLUN(7, nexA, rw10(opRead10, 0, 1, 0), nil), SenseIllegalRequest, 0x25, 0)
	r = f.runLUN(7, nexA, []byte{opRequestSense, 0, 0, 0, 18, 0}, nil)
	wantGood(t, r)
	if r.Data[12] != 0x25 {
		t.Fatalf("REQUEST SENSE % x", r.Data)
	}
	r = f.runLUN(7, nexA, reportLUNs(256), nil)
	wantGood(t, r)
	if binary.BigEndian.Uint32(r.Data) != 8 {
		t.Fatalf("REPORT LUNS % x", r.Data)
	}
}

func reportLUNs(alloc uint32) []byte {
	c := make([]byte, 12)
	c[0] = opReportLUNs
	binary.BigEndian.PutUint32(c[6:10], alloc)
	return c
}

func TestReportLUNsAndChanges(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	lu2 := NewLU(NewMemBackend(64*BlockSize, Identity{Serial: "two"}))
	if err := f.tgt.AddLUN(300, lu2); err != nil {
		t.Fatal(err)
	}
	if err := f.tgt.AddLUN(300, lu2); err == nil {
		t.Fatal("adding a LUN twice worked")
	}
	r := f.run(nexA, reportLUNs(256), nil)
	wantGood(t, r)
	want := []byte{0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x41, 0x2c, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(r.Data, want) {
		t.Fatalf("REPORT LUNS\n% x, want\n% x", r.Data, want)
	}
	// REPORT LUNS cleared the REPORTED LUNS DATA HAS CHANGED.
	wantGood(t, f.run(nexA, tur(), nil))
	f.ready(nexB)
	if err := f.tgt.RemoveLUN(300); err != nil {
		t.Fatal(err)
	}
	wantSense(t, f.run(nexB, tur(), nil), SenseUnitAttention, 0x3f, 0x0e)
	wantGood(t, f.run(nexB, tur(), nil))
	if got := f.tgt.LUNs(); len(got) != 1 || got[0] != 0 {
		t.Fatalf("LUNs %v", got)
	}
	wantSense(t, f.run(nexA, reportLUNs(8), nil), SenseIllegalRequest, 0x24, 0)
	wantSense(t, f.run(nexA, []byte{opReportLUNs, 0, 0x7, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil), SenseIllegalRequest, 0x24, 0)
}

func TestReadCapacity(t *testing.T) {
	f := newFixture(t, 1000)
	f.ready(nexA)
	r := f.run(nexA, []byte{opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil)
	wantGood(t, r)
	if binary.BigEndian.Uint32(r.Data[0:4]) != 999 || binary.BigEndian.Uint32(r.Data[4:8]) != 512 {
		t.Fatalf("RC10 % x", r.Data)
	}
	rc16 := rw16(opServiceActionIn16, 0, 32, 0)
	rc16[1] = saReadCapacity16
	r = f.run(nexA, rc16, nil)
	wantGood(t, r)
	if binary.BigEndian.Uint64(r.Data[0:8]) != 999 || r.Data[14]&0xc0 != 0xc0 || len(r.Data) != 32 {
		t.Fatalf("RC16 % x", r.Data)
	}
	rc16[13] = 8
	if r := f.run(nexA, rc16, nil); len(r.Data) != 8 {
		t.Fatalf("RC16 alloc 8: %d bytes", len(r.Data))
	}
	// Too big for READ CAPACITY(10).
	f.be.Resize(0x1_0000_0001 * BlockSize)
	wantSense(t, f.run(nexA, tur(), nil), SenseUnitAttention, 0x2a, 0x09)
	r = f.run(nexA, []byte{opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil)
	if binary.BigEndian.Uint32(r.Data[0:4]) != 0xffffffff {
		t.Fatalf("RC10 of a big LU % x", r.Data)
	}
	// Unknown service action of SERVICE ACTION IN(16).
	rc16[1] = 0x1b
	wantSense(t, f.run(nexA, rc16, nil), SenseIllegalRequest, 0x24, 0)
}

func TestReadWrite(t *testing.T) {
	f := newFixture(t, 1024)
	f.ready(nexA)
	type rwCase struct {
		name      string
		write, rd []byte
		lba       uint64
		blocks    int
		fua       bool
	}
	cases := []rwCase{
		{name: "6", write: rw6(opWrite6, 5, 2), rd: rw6(opRead6, 5, 2), lba: 5, blocks: 2},
		{name: "10", write: rw10(opWrite10, 100, 3, 0), rd: rw10(opRead10, 100, 3, 0), lba: 100, blocks: 3},
		{name: "10 FUA DPO", write: rw10(opWrite10, 7, 1, 0x18), rd: rw10(opRead10, 7, 1, 0x18), lba: 7, blocks: 1, fua: true},
		{name: "12", write: rw12(opWrite12, 200, 4, 0), rd: rw12(opRead12, 200, 4, 0), lba: 200, blocks: 4},
		{name: "16", write: rw16(opWrite16, 1020, 4, 0x08), rd: rw16(opRead16, 1020, 4, 0), lba: 1020, blocks: 4, fua: true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := pattern(tc.blocks, byte(i+1))
			_, fuaBefore := f.be.Stats()
			r := f.run(nexA, tc.write, data)
			wantGood(t, r)
			if r.DataOutLen != len(data) {
				t.Fatalf("DataOutLen %d, want %d", r.DataOutLen, len(data))
			}
			if _, fua := f.be.Stats(); (fua > fuaBefore) != tc.fua {
				t.Fatalf("FUA writes %d -> %d, want fua %v", fuaBefore, fua, tc.fua)
			}
			r = f.run(nexA, tc.rd, nil)
			wantGood(t, r)
			if !bytes.Equal(r.Data, data) {
				t.Fatal("read back differs")
			}
		})
	}
	// READ(6) with 0 blocks reads 256.
	if r := f.run(nexA, rw6(opRead6, 0, 0), nil); len(r.Data) != 256*BlockSize {
		t.Fatalf("READ(6) 0 blocks: %d bytes", len(r.Data))
	}
	// Zero blocks are no transfer.
	for _, c := range [][]byte{rw10(opRead10, 0, 0, 0), rw10(opWrite10, 1024, 0, 0), rw16(opRead16, 1024, 0, 0)} {
		r := f.run(nexA, c, nil)
		wantGood(t, r)
		if len(r.Data) != 0 {
			t.Fatal("data for 0 blocks")
		}
	}
	// Short data-out: only whole blocks sent are written.
	f.writeBlocks(10, pattern(2, 0xaa))
	r := f.run(nexA, rw10(opWrite10, 10, 2, 0), pattern(1, 0x11))
	wantGood(t, r)
	if r.DataOutLen != 2*BlockSize {
		t.Fatalf("DataOutLen %d", r.DataOutLen)
	}
	if got := f.readBlocks(10, 2); !bytes.Equal(got[:512], pattern(1, 0x11)) || !bytes.Equal(got[512:], pattern(2, 0xaa)[512:]) {
		t.Fatal("short write wrote the wrong blocks")
	}
	// Data-in buffer is used.
	buf := make([]byte, 4096)
	rr := f.tgt.Execute(t.Context(), &Command{CDB: rw10(opRead10, 10, 1, 0), Nexus: nexA, DataInBuf: buf, ExpectedLen: 512})
	wantGood(t, rr)
	if &rr.Data[0] != &buf[0] {
		t.Fatal("DataInBuf not used")
	}
}

func TestReadWriteErrors(t *testing.T) {
	f := newFixture(t, 1024)
	f.ready(nexA)
	oob := func(c []byte) struct {
		cdb            []byte
		key, asc, ascq byte
	} {
		return struct {
			cdb            []byte
			key, asc, ascq byte
		}{c, SenseIllegalRequest, 0x21, 0}
	}
	inv := func(c []byte) struct {
		cdb            []byte
		key, asc, ascq byte
	} {
		return struct {
			cdb            []byte
			key, asc, ascq byte
		}{c, SenseIllegalRequest, 0x24, 0}
	}
	tests := []struct {
		cdb            []byte
		key, asc, ascq byte
	}{
		oob(rw10(opRead10, 1024, 1, 0)),
		oob(rw10(opRead10, 1023, 2, 0)),
		oob(rw10(opRead10, 1025, 0, 0)),
		oob(rw10(opWrite10, 0xffffffff, 1, 0)),
		oob(rw16(opRead16, 0xffffffffffffffff, 1, 0)),
		oob(rw16(opWrite16, 0xfffffffffffffff0, 0x20, 0)),
		oob(rw12(opWrite12, 1000, 25, 0)),
		oob(rw6(opRead6, 1000, 0)),
		oob(rw16(opVerify16, 1024, 1, 0)),
		oob(rw10(opWriteVerify10, 1024, 1, 0)),
		inv(rw10(opRead10, 0, 1, 0x20)),  // RDPROTECT
		inv(rw10(opWrite10, 0, 1, 0x40)), // WRPROTECT
		inv(rw16(opVerify16, 0, 1, 0x20)),
		inv(rw10(opRead10, 0, 0xffff, 0)),   // beyond MAXIMUM TRANSFER LENGTH
		inv(rw10(opVerify10, 0, 1, 0x04)),   // BYTCHK 10b
		inv(rw10(opWriteVerify10, 0, 1, 4)), // BYTCHK 10b
		{[]byte{0xc0, 0, 0, 0, 0, 0}, SenseIllegalRequest, 0x20, 0},
		{[]byte{0x1d, 0, 0, 0, 0, 0}, SenseIllegalRequest, 0x20, 0},
	}
	for _, tc := range tests {
		r := f.run(nexA, tc.cdb, make([]byte, 2*BlockSize))
		wantSense(t, r, tc.key, tc.asc, tc.ascq)
	}
}

type failingBackend struct {
	*MemBackend
	err error
}

func (b failingBackend) ReadAt(p []byte, off int64) error            { return b.err }
func (b failingBackend) WriteAt(p []byte, off int64, fua bool) error { return b.err }
func (b failingBackend) Flush() error                                { return b.err }
func (b failingBackend) Unmap(off, n int64) error                    { return b.err }

func TestBackendErrors(t *testing.T) {
	for _, tc := range []struct {
		err                           error
		rkey, rasc, rascq, wkey, wasc byte
	}{
		{errors.New("disk on fire"), SenseMediumError, 0x11, 0, SenseMediumError, 0x0c},
		{&SenseError{Key: SenseNotReady, ASC: 0x04, ASCQ: 0x01}, SenseNotReady, 0x04, 0x01, SenseNotReady, 0x04},
	} {
		be := failingBackend{NewMemBackend(64*BlockSize, testIdentity()), tc.err}
		tgt, _ := NewTarget(map[uint64]*LU{0: NewLU(be)}, NewMemStore())
		f := &fixture{t: t, tgt: tgt}
		f.ready(nexA)
		r := f.run(nexA, rw10(opRead10, 0, 1, 0), nil)
		wantSense(t, r, tc.rkey, tc.rasc, tc.rascq)
		if !errors.Is(r.Err, tc.err) {
			t.Fatalf("Result.Err %v, want %v", r.Err, tc.err)
		}
		r = f.run(nexA, rw10(opWrite10, 0, 1, 0), make([]byte, 512))
		if k, a, _ := senseOf(r); k != tc.wkey || a != tc.wasc {
			t.Fatalf("write: sense %x/%02x", k, a)
		}
		if r := f.run(nexA, rw10(opSyncCache10, 0, 0, 0), nil); r.Status != StatusCheckCondition {
			t.Fatal("flush error not reported")
		}
	}
}

func TestReadOnly(t *testing.T) {
	f := newFixture(t, 64)
	f.be.SetReadOnly(true)
	f.ready(nexA)
	ws := rw10(opWriteSame10, 0, 1, 0)
	unmapCDB := []byte{opUnmap, 0, 0, 0, 0, 0, 0, 0, 24, 0}
	caw := rw16(opCompareAndWrite, 0, 0, 0)
	caw[13] = 1
	for _, c := range [][]byte{rw6(opWrite6, 0, 1), rw10(opWrite10, 0, 1, 0), rw12(opWrite12, 0, 1, 0), rw16(opWrite16, 0, 1, 0),
		rw10(opWriteVerify10, 0, 1, 0), rw16(opWriteVerify16, 0, 1, 0), rw12(opWriteVerify12, 0, 1, 0),
		ws, rw16(opWriteSame16, 0, 1, 0x08), unmapCDB, caw} {
		r := f.tgt.Execute(t.Context(), &Command{CDB: c, Nexus: nexA, DataOut: make([]byte, 1024), ExpectedLen: 1024})
		wantSense(t, r, SenseDataProtect, 0x27, 0)
	}
	wantGood(t, f.run(nexA, rw10(opRead10, 0, 1, 0), nil))
	r := f.run(nexA, []byte{opModeSense6, 0x08, 0x3f, 0, 255, 0}, nil)
	if r.Data[2]&0x80 == 0 {
		t.Fatal("WP not set in MODE SENSE")
	}
}

func TestVerify(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	data := pattern(4, 3)
	f.writeBlocks(8, data)
	for _, op := range []byte{opVerify10, opVerify12, opVerify16} {
		var c []byte
		switch op {
		case opVerify10:
			c = rw10(op, 8, 4, 0x02)
		case opVerify12:
			c = rw12(op, 8, 4, 0x02)
		default:
			c = rw16(op, 8, 4, 0x02)
		}
		r := f.run(nexA, c, data)
		wantGood(t, r)
		if r.DataOutLen != len(data) {
			t.Fatalf("DataOutLen %d", r.DataOutLen)
		}
		bad := bytes.Clone(data)
		bad[1000] ^= 1
		r = f.run(nexA, c, bad)
		wantSense(t, r, SenseMiscompare, 0x1d, 0)
		if r.Sense[0]&0x80 == 0 || binary.BigEndian.Uint32(r.Sense[3:7]) != 1000 {
			t.Fatalf("miscompare INFORMATION % x", r.Sense)
		}
		// BYTCHK 0: no compare.
		c[1] = 0
		wantGood(t, f.run(nexA, c, nil))
	}
	// BYTCHK 11b: one block against each.
	f.writeBlocks(20, bytes.Repeat(pattern(1, 9), 3))
	r := f.run(nexA, rw10(opVerify10, 20, 3, 0x06), pattern(1, 9))
	wantGood(t, r)
	if r.DataOutLen != BlockSize {
		t.Fatalf("DataOutLen %d", r.DataOutLen)
	}
}

func TestWriteVerify(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	for i, c := range [][]byte{rw10(opWriteVerify10, 1, 2, 0x02), rw12(opWriteVerify12, 1, 2, 0x10), rw16(opWriteVerify16, 1, 2, 0)} {
		data := pattern(2, byte(i))
		r := f.run(nexA, c, data)
		wantGood(t, r)
		if !bytes.Equal(f.readBlocks(1, 2), data) {
			t.Fatal("not written")
		}
	}
	if _, fua := f.be.Stats(); fua != 3 {
		t.Fatalf("WRITE AND VERIFY not written through: %d FUA writes", fua)
	}
}

func TestSyncCachePrefetch(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	wantGood(t, f.run(nexA, rw10(opSyncCache10, 0, 0, 0), nil))
	wantGood(t, f.run(nexA, rw16(opSyncCache16, 10, 54, 0x02), nil))
	if fl, _ := f.be.Stats(); fl != 2 {
		t.Fatalf("%d flushes", fl)
	}
	wantSense(t, f.run(nexA, rw10(opSyncCache10, 60, 5, 0), nil), SenseIllegalRequest, 0x21, 0)
	wantGood(t, f.run(nexA, rw10(opPreFetch10, 0, 64, 0), nil))
	wantGood(t, f.run(nexA, rw16(opPreFetch16, 64, 0, 0), nil))
	wantSense(t, f.run(nexA, rw16(opPreFetch16, 65, 0, 0), nil), SenseIllegalRequest, 0x21, 0)
	wantSense(t, f.run(nexA, rw10(opPreFetch10, 63, 2, 0), nil), SenseIllegalRequest, 0x21, 0)
}

func TestStartStopPreventAllow(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	wantGood(t, f.run(nexA, []byte{opStartStopUnit, 0, 0, 0, 0x01, 0}, nil))
	wantGood(t, f.run(nexA, []byte{opStartStopUnit, 1, 0, 0, 0x00, 0}, nil))
	wantGood(t, f.run(nexA, []byte{opStartStopUnit, 0, 0, 0, 0x30, 0}, nil))
	wantSense(t, f.run(nexA, []byte{opStartStopUnit, 0, 0, 0, 0x02, 0}, nil), SenseIllegalRequest, 0x24, 0)
	wantGood(t, f.run(nexA, []byte{opPreventAllow, 0, 0, 0, 1, 0}, nil))
	wantGood(t, f.run(nexA, []byte{opPreventAllow, 0, 0, 0, 0, 0}, nil))
}
