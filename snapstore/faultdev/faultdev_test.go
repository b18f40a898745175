package faultdev

import (
	"bytes"
	"errors"
	"syscall"
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

func TestFailedFlushForgetsWrites(t *testing.T) {
	p := NewPower(1)
	d := p.NewDevice(4 * SectorSize)
	if _, err := d.WriteAt(bytes.Repeat([]byte{7}, SectorSize), 0); err != nil {
		t.Fatal(err)
	}
	p.FailAt(1, Fault{Err: syscall.EIO, FlushOnly: true})
	if err := d.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush: %v, want EIO", err)
	}
	// Still readable, as from the page cache.
	b := make([]byte, 1)
	if _, err := d.ReadAt(b, 0); err != nil || b[0] != 7 {
		t.Fatalf("read after failed flush: %v %v", b, err)
	}
	if err := d.Flush(); err != nil {
		t.Fatalf("second flush: %v", err)
	}
	p.Cut()
	p.Restore()
	if _, err := d.ReadAt(b, 0); err != nil || b[0] != 0 {
		t.Fatalf("after a power cut the write whose flush failed must be gone: %v %v", b, err)
	}
	if p.Failures() != 1 {
		t.Fatalf("failures %d", p.Failures())
	}
}

func TestStickyFaultAndThin(t *testing.T) {
	p := NewPower(1)
	d := p.NewDevice(4 * ThinPage)
	p.FailAt(2, Fault{Err: syscall.EIO, Sticky: true})
	if _, err := d.WriteAt([]byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := d.WriteAt([]byte{1}, 0); !errors.Is(err, syscall.EIO) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := d.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush: %v", err)
	}
	p.Heal()
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	d.SetThin(1) // page 0 is written; one more page may be
	if _, err := d.WriteAt([]byte{1}, ThinPage); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(make([]byte, 2), 3*ThinPage-1); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("thin write over budget: %v", err)
	}
	if _, err := d.WriteAt([]byte{2}, 10); err != nil {
		t.Fatalf("rewrite of an allocated page: %v", err)
	}
	d.AddBudget(2)
	if _, err := d.WriteAt(make([]byte, 2), 3*ThinPage-1); err != nil {
		t.Fatal(err)
	}
}
