package stream

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"time"
)

// Format constants.
const (
	Version       = 1
	HeaderSize    = 212     // the version 1 header
	MaxHeaderSize = 4096    // the largest header a reader accepts
	RecordSpan    = 1 << 20 // data records never cross a multiple of this
	MaxPayload    = 8 + RecordSpan
	recHdr        = 8 // tag, reserved, payload length
	maxNameLen    = 63
	maxHashState  = 256
	tokenFixed    = 74
)

// Record tags.
const (
	TagData     = 1
	TagZeros    = 2
	TagEnd      = 3
	TagResume   = 4
	TagOptional = 0x80 // bit set: a reader may skip an unknown record
)

var magic = [8]byte{'C', 'S', 'N', 'A', 'P', 'S', 'T', 'R'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors a decoder reports (wrapped in a *FormatError).
var (
	ErrMagic      = errors.New("not a csnap stream (bad magic)")
	ErrVersion    = errors.New("stream format version not supported")
	ErrChecksum   = errors.New("checksum mismatch")
	ErrTruncated  = errors.New("stream truncated")
	ErrCorrupt    = errors.New("stream corrupt")
	ErrUnknownTag = errors.New("unknown required record tag")
	ErrToken      = errors.New("resume token invalid or for another stream")
	ErrTrailing   = errors.New("data after the end record")
)

// FormatError reports where a stream failed to decode: Offset is the byte
// offset in the input read (not counting bytes before the decoder started).
type FormatError struct {
	Offset int64
	What   string
	Err    error
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("stream: %s at byte %d: %v", e.What, e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// Snapshot identifies a snapshot on the source volume.
type Snapshot struct {
	ID      uint32 // 0: none (FROM of a full stream)
	Name    string
	Created time.Time
}

// Header describes a stream.
type Header struct {
	Volume     [16]byte
	ChunkSize  uint32
	VolumeSize int64
	From, To   Snapshot
}

// Full reports whether the stream carries the whole of TO (no FROM).
func (h Header) Full() bool { return h.From.ID == 0 }

func (h *Header) validate() error {
	cs := h.ChunkSize
	if cs < 4096 || cs > 1<<20 || cs&(cs-1) != 0 {
		return fmt.Errorf("chunk size %d is not a power of two in [4 KiB, 1 MiB]: %w", cs, ErrCorrupt)
	}
	if h.VolumeSize <= 0 {
		return fmt.Errorf("volume size %d: %w", h.VolumeSize, ErrCorrupt)
	}
	if h.To.ID == 0 {
		return fmt.Errorf("TO snapshot id 0: %w", ErrCorrupt)
	}
	if h.From.ID == 0 && (h.From.Name != "" || !h.From.Created.IsZero() && h.From.Created.UnixNano() != 0) {
		return fmt.Errorf("FROM has no id but a name or time: %w", ErrCorrupt)
	}
	if h.From.ID != 0 && h.From.ID == h.To.ID {
		return fmt.Errorf("FROM and TO are both snapshot %d: %w", h.To.ID, ErrCorrupt)
	}
	for _, s := range []Snapshot{h.From, h.To} {
		if len(s.Name) > maxNameLen {
			return fmt.Errorf("snapshot name of %d bytes (max %d): %w", len(s.Name), maxNameLen, ErrCorrupt)
		}
	}
	return nil
}

// MarshalBinary encodes the header (version 1, HeaderSize bytes).
func (h *Header) MarshalBinary() ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, HeaderSize)
	copy(b, magic[:])
	binary.LittleEndian.PutUint16(b[8:], Version)
	binary.LittleEndian.PutUint32(b[12:], HeaderSize)
	copy(b[16:32], h.Volume[:])
	binary.LittleEndian.PutUint32(b[32:], h.ChunkSize)
	binary.LittleEndian.PutUint64(b[40:], uint64(h.VolumeSize))
	putIdent(b[48:128], h.From)
	putIdent(b[128:208], h.To)
	binary.LittleEndian.PutUint32(b[HeaderSize-4:], crc32.Checksum(b[:HeaderSize-4], castagnoli))
	return b, nil
}

func putIdent(b []byte, s Snapshot) {
	if s.ID == 0 {
		return
	}
	binary.LittleEndian.PutUint32(b, s.ID)
	b[4] = byte(len(s.Name))
	binary.LittleEndian.PutUint64(b[8:], uint64(s.Created.UnixNano()))
	copy(b[16:80], s.Name)
}

func getIdent(b []byte) (Snapshot, error) {
	s := Snapshot{ID: binary.LittleEndian.Uint32(b)}
	n := int(b[4])
	if n > maxNameLen {
		return s, fmt.Errorf("snapshot name length %d: %w", n, ErrCorrupt)
	}
	if s.ID == 0 {
		if !allZero(b) {
			return s, fmt.Errorf("snapshot identity without id is not all zero: %w", ErrCorrupt)
		}
		return s, nil
	}
	s.Name = string(b[16 : 16+n])
	s.Created = time.Unix(0, int64(binary.LittleEndian.Uint64(b[8:])))
	return s, nil
}

// parseHeader decodes a complete header b (its length already read from
// b[12:16]).
func parseHeader(b []byte) (Header, error) {
	var h Header
	if got, want := binary.LittleEndian.Uint32(b[len(b)-4:]), crc32.Checksum(b[:len(b)-4], castagnoli); got != want {
		return h, fmt.Errorf("header CRC %08x, computed %08x: %w", got, want, ErrChecksum)
	}
	copy(h.Volume[:], b[16:32])
	h.ChunkSize = binary.LittleEndian.Uint32(b[32:])
	h.VolumeSize = int64(binary.LittleEndian.Uint64(b[40:]))
	var err error
	if h.From, err = getIdent(b[48:128]); err != nil {
		return h, err
	}
	if h.To, err = getIdent(b[128:208]); err != nil {
		return h, err
	}
	return h, h.validate()
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// Token is a resume token: the point of a stream up to which a receiver
// verified and applied everything (see the package documentation).
type Token struct {
	HeaderHash [32]byte
	Pos        int64 // stream byte position after the last complete record
	VolumeOff  int64 // volume offset where that record ended
	Records    uint64
	DataBytes  uint64
	hashState  []byte
}

var tokenMagic = [4]byte{'C', 'S', 'R', 'T'}

const tokenPrefix = "csrt1-"

// MarshalBinary encodes the token.
func (t *Token) MarshalBinary() ([]byte, error) {
	if len(t.hashState) > maxHashState {
		return nil, fmt.Errorf("token: hash state of %d bytes", len(t.hashState))
	}
	b := make([]byte, tokenFixed+len(t.hashState)+4)
	copy(b, tokenMagic[:])
	b[4] = Version
	copy(b[8:40], t.HeaderHash[:])
	binary.LittleEndian.PutUint64(b[40:], uint64(t.Pos))
	binary.LittleEndian.PutUint64(b[48:], uint64(t.VolumeOff))
	binary.LittleEndian.PutUint64(b[56:], t.Records)
	binary.LittleEndian.PutUint64(b[64:], t.DataBytes)
	binary.LittleEndian.PutUint16(b[72:], uint16(len(t.hashState)))
	copy(b[tokenFixed:], t.hashState)
	n := len(b) - 4
	binary.LittleEndian.PutUint32(b[n:], crc32.Checksum(b[:n], castagnoli))
	return b, nil
}

// UnmarshalBinary decodes and verifies a token.
func (t *Token) UnmarshalBinary(b []byte) error {
	if len(b) < tokenFixed+4 || !bytes.Equal(b[:4], tokenMagic[:]) {
		return fmt.Errorf("token of %d bytes without its magic: %w", len(b), ErrToken)
	}
	if b[4] != Version {
		return fmt.Errorf("token version %d: %w", b[4], ErrToken)
	}
	m := int(binary.LittleEndian.Uint16(b[72:]))
	if m > maxHashState || len(b) != tokenFixed+m+4 {
		return fmt.Errorf("token of %d bytes with a hash state of %d: %w", len(b), m, ErrToken)
	}
	n := len(b) - 4
	if binary.LittleEndian.Uint32(b[n:]) != crc32.Checksum(b[:n], castagnoli) {
		return fmt.Errorf("token CRC mismatch: %w", ErrToken)
	}
	var x Token
	copy(x.HeaderHash[:], b[8:40])
	x.Pos = int64(binary.LittleEndian.Uint64(b[40:]))
	x.VolumeOff = int64(binary.LittleEndian.Uint64(b[48:]))
	x.Records = binary.LittleEndian.Uint64(b[56:])
	x.DataBytes = binary.LittleEndian.Uint64(b[64:])
	x.hashState = bytes.Clone(b[tokenFixed:n])
	if x.Pos < HeaderSize || x.VolumeOff < 0 {
		return fmt.Errorf("token position %d, volume offset %d: %w", x.Pos, x.VolumeOff, ErrToken)
	}
	if _, err := x.hasher(); err != nil {
		return err
	}
	*t = x
	return nil
}

// hasher returns a SHA-256 in the token's state.
func (t *Token) hasher() (hashWriter, error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(t.hashState); err != nil {
		return nil, fmt.Errorf("token hash state: %v: %w", err, ErrToken)
	}
	return h, nil
}

type hashWriter interface {
	Write([]byte) (int, error)
	Sum([]byte) []byte
}

// String is the token's text form ("csrt1-" and URL-safe base64).
func (t *Token) String() string {
	b, err := t.MarshalBinary()
	if err != nil {
		return "invalid-token"
	}
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken decodes a token's text form.
func ParseToken(s string) (Token, error) {
	var t Token
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), tokenPrefix)
	if !ok {
		return t, fmt.Errorf("token does not start with %q: %w", tokenPrefix, ErrToken)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return t, fmt.Errorf("token: %v: %w", err, ErrToken)
	}
	return t, t.UnmarshalBinary(b)
}

// For reports whether the token belongs to the stream with this header.
func (t *Token) For(h *Header) bool {
	b, err := h.MarshalBinary()
	return err == nil && sha256.Sum256(b) == t.HeaderHash
}

func newSHA() hashWriter { return sha256.New() }
