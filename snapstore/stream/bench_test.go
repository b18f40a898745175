package stream

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"testing"
)

// BenchmarkEncode / BenchmarkDecode: throughput of a full stream of 256 MiB
// of random data from and to memory (the CPU cost: CRC32C per record,
// SHA-256 over the stream, the zero-chunk check).
func BenchmarkEncode(b *testing.B) {
	const size = 256 << 20
	src := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(src)
	v := &testVol{data: src, cs: 65536}
	h := testHeader(size, 65536, 0)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Encode(context.Background(), io.Discard, h, Source{Extents: v.extents, Data: bytes.NewReader(src)}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	const size = 256 << 20
	src := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(src)
	v := &testVol{data: src, cs: 65536}
	var buf bytes.Buffer
	if _, err := Encode(context.Background(), &buf, testHeader(size, 65536, 0), Source{Extents: v.extents, Data: bytes.NewReader(src)}, nil); err != nil {
		b.Fatal(err)
	}
	s := buf.Bytes()
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := NewDecoder(bytes.NewReader(s))
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := d.Next(); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
}
