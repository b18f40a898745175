package node

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/csnap/csnap/snapstore"
)

// TestCreateWritten: the file has its size, reads as zeros, has every block
// allocated, leaves no temporary file, and an existing file is left alone.
func TestCreateWritten(t *testing.T) {
	p := filepath.Join(t.TempDir(), "store.img")
	const size = 9<<20 + 4096 // more than one 8 MiB step, not a multiple of it
	created, err := createWritten(p, size)
	if err != nil || !created {
		t.Fatalf("createWritten: created %v, %v", created, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != size || !bytes.Equal(b, make([]byte, size)) {
		t.Fatalf("file of %d bytes, not %d zeros", len(b), size)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks*512 < size {
		t.Fatalf("only %d bytes allocated of %d", st.Blocks*512, size)
	}
	if _, err := os.Stat(p + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	if err := os.WriteFile(p, []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	if created, err := createWritten(p, size); err != nil || created {
		t.Fatalf("existing file: created %v, %v", created, err)
	}
	if b, _ := os.ReadFile(p); string(b) != "kept" {
		t.Fatalf("existing file changed to %d bytes", len(b))
	}
}

func TestDevPrealloc(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "1": true, "true": true} {
		got, err := devPrealloc(func(string) string { return v })
		if err != nil || got != want {
			t.Errorf("CSNAP_DEV_PREALLOC=%q: %v, %v; want %v", v, got, err, want)
		}
	}
	if _, err := devPrealloc(func(string) string { return "yes please" }); err == nil {
		t.Error("CSNAP_DEV_PREALLOC=\"yes please\" accepted")
	}
}

// TestOpenFileDevDirect: a cluster volume's device is O_DIRECT, reads and
// writes any range, and still punches holes.
func TestOpenFileDevDirect(t *testing.T) {
	p := filepath.Join(t.TempDir(), "origin.img")
	if _, err := createSparse(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	d, err := openFileDev(p, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.Direct() {
		t.Fatal("openFileDev(direct) opened a buffered device")
	}
	data := bytes.Repeat([]byte{0xc5}, 200<<10)
	if _, err := d.WriteAt(data, 1000); err != nil {
		t.Fatal(err)
	}
	if err := d.PunchHole(64<<10, 64<<10); err != nil {
		t.Fatalf("punching a hole through a direct descriptor: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := d.ReadAt(got, 1000); err != nil {
		t.Fatal(err)
	}
	clear(data[64<<10-1000 : 128<<10-1000])
	if !bytes.Equal(got, data) {
		t.Fatal("read after write and hole punch: wrong bytes")
	}
}

func TestExplainDirectErr(t *testing.T) {
	err := explainDirectErr(fmt.Errorf("open device x: %w: %w", snapstore.ErrDirectIOUnsupported, syscall.EINVAL))
	if !strings.Contains(err.Error(), "-direct-io=false") || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("unsupported direct IO: %v", err)
	}
	other := fmt.Errorf("open device: %w", os.ErrPermission)
	if got := explainDirectErr(other); got != other {
		t.Fatalf("another error was changed: %v", got)
	}
}
