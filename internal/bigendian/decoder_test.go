package bigendian

import (
	"errors"
	"fmt"
	"testing"
)

var errShort = errors.New("short")

func newDecoder(b []byte) *Decoder {
	return &Decoder{B: b, Short: func(what string, need, off, size int) error {
		return fmt.Errorf("%s: %d at %d of %d: %w", what, need, off, size, errShort)
	}}
}

func TestDecoder(t *testing.T) {
	d := newDecoder([]byte{1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 9})
	if d.U8("a") != 1 || d.U16("b") != 2 || d.U32("c") != 3 || d.U64("d") != 4 || d.Left() != 1 || d.Err != nil {
		t.Fatalf("reads wrong: off %d err %v", d.Off, d.Err)
	}
	if d.U16("e") != 0 || !errors.Is(d.Err, errShort) || d.Err.Error() != "e: 2 at 15 of 16: short" {
		t.Fatalf("short read: %v", d.Err)
	}
	first := d.Err
	// Sticky: later reads return zero, even ones that would fit, and the
	// first error stays.
	if d.U8("f") != 0 || d.Take(0, "g") != nil || d.Err != first || d.Off != 15 {
		t.Fatalf("after a failure: off %d err %v", d.Off, d.Err)
	}
	d.Fail(errors.New("other"))
	if d.Err != first {
		t.Fatal("Fail replaced the first failure")
	}
}
