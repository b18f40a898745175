package snapstore

import (
	"testing"
	"unsafe"
)

func TestAlignedBuffer(t *testing.T) {
	for _, n := range []int{1, 100, 512, 4096, 4097, 12288, 65536, 1<<20 + 1} {
		b := AlignedBuffer(n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("AlignedBuffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		if !isAlignedAddr(b, MemAlign) {
			t.Fatalf("AlignedBuffer(%d) at %p is not %d-aligned", n, &b[0], MemAlign)
		}
		for i, x := range b {
			if x != 0 {
				t.Fatalf("AlignedBuffer(%d)[%d] = %d, want zeroed", n, i, x)
			}
		}
	}
	if b := AlignedBuffer(0); len(b) != 0 {
		t.Fatal("AlignedBuffer(0) is not empty")
	}
	// The over-allocation path, whatever the allocator does: cut from a
	// slice that starts one byte past an aligned address.
	raw := AlignedBuffer(3 * MemAlign)[1:]
	b := alignedIn(raw, MemAlign, MemAlign)
	if !isAlignedAddr(b, MemAlign) || len(b) != MemAlign || cap(b) != MemAlign {
		t.Fatalf("alignedIn: %p len %d cap %d", &b[0], len(b), cap(b))
	}
	if off := uintptr(unsafe.Pointer(&b[0])) - uintptr(unsafe.Pointer(&raw[0])); off != MemAlign-1 {
		t.Fatalf("alignedIn skipped %d bytes, want %d", off, MemAlign-1)
	}
}
