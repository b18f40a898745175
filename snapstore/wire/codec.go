package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/csnap/csnap/internal/bigendian"
	"github.com/csnap/csnap/internal/names"
)

// encoder appends big-endian fields to a byte slice. It cannot fail: every
// semantic check happens in the message's validate method before encoding.
type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)    { e.b = append(e.b, v) }
func (e *encoder) u16(v uint16)  { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *encoder) u32(v uint32)  { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64)  { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) i32(v int32)   { e.u32(uint32(v)) }
func (e *encoder) i64(v int64)   { e.u64(uint64(v)) }
func (e *encoder) id(v [16]byte) { e.b = append(e.b, v[:]...) }

func (e *encoder) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// name writes a u8 length and the bytes (volume, snapshot and node names).
func (e *encoder) name(s string) { e.u8(uint8(len(s))); e.b = append(e.b, s...) }

// text writes a u16 length and the bytes (error messages, check problems).
func (e *encoder) text(s string) { e.u16(uint16(len(s))); e.b = append(e.b, s...) }

func (e *encoder) ranges(rs []Range) {
	e.u16(uint16(len(rs)))
	for _, r := range rs {
		e.u64(r.Start)
		e.u32(r.Count)
	}
}

// decoder reads big-endian fields from a body (bigendian.Decoder: the
// first failure sticks, later reads return zero values, so unmarshal
// methods read straight through and the caller checks Err once). Nothing
// it returns aliases the body.
type decoder struct{ bigendian.Decoder }

func newDecoder(body []byte) *decoder {
	return &decoder{bigendian.Decoder{B: body, Short: func(what string, n, off, size int) error {
		return fmt.Errorf("%s: need %d bytes at offset %d, body has %d: %w", what, n, off, size, ErrMalformed)
	}}}
}

func (d *decoder) fail(format string, args ...any) { d.Fail(fmt.Errorf(format, args...)) }

func (d *decoder) i32(what string) int32 { return int32(d.U32(what)) }
func (d *decoder) i64(what string) int64 { return int64(d.U64(what)) }

func (d *decoder) id(what string) (v [16]byte) {
	copy(v[:], d.Take(16, what))
	return v
}

// bool accepts exactly 0 and 1 so that every message has one encoding.
func (d *decoder) bool(what string) bool {
	v := d.U8(what)
	if v > 1 {
		d.fail("%s: boolean byte is %d, want 0 or 1: %w", what, v, ErrMalformed)
	}
	return v == 1
}

func (d *decoder) name(what string) string {
	n := d.U8(what + " length")
	return string(d.Take(int(n), what))
}

func (d *decoder) text(what string) string {
	n := d.U16(what + " length")
	return string(d.Take(int(n), what))
}

// count reads a list length and checks it against the limit and against
// the bytes left (each element needs at least minSize bytes), so a hostile
// count can never make the decoder allocate more than the body justifies.
func (d *decoder) count(n, limit, minSize int, what string) int {
	if d.Err != nil {
		return 0
	}
	if n > limit {
		d.fail("%s: %d entries exceeds limit %d: %w", what, n, limit, ErrLimit)
		return 0
	}
	if n*minSize > len(d.B)-d.Off {
		d.fail("%s: %d entries need at least %d bytes, %d left: %w", what, n, n*minSize, len(d.B)-d.Off, ErrMalformed)
		return 0
	}
	return n
}

func (d *decoder) ranges(what string) []Range {
	n := d.count(int(d.U16(what+" count")), MaxRanges, 12, what)
	if n == 0 {
		return nil
	}
	rs := make([]Range, n)
	for i := range rs {
		rs[i].Start = d.U64(what)
		rs[i].Count = d.U32(what)
	}
	return rs
}

// done reports trailing bytes: a body must be consumed exactly.
func (d *decoder) done() error {
	if d.Err == nil && d.Off != len(d.B) {
		d.fail("%d trailing bytes after the message: %w", len(d.B)-d.Off, ErrMalformed)
	}
	return d.Err
}

// Errors. Every error returned by this package wraps one of these, so
// callers can branch with errors.Is while the message says what failed.
var (
	// ErrCorrupt: the byte stream is not a valid frame (bad magic, version,
	// length or checksum). The stream cannot be resynchronised; close it.
	ErrCorrupt = errors.New("corrupt frame")
	// ErrUnknownType: the frame is intact but its type is not defined.
	ErrUnknownType = errors.New("unknown message type")
	// ErrMalformed: the body does not parse (short, trailing bytes,
	// non-canonical values, fields out of their domain).
	ErrMalformed = errors.New("malformed message")
	// ErrLimit: a count or size exceeds a protocol limit.
	ErrLimit = errors.New("protocol limit exceeded")
	// ErrBadName: a volume, snapshot or node name is not valid.
	ErrBadName = errors.New("invalid name")
)

// ValidName reports whether s is a valid volume or snapshot name: 1-63
// characters of a-z 0-9 '-', starting with a letter or digit
// (^[a-z0-9][a-z0-9-]{0,62}$), the form iSCSI target names are built from.
func ValidName(s string) bool { return names.Valid(s) }

// ValidNodeName reports whether s is a valid node name: 1-253 characters of
// A-Z a-z 0-9 '.' '_' '-', starting with a letter or digit. Node names are
// Consul node names, which are usually host names (upper case and dots
// occur), so they get a wider alphabet than volume and snapshot names.
func ValidNodeName(s string) bool {
	if len(s) == 0 || len(s) > MaxNodeNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

func checkName(what, s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%s %q: want 1-%d of a-z 0-9 '-', not starting with '-': %w", what, s, MaxNameLen, ErrBadName)
	}
	return nil
}

func checkNodeName(what, s string) error {
	if !ValidNodeName(s) {
		return fmt.Errorf("%s %q: want 1-%d of A-Z a-z 0-9 . _ -, starting with a letter or digit: %w", what, s, MaxNodeNameLen, ErrBadName)
	}
	return nil
}

func checkText(what, s string) error {
	if len(s) > MaxText {
		return fmt.Errorf("%s: %d bytes exceeds limit %d: %w", what, len(s), MaxText, ErrLimit)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: not valid UTF-8: %w", what, ErrMalformed)
	}
	return nil
}

// checkRanges enforces the rules shared by every chunk-range list: 1 to
// MaxRanges ranges, each non-empty and ending below 2^64, strictly
// ascending and disjoint, at most MaxChunks chunks in total. Sorted
// disjoint lists make the server's bookkeeping simple and let a hostile
// client neither double-count chunks nor ask for unbounded work.
func checkRanges(what string, rs []Range) error {
	if len(rs) == 0 {
		return fmt.Errorf("%s: empty range list: %w", what, ErrMalformed)
	}
	if len(rs) > MaxRanges {
		return fmt.Errorf("%s: %d ranges exceeds limit %d: %w", what, len(rs), MaxRanges, ErrLimit)
	}
	var total uint64
	for i, r := range rs {
		if r.Count == 0 {
			return fmt.Errorf("%s: range %d is empty: %w", what, i, ErrMalformed)
		}
		if r.Start+uint64(r.Count) < r.Start {
			return fmt.Errorf("%s: range %d (%d,+%d) wraps past 2^64: %w", what, i, r.Start, r.Count, ErrMalformed)
		}
		if i > 0 && r.Start < rs[i-1].Start+uint64(rs[i-1].Count) {
			return fmt.Errorf("%s: range %d starts at %d, before the end of range %d: ranges must ascend without overlap: %w",
				what, i, r.Start, i-1, ErrMalformed)
		}
		total += uint64(r.Count)
	}
	if total > MaxChunks {
		return fmt.Errorf("%s: %d chunks exceeds limit %d: %w", what, total, MaxChunks, ErrLimit)
	}
	return nil
}

// checkExtents applies the same rules to an extent list; storeOnly rejects
// origin extents (snapshot-write answers never point at the origin).
func checkExtents(what string, xs []Extent, storeOnly bool) error {
	if len(xs) == 0 {
		return fmt.Errorf("%s: empty extent list: %w", what, ErrMalformed)
	}
	if len(xs) > MaxExtents {
		return fmt.Errorf("%s: %d extents exceeds limit %d: %w", what, len(xs), MaxExtents, ErrLimit)
	}
	var total uint64
	for i, x := range xs {
		if x.Count == 0 {
			return fmt.Errorf("%s: extent %d is empty: %w", what, i, ErrMalformed)
		}
		if x.Start+uint64(x.Count) < x.Start {
			return fmt.Errorf("%s: extent %d wraps past 2^64: %w", what, i, ErrMalformed)
		}
		if i > 0 && x.Start < xs[i-1].Start+uint64(xs[i-1].Count) {
			return fmt.Errorf("%s: extent %d starts at %d, before the end of extent %d: %w", what, i, x.Start, i-1, ErrMalformed)
		}
		if x.Origin && x.StoreOffset != 0 {
			return fmt.Errorf("%s: origin extent %d has store offset %d: %w", what, i, x.StoreOffset, ErrMalformed)
		}
		if storeOnly && x.Origin {
			return fmt.Errorf("%s: extent %d points at the origin: %w", what, i, ErrMalformed)
		}
		total += uint64(x.Count)
	}
	if total > MaxChunks {
		return fmt.Errorf("%s: %d chunks exceeds limit %d: %w", what, total, MaxChunks, ErrLimit)
	}
	return nil
}
