package node

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/csnap/csnap/snapstore"
)

func TestCreateStoreFileAllocates(t *testing.T) {
	p := filepath.Join(t.TempDir(), "store.img")
	const size = 8 << 20
	created, err := createStoreFile(p, size)
	if err != nil || !created {
		t.Fatalf("createStoreFile: %v %v", created, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 < size {
		t.Fatalf("store file: size %d, %d bytes allocated; want %d fully allocated", st.Size, st.Blocks*512, size)
	}
	if created, err := createStoreFile(p, size); err != nil || created {
		t.Fatalf("existing file: created %v, %v", created, err)
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a new directory, unmounted
// when the test ends (failed or not).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mounting a %s tmpfs (this test needs root): %v", size, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// TestStoreOnFullFileSystem: the issue-16 scenario. A store on a 40 MiB
// file system: a new store that does not fit is refused at creation; an
// existing sparse store (made by an older csnapd) that the file system
// cannot hold fills up under the engine, and then every origin write still
// succeeds, the snapshot is dropped (log line, counter), and the volume is
// writable after a restart.
func TestStoreOnFullFileSystem(t *testing.T) {
	ctx := context.Background()
	fsDir := mountTmpfs(t, "40m")
	const size = 64 << 20
	if _, err := createStoreFile(filepath.Join(fsDir, "big.img"), size); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a 64 MiB store on a 40 MiB file system: %v, want ENOSPC", err)
	}
	if _, err := os.Stat(filepath.Join(fsDir, "big.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the store that did not fit was left behind: %v", err)
	}

	originPath := filepath.Join(t.TempDir(), "origin.img")
	if _, err := createSparse(originPath, size); err != nil {
		t.Fatal(err)
	}
	storePath := filepath.Join(fsDir, "store.img")
	f, err := os.Create(storePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	logger, hook := test.NewNullLogger()
	log := logrus.NewEntry(logger)
	open := func() (*fileDev, *fileDev, *snapstore.Engine) {
		origin, err := openFileDev(originPath, false)
		if err != nil {
			t.Fatal(err)
		}
		store, err := openFileDev(storePath, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := allocateStore(store); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("allocating the sparse store on the small file system: %v, want ENOSPC", err)
		}
		if _, err := snapstore.Inspect(store); err != nil {
			if err := snapstore.Format(origin, store, snapstore.FormatOptions{ChunkSize: 64 << 10}); err != nil {
				t.Fatal(err)
			}
		}
		eng, err := snapstore.Open(origin, store, snapstore.Options{OnEvent: engineEvents(log)})
		if err != nil {
			t.Fatal(err)
		}
		return origin, store, eng
	}
	fill := func(origin *fileDev, eng *snapstore.Engine, b byte) {
		buf := bytes.Repeat([]byte{b}, 1<<20)
		cs := int64(eng.ChunkSize())
		for off := int64(0); off < size; off += int64(len(buf)) {
			if _, err := eng.PrepareOriginWrite(ctx, uint64(off/cs), uint64(int64(len(buf))/cs)); err != nil {
				t.Fatalf("origin write at %d MiB: %v", off>>20, err)
			}
			if _, err := origin.WriteAt(buf, off); err != nil {
				t.Fatal(err)
			}
		}
		if err := origin.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	origin, store, eng := open()
	fill(origin, eng, 1)
	if _, err := eng.CreateSnapshot(ctx, "s1", snapstore.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fill(origin, eng, 2) // 64 MiB of copy-outs into a 40 MiB file system
	if st := eng.Stats(); st.SnapshotsDropped != 1 {
		t.Fatalf("snapshots dropped: %d, want 1", st.SnapshotsDropped)
	}
	if s, err := eng.Lookup("s1"); err != nil || s.State != snapstore.StateDropped {
		t.Fatalf("s1: %+v %v, want dropped", s, err)
	}
	logged := false
	for _, e := range hook.AllEntries() {
		if ev, ok := e.Data["event"].(string); ok && strings.Contains(ev, "dropped snapshot") {
			logged = true
		}
	}
	if !logged {
		t.Fatal("no log line for the dropped snapshot")
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	origin.Close()
	store.Close()

	// After a restart: still writable, snapshots still work.
	origin, store, eng = open()
	defer store.Close()
	defer origin.Close()
	defer eng.Close()
	if _, err := eng.CreateSnapshot(ctx, "s2", snapstore.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fill(origin, eng, 3)
	r, err := eng.Check(ctx, nil)
	if err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
}
