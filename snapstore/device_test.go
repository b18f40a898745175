package snapstore

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

// recWriter records the pieces WriteInPieces makes.
type recWriter struct {
	buf    []byte
	pieces [][2]int64 // offset, length
}

func (w *recWriter) WriteAt(p []byte, off int64) (int, error) {
	w.pieces = append(w.pieces, [2]int64{off, int64(len(p))})
	return copy(w.buf[off:], p), nil
}

// TestWriteInPieces: every byte lands where it belongs, and no piece
// crosses a multiple of WritePiece or is larger than it.
func TestWriteInPieces(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 200; i++ {
		off := rng.Int63n(3 * WritePiece)
		n := rng.Intn(5*WritePiece) + 1
		if i%4 == 0 {
			off &^= 4095 // aligned cases too
		}
		w := &recWriter{buf: make([]byte, off+int64(n))}
		p := make([]byte, n)
		rng.Read(p)
		got, err := WriteInPieces(w, p, off)
		if err != nil || got != n {
			t.Fatalf("wrote %d of %d: %v", got, n, err)
		}
		if !bytes.Equal(w.buf[off:], p) {
			t.Fatalf("write of %d at %d: data differs", n, off)
		}
		for _, pc := range w.pieces {
			if pc[1] > WritePiece || pc[0]/WritePiece != (pc[0]+pc[1]-1)/WritePiece {
				t.Fatalf("write of %d at %d: piece [%d,+%d) crosses a %d boundary", n, off, pc[0], pc[1], WritePiece)
			}
		}
	}
}

func TestFileDeviceWriteRead(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "dev"))
	if err != nil {
		t.Fatal(err)
	}
	d := NewFileDevice(f)
	defer d.Close()
	p := bytes.Repeat([]byte("csnap"), 300000) // 1.5 MB, crosses many pieces
	if n, err := d.WriteAt(p, 12345); err != nil || n != len(p) {
		t.Fatalf("WriteAt: %d %v", n, err)
	}
	got := make([]byte, len(p))
	if _, err := d.ReadAt(got, 12345); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back differs (%v)", err)
	}
}
