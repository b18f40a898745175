package stream

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Kind is the kind of a decoded record.
type Kind int

const (
	// Data: Data holds the bytes of [Offset, Offset+Length).
	Data Kind = iota + 1
	// Zeros: [Offset, Offset+Length) reads as zeros.
	Zeros
)

// Record is one data or zeros record. Data is valid until the next call of
// Decoder.Next.
type Record struct {
	Kind   Kind
	Offset int64
	Length int64
	Data   []byte
}

// Decoder reads a stream, verifying each record's CRC before returning it
// and the end record (count, data bytes, SHA-256 of the stream) before
// reporting io.EOF. Errors are *FormatError with the input offset.
type Decoder struct {
	r       io.Reader
	in      int64 // input bytes consumed
	h       Header
	hb      []byte
	hash    hashWriter
	tok     Token // state after the last record returned
	resumed *Token
	buf     []byte
	done    bool
	err     error
	lastTag byte
	anyRecs bool
	pending *pendingRec // the first record, read while looking for a resume record
}

// NewDecoder reads and verifies the header (and, in a resumed stream, the
// resume record: Resumed reports its token, to check before applying
// anything). A problem with what follows the header is reported by Next.
func NewDecoder(r io.Reader) (*Decoder, error) {
	d := &Decoder{r: r}
	var fixed [16]byte
	if err := d.read(fixed[:], "header"); err != nil {
		return nil, err
	}
	if !bytes.Equal(fixed[:8], magic[:]) {
		return nil, d.fail(0, "header", ErrMagic)
	}
	if v := binary.LittleEndian.Uint16(fixed[8:]); v != Version {
		return nil, d.fail(8, "header", fmt.Errorf("version %d (this reader: %d): %w", v, Version, ErrVersion))
	}
	hl := binary.LittleEndian.Uint32(fixed[12:])
	if hl < HeaderSize || hl > MaxHeaderSize {
		return nil, d.fail(12, "header", fmt.Errorf("header length %d outside [%d, %d]: %w", hl, HeaderSize, MaxHeaderSize, ErrCorrupt))
	}
	d.hb = make([]byte, hl)
	copy(d.hb, fixed[:])
	if err := d.read(d.hb[16:], "header"); err != nil {
		return nil, err
	}
	h, err := parseHeader(d.hb)
	if err != nil {
		return nil, d.fail(0, "header", err)
	}
	d.h = h
	d.tok = Token{HeaderHash: sha256.Sum256(d.hb), Pos: int64(hl)}
	d.buf = make([]byte, recHdr+64) // grows to at most recHdr+MaxPayload+4
	// A resume record may follow directly.
	tag, p, at, err := d.record()
	if err != nil {
		// No record yet: the header alone is the start of the stream; the
		// first Next reports the error (and Token still works).
		d.hash = sha256.New()
		d.hash.Write(d.hb)
		return d, nil
	}
	if tag == TagResume {
		var t Token
		if err := t.UnmarshalBinary(p); err != nil {
			return nil, d.fail(at, "resume record", err)
		}
		if t.HeaderHash != d.tok.HeaderHash {
			return nil, d.fail(at, "resume record", fmt.Errorf("the token is for another stream: %w", ErrToken))
		}
		if t.VolumeOff > h.VolumeSize {
			return nil, d.fail(at, "resume record", fmt.Errorf("volume offset %d beyond the volume: %w", t.VolumeOff, ErrToken))
		}
		if d.hash, err = t.hasher(); err != nil {
			return nil, d.fail(at, "resume record", err)
		}
		d.resumed = &t
		d.tok = t
		return d, nil
	}
	d.hash = sha256.New()
	d.hash.Write(d.hb)
	d.pending = &pendingRec{tag: tag, at: at}
	d.pending.p = append([]byte(nil), p...)
	return d, nil
}

type pendingRec struct {
	tag byte
	p   []byte
	at  int64
}

// Header returns the stream's header.
func (d *Decoder) Header() Header { return d.h }

// HeaderHash is the SHA-256 of the header bytes (identifies the stream).
func (d *Decoder) HeaderHash() [32]byte { return d.tok.HeaderHash }

// Resumed returns the token a resumed stream starts from.
func (d *Decoder) Resumed() (Token, bool) {
	if d.resumed == nil {
		return Token{}, false
	}
	return *d.resumed, true
}

// Token returns the resume token for the point after the last record Next
// returned (or the start). Take it after the record was applied.
func (d *Decoder) Token() Token {
	t := d.tok
	if m, ok := d.hash.(interface{ MarshalBinary() ([]byte, error) }); ok {
		t.hashState, _ = m.MarshalBinary()
	}
	return t
}

// Offset returns the number of input bytes consumed.
func (d *Decoder) Offset() int64 { return d.in }

func (d *Decoder) fail(at int64, what string, err error) error {
	d.err = &FormatError{Offset: at, What: what, Err: err}
	return d.err
}

// read fills p from the input; a short read is ErrTruncated.
func (d *Decoder) read(p []byte, what string) error {
	n, err := io.ReadFull(d.r, p)
	d.in += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = ErrTruncated
		}
		return d.fail(d.in, what, err)
	}
	return nil
}

// record reads one record and verifies its CRC: tag, payload (valid until
// the next read) and its input offset.
func (d *Decoder) record() (byte, []byte, int64, error) {
	at := d.in
	b := d.buf[:recHdr]
	if err := d.read(b, "record header"); err != nil {
		return 0, nil, at, err
	}
	tag := b[0]
	if b[1]|b[2]|b[3] != 0 {
		return 0, nil, at, d.fail(at, "record header", fmt.Errorf("reserved bytes set: %w", ErrCorrupt))
	}
	l := binary.LittleEndian.Uint32(b[4:])
	if l > MaxPayload {
		return 0, nil, at, d.fail(at, "record header", fmt.Errorf("payload of %d bytes (max %d): %w", l, MaxPayload, ErrCorrupt))
	}
	n := recHdr + int(l) + 4
	// Grow the buffer as the bytes arrive (a short input claiming a large
	// record does not cost a large allocation); at most recHdr+MaxPayload+4.
	for have := recHdr; have < n; {
		if cap(d.buf) == have {
			nb := make([]byte, min(n, max(2*cap(d.buf), 64<<10)))
			copy(nb, d.buf[:have])
			d.buf = nb
		}
		k := min(n, cap(d.buf))
		if err := d.read(d.buf[have:k], "record"); err != nil {
			return 0, nil, at, err
		}
		have = k
	}
	b = d.buf[:n]
	if got, want := binary.LittleEndian.Uint32(b[n-4:]), crc32.Checksum(b[:n-4], castagnoli); got != want {
		return 0, nil, at, d.fail(at, fmt.Sprintf("record (tag %d, %d bytes)", tag, l), fmt.Errorf("CRC %08x, computed %08x: %w", got, want, ErrChecksum))
	}
	return tag, b[recHdr : n-4], at, nil
}

// Next returns the next data or zeros record, verified. At the end it
// verifies the end record and that nothing follows, and returns io.EOF;
// any problem is a *FormatError (and every later call returns it).
func (d *Decoder) Next() (Record, error) {
	for {
		if d.err != nil {
			return Record{}, d.err
		}
		if d.done {
			return Record{}, io.EOF
		}
		var tag byte
		var p []byte
		var at int64
		if d.pending != nil {
			tag, p, at = d.pending.tag, d.pending.p, d.pending.at
			d.pending = nil
		} else {
			var err error
			if tag, p, at, err = d.record(); err != nil {
				return Record{}, err
			}
		}
		n := int64(recHdr + len(p) + 4)
		switch tag {
		case TagData, TagZeros:
			if len(p) < 8 {
				return Record{}, d.fail(at, "record", fmt.Errorf("tag %d payload of %d bytes: %w", tag, len(p), ErrCorrupt))
			}
			r := Record{Kind: Data, Offset: int64(binary.LittleEndian.Uint64(p))}
			if tag == TagData {
				r.Data = p[8:]
				r.Length = int64(len(r.Data))
				if r.Length == 0 || r.Offset >= 0 && r.Offset/RecordSpan != (r.Offset+r.Length-1)/RecordSpan {
					return Record{}, d.fail(at, "data record", fmt.Errorf("%d bytes at %d: empty or across a %d-byte boundary: %w", r.Length, r.Offset, RecordSpan, ErrCorrupt))
				}
			} else {
				if len(p) != 16 {
					return Record{}, d.fail(at, "zeros record", fmt.Errorf("payload of %d bytes: %w", len(p), ErrCorrupt))
				}
				r.Kind = Zeros
				r.Length = int64(binary.LittleEndian.Uint64(p[8:]))
			}
			if r.Offset < d.tok.VolumeOff || r.Length <= 0 || r.Length > d.h.VolumeSize || r.Offset > d.h.VolumeSize-r.Length {
				return Record{}, d.fail(at, "record", fmt.Errorf("range [%d, +%d) out of order (previous end %d) or outside the volume of %d bytes: %w", r.Offset, r.Length, d.tok.VolumeOff, d.h.VolumeSize, ErrCorrupt))
			}
			if d.h.Full() && r.Offset != d.tok.VolumeOff {
				return Record{}, d.fail(at, "record", fmt.Errorf("a full stream skips [%d, %d): %w", d.tok.VolumeOff, r.Offset, ErrCorrupt))
			}
			if r.Kind == Zeros && d.anyRecs && d.lastTag == TagZeros && r.Offset == d.tok.VolumeOff {
				return Record{}, d.fail(at, "zeros record", fmt.Errorf("adjacent to the previous zeros record (not maximal): %w", ErrCorrupt))
			}
			d.hash.Write(d.buf[:n])
			d.tok.Pos += n
			d.tok.VolumeOff = r.Offset + r.Length
			d.tok.Records++
			if r.Kind == Data {
				d.tok.DataBytes += uint64(r.Length)
			}
			d.lastTag, d.anyRecs = tag, true
			return r, nil
		case TagEnd:
			if len(p) != 48 {
				return Record{}, d.fail(at, "end record", fmt.Errorf("payload of %d bytes: %w", len(p), ErrCorrupt))
			}
			recs, data := binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:])
			if recs != d.tok.Records || data != d.tok.DataBytes {
				return Record{}, d.fail(at, "end record", fmt.Errorf("%d records and %d data bytes announced, %d and %d received: %w", recs, data, d.tok.Records, d.tok.DataBytes, ErrCorrupt))
			}
			if sum := d.hash.Sum(nil); !bytes.Equal(sum, p[16:48]) {
				return Record{}, d.fail(at, "end record", fmt.Errorf("stream SHA-256 %x, computed %x: %w", p[16:48], sum, ErrChecksum))
			}
			if d.h.Full() && d.tok.VolumeOff != d.h.VolumeSize {
				return Record{}, d.fail(at, "end record", fmt.Errorf("a full stream that ends at %d of %d bytes: %w", d.tok.VolumeOff, d.h.VolumeSize, ErrCorrupt))
			}
			var one [1]byte
			if k, _ := io.ReadFull(d.r, one[:]); k > 0 {
				return Record{}, d.fail(d.in, "after the end record", ErrTrailing)
			}
			d.tok.Pos += n
			d.done = true
			return Record{}, io.EOF
		case TagResume:
			return Record{}, d.fail(at, "resume record", fmt.Errorf("not directly after the header: %w", ErrCorrupt))
		default:
			if tag&TagOptional == 0 {
				return Record{}, d.fail(at, "record", fmt.Errorf("tag %d: %w", tag, ErrUnknownTag))
			}
			d.hash.Write(d.buf[:n])
			d.tok.Pos += n
			d.tok.Records++
			d.lastTag, d.anyRecs = tag, true
		}
	}
}
