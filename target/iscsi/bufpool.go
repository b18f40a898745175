package iscsi

import (
	"math/bits"
	"sync"
)

// bufPool recycles command data buffers by power-of-two size class
// (4 KiB to 32 MiB). A fresh 1 MiB buffer per command costs its zeroing
// and, later, the garbage collector's work; reused buffers cost neither.
// Pooled buffers are not zeroed: they hold only data that is overwritten
// before use (data-out received in full before a command runs; data-in
// filled by the read before it is sent).
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
		return make([]byte, n)
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<c)
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
