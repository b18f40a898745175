package stream

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/csnap/csnap/snapstore"
)

// ExtentFunc returns a page of the byte ranges a stream must carry, from
// offset on (the shape of snapstore Engine.Diff bound to FROM and TO):
// extents in offset order, next -1 at the end.
type ExtentFunc func(ctx context.Context, offset int64, limit int) (exts []snapstore.Extent, next int64, err error)

// Source is what an Encoder reads: the changed extents and TO's content.
type Source struct {
	// Extents: for an incremental stream, where TO may differ from FROM
	// (Engine.Diff(from, to)); for a full stream, where TO may hold
	// non-zero data (Engine.Diff(NoSnapshot, to)); the rest of a full
	// stream is sent as zeros records.
	Extents ExtentFunc
	// Data reads TO's content at volume offsets.
	Data io.ReaderAt
	// PageLimit is the limit passed to Extents (default 4096).
	PageLimit int
}

// Summary counts what an Encoder wrote.
type Summary struct {
	Bytes     int64  // stream bytes written
	Records   uint64 // data and zeros records (in the whole stream)
	DataBytes uint64 // data carried (in the whole stream)
	ZeroBytes int64  // volume bytes sent as zeros records (this call)
}

// Encode writes the stream for h from src to w. With resume non-nil it
// writes the resumed stream the token asks for (the header, a resume
// record, then the records after the token's position); the token must be
// for h (ErrToken otherwise). Chunks of the extents that read as all zero
// are sent as zeros records. Encode reads and writes one record at a time:
// its memory use does not grow with the snapshot.
func Encode(ctx context.Context, w io.Writer, h Header, src Source, resume *Token) (Summary, error) {
	hb, err := h.MarshalBinary()
	if err != nil {
		return Summary{}, fmt.Errorf("encode: header: %w", err)
	}
	e := &encoder{ctx: ctx, w: w, h: h, src: src, cs: int64(h.ChunkSize)}
	if e.src.PageLimit <= 0 {
		e.src.PageLimit = 4096
	}
	start := int64(0)
	if resume != nil {
		if sha256.Sum256(hb) != resume.HeaderHash {
			return Summary{}, fmt.Errorf("encode: resume token is for another stream (not %d..%d of this volume): %w", h.From.ID, h.To.ID, ErrToken)
		}
		if resume.VolumeOff > h.VolumeSize || resume.VolumeOff%e.cs != 0 && resume.VolumeOff != h.VolumeSize {
			return Summary{}, fmt.Errorf("encode: resume token volume offset %d: %w", resume.VolumeOff, ErrToken)
		}
		if e.hash, err = resume.hasher(); err != nil {
			return Summary{}, err
		}
		start = resume.VolumeOff
		e.sum.Records, e.sum.DataBytes = resume.Records, resume.DataBytes
		if err := e.raw(hb); err != nil {
			return e.sum, err
		}
		tb, err := resume.MarshalBinary()
		if err != nil {
			return e.sum, err
		}
		if err := e.record(TagResume, tb, false); err != nil {
			return e.sum, err
		}
	} else {
		e.hash = sha256.New()
		if err := e.raw(hb); err != nil {
			return e.sum, err
		}
		e.hash.Write(hb)
	}
	if err := e.body(start); err != nil {
		return e.sum, err
	}
	return e.sum, nil
}

type encoder struct {
	ctx  context.Context
	w    io.Writer
	h    Header
	src  Source
	cs   int64
	hash hashWriter
	sum  Summary
	buf  []byte // one record
	zOff int64  // pending zeros run [zOff, zEnd)
	zEnd int64
}

func (e *encoder) raw(b []byte) error {
	if _, err := e.w.Write(b); err != nil {
		return fmt.Errorf("encode: write at byte %d: %w", e.sum.Bytes, err)
	}
	e.sum.Bytes += int64(len(b))
	return nil
}

// record writes one record whose payload is p (hashed and counted unless
// it is a resume record).
func (e *encoder) record(tag byte, p []byte, counted bool) error {
	n := recHdr + len(p) + 4
	if cap(e.buf) < n {
		e.buf = make([]byte, n, max(n, recHdr+MaxPayload+4))
	}
	b := e.buf[:n]
	clear(b[:recHdr])
	b[0] = tag
	binary.LittleEndian.PutUint32(b[4:], uint32(len(p)))
	copy(b[recHdr:], p)
	binary.LittleEndian.PutUint32(b[n-4:], crc32.Checksum(b[:n-4], castagnoli))
	if err := e.raw(b); err != nil {
		return err
	}
	if counted {
		e.hash.Write(b)
		if tag != TagEnd {
			e.sum.Records++
		}
	}
	return nil
}

func (e *encoder) flushZeros() error {
	if e.zEnd <= e.zOff {
		return nil
	}
	var p [16]byte
	binary.LittleEndian.PutUint64(p[:], uint64(e.zOff))
	binary.LittleEndian.PutUint64(p[8:], uint64(e.zEnd-e.zOff))
	e.sum.ZeroBytes += e.zEnd - e.zOff
	e.zOff, e.zEnd = 0, 0
	return e.record(TagZeros, p[:], true)
}

func (e *encoder) zeros(off, end int64) error {
	if e.zEnd > e.zOff && e.zEnd == off {
		e.zEnd = end
		return nil
	}
	if err := e.flushZeros(); err != nil {
		return err
	}
	e.zOff, e.zEnd = off, end
	return nil
}

// body writes the records for the volume from start, then the end record.
func (e *encoder) body(start int64) error {
	size := e.h.VolumeSize
	data := make([]byte, 8+RecordSpan)
	pos := start // full streams: everything below pos is written
	for off := start; off >= 0; {
		if err := e.ctx.Err(); err != nil {
			return err
		}
		exts, next, err := e.src.Extents(e.ctx, off, e.src.PageLimit)
		if err != nil {
			return fmt.Errorf("encode: extents from %d: %w", off, err)
		}
		if len(exts) == 0 && next >= 0 {
			return fmt.Errorf("encode: extents from %d: an empty page with next offset %d", off, next)
		}
		for _, x := range exts {
			s, t := max(x.Offset, pos, start), min(x.End(), size)
			if t <= s {
				continue
			}
			if e.h.Full() && s > pos {
				if err := e.zeros(pos, s); err != nil {
					return err
				}
			}
			if err := e.extent(s, t, data); err != nil {
				return err
			}
			pos = t
		}
		if next >= 0 && next <= off {
			return fmt.Errorf("encode: extents from %d: next offset %d does not advance", off, next)
		}
		off = next
	}
	if e.h.Full() && pos < size {
		if err := e.zeros(pos, size); err != nil {
			return err
		}
	}
	if err := e.flushZeros(); err != nil {
		return err
	}
	var p [48]byte
	binary.LittleEndian.PutUint64(p[:], e.sum.Records)
	binary.LittleEndian.PutUint64(p[8:], e.sum.DataBytes)
	copy(p[16:], e.hash.Sum(nil))
	return e.record(TagEnd, p[:], true)
}

// extent sends [s, t): pieces that do not cross a multiple of RecordSpan,
// each split into data records and zeros at chunk granularity.
func (e *encoder) extent(s, t int64, data []byte) error {
	for s < t {
		pe := min(t, (s/RecordSpan+1)*RecordSpan)
		buf := data[8 : 8+pe-s]
		if n, err := e.src.Data.ReadAt(buf, s); n < len(buf) {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("encode: read [%d, %d): %w", s, pe, err)
		}
		// runs of data and zero chunks (chunk boundaries are absolute)
		for a := s; a < pe; {
			b := min(pe, (a/e.cs+1)*e.cs)
			z := allZero(buf[a-s : b-s])
			for b < pe {
				c := min(pe, b+e.cs)
				if allZero(buf[b-s:c-s]) != z {
					break
				}
				b = c
			}
			if z {
				if err := e.zeros(a, b); err != nil {
					return err
				}
			} else {
				if err := e.flushZeros(); err != nil {
					return err
				}
				p := data[a-s : 8+b-s] // the 8 bytes before the data hold the offset
				binary.LittleEndian.PutUint64(p, uint64(a))
				if err := e.record(TagData, p, true); err != nil {
					return err
				}
				e.sum.DataBytes += uint64(b - a)
			}
			a = b
		}
		s = pe
	}
	return nil
}

var _ encoding.BinaryMarshaler = (*Token)(nil)

// ReadAtFunc adapts a read function that fills p completely or fails (the
// shape of snapstore/client Volume.ReadAt) to io.ReaderAt for
// Source.Data.
type ReadAtFunc func(p []byte, off int64) error

// ReadAt implements io.ReaderAt.
func (f ReadAtFunc) ReadAt(p []byte, off int64) (int, error) {
	if err := f(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}
