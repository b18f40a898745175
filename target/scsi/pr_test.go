package scsi

import (
	"encoding/binary"
	"slices"
	"sync"
	"testing"
)

func prOut(sa, typ byte, key, sark uint64, flags byte) ([]byte, []byte) {
	c := make([]byte, 10)
	c[0], c[1], c[2] = opPROut, sa, typ
	binary.BigEndian.PutUint32(c[5:9], 24)
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p[0:8], key)
	binary.BigEndian.PutUint64(p[8:16], sark)
	p[20] = flags
	return c, p
}

func prIn(sa byte) []byte {
	return []byte{opPRIn, sa, 0, 0, 0, 0, 0, 0x40, 0, 0}
}

func (f *fixture) prOut(n Nexus, sa, typ byte, key, sark uint64) Result {
	c, p := prOut(sa, typ, key, sark, 0)
	return f.run(n, c, p)
}

func (f *fixture) keys(n Nexus) (gen uint32, keys []uint64) {
	f.t.Helper()
	r := f.run(n, prIn(prinReadKeys), nil)
	wantGood(f.t, r)
	gen = binary.BigEndian.Uint32(r.Data)
	for d := r.Data[8:]; len(d) >= 8; d = d[8:] {
		keys = append(keys, binary.BigEndian.Uint64(d))
	}
	return gen, keys
}

// reservation returns the READ RESERVATION key and type (0, 0 when none).
func (f *fixture) reservation(n Nexus) (key uint64, typ byte, reserved bool) {
	f.t.Helper()
	r := f.run(n, prIn(prinReadReservation), nil)
	wantGood(f.t, r)
	if binary.BigEndian.Uint32(r.Data[4:8]) == 0 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(r.Data[8:16]), r.Data[21] & 0x0f, true
}

func TestPRRegister(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	f.ready(nexB)
	wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
	if gen, keys := f.keys(nexB); gen != 1 || !slices.Equal(keys, []uint64{0xa}) {
		t.Fatalf("gen %d keys %x", gen, keys)
	}
	// Re-register with a wrong key: conflict.
	wantConflict(t, f.prOut(nexA, proutRegister, 0, 0, 0xb))
	// Registering from an unregistered nexus with a non-zero key: conflict.
	wantConflict(t, f.prOut(nexB, proutRegister, 0, 5, 0xb))
	// Unregistered, key 0, SARK 0: nothing.
	wantGood(t, f.prOut(nexB, proutRegister, 0, 0, 0))
	wantGood(t, f.prOut(nexB, proutRegister, 0, 0, 0xb))
	// Change a key.
	wantGood(t, f.prOut(nexA, proutRegister, 0, 0xa, 0xaa))
	if gen, keys := f.keys(nexA); gen != 3 || !slices.Equal(keys, []uint64{0xaa, 0xb}) {
		t.Fatalf("gen %d keys %x", gen, keys)
	}
	// Unregister.
	wantGood(t, f.prOut(nexA, proutRegister, 0, 0xaa, 0))
	if _, keys := f.keys(nexA); !slices.Equal(keys, []uint64{0xb}) {
		t.Fatalf("keys %x", keys)
	}
	// Parameter errors.
	c, p := prOut(proutRegister, 0, 0, 1, 0x01) // APTPL
	wantSense(t, f.run(nexA, c, p), SenseIllegalRequest, 0x26, 0)
	c, p = prOut(proutRegister, 0, 0, 1, 0x08) // SPEC_I_PT
	wantSense(t, f.run(nexA, c, p), SenseIllegalRequest, 0x26, 0)
	c, p = prOut(proutRegister, 0, 0, 1, 0)
	c[8] = 23
	wantSense(t, f.run(nexA, c, p), SenseIllegalRequest, 0x1a, 0)
	c, p = prOut(proutRegisterMove, 0, 0, 1, 0)
	wantSense(t, f.run(nexA, c, p), SenseIllegalRequest, 0x24, 0)
	// PR IN service actions past the defined ones.
	for sa := byte(4); sa < 0x20; sa++ {
		wantSense(t, f.run(nexA, prIn(sa), nil), SenseIllegalRequest, 0x24, 0)
	}
}

func TestPRReportCapabilities(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	r := f.run(nexA, prIn(prinReportCaps), nil)
	wantGood(t, r)
	d := r.Data
	if binary.BigEndian.Uint16(d[0:2]) != 8 || len(d) != 8 || d[2]&0x01 != 0 || d[2]&0x04 == 0 || d[4] != 0xea || d[5] != 0x01 {
		t.Fatalf("capabilities % x", d)
	}
}

// TestPRReserveTypes checks every reservation type against the access
// rules of SPC-4 5.12.3 for the holder, a registrant and a stranger.
func TestPRReserveTypes(t *testing.T) {
	type access struct{ read, write bool }
	tests := []struct {
		typ                  byte
		registrant, stranger access
		readKey              bool // READ RESERVATION shows the key
	}{
		{prTypeWE, access{true, false}, access{true, false}, true},
		{prTypeEA, access{false, false}, access{false, false}, true},
		{prTypeWERO, access{true, true}, access{true, false}, true},
		{prTypeEARO, access{true, true}, access{false, false}, true},
		{prTypeWEAR, access{true, true}, access{true, false}, false},
		{prTypeEAAR, access{true, true}, access{false, false}, false},
	}
	for _, tc := range tests {
		f := newFixture(t, 64)
		for _, n := range []Nexus{nexA, nexB, nexC} {
			f.ready(n)
		}
		wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
		wantGood(t, f.prOut(nexB, proutRegisterIgnore, 0, 0, 0xb))
		wantGood(t, f.prOut(nexA, proutReserve, tc.typ, 0xa, 0))
		// Reserving again the same type is fine, another type conflicts,
		// and so does a reserve by someone else.
		wantGood(t, f.prOut(nexA, proutReserve, tc.typ, 0xa, 0))
		other := byte(prTypeWE)
		if tc.typ == prTypeWE {
			other = prTypeEA
		}
		wantConflict(t, f.prOut(nexA, proutReserve, other, 0xa, 0))
		if !allRegistrants(tc.typ) {
			wantConflict(t, f.prOut(nexB, proutReserve, tc.typ, 0xb, 0))
		}
		key, typ, ok := f.reservation(nexC)
		if !ok || typ != tc.typ || (key == 0xa) != tc.readKey {
			t.Fatalf("type %d: READ RESERVATION key %x type %d reserved %v", tc.typ, key, typ, ok)
		}
		check := func(n Nexus, a access) {
			t.Helper()
			rd := f.run(n, rw10(opRead10, 0, 1, 0), nil)
			wr := f.run(n, rw10(opWrite10, 0, 1, 0), make([]byte, 512))
			if (rd.Status == StatusGood) != a.read || (wr.Status == StatusGood) != a.write {
				t.Fatalf("type %d nexus %s: read %#x write %#x, want %+v", tc.typ, n.InitiatorPort, rd.Status, wr.Status, a)
			}
			if !a.read && rd.Status != StatusReservationConflict || !a.write && wr.Status != StatusReservationConflict {
				t.Fatalf("type %d: refused without RESERVATION CONFLICT", tc.typ)
			}
			// Commands allowed under every reservation.
			for _, c := range [][]byte{inquiry(false, 0, 96), tur(), reportLUNs(64), prIn(prinReadKeys),
				{opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}} {
				if r := f.run(n, c, nil); r.Status != StatusGood {
					t.Fatalf("type %d: %#x refused: %#x", tc.typ, c[0], r.Status)
				}
			}
		}
		check(nexA, access{true, true})
		check(nexB, tc.registrant)
		check(nexC, tc.stranger)
		// Release: wrong type is an error, right type works.
		wantSense(t, f.prOut(nexA, proutRelease, other, 0xa, 0), SenseIllegalRequest, 0x26, 0x04)
		// A non-holder's release is a no-op (all registrants: B holds too).
		if !allRegistrants(tc.typ) {
			wantGood(t, f.prOut(nexB, proutRelease, tc.typ, 0xb, 0))
			if _, _, ok := f.reservation(nexA); !ok {
				t.Fatal("released by a non-holder")
			}
		}
		wantGood(t, f.prOut(nexA, proutRelease, tc.typ, 0xa, 0))
		if _, _, ok := f.reservation(nexA); ok {
			t.Fatal("still reserved")
		}
		// Registrants only types tell the other registrants.
		if registrantsOnly(tc.typ) {
			wantSense(t, f.run(nexB, tur(), nil), SenseUnitAttention, 0x2a, 0x04)
		}
		wantGood(t, f.run(nexB, tur(), nil))
		wantGood(t, f.run(nexC, tur(), nil))
		// Wrong key: conflict; unregistered: conflict.
		wantConflict(t, f.prOut(nexA, proutReserve, tc.typ, 0xb, 0))
		wantConflict(t, f.prOut(nexC, proutReserve, tc.typ, 0, 0))
		wantSense(t, f.prOut(nexA, proutReserve, 2, 0xa, 0), SenseIllegalRequest, 0x24, 0)
		wantSense(t, f.prOut(nexA, proutReserve, 0x21, 0xa, 0), SenseIllegalRequest, 0x24, 0) // scope
	}
}

func TestPRHolderUnregisters(t *testing.T) {
	f := newFixture(t, 64)
	for _, n := range []Nexus{nexA, nexB} {
		f.ready(n)
	}
	wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
	wantGood(t, f.prOut(nexB, proutRegisterIgnore, 0, 0, 0xb))
	wantGood(t, f.prOut(nexA, proutReserve, prTypeWERO, 0xa, 0))
	wantGood(t, f.prOut(nexA, proutRegister, 0, 0xa, 0))
	wantSense(t, f.run(nexB, tur(), nil), SenseUnitAttention, 0x2a, 0x04)
	if _, _, ok := f.reservation(nexB); ok {
		t.Fatal("reservation survived its holder's unregistration")
	}
	// All registrants: lasts until the last registrant leaves.
	wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
	wantGood(t, f.prOut(nexA, proutReserve, prTypeEAAR, 0xa, 0))
	wantGood(t, f.prOut(nexA, proutRegister, 0, 0xa, 0))
	if _, _, ok := f.reservation(nexB); !ok {
		t.Fatal("all registrants reservation gone with one registrant")
	}
	wantConflict(t, f.run(nexA, rw10(opRead10, 0, 1, 0), nil))
	wantGood(t, f.prOut(nexB, proutRegister, 0, 0xb, 0))
	if _, _, ok := f.reservation(nexB); ok {
		t.Fatal("all registrants reservation outlived the registrants")
	}
}

func TestPRClear(t *testing.T) {
	f := newFixture(t, 64)
	for _, n := range []Nexus{nexA, nexB, nexC} {
		f.ready(n)
	}
	wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
	wantGood(t, f.prOut(nexB, proutRegisterIgnore, 0, 0, 0xb))
	wantGood(t, f.prOut(nexA, proutReserve, prTypeEA, 0xa, 0))
	wantConflict(t, f.prOut(nexC, proutClear, 0, 0xc, 0))
	wantConflict(t, f.prOut(nexB, proutClear, 0, 0xa, 0))
	wantGood(t, f.prOut(nexB, proutClear, 0, 0xb, 0))
	if gen, keys := f.keys(nexC); len(keys) != 0 || gen != 3 {
		t.Fatalf("gen %d keys %x after CLEAR", gen, keys)
	}
	wantSense(t, f.run(nexA, tur(), nil), SenseUnitAttention, 0x2a, 0x03)
	wantGood(t, f.run(nexB, tur(), nil))
	wantGood(t, f.run(nexC, rw10(opWrite10, 0, 1, 0), make([]byte, 512)))
}

func TestPRPreempt(t *testing.T) {
	f := newFixture(t, 64)
	for _, n := range []Nexus{nexA, nexB, nexC} {
		f.ready(n)
	}
	var mu sync.Mutex
	var aborted []NexusID
	f.tgt.SetPreemptAbortHandler(func(lun uint64, ns []NexusID, except *Command) {
		mu.Lock()
		defer mu.Unlock()
		if except == nil || except.CDB[1] != proutPreemptAbort {
			t.Error("abort handler without the PREEMPT AND ABORT command")
		}
		aborted = append(aborted, ns...)
	})
	wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
	wantGood(t, f.prOut(nexB, proutRegisterIgnore, 0, 0, 0xb))
	wantGood(t, f.prOut(nexC, proutRegisterIgnore, 0, 0, 0xc))
	wantGood(t, f.prOut(nexA, proutReserve, prTypeWE, 0xa, 0))

	// Removing a registration without touching the reservation.
	wantGood(t, f.prOut(nexB, proutPreempt, prTypeWE, 0xb, 0xc))
	if _, keys := f.keys(nexA); !slices.Equal(keys, []uint64{0xa, 0xb}) {
		t.Fatalf("keys %x", keys)
	}
	wantSense(t, f.run(nexC, tur(), nil), SenseUnitAttention, 0x2a, 0x05)
	if k, _, _ := f.reservation(nexA); k != 0xa {
		t.Fatal("reservation changed")
	}
	// Preempting an unknown key conflicts; SARK 0 without reservation match is invalid.
	wantConflict(t, f.prOut(nexB, proutPreempt, prTypeWE, 0xb, 0x99))
	wantSense(t, f.prOut(nexB, proutPreempt, prTypeWE, 0xb, 0), SenseIllegalRequest, 0x26, 0)
	wantConflict(t, f.prOut(nexC, proutPreempt, prTypeWE, 0xc, 0xa))

	// PREEMPT AND ABORT the holder: B takes over with EA.
	wantGood(t, f.prOut(nexB, proutPreemptAbort, prTypeEA, 0xb, 0xa))
	key, typ, _ := f.reservation(nexB)
	if key != 0xb || typ != prTypeEA {
		t.Fatalf("reservation %x type %d", key, typ)
	}
	mu.Lock()
	if len(aborted) != 1 || aborted[0] != nexusID(nexA) {
		t.Fatalf("aborted %v", aborted)
	}
	mu.Unlock()
	wantSense(t, f.run(nexA, tur(), nil), SenseUnitAttention, 0x2a, 0x05)
	wantConflict(t, f.run(nexA, rw10(opRead10, 0, 1, 0), nil))
	wantGood(t, f.run(nexB, rw10(opWrite10, 0, 1, 0), make([]byte, 512)))
	gen, _ := f.keys(nexB)
	if gen != 5 { // 3 registrations, 2 preemptions
		t.Fatalf("generation %d, want 5", gen)
	}

	// Preempting an all registrants reservation with SARK 0.
	wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
	wantGood(t, f.prOut(nexC, proutRegisterIgnore, 0, 0, 0xc))
	wantGood(t, f.prOut(nexB, proutRelease, prTypeEA, 0xb, 0))
	wantGood(t, f.prOut(nexB, proutReserve, prTypeWEAR, 0xb, 0))
	wantGood(t, f.prOut(nexC, proutPreempt, prTypeWERO, 0xc, 0))
	if _, keys := f.keys(nexC); !slices.Equal(keys, []uint64{0xc}) {
		t.Fatalf("keys %x", keys)
	}
	if key, typ, _ := f.reservation(nexC); key != 0xc || typ != prTypeWERO {
		t.Fatalf("reservation %x type %d", key, typ)
	}
	wantSense(t, f.run(nexA, tur(), nil), SenseUnitAttention, 0x2a, 0x05)
	wantSense(t, f.run(nexB, tur(), nil), SenseUnitAttention, 0x2a, 0x05)
}

func TestPRAllTargetPortsAndFullStatus(t *testing.T) {
	f := newFixture(t, 64)
	nexA2 := Nexus{InitiatorPort: nexA.InitiatorPort, Port: portB}
	for _, n := range []Nexus{nexA, nexA2, nexB} {
		f.ready(n)
	}
	c, p := prOut(proutRegisterIgnore, 0, 0, 0xa, 0x04) // ALL_TG_PT
	wantGood(t, f.run(nexA, c, p))
	wantGood(t, f.prOut(nexB, proutRegisterIgnore, 0, 0, 0xb))
	// The registration covers A through port B too, so it can reserve
	// there and hold through both ports.
	wantGood(t, f.prOut(nexA2, proutReserve, prTypeEA, 0xa, 0))
	wantGood(t, f.run(nexA, rw10(opRead10, 0, 1, 0), nil))
	wantConflict(t, f.run(nexB, rw10(opRead10, 0, 1, 0), nil))
	r := f.run(nexB, prIn(prinReadFullStatus), nil)
	wantGood(t, r)
	d := r.Data
	if binary.BigEndian.Uint32(d[4:8]) != uint32(len(d)-8) {
		t.Fatalf("additional length % x", d[:8])
	}
	var holders, allTgPt int
	for d = d[8:]; len(d) >= 24; {
		if d[12]&1 != 0 {
			holders++
			if d[13] != prTypeEA {
				t.Fatalf("holder type %d", d[13])
			}
		}
		if d[12]&2 != 0 {
			allTgPt++
		}
		n := int(binary.BigEndian.Uint32(d[20:24]))
		tid := d[24 : 24+n]
		if tid[0] != 0x45 || n%4 != 0 || int(binary.BigEndian.Uint16(tid[2:4])) != n-4 {
			t.Fatalf("transport id % x", tid)
		}
		d = d[24+n:]
	}
	if holders != 1 || allTgPt != 1 || len(d) != 0 {
		t.Fatalf("holders %d all_tg_pt %d rest %d", holders, allTgPt, len(d))
	}
}

func TestSPC2Reserve(t *testing.T) {
	f := newFixture(t, 64)
	for _, n := range []Nexus{nexA, nexB} {
		f.ready(n)
	}
	reserve6 := []byte{opReserve6, 0, 0, 0, 0, 0}
	release6 := []byte{opRelease6, 0, 0, 0, 0, 0}
	wantGood(t, f.run(nexA, reserve6, nil))
	wantGood(t, f.run(nexA, reserve6, nil))
	wantConflict(t, f.run(nexB, reserve6, nil))
	wantGood(t, f.run(nexB, release6, nil)) // no-op
	wantConflict(t, f.run(nexB, modeSense6(false, 0, 0x3f, 0, 255), nil))
	wantConflict(t, f.run(nexB, rw10(opRead10, 0, 1, 0), nil))
	wantConflict(t, f.run(nexB, prIn(prinReadKeys), nil))
	wantGood(t, f.run(nexB, inquiry(false, 0, 96), nil))
	wantGood(t, f.run(nexB, reportLUNs(64), nil))
	wantGood(t, f.run(nexA, modeSense6(false, 0, 0x3f, 0, 255), nil))
	wantGood(t, f.run(nexA, release6, nil))
	reserve10 := []byte{opReserve10, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	wantGood(t, f.run(nexB, reserve10, nil))
	// Nexus loss releases it.
	f.tgt.NexusLost(nexB)
	wantGood(t, f.run(nexA, reserve6, nil))
	// LUN reset releases it too.
	if f.tgt.TaskManagement(TMFLogicalUnitReset, 0, nexB) != TMFComplete {
		t.Fatal("LUN reset failed")
	}
	wantSense(t, f.run(nexA, tur(), nil), SenseUnitAttention, 0x29, 0x03)
	// B's nexus was lost: its next command is a new nexus's first.
	wantSense(t, f.run(nexB, tur(), nil), SenseUnitAttention, 0x29, 0x00)
	wantGood(t, f.run(nexB, reserve6, nil))
	// Target reset too.
	f.tgt.TaskManagement(TMFTargetWarmReset, 0, nexB)
	wantSense(t, f.run(nexA, reserve6, nil), SenseUnitAttention, 0x29, 0x02)
	wantGood(t, f.run(nexA, reserve6, nil))
	// The nexus that asked for the reset is told too.
	wantSense(t, f.run(nexB, reserve6, nil), SenseUnitAttention, 0x29, 0x02)
	wantConflict(t, f.run(nexB, reserve6, nil))
	wantSense(t, f.run(nexA, []byte{opReserve10, 0x10, 0, 0, 0, 0, 0, 0, 0, 0}, nil), SenseIllegalRequest, 0x24, 0)
	wantGood(t, f.run(nexA, release6, nil))
	// With persistent registrations, RESERVE conflicts.
	wantGood(t, f.prOut(nexA, proutRegisterIgnore, 0, 0, 0xa))
	wantConflict(t, f.run(nexA, reserve6, nil))
}
