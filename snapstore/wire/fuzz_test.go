package wire

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"reflect"
	"testing"
)

// FuzzDecodeFrame feeds arbitrary streams to the Reader: it must never
// panic, every message it returns must re-encode to exactly the bytes it
// came from, and after a *MessageError it must stay in sync.
func FuzzDecodeFrame(f *testing.F) {
	g := gen{rand.New(rand.NewSource(3))}
	for _, typ := range allTypes() {
		frame, err := Encode(g.frameID(typ), g.message(typ))
		if err != nil {
			f.Fatal(err)
		}
		if len(frame) < 2048 {
			f.Add(frame)
			two, _ := Encode(1, &Pong{})
			f.Add(append(bytes.Clone(frame), two...))
		}
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		br := bytes.NewReader(stream)
		r := NewReader(br)
		for {
			start := len(stream) - br.Len()
			id, m, err := r.Read()
			if err != nil {
				var me *MessageError
				if errors.As(err, &me) {
					continue
				}
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrCorrupt) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			end := len(stream) - br.Len()
			again, err := Encode(id, m)
			if err != nil {
				t.Fatalf("decoded %v does not re-encode: %v", m.Type(), err)
			}
			if !bytes.Equal(again, stream[start:end]) {
				t.Fatalf("%v: encoding not canonical", m.Type())
			}
		}
	})
}

// fuzzBody is the body fuzzer of one message type: decoding never panics;
// a decoded message re-encodes to the same bytes and decodes to an equal
// message (the round-trip property, from the decoder's side).
func fuzzBody(f *testing.F, typ MsgType) {
	g := gen{rand.New(rand.NewSource(int64(typ)))}
	for i := 0; i < 8; i++ {
		body, err := EncodeBody(g.message(typ))
		if err != nil {
			f.Fatal(err)
		}
		if len(body) < 4096 {
			f.Add(body)
		}
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := DecodeBody(typ, body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrLimit) && !errors.Is(err, ErrBadName) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		again, err := EncodeBody(m)
		if err != nil {
			t.Fatalf("decoded message does not re-encode: %v", err)
		}
		if !bytes.Equal(again, body) {
			t.Fatalf("encoding not canonical:\n in %x\nout %x", body, again)
		}
		m2, err := DecodeBody(typ, again)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, m, m2)
		}
	})
}

func FuzzDecodeHello(f *testing.F)              { fuzzBody(f, TypeHello) }
func FuzzDecodeHelloOK(f *testing.F)            { fuzzBody(f, TypeHelloOK) }
func FuzzDecodeHelloReject(f *testing.F)        { fuzzBody(f, TypeHelloReject) }
func FuzzDecodePing(f *testing.F)               { fuzzBody(f, TypePing) }
func FuzzDecodePong(f *testing.F)               { fuzzBody(f, TypePong) }
func FuzzDecodeError(f *testing.F)              { fuzzBody(f, TypeError) }
func FuzzDecodeOK(f *testing.F)                 { fuzzBody(f, TypeOK) }
func FuzzDecodeOriginWrite(f *testing.F)        { fuzzBody(f, TypeOriginWrite) }
func FuzzDecodeOriginWriteOK(f *testing.F)      { fuzzBody(f, TypeOriginWriteOK) }
func FuzzDecodeSnapshotRead(f *testing.F)       { fuzzBody(f, TypeSnapshotRead) }
func FuzzDecodeSnapshotReadOK(f *testing.F)     { fuzzBody(f, TypeSnapshotReadOK) }
func FuzzDecodeFinishSnapshotRead(f *testing.F) { fuzzBody(f, TypeFinishSnapshotRead) }
func FuzzDecodeSnapshotWrite(f *testing.F)      { fuzzBody(f, TypeSnapshotWrite) }
func FuzzDecodeSnapshotWriteOK(f *testing.F)    { fuzzBody(f, TypeSnapshotWriteOK) }
func FuzzDecodeUploadLocks(f *testing.F)        { fuzzBody(f, TypeUploadLocks) }
func FuzzDecodeUploadDone(f *testing.F)         { fuzzBody(f, TypeUploadDone) }
func FuzzDecodeInvalidate(f *testing.F)         { fuzzBody(f, TypeInvalidate) }
func FuzzDecodeInvalidateAck(f *testing.F)      { fuzzBody(f, TypeInvalidateAck) }
func FuzzDecodeSharedUpdate(f *testing.F)       { fuzzBody(f, TypeSharedUpdate) }
func FuzzDecodeSharedResult(f *testing.F)       { fuzzBody(f, TypeSharedResult) }
func FuzzDecodeUploadShared(f *testing.F)       { fuzzBody(f, TypeUploadShared) }
func FuzzDecodeSharedState(f *testing.F)        { fuzzBody(f, TypeSharedState) }
func FuzzDecodeOriginUnique(f *testing.F)       { fuzzBody(f, TypeOriginUnique) }
func FuzzDecodeReclaim(f *testing.F)            { fuzzBody(f, TypeReclaim) }
func FuzzDecodeReclaimOK(f *testing.F)          { fuzzBody(f, TypeReclaimOK) }
func FuzzDecodeBlockLock(f *testing.F)          { fuzzBody(f, TypeBlockLock) }
func FuzzDecodeBlockLockOK(f *testing.F)        { fuzzBody(f, TypeBlockLockOK) }
func FuzzDecodeBlockUnlock(f *testing.F)        { fuzzBody(f, TypeBlockUnlock) }
func FuzzDecodeCreateSnapshot(f *testing.F)     { fuzzBody(f, TypeCreateSnapshot) }
func FuzzDecodeCreateSnapshotOK(f *testing.F)   { fuzzBody(f, TypeCreateSnapshotOK) }
func FuzzDecodeDeleteSnapshot(f *testing.F)     { fuzzBody(f, TypeDeleteSnapshot) }
func FuzzDecodeListSnapshots(f *testing.F)      { fuzzBody(f, TypeListSnapshots) }
func FuzzDecodeSnapshotList(f *testing.F)       { fuzzBody(f, TypeSnapshotList) }
func FuzzDecodeSetPriority(f *testing.F)        { fuzzBody(f, TypeSetPriority) }
func FuzzDecodeStatus(f *testing.F)             { fuzzBody(f, TypeStatus) }
func FuzzDecodeStatusOK(f *testing.F)           { fuzzBody(f, TypeStatusOK) }
func FuzzDecodeCheck(f *testing.F)              { fuzzBody(f, TypeCheck) }
func FuzzDecodeCheckOK(f *testing.F)            { fuzzBody(f, TypeCheckOK) }
func FuzzDecodeRecover(f *testing.F)            { fuzzBody(f, TypeRecover) }

// TestFuzzersCoverEveryType keeps the list above complete.
func TestFuzzersCoverEveryType(t *testing.T) {
	if n := len(allTypes()); n != 39 {
		t.Fatalf("%d message types; add a FuzzDecode function for the new one and update this count", n)
	}
}
