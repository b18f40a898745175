package faultdev

import (
	"bytes"
	"errors"
	"testing"
)

func TestPowerCut(t *testing.T) {
	p := NewPower(1)
	d := p.NewDevice(8 * SectorSize)
	old := bytes.Repeat([]byte{1}, 8*SectorSize)
	d.Load(old, 0)
	// A flushed write survives; an unflushed one may not.
	if _, err := d.WriteAt(bytes.Repeat([]byte{2}, SectorSize), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	p.CrashAfter(2) // the second write is cut short
	if _, err := d.WriteAt(bytes.Repeat([]byte{3}, 4*SectorSize), 2*SectorSize); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(bytes.Repeat([]byte{4}, SectorSize), 7*SectorSize); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("write at the cut: %v", err)
	}
	if _, err := d.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrPowerCut) {
		t.Fatalf("read after the cut: %v", err)
	}
	p.Restore()
	got := make([]byte, 8*SectorSize)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if got[0] != 2 {
		t.Fatal("flushed write lost")
	}
	for s := 0; s < 8; s++ {
		v := got[s*SectorSize]
		if !bytes.Equal(got[s*SectorSize:(s+1)*SectorSize], bytes.Repeat([]byte{v}, SectorSize)) {
			t.Fatalf("sector %d torn inside", s)
		}
		switch {
		case s == 0 && v != 2, s == 1 && v != 1,
			s >= 2 && s < 6 && v != 1 && v != 3,
			s == 7 && v != 1 && v != 4:
			t.Fatalf("sector %d holds %d", s, v)
		}
	}
	if p.IsCut() {
		t.Fatal("still cut after restore")
	}
}
