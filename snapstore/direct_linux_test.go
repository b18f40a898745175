//go:build linux

package snapstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newDirectFile makes a file of size bytes under t.TempDir() and opens it
// with OpenDirect (align 0) or with the alignment forced.
func newDirectFile(t *testing.T, size, align int64) (*FileDevice, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	d, err := openDirect(p, align)
	if errors.Is(err, ErrDirectIOUnsupported) {
		t.Fatalf("no direct IO in %s (cluster volumes need it; set TMPDIR to a file system with O_DIRECT): %v", filepath.Dir(p), err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, p
}

// unalignedBuf returns n bytes starting skip bytes past an aligned
// address, so that skip != 0 defeats the fast path whatever off and n are.
func unalignedBuf(n, skip int) []byte {
	return AlignedBuffer(n + skip)[skip : skip+n]
}

// TestDirectModel compares random reads and writes, aligned and not, with
// an in-memory copy of the file, at the device's own alignment and at a
// forced 4 KiB (so that read-modify-writes span eight 512-byte sectors).
func TestDirectModel(t *testing.T) {
	for _, align := range []int64{0, 4096} {
		t.Run(fmt.Sprintf("align=%d", align), func(t *testing.T) {
			const size = 3<<20 + 4096*3 + 512 // not a whole number of 4 KiB blocks
			d, path := newDirectFile(t, size, align)
			a := d.Alignment()
			t.Logf("alignment %d", a)
			model := make([]byte, size)
			rng := rand.New(rand.NewSource(int64(a)))
			var aligned, bounced int
			for i := 0; i < 1200; i++ {
				var off, n int64
				switch rng.Intn(4) {
				case 0: // aligned offset and length
					off = rng.Int63n(size/a) * a
					n = (1 + rng.Int63n(min(300<<10, size-off)/a+1)) * a
				case 1: // small, anywhere
					off, n = rng.Int63n(size), 1+rng.Int63n(3*a)
				case 2: // large (over bounceMax sometimes), anywhere
					off, n = rng.Int63n(size), 1+rng.Int63n(bounceMax+3*a)
				default: // within one block
					off = rng.Int63n(size)
					n = 1 + rng.Int63n(a-off%a)
				}
				n = min(n, size-off)
				if n <= 0 {
					continue
				}
				skip := 0
				if rng.Intn(3) == 0 {
					skip = 1 + rng.Intn(511)
				}
				buf := unalignedBuf(int(n), skip)
				if off%a == 0 && n%a == 0 && skip == 0 {
					aligned++
				} else {
					bounced++
				}
				if rng.Intn(2) == 0 {
					rng.Read(buf)
					if k, err := d.WriteAt(buf, off); err != nil || k != len(buf) {
						t.Fatalf("write [%d,+%d) skip %d: %d, %v", off, n, skip, k, err)
					}
					copy(model[off:], buf)
					continue
				}
				if k, err := d.ReadAt(buf, off); err != nil || k != len(buf) {
					t.Fatalf("read [%d,+%d) skip %d: %d, %v", off, n, skip, k, err)
				}
				if !bytes.Equal(buf, model[off:off+n]) {
					t.Fatalf("read [%d,+%d) skip %d: wrong bytes", off, n, skip)
				}
			}
			t.Logf("%d aligned, %d unaligned operations; %d went through a bounce buffer", aligned, bounced, d.direct.bounced.Load())
			// The file itself, read without O_DIRECT, holds the model and
			// has not grown.
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != size || !bytes.Equal(got, model) {
				t.Fatalf("file content differs from the model (length %d, want %d)", len(got), size)
			}
		})
	}
}

// TestDirectEOF checks io.ReaderAt semantics at and past the end of a file
// whose size is not a multiple of the alignment, and that a write past the
// end grows the file to exactly its end.
func TestDirectEOF(t *testing.T) {
	const size = 8192 + 100
	d, path := newDirectFile(t, size, 4096)
	want := bytes.Repeat([]byte{0x5a}, size)
	if _, err := d.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		t.Fatalf("size after an unaligned write up to the end: %v %v", fi.Size(), err)
	}
	for _, c := range []struct{ off, n, want int64 }{
		{0, size + 50, size},   // covers the end
		{8000, 4096, 292},      // from one block into the last, partial one
		{8192, 4096, 100},      // aligned, the partial last block
		{size, 10, 0},          // at the end
		{size + 5000, 4096, 0}, // past it
	} {
		for _, skip := range []int{0, 3} {
			buf := unalignedBuf(int(c.n), skip)
			n, err := d.ReadAt(buf, c.off)
			if int64(n) != c.want || err != io.EOF {
				t.Errorf("read [%d,+%d) skip %d: %d, %v; want %d, EOF", c.off, c.n, skip, n, err, c.want)
			}
			if n > 0 && !bytes.Equal(buf[:n], want[c.off:c.off+int64(n)]) {
				t.Errorf("read [%d,+%d) skip %d: wrong bytes", c.off, c.n, skip)
			}
		}
	}
	// Growing: an unaligned write past the end pads its last block on
	// disk, then sets the size to where the write ends.
	tail := []byte("past the end")
	if _, err := d.WriteAt(tail, size+1000); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	exp := append(append(append([]byte(nil), want...), make([]byte, 1000)...), tail...)
	if !bytes.Equal(got, exp) {
		t.Fatalf("after a write past the end: %d bytes, want %d (content equal: %v)", len(got), len(exp), bytes.Equal(got[:min(len(got), len(exp))], exp[:min(len(got), len(exp))]))
	}
}

// TestDirectConcurrentRMW has goroutines write distinct, interleaved byte
// ranges that share blocks (every write is a read-modify-write); without
// the stripe locks writes are lost.
func TestDirectConcurrentRMW(t *testing.T) {
	const (
		writers = 8
		width   = 100 // bytes per write: writers*width spans block edges
		rounds  = 200
	)
	size := int64(writers * width * rounds)
	d, _ := newDirectFile(t, alignUp(size, 4096), 4096)
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(g + 1)}, width)
			for r := 0; r < rounds; r++ {
				off := int64(r*writers*width + g*width)
				if _, err := d.WriteAt(buf, off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := make([]byte, size)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	lost := 0
	for i, b := range got {
		if want := byte(i/width%writers + 1); b != want {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d bytes lost to concurrent read-modify-writes", lost, size)
	}
}

// TestDirectAlignedVsRMW races one aligned write of a whole block against
// read-modify-writes of a few bytes of the same block: the RMWs must not
// write back the block's bytes from before the aligned write.
func TestDirectAlignedVsRMW(t *testing.T) {
	d, _ := newDirectFile(t, 64<<10, 4096)
	for round := 0; round < 50; round++ {
		blk := int64(round%16) * 4096
		if _, err := d.WriteAt(AlignedBuffer(4096), blk); err != nil {
			t.Fatal(err)
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			small := []byte{0xbb, 0xbb, 0xbb}
			close(start)
			for i := 0; i < 40; i++ {
				if _, err := d.WriteAt(small, blk+1); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			full := AlignedBuffer(4096)
			for i := range full {
				full[i] = 0xaa
			}
			full[1], full[2], full[3] = 0xbb, 0xbb, 0xbb
			<-start
			if _, err := d.WriteAt(full, blk); err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		got := make([]byte, 4096)
		if _, err := d.ReadAt(got, blk); err != nil {
			t.Fatal(err)
		}
		for i, b := range got {
			if i >= 1 && i <= 3 {
				continue
			}
			if b != 0xaa {
				t.Fatalf("round %d: byte %d is %#x: the aligned write was undone by a read-modify-write", round, i, b)
			}
		}
	}
}

// TestDirectBypassesPageCache checks that the descriptor is O_DIRECT and
// that IO through the device leaves nothing in this host's page cache
// (mincore over a mapping of the file), where a buffered device does.
func TestDirectBypassesPageCache(t *testing.T) {
	const size = 256 << 10
	d, path := newDirectFile(t, size, 0)
	fl, err := unix.FcntlInt(d.File().Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&syscall.O_DIRECT == 0 {
		t.Fatalf("descriptor flags %#x lack O_DIRECT", fl)
	}
	buffered, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer buffered.Close()
	for _, c := range []struct {
		name   string
		dev    *FileDevice
		cached bool
	}{{"direct", d, false}, {"buffered", buffered, true}} {
		evict(t, buffered.File())
		w := AlignedBuffer(size)
		for i := range w {
			w[i] = byte(i * 7)
		}
		if _, err := c.dev.WriteAt(w, 0); err != nil {
			t.Fatal(err)
		}
		r := AlignedBuffer(size)
		if _, err := c.dev.ReadAt(r, 0); err != nil || !bytes.Equal(r, w) {
			t.Fatalf("%s: read back: %v", c.name, err)
		}
		if n := residentPages(t, path, size); (n > 0) != c.cached {
			t.Fatalf("%s device: %d pages of the file in the page cache", c.name, n)
		}
	}
	// What another host writes (here: another direct descriptor) is what
	// the device reads next.
	other, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	w := AlignedBuffer(4096)
	copy(w, "written by another host")
	if _, err := other.WriteAt(w, 8192); err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 23)
	if _, err := d.ReadAt(r, 8192); err != nil || string(r) != "written by another host" {
		t.Fatalf("read %q, %v", r, err)
	}
}

// evict writes back and drops f's cached pages.
func evict(t *testing.T, f *os.File) {
	t.Helper()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// residentPages counts the pages of the file's first size bytes that are
// in the page cache.
func residentPages(t *testing.T, path string, size int) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (size+os.Getpagesize()-1)/os.Getpagesize())
	_, _, errno := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestEngineOverDirect runs the engine over two O_DIRECT files: format,
// a snapshot, a copy-out, reopen, and the snapshot's data read back. The
// engine's own IO must all be aligned (no bounce buffer).
func TestEngineOverDirect(t *testing.T) {
	for _, align := range []int64{0, 4096} {
		t.Run(fmt.Sprintf("align=%d", align), func(t *testing.T) { testEngineOverDirect(t, align) })
	}
}

func testEngineOverDirect(t *testing.T, align int64) {
	od, _ := newDirectFile(t, 4<<20, align)
	sd, _ := newDirectFile(t, 16<<20, align)
	if err := Format(od, sd, FormatOptions{}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	old := bytes.Repeat([]byte{7}, 3*DefaultChunkSize)
	if _, err := od.WriteAt(old, DefaultChunkSize); err != nil {
		t.Fatal(err)
	}
	si, err := e.CreateSnapshot(ctx, "one", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.PrepareOriginWrite(ctx, 1, 3); err != nil {
		t.Fatal(err)
	}
	// The client's write: an unaligned one, as an initiator may send.
	neu := bytes.Repeat([]byte{9}, 3*DefaultChunkSize-1000)
	if _, err := od.WriteAt(neu, DefaultChunkSize+517); err != nil {
		t.Fatal(err)
	}
	if n := sd.direct.bounced.Load(); n != 0 {
		t.Errorf("the engine did %d unaligned IOs on the store", n)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err = Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if r, err := e.Check(ctx, nil); err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
	locs, err := e.MapSnapshotRead(ctx, si.ID, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range locs {
		if l.Origin {
			t.Fatalf("chunk %d still on the origin after the copy-out", 1+i)
		}
		got := make([]byte, DefaultChunkSize)
		if _, err := sd.ReadAt(got, l.Offset); err != nil || !bytes.Equal(got, old[:DefaultChunkSize]) {
			t.Fatalf("snapshot chunk %d: %v, or wrong data", 1+i, err)
		}
	}
	cur := make([]byte, len(neu))
	if _, err := od.ReadAt(cur, DefaultChunkSize+517); err != nil || !bytes.Equal(cur, neu) {
		t.Fatalf("origin read back: %v, or wrong data", err)
	}
	if n := sd.direct.bounced.Load(); n != 0 {
		t.Errorf("the engine did %d unaligned IOs on the store", n)
	}
	if n := od.direct.bounced.Load(); n != 2 {
		t.Errorf("%d unaligned IOs on the origin, want 2 (the test's own)", n)
	}
}
