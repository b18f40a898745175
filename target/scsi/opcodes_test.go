package scsi

import (
	"encoding/binary"
	"testing"
)

func rsoc(rctd bool, options, op byte, sa uint16, alloc uint32) []byte {
	c := make([]byte, 12)
	c[0], c[1], c[2], c[3] = opMaintenanceIn, saReportOpcodes, options, op
	if rctd {
		c[2] |= 0x80
	}
	binary.BigEndian.PutUint16(c[4:6], sa)
	binary.BigEndian.PutUint32(c[6:10], alloc)
	return c
}

func TestReportSupportedOpcodes(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	for _, rctd := range []bool{false, true} {
		r := f.run(nexA, rsoc(rctd, 0, 0, 0, 65535), nil)
		wantGood(t, r)
		d := r.Data
		if int(binary.BigEndian.Uint32(d)) != len(d)-4 {
			t.Fatalf("length % x", d[:4])
		}
		count := 0
		for d = d[4:]; len(d) > 0; count++ {
			op, sa, servactv, ctdp := d[0], binary.BigEndian.Uint16(d[2:4]), d[5]&1 != 0, d[5]&2 != 0
			cdbLength := int(binary.BigEndian.Uint16(d[6:8]))
			if ctdp != rctd {
				t.Fatalf("CTDP %v for %#x", ctdp, op)
			}
			d = d[8:]
			if ctdp {
				if binary.BigEndian.Uint16(d[0:2]) != 0x0a {
					t.Fatalf("timeouts descriptor % x", d[:12])
				}
				d = d[12:]
			}
			// One command form: 001b without service action, 010b with.
			opts := byte(1)
			bad := byte(2)
			if servactv {
				opts, bad = 2, 1
			}
			one := f.run(nexA, rsoc(rctd, opts, op, sa, 512), nil)
			wantGood(t, one)
			if one.Data[1]&7 != 3 || int(binary.BigEndian.Uint16(one.Data[2:4])) != cdbLength || one.Data[4] != op {
				t.Fatalf("one command %#x/%#x: % x", op, sa, one.Data)
			}
			if servactv && one.Data[5]&0x1f != byte(sa) {
				t.Fatalf("usage data of %#x/%#x lacks the service action", op, sa)
			}
			if rctd && len(one.Data) != 4+cdbLength+12 {
				t.Fatalf("one command with RCTD: %d bytes", len(one.Data))
			}
			wantSense(t, f.run(nexA, rsoc(false, bad, op, sa, 512), nil), SenseIllegalRequest, 0x24, 0)
		}
		if count != len(commandTable()) {
			t.Fatalf("%d descriptors", count)
		}
	}
	// Not supported opcode.
	r := f.run(nexA, rsoc(false, 1, 0xc5, 0, 512), nil)
	wantGood(t, r)
	if r.Data[1]&7 != 1 {
		t.Fatalf("unsupported opcode % x", r.Data)
	}
	wantSense(t, f.run(nexA, rsoc(false, 5, 0, 0, 512), nil), SenseIllegalRequest, 0x24, 0)
}

func TestMaintenanceIn(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	c := make([]byte, 12)
	c[0], c[1] = opMaintenanceIn, saReportTMFs
	binary.BigEndian.PutUint32(c[6:10], 16)
	r := f.run(nexA, c, nil)
	wantGood(t, r)
	if len(r.Data) != 4 || r.Data[0]&0x08 == 0 {
		t.Fatalf("TMFs % x", r.Data)
	}
	c[2] = 0x80
	if r := f.run(nexA, c, nil); len(r.Data) != 16 || r.Data[3] != 0x0c {
		t.Fatalf("TMFs extended % x", r.Data)
	}
	c[1], c[2] = saReportTPGs, 0
	r = f.run(nexC, c, nil)
	f.ready(nexC)
	r = f.run(nexC, c, nil)
	wantGood(t, r)
	d := r.Data
	if binary.BigEndian.Uint32(d) != 12 || d[4]&0x0f != 0 || binary.BigEndian.Uint16(d[6:8]) != 2 || d[11] != 1 ||
		binary.BigEndian.Uint16(d[14:16]) != 2 {
		t.Fatalf("RTPG % x", d)
	}
	c[1] = 0x20 | saReportTPGs
	binary.BigEndian.PutUint32(c[6:10], 512)
	if r := f.run(nexC, c, nil); r.Data[4] != 0x10 || len(r.Data) != 20 {
		t.Fatalf("RTPG extended % x", r.Data)
	}
	// Unknown service action: INVALID FIELD IN CDB pointing at byte 1.
	c[1] = 0x1f
	r = f.run(nexC, c, nil)
	wantSense(t, r, SenseIllegalRequest, 0x24, 0)
	if r.Sense[15]&0x80 == 0 || r.Sense[15]&0x40 == 0 || binary.BigEndian.Uint16(r.Sense[16:18]) != 1 {
		t.Fatalf("field pointer % x", r.Sense[15:18])
	}
}

func TestTaskManagement(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	for _, tc := range []struct {
		fn   TMF
		lun  uint64
		want TMFResponse
	}{
		{TMFAbortTask, 0, TMFComplete},
		{TMFAbortTaskSet, 0, TMFComplete},
		{TMFClearTaskSet, 0, TMFComplete},
		{TMFAbortTaskSet, 9, TMFLUNNotExist},
		{TMFLogicalUnitReset, 9, TMFLUNNotExist},
		{TMFClearACA, 0, TMFNotSupported},
		{TMFTaskReassign, 0, TMFReassignNotSupp},
		{TMFTargetColdReset, 0, TMFComplete},
	} {
		if got := f.tgt.TaskManagement(tc.fn, tc.lun, nexA); got != tc.want {
			t.Fatalf("TMF %d LUN %d: %d, want %d", tc.fn, tc.lun, got, tc.want)
		}
	}
	// Cold reset from A: A and B get POWER ON OCCURRED.
	f.ready(nexB)
	f.tgt.TaskManagement(TMFTargetColdReset, 0, nexA)
	wantSense(t, f.run(nexB, tur(), nil), SenseUnitAttention, 0x29, 0x01)
	wantSense(t, f.run(nexA, tur(), nil), SenseUnitAttention, 0x29, 0x01)
	// Persistent reservations survive resets.
	wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
	wantGood(t, f.prOut(nexA, proutReserve, prTypeWE, 0xa, 0))
	f.tgt.TaskManagement(TMFLogicalUnitReset, 0, nexA)
	f.ready(nexA)
	if _, _, ok := f.reservation(nexA); !ok {
		t.Fatal("PR lost in LUN reset")
	}
}

func TestNewTargetErrors(t *testing.T) {
	lu := NewLU(NewMemBackend(BlockSize, testIdentity()))
	if _, err := NewTarget(map[uint64]*LU{1 << 20: lu}, NewMemStore()); err == nil {
		t.Fatal("huge LUN accepted")
	}
	if _, err := NewTarget(map[uint64]*LU{0: nil}, NewMemStore()); err == nil {
		t.Fatal("nil LU accepted")
	}
	if _, err := NewTarget(map[uint64]*LU{0: lu}, NewMemStore()); err != nil {
		t.Fatal(err)
	}
	if _, err := NewTarget(map[uint64]*LU{0: lu}, NewMemStore()); err == nil {
		t.Fatal("LU shared by two targets")
	}
	tgt, _ := NewTarget(nil, NewMemStore())
	if err := tgt.RemoveLUN(3); err == nil {
		t.Fatal("removed a missing LUN")
	}
}
