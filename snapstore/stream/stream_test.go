package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore"
)

// testVol is a volume in memory with the chunks that changed since a base.
type testVol struct {
	data    []byte
	cs      int64
	changed []bool // nil: full (every chunk may hold data)
}

func (v *testVol) extents(ctx context.Context, off int64, limit int) ([]snapstore.Extent, int64, error) {
	var out []snapstore.Extent
	n := int64(len(v.data))
	for c := off / v.cs; c*v.cs < n; c++ {
		if v.changed != nil && !v.changed[c] {
			continue
		}
		s, t := max(c*v.cs, off), min((c+1)*v.cs, n)
		if k := len(out); k > 0 && out[k-1].End() == s {
			out[k-1].Length += t - s
			continue
		}
		if len(out) == limit {
			return out, s, nil
		}
		out = append(out, snapstore.Extent{Offset: s, Length: t - s})
	}
	return out, -1, nil
}

func (v *testVol) source() Source {
	return Source{Extents: v.extents, Data: bytes.NewReader(v.data), PageLimit: 3}
}

func testHeader(size int64, cs uint32, from uint32) Header {
	h := Header{Volume: [16]byte{1, 2, 3}, ChunkSize: cs, VolumeSize: size,
		To: Snapshot{ID: 7, Name: "b", Created: time.Unix(100, 5)}}
	if from != 0 {
		h.From = Snapshot{ID: from, Name: "a", Created: time.Unix(50, 1)}
	}
	return h
}

func encode(t testing.TB, h Header, src Source, tok *Token) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := Encode(context.Background(), &buf, h, src, tok); err != nil {
		t.Fatalf("encode: %v", err)
	}
	return buf.Bytes()
}

// apply decodes s onto dst; it returns the last token and the error (nil
// on a verified end).
func apply(s []byte, dst []byte) (Token, *Decoder, error) {
	d, err := NewDecoder(bytes.NewReader(s))
	if err != nil {
		return Token{}, nil, err
	}
	for {
		r, err := d.Next()
		if err == io.EOF {
			return d.Token(), d, nil
		}
		if err != nil {
			return d.Token(), d, err
		}
		switch r.Kind {
		case Data:
			copy(dst[r.Offset:], r.Data)
		case Zeros:
			clear(dst[r.Offset : r.Offset+r.Length])
		}
	}
}

// randomVol: chunks of random data, zeros, or partly zero.
func randomVol(rng *rand.Rand, size, cs int64) []byte {
	b := make([]byte, size)
	for c := int64(0); c*cs < size; c++ {
		e := min((c+1)*cs, size)
		switch rng.Intn(4) {
		case 0: // zeros
		case 1:
			b[c*cs+rng.Int63n(e-c*cs)] = 1
		default:
			rng.Read(b[c*cs : e])
		}
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, tc := range []struct {
		size int64
		cs   uint32
	}{{3<<20 + 4096*3 + 100, 4096}, {5 << 20, 1 << 20}, {100, 4096}, {2<<20 + 65536*5, 65536}} {
		cs := int64(tc.cs)
		src := randomVol(rng, tc.size, cs)
		// full stream onto garbage: the replica must equal the source
		v := &testVol{data: src, cs: cs}
		s := encode(t, testHeader(tc.size, tc.cs, 0), v.source(), nil)
		dst := randomVol(rng, tc.size, cs)
		if _, d, err := apply(s, dst); err != nil {
			t.Fatalf("full: %v", err)
		} else if !d.Header().Full() || d.Header().To.Name != "b" {
			t.Fatalf("header %+v", d.Header())
		}
		if !bytes.Equal(dst, src) {
			t.Fatalf("size %d: full stream did not reproduce the volume", tc.size)
		}
		// incremental: change some chunks (some to zeros)
		nc := (tc.size + cs - 1) / cs
		next := bytes.Clone(src)
		changed := make([]bool, nc)
		for c := range changed {
			if rng.Intn(3) == 0 {
				changed[c] = true
				e := min(int64(c+1)*cs, tc.size)
				copy(next[int64(c)*cs:e], randomVol(rng, e-int64(c)*cs, cs))
			}
		}
		v2 := &testVol{data: next, cs: cs, changed: changed}
		s2 := encode(t, testHeader(tc.size, tc.cs, 3), v2.source(), nil)
		if _, _, err := apply(s2, dst); err != nil {
			t.Fatalf("incremental: %v", err)
		}
		if !bytes.Equal(dst, next) {
			t.Fatalf("size %d: incremental stream did not reproduce the volume", tc.size)
		}
	}
}

// TestZeroChunksSkipped: a full stream of an all-zero volume carries no
// data, one zeros record.
func TestZeroChunksSkipped(t *testing.T) {
	v := &testVol{data: make([]byte, 10<<20), cs: 65536}
	var buf bytes.Buffer
	sum, err := Encode(context.Background(), &buf, testHeader(10<<20, 65536, 0), v.source(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.DataBytes != 0 || sum.Records != 1 || sum.ZeroBytes != 10<<20 {
		t.Fatalf("summary %+v", sum)
	}
	if buf.Len() != HeaderSize+(8+16+4)+(8+48+4) {
		t.Fatalf("stream of %d bytes", buf.Len())
	}
}

func smallStream(t testing.TB, seed int64) ([]byte, []byte, Header, Source) {
	rng := rand.New(rand.NewSource(seed))
	const size, cs = 40960 + 1000, 4096
	src := randomVol(rng, size, cs)
	v := &testVol{data: src, cs: cs}
	h := testHeader(size, cs, 0)
	return encode(t, h, v.source(), nil), src, h, v.source()
}

// TestFlippedByte: any single flipped byte is refused, never applied as
// success.
func TestFlippedByte(t *testing.T) {
	s, _, _, _ := smallStream(t, 2)
	dst := make([]byte, 41960)
	for i := range s {
		for _, mask := range []byte{0x01, 0x80} {
			c := bytes.Clone(s)
			c[i] ^= mask
			_, _, err := apply(c, dst)
			if err == nil {
				t.Fatalf("byte %d ^ %#x accepted", i, mask)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("byte %d: error %v is not a *FormatError", i, err)
			}
			if fe.Offset > int64(i)+recHdr+MaxPayload+4 {
				t.Fatalf("byte %d: reported at %d", i, fe.Offset)
			}
		}
	}
}

// TestTruncatedResume: a stream cut anywhere is refused (ErrTruncated);
// the token the receiver then holds resumes it: the resumed stream
// completes the volume and its end verifies.
func TestTruncatedResume(t *testing.T) {
	s, src, h, source := smallStream(t, 3)
	for cut := 0; cut < len(s); cut += 1 + cut/50 {
		dst := make([]byte, len(src))
		tok, _, err := apply(s[:cut], dst)
		if err == nil {
			t.Fatalf("stream cut at %d of %d accepted", cut, len(s))
		}
		if cut < HeaderSize {
			continue // nothing received: start again
		}
		if !errors.Is(err, ErrTruncated) {
			t.Fatalf("cut at %d: %v, want ErrTruncated", cut, err)
		}
		// the token survives its text form
		tok2, err := ParseToken(tok.String())
		if err != nil {
			t.Fatalf("cut at %d: parse token: %v", cut, err)
		}
		r := encode(t, h, source, &tok2)
		tok3, d, err := apply(r, dst)
		if err != nil {
			t.Fatalf("cut at %d: resumed stream: %v", cut, err)
		}
		if rt, ok := d.Resumed(); !ok || rt.Pos != tok.Pos {
			t.Fatalf("cut at %d: resumed from %+v, token %+v", cut, rt, tok)
		}
		if !bytes.Equal(dst, src) {
			t.Fatalf("cut at %d: resumed transfer did not reproduce the volume", cut)
		}
		if tok3.Pos != int64(len(s)) {
			t.Fatalf("cut at %d: resumed stream ends at original position %d, want %d", cut, tok3.Pos, len(s))
		}
	}
}

// TestTokenForAnotherStream: a token is refused by the encoder and by the
// decoder for any other stream.
func TestTokenForAnotherStream(t *testing.T) {
	s, src, h, source := smallStream(t, 4)
	dst := make([]byte, len(src))
	tok, _, _ := apply(s[:len(s)/2], dst)
	other := h
	other.To.Created = other.To.Created.Add(time.Nanosecond)
	if _, err := Encode(context.Background(), io.Discard, other, source, &tok); !errors.Is(err, ErrToken) {
		t.Fatalf("encode with another stream's token: %v", err)
	}
	if tok.For(&other) || !tok.For(&h) {
		t.Fatal("Token.For")
	}
	// a resumed stream whose resume record is for another header
	r := encode(t, h, source, &tok)
	hb, _ := other.MarshalBinary()
	forged := append(hb, r[HeaderSize:]...)
	if _, _, err := apply(forged, dst); !errors.Is(err, ErrToken) {
		t.Fatalf("resumed stream with another header: %v", err)
	}
	if _, err := ParseToken("csrt1-AAAA"); !errors.Is(err, ErrToken) {
		t.Fatalf("garbage token: %v", err)
	}
}

// TestUnknownTags: an optional unknown record is skipped (and still
// covered by the count and the hash); a required one is refused.
func TestUnknownTags(t *testing.T) {
	for _, tag := range []byte{0x81, 0x11} {
		rng := rand.New(rand.NewSource(5))
		src := randomVol(rng, 16384, 4096)
		h := testHeader(16384, 4096, 0)
		var buf bytes.Buffer
		hb, _ := h.MarshalBinary()
		e := &encoder{ctx: context.Background(), w: &buf, h: h, src: (&testVol{data: src, cs: 4096}).source(), cs: 4096}
		e.hash = newSHA()
		e.raw(hb)
		e.hash.Write(hb)
		if err := e.record(tag, []byte("future"), true); err != nil {
			t.Fatal(err)
		}
		if err := e.body(0); err != nil {
			t.Fatal(err)
		}
		dst := make([]byte, 16384)
		_, _, err := apply(buf.Bytes(), dst)
		if tag&TagOptional != 0 {
			if err != nil || !bytes.Equal(dst, src) {
				t.Fatalf("optional tag %#x: %v", tag, err)
			}
		} else if !errors.Is(err, ErrUnknownTag) {
			t.Fatalf("required tag %#x: %v", tag, err)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := testHeader(1<<40, 65536, 3)
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	g, err := parseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if g.From.Name != "a" || g.To.ID != 7 || !g.To.Created.Equal(h.To.Created) || g.VolumeSize != 1<<40 || g.Volume != h.Volume {
		t.Fatalf("header %+v, want %+v", g, h)
	}
	bad := h
	bad.ChunkSize = 3000
	if _, err := bad.MarshalBinary(); err == nil {
		t.Fatal("bad chunk size accepted")
	}
}

func FuzzDecode(f *testing.F) {
	// Small seeds (a 3-chunk volume, one chunk of zeros) keep the fuzzer fast.
	src := make([]byte, 3*4096-100)
	for i := range 4096 {
		src[i] = byte(i)
	}
	src[2*4096+7] = 1
	h := testHeader(int64(len(src)), 4096, 0)
	source := (&testVol{data: src, cs: 4096}).source()
	s := encode(f, h, source, nil)
	f.Add(s)
	f.Add(s[:300])
	tok, _, _ := apply(s[:len(s)/2], make([]byte, len(src)))
	f.Add(encode(f, h, source, &tok))
	hi := testHeader(int64(len(src)), 4096, 2)
	f.Add(encode(f, hi, (&testVol{data: src, cs: 4096, changed: []bool{false, true, true}}).source(), nil))
	f.Add([]byte("CSNAPSTR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := NewDecoder(bytes.NewReader(b))
		if err != nil {
			return
		}
		for i := 0; i < 1<<16; i++ {
			r, err := d.Next()
			if err != nil {
				return
			}
			if r.Offset < 0 || r.Length <= 0 || r.Offset+r.Length > d.Header().VolumeSize {
				t.Fatalf("record %+v outside the volume of %d", r, d.Header().VolumeSize)
			}
		}
	})
}

func FuzzToken(f *testing.F) {
	s, _, _, _ := smallStream(f, 8)
	tok, _, _ := apply(s[:len(s)/2], make([]byte, 41960))
	f.Add(tok.String())
	f.Add("csrt1-")
	f.Fuzz(func(t *testing.T, text string) {
		tk, err := ParseToken(text)
		if err != nil {
			return
		}
		again, err := ParseToken(tk.String())
		if err != nil || again.Pos != tk.Pos || again.VolumeOff != tk.VolumeOff || again.HeaderHash != tk.HeaderHash {
			t.Fatalf("token %q does not survive its text form: %v", text, err)
		}
	})
}
