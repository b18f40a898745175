package iscsi

import (
	"testing"
	"unsafe"
)

func TestBufPool(t *testing.T) {
	var p bufPool
	for _, n := range []int{1, 512, 4096, 4097, 65536, 1 << 20, 3<<20 + 1, 32 << 20, 33 << 20} {
		b := p.get(n)
		if len(b) != n {
			t.Fatalf("get(%d) has length %d", n, len(b))
		}
		if n <= 32<<20 && cap(b)&(cap(b)-1) != 0 {
			t.Fatalf("get(%d) capacity %d is not a size class", n, cap(b))
		}
		if a := uintptr(unsafe.Pointer(&b[0])) % bufAlign; a != 0 {
			t.Fatalf("get(%d) is %d bytes past a %d-byte boundary", n, a, bufAlign)
		}
		p.put(b)
		again := p.get(n)
		if len(again) != n {
			t.Fatalf("reused buffer for %d has length %d", n, len(again))
		}
		if a := uintptr(unsafe.Pointer(&again[0])) % bufAlign; a != 0 {
			t.Fatalf("reused get(%d) is %d bytes past a %d-byte boundary", n, a, bufAlign)
		}
	}
	p.put(nil)
	p.put(make([]byte, 100)) // not from the pool: ignored
}
