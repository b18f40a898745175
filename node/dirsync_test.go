package node

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// dirSyncs records the directories synced, and checks that each sync
// comes after the entry it is for exists.
type dirSyncs struct {
	t      *testing.T
	synced []string
}

func (d *dirSyncs) sync(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		d.t.Errorf("synced %s, which does not exist: %v", dir, err)
	}
	d.synced = append(d.synced, dir)
	return syncDir(dir)
}

// TestCreateSparseSyncsDir: a file createSparse makes is not durable until
// its directory entry is: the directory is synced after the file is made
// (and not when the file existed already).
func TestCreateSparseSyncsDir(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "store.img")
	d := &dirSyncs{t: t}
	created, err := createSparseWith(p, 1<<20, d.sync)
	if err != nil || !created {
		t.Fatalf("created %v, %v", created, err)
	}
	if !slices.Equal(d.synced, []string{dir}) {
		t.Fatalf("directories synced %q, want %q", d.synced, dir)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 1<<20 {
		t.Fatalf("the file: %v, %v", fi, err)
	}
	d.synced = nil
	if created, err := createSparseWith(p, 1<<20, d.sync); err != nil || created || len(d.synced) != 0 {
		t.Fatalf("existing file: created %v, %v, synced %q", created, err, d.synced)
	}
}

// TestMakeDirSyncsParents: every directory makeDir creates has its entry
// synced in its parent; existing ones are left alone.
func TestMakeDirSyncsParents(t *testing.T) {
	base := t.TempDir()
	d := &dirSyncs{t: t}
	dir := filepath.Join(base, "a", "b")
	if err := makeDirWith(dir, 0o700, d.sync); err != nil {
		t.Fatal(err)
	}
	if want := []string{base, filepath.Join(base, "a")}; !slices.Equal(d.synced, want) {
		t.Fatalf("directories synced %q, want %q", d.synced, want)
	}
	d.synced = nil
	if err := makeDirWith(dir, 0o700, d.sync); err != nil || len(d.synced) != 0 {
		t.Fatalf("existing directory: %v, synced %q", err, d.synced)
	}
	f := filepath.Join(base, "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := makeDirWith(f, 0o700, d.sync); err == nil {
		t.Fatal("a file taken for a directory")
	}
}
