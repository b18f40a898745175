package fileback

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/csnap/csnap/target/scsi"
)

func TestFileBackend(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lun.img")
	if err := Create(p, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := Create(p, 1<<20); err != nil { // exists: left alone
		t.Fatal(err)
	}
	b, err := Open(p, 0, false, IdentityFor("vol-1", "csnap origin"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != 4<<20 || b.ReadOnly() {
		t.Fatalf("size %d readonly %v", b.Size(), b.ReadOnly())
	}
	data := bytes.Repeat([]byte{0xa5}, 128<<10)
	if err := b.WriteAt(data, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := b.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	if m, _, _ := b.Mapped(1 << 20); !m {
		t.Error("written range reported unmapped")
	}
	if m, _, _ := b.Mapped(3 << 20); m {
		t.Error("never written range of a sparse file reported mapped")
	}
	if err := b.Unmap(1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := b.ReadAt(got[:64<<10], 1<<20); err != nil || !bytes.Equal(got[:64<<10], make([]byte, 64<<10)) {
		t.Fatalf("unmapped range does not read zeros: %v", err)
	}
	if err := b.ReadAt(got[:512], 4<<20); err == nil {
		t.Error("read beyond the end accepted")
	}
	if err := b.WriteAt(got[:512], 4<<20-256, false); err == nil {
		t.Error("write across the end accepted")
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}

	ro, err := Open(p, 0, true, IdentityFor("vol-1", "csnap snapshot"))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	var se *scsi.SenseError
	if err := ro.WriteAt(got[:512], 0, false); !errors.As(err, &se) || se.Key != scsi.SenseDataProtect {
		t.Fatalf("write to read-only backend: %v", err)
	}
}

func TestIdentityStable(t *testing.T) {
	a, b, c := IdentityFor("x", "p"), IdentityFor("x", "p"), IdentityFor("y", "p")
	if a != b {
		t.Fatal("same name, different identity")
	}
	if a.Serial == c.Serial || a.NAA == c.NAA {
		t.Fatal("different names, same identity")
	}
	if a.NAA[0]>>4 != 6 {
		t.Fatalf("NAA designator type %d, want 6", a.NAA[0]>>4)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing"), 0, false, scsi.Identity{}); err == nil {
		t.Error("missing file opened")
	}
	p := filepath.Join(dir, "empty")
	if err := Create(p, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p, 0, false, scsi.Identity{}); err == nil {
		t.Error("empty file opened")
	}
}

// TestCreateSyncsDir: Create syncs the directory after making the file
// (its entry is not durable otherwise), and not when the file existed.
func TestCreateSyncsDir(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "lun.img")
	var synced []string
	rec := func(d string) error {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("directory synced before the file exists: %v", err)
		}
		synced = append(synced, d)
		return syncDir(d)
	}
	if err := create(p, 1<<20, rec); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 1 || synced[0] != dir {
		t.Fatalf("directories synced %q, want %q", synced, dir)
	}
	if err := create(p, 1<<20, rec); err != nil || len(synced) != 1 {
		t.Fatalf("existing file: %v, synced %q", err, synced)
	}
}
