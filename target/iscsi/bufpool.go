package iscsi

import (
	"math/bits"
	"sync"
	"unsafe"
)

// bufPool recycles command data buffers by power-of-two size class
// (4 KiB to 32 MiB). A fresh 1 MiB buffer per command costs its zeroing
// and, later, the garbage collector's work; reused buffers cost neither.
// Pooled buffers are not zeroed: they hold only data that is overwritten
// before use (data-out received in full before a command runs; data-in
// filled by the read before it is sent). Every buffer starts at a
// 4096-aligned address: backends that open their devices O_DIRECT (csnap's
// cluster volumes) then read and write a command's data in place, without
// a bounce buffer, whenever its offset and length are aligned too.
type bufPool struct {
	classes [minClassBits + numClasses]sync.Pool
}

const (
	minClassBits = 12 // 4 KiB
	numClasses   = 14 // up to 32 MiB
)

func class(n int) int {
	if n <= 1<<minClassBits {
		return minClassBits
	}
	return bits.Len(uint(n - 1))
}

// get returns a buffer of length n (contents undefined).
func (p *bufPool) get(n int) []byte {
	c := class(n)
	if c >= minClassBits+numClasses {
		return alignedBuf(n, n)
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return alignedBuf(n, 1<<c)
}

// put returns a buffer obtained from get.
func (p *bufPool) put(b []byte) {
	c := class(cap(b))
	if b == nil || cap(b) != 1<<c || c >= minClassBits+numClasses {
		return
	}
	b = b[:cap(b)]
	p.classes[c].Put(&b)
}

// bufAlign is the address alignment of command data buffers: 4096 suits
// O_DIRECT on devices with 512-byte and 4 KiB logical blocks alike.
const bufAlign = 4096

// alignedBuf returns a buffer of length n and capacity c (c >= n) whose
// first byte is at a multiple of bufAlign. Go promises no alignment for a
// []byte, so it is cut from a slice over-allocated by bufAlign-1 bytes;
// the capacity is clipped to c so that put recognises its size class.
func alignedBuf(n, c int) []byte {
	raw := make([]byte, c+bufAlign-1)
	skip := (bufAlign - int(uintptr(unsafe.Pointer(unsafe.SliceData(raw)))%bufAlign)) % bufAlign
	return raw[skip : skip+n : skip+c]
}
