package snapstore

import "unsafe"

// MemAlign is the memory alignment of AlignedBuffer: 4096 satisfies every
// O_DIRECT device, whether it has 512-byte or 4 KiB logical blocks.
const MemAlign = 4096

// AlignedBuffer returns a zeroed buffer of n bytes whose first byte is at
// an address that is a multiple of MemAlign. An O_DIRECT device (see
// OpenDirect) reads and writes such a buffer in place when the offset and
// length are aligned too; any other buffer goes through a bounce buffer.
//
// Go gives no alignment guarantee beyond the element type's, so the
// buffer is carved out of a slice over-allocated by MemAlign bytes. In
// practice the allocator hands out blocks of 4 KiB multiples already
// aligned (size classes that divide the 8 KiB page, and page-backed large
// objects), so the plain allocation is tried first and the over-allocation
// is paid only when it is not. The capacity is clipped to n so that an
// append cannot run into the slack and silently leave the aligned region.
func AlignedBuffer(n int) []byte {
	if n <= 0 {
		return []byte{}
	}
	if b := make([]byte, n); isAlignedAddr(b, MemAlign) {
		return b
	}
	return alignedIn(make([]byte, n+MemAlign-1), n, MemAlign)
}

// alignedIn returns the first n bytes of raw that start at a multiple of
// align; raw must be at least n+align-1 bytes long.
func alignedIn(raw []byte, n, align int) []byte {
	skip := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(raw))) % uintptr(align)); r != 0 {
		skip = align - r
	}
	return raw[skip : skip+n : skip+n]
}

// isAlignedAddr reports whether p's first byte is at a multiple of align
// (a power of two). An empty slice is aligned: there is nothing to move.
func isAlignedAddr(p []byte, align int) bool {
	if len(p) == 0 {
		return true
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))&uintptr(align-1) == 0
}

func alignDown(x, align int64) int64 { return x &^ (align - 1) }
func alignUp(x, align int64) int64   { return (x + align - 1) &^ (align - 1) }
