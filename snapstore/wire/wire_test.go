package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// TestRoundTrip: decode(encode(m)) == m for random valid messages of every
// type, and the encoding is canonical: re-encoding gives the same bytes.
func TestRoundTrip(t *testing.T) {
	g := gen{rand.New(rand.NewSource(1))}
	for _, typ := range allTypes() {
		if typ.Kind() == 0 || typ.Replies() == nil && typ.Kind() == KindRequest {
			t.Errorf("%v: kind %d, replies %v", typ, typ.Kind(), typ.Replies())
		}
		for i := 0; i < 100; i++ {
			m := g.message(typ)
			id := g.frameID(typ)
			frame, err := Encode(id, m)
			if err != nil {
				t.Fatalf("%v: encode %+v: %v", typ, m, err)
			}
			gotID, got, err := Decode(frame)
			if err != nil {
				t.Fatalf("%v: decode: %v", typ, err)
			}
			if gotID != id || !reflect.DeepEqual(got, m) {
				t.Fatalf("%v: round trip\n got %d %+v\nwant %d %+v", typ, gotID, got, id, m)
			}
			again, err := Encode(id, got)
			if err != nil || !bytes.Equal(again, frame) {
				t.Fatalf("%v: re-encoding differs (err %v)", typ, err)
			}
			body, err := EncodeBody(m)
			if err != nil || !bytes.Equal(body, frame[HeaderSize:]) {
				t.Fatalf("%v: EncodeBody differs from frame body (err %v)", typ, err)
			}
		}
	}
}

// TestGolden pins the byte layout documented in doc.go.
func TestGolden(t *testing.T) {
	frame, err := Encode(7, &OriginWrite{Ranges: []Range{{Start: 5, Count: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	want := "c54e" + "01" + "10" + "0000000000000007" + "0000000e" + "xxxxxxxx" +
		"0001" + "0000000000000005" + "00000002"
	got := hex.EncodeToString(frame)
	if got[:32] != want[:32] || got[40:] != want[40:] {
		t.Fatalf("frame\n got %s\nwant %s", got, want)
	}
	frame, _ = Encode(9, &SnapshotReadOK{Extents: []Extent{{Start: 5, Count: 1, Origin: true}, {Start: 6, Count: 1, StoreOffset: 0x10000}}})
	if got, want := hex.EncodeToString(frame[HeaderSize:]),
		"00000002"+"0000000000000005"+"00000001"+"00"+"0000000000000006"+"00000001"+"01"+"0000000000010000"; got != want {
		t.Fatalf("extents body\n got %s\nwant %s", got, want)
	}
	// The RECLAIM example of doc.go.
	frame, _ = Encode(3, &Reclaim{Snapshots: []uint32{4, 9}})
	want = "c54e" + "01" + "24" + "0000000000000003" + "0000000a" + "xxxxxxxx" + "0002" + "00000004" + "00000009"
	if got := hex.EncodeToString(frame); got[:32] != want[:32] || got[40:] != want[40:] {
		t.Fatalf("RECLAIM frame\n got %s\nwant %s", got, want)
	}
	frame, _ = Encode(3, &ReclaimOK{})
	want = "c54e" + "01" + "25" + "0000000000000003" + "00000000" + "xxxxxxxx"
	if got := hex.EncodeToString(frame); got[:32] != want[:32] || len(got) != len(want) {
		t.Fatalf("RECLAIM_OK frame\n got %s\nwant %s", got, want)
	}
}

// TestCorruption: every truncation of a body and every single-bit flip of
// a frame is refused with an error, never a panic or a wrong message.
func TestCorruption(t *testing.T) {
	g := gen{rand.New(rand.NewSource(2))}
	for _, typ := range allTypes() {
		for i := 0; i < 5; i++ {
			m := g.message(typ)
			frame, err := Encode(g.frameID(typ), m)
			if err != nil {
				t.Fatal(err)
			}
			body := frame[HeaderSize:]
			if len(body) > 4096 {
				continue
			}
			for n := 0; n < len(body); n++ {
				if _, err := DecodeBody(typ, body[:n]); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrLimit) && !errors.Is(err, ErrBadName) {
					t.Fatalf("%v: body truncated to %d/%d: err %v", typ, n, len(body), err)
				}
			}
			if _, err := DecodeBody(typ, append(body[:len(body):len(body)], 0)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%v: trailing byte: err %v", typ, err)
			}
			for bit := 0; bit < len(frame)*8; bit++ {
				c := bytes.Clone(frame)
				c[bit/8] ^= 1 << (bit % 8)
				if _, _, err := Decode(c); err == nil {
					t.Fatalf("%v: bit %d flipped, decoded anyway", typ, bit)
				}
			}
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	long := strings.Repeat("a", 64)
	many := make([]Range, MaxRanges+1)
	for i := range many {
		many[i] = Range{Start: uint64(i), Count: 1}
	}
	bigUpload := &UploadLocks{}
	for i := 0; i < MaxUploadLocks; i++ {
		rs := make([]Range, MaxRanges)
		for j := range rs {
			rs[j] = Range{Start: uint64(j) * 2, Count: 1}
		}
		bigUpload.Locks = append(bigUpload.Locks, HeldLock{Handle: uint64(i + 1), Snapshot: 1, Ranges: rs})
	}
	cases := []struct {
		id   uint64
		m    Message
		want error
	}{
		{1, &Hello{MinVersion: 1, MaxVersion: 1, Node: "n", Volume: "v"}, ErrMalformed},                           // zero client
		{1, &Hello{MinVersion: 2, MaxVersion: 1, Client: ClientID{1}, Node: "n", Volume: "v"}, ErrMalformed},      // empty range
		{1, &Hello{MinVersion: 1, MaxVersion: 1, Client: ClientID{1}, Node: "n", Volume: "Vol"}, ErrBadName},      // upper case
		{1, &Hello{MinVersion: 1, MaxVersion: 1, Client: ClientID{1}, Node: "n", Volume: "-v"}, ErrBadName},       // leading dash
		{1, &Hello{MinVersion: 1, MaxVersion: 1, Client: ClientID{1}, Node: "n", Volume: long}, ErrBadName},       // 64 chars
		{1, &Hello{MinVersion: 1, MaxVersion: 1, Client: ClientID{1}, Node: ".n", Volume: "v"}, ErrBadName},       // node leading dot
		{1, &Hello{MinVersion: 1, MaxVersion: 1, Client: ClientID{1}, Node: "n m", Volume: "v"}, ErrBadName},      // node space
		{1, &HelloOK{Version: 1, Node: "n", ChunkSize: 3000, MaxInFlight: 1}, ErrMalformed},                       // chunk size
		{1, &HelloOK{Version: 1, Node: "n", ChunkSize: 4096}, ErrMalformed},                                       // max in flight 0
		{1, &Error{Message: "x"}, ErrMalformed},                                                                   // code 0
		{1, &Error{Code: 1, Message: "\xff"}, ErrMalformed},                                                       // not UTF-8
		{1, &Error{Code: 1, Message: strings.Repeat("x", MaxText+1)}, ErrLimit},                                   // long
		{1, &OriginWrite{}, ErrMalformed},                                                                         // no ranges
		{1, &OriginWrite{Ranges: []Range{{1, 0}}}, ErrMalformed},                                                  // empty range
		{1, &OriginWrite{Ranges: []Range{{^uint64(0), 2}}}, ErrMalformed},                                         // wraps
		{1, &OriginWrite{Ranges: []Range{{10, 5}, {12, 1}}}, ErrMalformed},                                        // overlap
		{1, &OriginWrite{Ranges: []Range{{10, 5}, {1, 1}}}, ErrMalformed},                                         // descending
		{1, &OriginWrite{Ranges: many}, ErrLimit},                                                                 // too many ranges
		{1, &OriginWrite{Ranges: []Range{{0, MaxChunks + 1}}}, ErrLimit},                                          // too many chunks
		{1, &SnapshotRead{Ranges: []Range{{0, 1}}}, ErrMalformed},                                                 // snapshot 0
		{1, &SnapshotReadOK{Extents: []Extent{{Start: 0, Count: 1, Origin: true, StoreOffset: 9}}}, ErrMalformed}, // origin with offset
		{1, &SnapshotWriteOK{Extents: []Extent{{Start: 0, Count: 1, Origin: true}}}, ErrMalformed},                // origin in write
		{0, &FinishSnapshotRead{}, ErrMalformed},                                                                  // handle 0
		{0, &UploadLocks{}, ErrMalformed},                                                                         // empty
		{1, &Reclaim{}, ErrMalformed},                                                                             // no ids
		{1, &Reclaim{Snapshots: []uint32{0}}, ErrMalformed},                                                       // id 0
		{1, &Reclaim{Snapshots: []uint32{3, 3}}, ErrMalformed},                                                    // not ascending
		{1, &Reclaim{Snapshots: make([]uint32, MaxReclaimIDs+1)}, ErrLimit},                                       // too many
		{0, &UploadLocks{Locks: []HeldLock{{Handle: 2, Snapshot: 1, Ranges: []Range{{0, 1}}}, {Handle: 2, Snapshot: 1, Ranges: []Range{{0, 1}}}}}, ErrMalformed},
		{0, bigUpload, ErrLimit},             // body over MaxBody
		{1, &DeleteSnapshot{}, ErrMalformed}, // neither id nor name
		{1, &DeleteSnapshot{Snapshot: SnapshotRef{ID: 1, Name: "a"}}, ErrMalformed}, // both
		{1, &ListSnapshots{Max: 0}, ErrLimit},                                       // page 0
		{1, &ListSnapshots{Max: MaxListEntries + 1}, ErrLimit},                      // page too big
		{1, &SnapshotList{Entries: []SnapshotEntry{{ID: 2, Name: "a"}, {ID: 2, Name: "b"}}}, ErrMalformed},
		{1, &StatusOK{Node: "n", Volume: "v", Clients: []ClientStatus{{Node: "n"}}}, ErrMalformed}, // zero client
		// id rules
		{0, &Ping{}, ErrMalformed},                        // request with id 0
		{0, &Pong{}, ErrMalformed},                        // reply with id 0
		{5, &FinishSnapshotRead{Handle: 1}, ErrMalformed}, // notice with an id
	}
	for i, c := range cases {
		_, err := Encode(c.id, c.m)
		var me *MessageError
		if !errors.Is(err, c.want) || !errors.As(err, &me) {
			t.Errorf("case %d %v: err %v, want %v", i, c.m.Type(), err, c.want)
		}
	}
	if _, err := Encode(0, &Error{Code: CodeBadRequest}); err != nil {
		t.Errorf("connection-level ERROR with id 0: %v", err)
	}
}

// frameOf builds a frame with a correct checksum around an arbitrary body.
func frameOf(typ MsgType, id uint64, body []byte) []byte {
	f, _ := Encode(1, &Ping{})
	f = append(f[:HeaderSize:HeaderSize], body...)
	f[3] = byte(typ)
	for i := 0; i < 8; i++ {
		f[4+i] = byte(id >> (56 - 8*i))
	}
	n := len(body)
	f[12], f[13], f[14], f[15] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	c := crc32.Update(crc32.Checksum(f[:16], castagnoli), castagnoli, body)
	f[16], f[17], f[18], f[19] = byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
	return f
}

func TestDecodeRejects(t *testing.T) {
	hx := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	cases := []struct {
		frame []byte
		want  error
	}{
		{frameOf(0x7f, 1, nil), ErrUnknownType},
		{frameOf(TypeOK, 1, hx("00")), ErrMalformed},                                                      // trailing
		{frameOf(TypeOriginWrite, 1, hx("0001"+"0000000000000005")), ErrMalformed},                        // short
		{frameOf(TypeOriginWrite, 1, hx("ffff")), ErrLimit},                                               // count over limit
		{frameOf(TypeOriginWrite, 1, hx("00ff")), ErrMalformed},                                           // count over bytes
		{frameOf(TypeCreateSnapshot, 1, hx("0161"+"00000000"+"02")), ErrMalformed},                        // bool 2
		{frameOf(TypeCreateSnapshot, 1, hx("0141"+"00000000"+"00")), ErrBadName},                          // "A"
		{frameOf(TypeSnapshotReadOK, 1, hx("00000001"+"0000000000000000"+"00000001"+"07")), ErrMalformed}, // kind 7
		{frameOf(TypeSnapshotReadOK, 1, hx("ffffffff")), ErrLimit},
		{frameOf(TypePing, 0, nil), ErrMalformed},
		{frameOf(TypeFinishSnapshotRead, 3, hx("0000000000000001")), ErrMalformed},
	}
	for i, c := range cases {
		_, _, err := Decode(c.frame)
		var me *MessageError
		if !errors.Is(err, c.want) || !errors.As(err, &me) {
			t.Errorf("case %d: err %v, want %v", i, err, c.want)
		}
		// The Reader reports the same error and stays in sync.
		ok, _ := Encode(42, &Pong{})
		r := NewReader(bytes.NewReader(append(bytes.Clone(c.frame), ok...)))
		if _, _, err := r.Read(); !errors.Is(err, c.want) {
			t.Errorf("case %d: reader err %v", i, err)
		}
		if id, m, err := r.Read(); err != nil || id != 42 || m.Type() != TypePong {
			t.Errorf("case %d: after a bad message the reader lost sync: %d %v %v", i, id, m, err)
		}
	}

	good, _ := Encode(1, &Ping{})
	bad := func(mut func(f []byte) []byte) []byte { return mut(bytes.Clone(good)) }
	corrupt := [][]byte{
		bad(func(f []byte) []byte { f[0] = 0; return f }),                // magic
		bad(func(f []byte) []byte { f[2] = 2; return f }),                // frame version
		bad(func(f []byte) []byte { f[19] ^= 1; return f }),              // crc
		bad(func(f []byte) []byte { return append(f, 0) }),               // length mismatch
		bad(func(f []byte) []byte { return f[:HeaderSize-1] }),           // short header
		bad(func(f []byte) []byte { f[12] = 0x7f; f[15] = 1; return f }), // huge length
	}
	for i, f := range corrupt {
		if _, _, err := Decode(f); !errors.Is(err, ErrCorrupt) {
			t.Errorf("corrupt %d: err %v", i, err)
		}
	}
}

// TestReaderOversize: a header announcing a huge body is refused before the
// body is read or allocated.
func TestReaderOversize(t *testing.T) {
	f := frameOf(TypeOK, 1, nil)
	f[12], f[13], f[14], f[15] = 0xff, 0xff, 0xff, 0xff
	r := NewReader(io.MultiReader(bytes.NewReader(f), failReader{t}))
	if _, _, err := r.Read(); !errors.Is(err, ErrCorrupt) || r.buf != nil {
		t.Fatalf("err %v, buffer %d", err, cap(r.buf))
	}
}

type failReader struct{ t *testing.T }

func (f failReader) Read([]byte) (int, error) {
	f.t.Fatal("reader read past an oversized header")
	return 0, io.EOF
}

func TestReaderEOF(t *testing.T) {
	f, _ := Encode(1, &OriginWriteOK{Generation: 3})
	if _, _, err := NewReader(bytes.NewReader(nil)).Read(); err != io.EOF {
		t.Errorf("empty stream: %v", err)
	}
	for _, n := range []int{5, HeaderSize, len(f) - 1} {
		if _, _, err := NewReader(bytes.NewReader(f[:n])).Read(); err != io.ErrUnexpectedEOF {
			t.Errorf("stream cut at %d: %v", n, err)
		}
	}
}

// TestPipelining: many goroutines share one Writer on a real connection and
// the peer answers out of order; every frame arrives intact exactly once.
func TestPipelining(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	const workers, per = 8, 200
	client := NewWriter(c1)
	server := NewWriter(c2)

	// Server: reads requests, answers each from its own goroutine.
	var swg sync.WaitGroup
	go func() {
		r := NewReader(bufio.NewReader(c2))
		for {
			id, m, err := r.Read()
			if err != nil {
				return
			}
			swg.Add(1)
			go func() {
				defer swg.Done()
				ow := m.(*OriginWrite)
				server.Write(id, &OriginWriteOK{Generation: ow.Ranges[0].Start})
			}()
		}
	}()

	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				id := uint64(w*per + i + 1)
				if err := client.Write(id, &OriginWrite{Ranges: []Range{{Start: id * 10, Count: 1}}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[uint64]bool{}
	r := NewReader(bufio.NewReader(c1))
	for len(seen) < workers*per {
		id, m, err := r.Read()
		if err != nil {
			t.Fatal(err)
		}
		if seen[id] || m.(*OriginWriteOK).Generation != id*10 {
			t.Fatalf("reply %d: duplicate or wrong %+v", id, m)
		}
		seen[id] = true
	}
	wg.Wait()
	swg.Wait()
}

// TestWriterSticky: after a failed write every later write fails; an
// invalid message does not poison the Writer.
func TestWriterSticky(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.Write(1, &OriginWrite{}); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
	if err := w.Write(1, &Ping{}); err != nil {
		t.Fatal(err)
	}
	w = NewWriter(errWriter{})
	if err := w.Write(1, &Ping{}); err == nil {
		t.Fatal("no error")
	}
	if err := w.Write(2, &Ping{}); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("not sticky: %v", err)
	}
}

type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, fmt.Errorf("broken pipe") }

func TestCheckExtents(t *testing.T) {
	rs := []Range{{10, 3}, {20, 1}}
	ok := []Extent{{Start: 10, Count: 1, Origin: true}, {Start: 11, Count: 2, StoreOffset: 4096}, {Start: 20, Count: 1, Origin: true}}
	if err := CheckExtents(ok, rs); err != nil {
		t.Fatal(err)
	}
	for i, xs := range [][]Extent{
		ok[:2], // missing chunk 20
		{{Start: 10, Count: 3}, {Start: 20, Count: 2}}, // excess
		{{Start: 10, Count: 4}, {Start: 20, Count: 1}}, // crosses range end
		{{Start: 11, Count: 2}, {Start: 20, Count: 1}}, // gap
		append(append([]Extent{}, ok...), Extent{Start: 30, Count: 1}),
	} {
		if err := CheckExtents(xs, rs); !errors.Is(err, ErrMalformed) {
			t.Errorf("case %d: %v", i, err)
		}
	}
	if !(&SnapshotReadOK{Extents: ok}).HoldsLock() || (&SnapshotReadOK{Extents: ok[1:2]}).HoldsLock() {
		t.Error("HoldsLock")
	}
}

func TestNames(t *testing.T) {
	for _, s := range []string{"a", "0", "a-b", strings.Repeat("z", 63), "9-"} {
		if !ValidName(s) {
			t.Errorf("ValidName(%q) = false", s)
		}
	}
	for _, s := range []string{"", "-a", "A", "a_b", "a.b", strings.Repeat("z", 64), "é"} {
		if ValidName(s) {
			t.Errorf("ValidName(%q) = true", s)
		}
	}
	for _, s := range []string{"node1", "Node-1.example.com", "n_2"} {
		if !ValidNodeName(s) {
			t.Errorf("ValidNodeName(%q) = false", s)
		}
	}
	for _, s := range []string{"", ".a", "-a", "a b", strings.Repeat("n", 254)} {
		if ValidNodeName(s) {
			t.Errorf("ValidNodeName(%q) = true", s)
		}
	}
}
