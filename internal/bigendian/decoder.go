// Package bigendian owns the sticky big-endian decoder that the snapshot
// protocol (snapstore/wire) and the persisted SCSI LU state
// (target/scsi's state codec) both read their formats with.
package bigendian

import "encoding/binary"

// Decoder reads big-endian fields from B. The first failure sticks: later
// reads return zero values, so a decoding function reads straight through
// and checks Err once (and before anything whose size comes from the
// input). Nothing it returns but Take's slices aliases B.
type Decoder struct {
	B   []byte // the input
	Off int    // bytes consumed
	Err error  // the first failure

	// Short returns the error for a read of need bytes (field what) at
	// offset Off that the input cannot satisfy.
	Short func(what string, need, off, size int) error
}

// Fail records err unless a failure is recorded already.
func (d *Decoder) Fail(err error) {
	if d.Err == nil {
		d.Err = err
	}
}

// Take returns the next n bytes, or nil (and records a failure) if fewer
// are left or a failure is recorded.
func (d *Decoder) Take(n int, what string) []byte {
	if d.Err != nil {
		return nil
	}
	if n < 0 || n > len(d.B)-d.Off {
		d.Fail(d.Short(what, n, d.Off, len(d.B)))
		return nil
	}
	p := d.B[d.Off : d.Off+n]
	d.Off += n
	return p
}

// Left returns the number of bytes not read yet.
func (d *Decoder) Left() int { return len(d.B) - d.Off }

// U8 reads a byte.
func (d *Decoder) U8(what string) uint8 {
	if p := d.Take(1, what); p != nil {
		return p[0]
	}
	return 0
}

// U16 reads a big-endian uint16.
func (d *Decoder) U16(what string) uint16 {
	if p := d.Take(2, what); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

// U32 reads a big-endian uint32.
func (d *Decoder) U32(what string) uint32 {
	if p := d.Take(4, what); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

// U64 reads a big-endian uint64.
func (d *Decoder) U64(what string) uint64 {
	if p := d.Take(8, what); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}
