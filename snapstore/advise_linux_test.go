//go:build linux

package snapstore

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkSmallWriteAfterRead measures 4 KiB buffered writes into a file
// that was first read sequentially in 1 MiB reads from a cold page cache,
// as a target's file is when an initiator reads a disk and then writes to
// it: with the kernel's readahead (the default) and with AdviseRandom (how
// csnapd opens buffered volume files). Compare the two ns/op side by side;
// tests/bench/RESULTS.md has a run.
func BenchmarkSmallWriteAfterRead(b *testing.B) {
	for _, bc := range []struct {
		name   string
		advise bool
	}{{"readahead", false}, {"advise-random", true}} {
		b.Run(bc.name, func(b *testing.B) {
			const size = 128 << 20
			f := coldFile(b, size)
			if bc.advise {
				AdviseRandom(f)
			}
			buf := make([]byte, 1<<20)
			for off := int64(0); off < size; off += int64(len(buf)) {
				if _, err := f.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
			small := buf[:4096]
			b.SetBytes(int64(len(small)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// One write per MiB, as the target benchmark's QD 1 rows.
				off := int64(i) * (1<<20 + 4096) % size
				if _, err := f.WriteAt(small, off); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// coldFile makes a file of size bytes under b.TempDir() whose data is
// written and durable but not in the page cache.
func coldFile(b *testing.B, size int64) *os.File {
	b.Helper()
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "f"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := WriteInPieces(f, chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
	return f
}
