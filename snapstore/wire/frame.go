package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
)

// Frame header layout; see the package documentation.
const (
	HeaderSize = 20
	Magic      = 0xC54E // bytes C5 4E
	// FrameVersion is the layout of the frame header itself. It changes only
	// if the header changes; message formats are versioned by HELLO.
	FrameVersion = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MessageError reports an intact frame (valid header and checksum) whose
// body is unacceptable: unknown type, malformed body, wrong id for its
// kind. The stream is still in sync, so the receiver may answer ERROR
// (CodeBadRequest) to ID, if nonzero, and go on; or close.
type MessageError struct {
	ID   uint64
	Type MsgType
	Err  error
}

func (e *MessageError) Error() string {
	return fmt.Sprintf("wire: %v (request id %d): %v", e.Type, e.ID, e.Err)
}

func (e *MessageError) Unwrap() error { return e.Err }

// checkID enforces the id rules of the message kinds.
func checkID(t MsgType, id uint64) error {
	switch t.Kind() {
	case KindNotice:
		if id != 0 {
			return fmt.Errorf("notice carries request id %d, want 0: %w", id, ErrMalformed)
		}
	case KindRequest:
		if id == 0 {
			return fmt.Errorf("request carries request id 0: %w", ErrMalformed)
		}
	case KindReply:
		if id == 0 && t != TypeError {
			return fmt.Errorf("reply carries request id 0: %w", ErrMalformed)
		}
	}
	return nil
}

// AppendFrame appends the frame of m with request id id to b. It fails,
// appending nothing, if m is invalid, exceeds a limit, or id is wrong for
// the message's kind.
func AppendFrame(b []byte, id uint64, m Message) ([]byte, error) {
	if err := checkID(m.Type(), id); err != nil {
		return b, &MessageError{ID: id, Type: m.Type(), Err: err}
	}
	if err := m.validate(); err != nil {
		return b, &MessageError{ID: id, Type: m.Type(), Err: err}
	}
	start := len(b)
	e := encoder{b: append(b, make([]byte, HeaderSize)...)}
	m.marshal(&e)
	b = e.b
	n := len(b) - start - HeaderSize
	if n > MaxBody {
		return b[:start], &MessageError{ID: id, Type: m.Type(), Err: fmt.Errorf("body of %d bytes exceeds limit %d: %w", n, MaxBody, ErrLimit)}
	}
	h := b[start : start+HeaderSize]
	binary.BigEndian.PutUint16(h[0:], Magic)
	h[2] = FrameVersion
	h[3] = uint8(m.Type())
	binary.BigEndian.PutUint64(h[4:], id)
	binary.BigEndian.PutUint32(h[12:], uint32(n))
	crc := crc32.Update(crc32.Checksum(h[:16], castagnoli), castagnoli, b[start+HeaderSize:])
	binary.BigEndian.PutUint32(h[16:], crc)
	return b, nil
}

// Encode returns the frame of m with request id id.
func Encode(id uint64, m Message) ([]byte, error) { return AppendFrame(nil, id, m) }

// EncodeBody returns the body encoding of m alone (no header, no id checks).
func EncodeBody(m Message) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, &MessageError{Type: m.Type(), Err: err}
	}
	e := encoder{}
	m.marshal(&e)
	if len(e.b) > MaxBody {
		return nil, &MessageError{Type: m.Type(), Err: fmt.Errorf("body of %d bytes exceeds limit %d: %w", len(e.b), MaxBody, ErrLimit)}
	}
	return e.b, nil
}

// DecodeBody decodes the body of a message of type t. The body must be
// consumed exactly and the message must be valid. The result never
// aliases body.
func DecodeBody(t MsgType, body []byte) (Message, error) {
	m := newMessage(t)
	if m == nil {
		return nil, &MessageError{Type: t, Err: ErrUnknownType}
	}
	if len(body) > MaxBody {
		return nil, &MessageError{Type: t, Err: fmt.Errorf("body of %d bytes exceeds limit %d: %w", len(body), MaxBody, ErrLimit)}
	}
	d := newDecoder(body)
	m.unmarshal(d)
	err := d.done()
	if err == nil {
		err = m.validate()
	}
	if err != nil {
		return nil, &MessageError{Type: t, Err: err}
	}
	return m, nil
}

// header is a parsed and checked frame header.
type header struct {
	typ MsgType
	id  uint64
	n   int // body length
	crc uint32
}

// parseHeader checks everything that can be checked before the body is
// read, so an oversized or garbage frame is refused before any allocation.
func parseHeader(h []byte) (header, error) {
	if m := binary.BigEndian.Uint16(h[0:]); m != Magic {
		return header{}, fmt.Errorf("wire: magic %#04x, want %#04x: %w", m, Magic, ErrCorrupt)
	}
	if h[2] != FrameVersion {
		return header{}, fmt.Errorf("wire: frame version %d, want %d: %w", h[2], FrameVersion, ErrCorrupt)
	}
	hd := header{
		typ: MsgType(h[3]),
		id:  binary.BigEndian.Uint64(h[4:]),
		n:   int(binary.BigEndian.Uint32(h[12:])),
		crc: binary.BigEndian.Uint32(h[16:]),
	}
	if hd.n > MaxBody {
		return header{}, fmt.Errorf("wire: %v frame body of %d bytes exceeds limit %d: %w", hd.typ, hd.n, MaxBody, ErrCorrupt)
	}
	return hd, nil
}

// finish checks the checksum, then decodes the body.
func finish(hd header, h, body []byte) (uint64, Message, error) {
	crc := crc32.Update(crc32.Checksum(h[:16], castagnoli), castagnoli, body)
	if crc != hd.crc {
		return 0, nil, fmt.Errorf("wire: %v frame checksum %#08x, computed %#08x: %w", hd.typ, hd.crc, crc, ErrCorrupt)
	}
	if err := checkID(hd.typ, hd.id); err != nil {
		return hd.id, nil, &MessageError{ID: hd.id, Type: hd.typ, Err: err}
	}
	m, err := DecodeBody(hd.typ, body)
	if err != nil {
		var me *MessageError
		if errors.As(err, &me) {
			me.ID = hd.id
		}
		return hd.id, nil, err
	}
	return hd.id, m, nil
}

// Decode decodes exactly one frame. Errors wrap ErrCorrupt (the frame
// itself is bad) or are *MessageError (intact frame, bad message).
func Decode(frame []byte) (id uint64, m Message, err error) {
	if len(frame) < HeaderSize {
		return 0, nil, fmt.Errorf("wire: frame of %d bytes is shorter than the %d-byte header: %w", len(frame), HeaderSize, ErrCorrupt)
	}
	hd, err := parseHeader(frame[:HeaderSize])
	if err != nil {
		return 0, nil, err
	}
	if len(frame) != HeaderSize+hd.n {
		return 0, nil, fmt.Errorf("wire: frame of %d bytes, header says %d: %w", len(frame), HeaderSize+hd.n, ErrCorrupt)
	}
	return finish(hd, frame[:HeaderSize], frame[HeaderSize:])
}

// Reader reads frames from a stream. It is not safe for concurrent use:
// a connection has one reading goroutine, which dispatches.
type Reader struct {
	r   io.Reader
	h   [HeaderSize]byte
	buf []byte // body buffer, reused: decoded messages never alias it
}

// NewReader returns a Reader reading from r. Wrap r in a bufio.Reader if
// it is unbuffered.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Read reads the next frame and returns its request id and message.
//
// io.EOF means the stream ended cleanly between frames; a stream ending
// inside a frame gives io.ErrUnexpectedEOF. An error wrapping ErrCorrupt
// means the stream is unusable. A *MessageError means this frame was
// skipped intact and the next Read may proceed.
func (r *Reader) Read() (id uint64, m Message, err error) {
	if _, err := io.ReadFull(r.r, r.h[:]); err != nil {
		return 0, nil, err
	}
	hd, err := parseHeader(r.h[:])
	if err != nil {
		return 0, nil, err
	}
	if cap(r.buf) < hd.n {
		r.buf = make([]byte, hd.n)
	}
	body := r.buf[:hd.n]
	if _, err := io.ReadFull(r.r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	// Don't pin a huge buffer for the life of the connection because one
	// big message (a long snapshot list) went by.
	if cap(r.buf) > 64<<10 {
		defer func() { r.buf = nil }()
	}
	return finish(hd, r.h[:], body)
}

// Writer writes frames to a stream. It is safe for concurrent use: each
// frame is written whole with a single Write call, so the connection's
// goroutines can answer out of order without interleaving bytes. After a
// failed write the stream may hold a partial frame, so the error sticks
// and every later Write returns it.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	err error
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write encodes m with request id id and writes the frame. An invalid
// message is refused before anything is written and does not poison the
// Writer.
func (w *Writer) Write(id uint64, m Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	b, err := AppendFrame(w.buf[:0], id, m)
	if err != nil {
		return err
	}
	if _, err := w.w.Write(b); err != nil {
		w.err = fmt.Errorf("wire: write %v frame: %w", m.Type(), err)
		return w.err
	}
	if cap(b) <= 64<<10 {
		w.buf = b
	}
	return nil
}
