package scsi

import (
	"bytes"
	"testing"
)

// swpOf returns SWP (Control page) and WP (device-specific parameter) from
// MODE SENSE(6) through f.
func swpOf(t *testing.T, f *fixture, n Nexus) (swp, wp bool) {
	t.Helper()
	r := f.run(n, modeSense6(true, pcCurrent, pageControl, 0, 255), nil)
	wantGood(t, r)
	return pagesOf(t, r.Data, false)[pageControl][4]&0x08 != 0, r.Data[2]&0x80 != 0
}

// selectSWP sets SWP through f with MODE SELECT(6) of the current Control
// page with SWP changed, as libiscsi's set_swp does.
func selectSWP(t *testing.T, f *fixture, n Nexus, swp bool) {
	t.Helper()
	p := f.run(n, modeSense6(true, pcCurrent, pageControl, 0, 255), nil).Data
	p[0], p[2] = 0, 0
	p[4+4] &^= 0x08
	if swp {
		p[4+4] |= 0x08
	}
	wantGood(t, f.run(n, []byte{opModeSelect6, 0x10, 0, 0, byte(len(p)), 0}, p))
}

// TestSoftwareWriteProtect: SWP is changeable; set through one node it
// write-protects the LU through every node (every command that writes
// the medium fails with DATA PROTECT, reads work, MODE SENSE reports WP),
// the other nexuses get MODE PARAMETERS CHANGED, what was written before
// is flushed, and clearing it (or a LUN reset) makes the LU writable again.
func TestSoftwareWriteProtect(t *testing.T) {
	be := NewMemBackend(1000*BlockSize, testIdentity())
	store := NewMemStore()
	a, b := node(t, be, store), node(t, be, store)
	a.ready(nexA)
	a.ready(nexB)
	b.ready(nexC)

	r := a.run(nexA, modeSense6(true, pcChangeable, pageControl, 0, 255), nil)
	wantGood(t, r)
	if p := pagesOf(t, r.Data, false)[pageControl]; p[4] != 0x08 || !isZero(p[5:]) || p[2] != 0 || p[3] != 0 {
		t.Fatalf("changeable control page % x, want only SWP", p)
	}
	if swp, wp := swpOf(t, b, nexC); swp || wp {
		t.Fatal("SWP or WP set by default")
	}
	a.writeBlocks(0, pattern(4, 1))
	flushes0, _ := be.Stats()
	selectSWP(t, a, nexA, true)
	if fl, _ := be.Stats(); fl == flushes0 {
		t.Error("setting SWP did not flush the data written before")
	}
	// The other nexuses, on both nodes, learn of it; the one that set it
	// does not.
	wantGood(t, a.run(nexA, tur(), nil))
	wantSense(t, a.run(nexB, tur(), nil), SenseUnitAttention, 0x2a, 0x01)
	wantSense(t, b.run(nexC, tur(), nil), SenseUnitAttention, 0x2a, 0x01)
	if swp, wp := swpOf(t, b, nexC); !swp || !wp {
		t.Fatalf("through the other node SWP=%v WP=%v, want both set", swp, wp)
	}

	one := make([]byte, BlockSize)
	unmapList := []byte{0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}
	writes := map[string]struct {
		cdb  []byte
		data []byte
	}{
		"WRITE(6)":             {rw6(opWrite6, 0, 1), one},
		"WRITE(10)":            {rw10(opWrite10, 0, 1, 0), one},
		"WRITE(12)":            {rw12(opWrite12, 0, 1, 0), one},
		"WRITE(16)":            {rw16(opWrite16, 0, 1, 0), one},
		"WRITE AND VERIFY(10)": {rw10(opWriteVerify10, 0, 1, 0), one},
		"WRITE AND VERIFY(16)": {rw16(opWriteVerify16, 0, 1, 0), one},
		"WRITE SAME(10)":       {rw10(opWriteSame10, 0, 1, 0), one},
		"WRITE SAME(16) UNMAP": {rw16(opWriteSame16, 0, 1, 0x08), one},
		"UNMAP":                {[]byte{opUnmap, 0, 0, 0, 0, 0, 0, 0, byte(len(unmapList)), 0}, unmapList},
		"COMPARE AND WRITE":    {cawCDB(0, 1, 0), append(bytes.Clone(pattern(1, 1)), one...)},
		"ORWRITE(16)":          {orWriteCDB(0, 1, 0), one},
		"WRITE ATOMIC(16)":     {writeAtomicCDB(0, 1, 0, 0), one},
	}
	for name, w := range writes {
		for _, f := range []*fixture{a, b} {
			n := nexA
			if f == b {
				n = nexC
			}
			if r := f.run(n, w.cdb, w.data); r.Status != StatusCheckCondition {
				t.Errorf("%s under SWP: status %#x, want DATA PROTECT", name, r.Status)
			} else {
				wantSense(t, r, SenseDataProtect, 0x27, 0x02)
			}
		}
	}
	if got := b.readBlocks(0, 4); !bytes.Equal(got, pattern(4, 1)) {
		t.Fatal("data changed under SWP, or reads refused")
	}

	// Cleared through the other node: writable again everywhere.
	selectSWP(t, b, nexC, false)
	wantSense(t, a.run(nexA, tur(), nil), SenseUnitAttention, 0x2a, 0x01)
	wantGood(t, a.run(nexA, rw10(opWrite10, 0, 1, 0), one))
	wantGood(t, b.run(nexC, rw10(opWrite10, 1, 1, 0), one))

	// A LUN reset returns SWP to its default (clear).
	selectSWP(t, a, nexA, true)
	if resp := a.tgt.TaskManagement(TMFLogicalUnitReset, 0, nexA); resp != TMFComplete {
		t.Fatalf("LUN reset: %v", resp)
	}
	b.ready(nexC)
	wantGood(t, b.run(nexC, rw10(opWrite10, 0, 1, 0), one))
}

// TestStateCodecSWP: SWP is encoded in the mode section (bit 1), alone and
// with WCE clear, and survives a round trip and Clone.
func TestStateCodecSWP(t *testing.T) {
	base := mustMarshal(t, richState())
	for _, m := range []ModeParameters{
		{SoftwareWriteProtect: true},
		{SoftwareWriteProtect: true, WriteCacheDisabled: true},
	} {
		s := richState()
		s.Mode = m
		b := mustMarshal(t, s)
		want := byte(modeFlagSWP)
		if m.WriteCacheDisabled {
			want |= modeFlagWCD
		}
		if !bytes.Equal(b[:len(base)], base) || !bytes.Equal(b[len(base):], []byte{codecSectionMode, want}) {
			t.Fatalf("%+v: mode section % x", m, b[len(base):])
		}
		got, err := UnmarshalLUState(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Mode != m || got.Clone().Mode != m {
			t.Fatalf("round trip %+v, want %+v", got.Mode, m)
		}
	}
}
