package snapstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
)

// expectedExtents merges the changed chunks into byte extents clipped to
// size, from byte offset off on.
func expectedExtents(changed []bool, cs, size, off int64) []Extent {
	var out []Extent
	for c, ch := range changed {
		if !ch {
			continue
		}
		s, t := max(int64(c)*cs, off), min(int64(c+1)*cs, size)
		if t <= s {
			continue
		}
		if n := len(out); n > 0 && out[n-1].End() == s {
			out[n-1].Length += t - s
		} else {
			out = append(out, Extent{s, t - s})
		}
	}
	return out
}

// diffAll pages through Diff with the given limit from offset off.
func diffAll(t testing.TB, e *Engine, from, to SnapID, off int64, limit int) []Extent {
	t.Helper()
	var all []Extent
	for pages := 0; ; pages++ {
		exts, next, err := e.Diff(context.Background(), from, to, off, limit)
		if err != nil {
			t.Fatalf("diff %d..%d at %d: %v", from, to, off, err)
		}
		if limit > 0 && len(exts) > limit {
			t.Fatalf("diff %d..%d at %d: %d extents, limit %d", from, to, off, len(exts), limit)
		}
		if n := len(all); n > 0 && len(exts) > 0 && all[n-1].End() >= exts[0].Offset {
			t.Fatalf("diff %d..%d: page at %d starts with %+v, adjacent to the previous page's last %+v", from, to, off, exts[0], all[n-1])
		}
		all = append(all, exts...)
		if next < 0 {
			return all
		}
		if next <= off || len(exts) == 0 {
			t.Fatalf("diff %d..%d: next offset %d after %d with %d extents", from, to, next, off, len(exts))
		}
		off = next
	}
}

// verifyDiffs compares Diff with the per-chunk version oracle for random
// pairs of live snapshots (both orders, writable ones included), random
// start offsets and page sizes, and checks full diffs cover every non-zero
// chunk.
func (m *model) verifyDiffs() {
	ids := m.liveIDs()
	if len(ids) == 0 {
		return
	}
	nc := len(m.ver)
	size := int64(len(m.origin))
	verOf := func(id SnapID) []uint64 {
		if id == Origin {
			return m.ver
		}
		return m.snaps[id].ver
	}
	for k := 0; k < 12; k++ {
		a, b := ids[m.rng.Intn(len(ids))], ids[m.rng.Intn(len(ids))]
		switch m.rng.Intn(6) {
		case 0:
			b = Origin
		case 1:
			a = Origin
		}
		changed := make([]bool, nc)
		for c := range changed {
			changed[c] = verOf(a)[c] != verOf(b)[c]
		}
		off := int64(0)
		if m.rng.Intn(3) == 0 {
			off = m.rng.Int63n(size)
		}
		limit := []int{0, 1, 2, 5}[m.rng.Intn(4)]
		want := expectedExtents(changed, int64(m.cs), size, off)
		got := diffAll(m.t, m.e, a, b, off, limit)
		if !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
			m.t.Fatalf("diff %d..%d from %d (limit %d):\n got %v\nwant %v", a, b, off, limit, got, want)
		}
	}
	// Full diff: a MemDevice origin cannot tell where it holds data, so
	// the answer must be the whole volume (one extent).
	to := ids[m.rng.Intn(len(ids))]
	got := diffAll(m.t, m.e, NoSnapshot, to, 0, 1)
	if want := []Extent{{0, size}}; !reflect.DeepEqual(got, want) {
		m.t.Fatalf("full diff of %d: got %v, want %v", to, got, want)
	}
}

// holeDev is a MemDevice that knows which chunk-sized blocks were ever
// written (DataExtents), like a sparse file.
type holeDev struct {
	*MemDevice
	bs      int64
	mu      sync.Mutex
	written map[int64]bool
}

func (d *holeDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	for b := off / d.bs; b*d.bs < off+int64(len(p)); b++ {
		d.written[b] = true
	}
	d.mu.Unlock()
	return d.MemDevice.WriteAt(p, off)
}

func (d *holeDev) NextData(off int64) (int64, int64, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	size := int64(len(d.buf))
	for b := off / d.bs; b*d.bs < size; b++ {
		if d.written[b] {
			e := b + 1
			for e*d.bs < size && d.written[e] {
				e++
			}
			return max(b*d.bs, off), min(e*d.bs, size), true, nil
		}
	}
	return 0, 0, false, nil
}

// TestDiffFull: a full diff on an origin that reports its holes is exactly
// the chunks written to the origin (ever) plus the chunks the snapshot
// wrote privately; chunks never written are left out.
func TestDiffFull(t *testing.T) {
	const cs, nc = 4096, 64
	ctx := context.Background()
	od := &holeDev{MemDevice: NewMemDevice(cs * nc), bs: 1024, written: map[int64]bool{}}
	sd := NewMemDevice(4 << 20)
	if err := Format(od, sd, FormatOptions{ChunkSize: cs, TableCapacity: 16, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	rng := rand.New(rand.NewSource(1))
	owritten := make([]bool, nc)
	write := func(c int) {
		if _, err := e.PrepareOriginWrite(ctx, uint64(c), 1); err != nil {
			t.Fatal(err)
		}
		// a write of part of the chunk: the chunk counts as data
		if _, err := od.WriteAt([]byte{1, 2, 3}, int64(c)*cs+1500); err != nil {
			t.Fatal(err)
		}
		owritten[c] = true
	}
	for i := 0; i < 10; i++ {
		write(rng.Intn(nc))
	}
	a, err := e.CreateSnapshot(ctx, "a", CreateOptions{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	aData := append([]bool(nil), owritten...)
	for i := 0; i < 10; i++ {
		write(rng.Intn(nc))
	}
	for i := 0; i < 5; i++ {
		c := rng.Intn(nc)
		offs, err := e.PrepareSnapshotWrite(ctx, a.ID, uint64(c), 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sd.WriteAt([]byte{9}, offs[0]); err != nil {
			t.Fatal(err)
		}
		aData[c] = true
	}
	b, err := e.CreateSnapshot(ctx, "b", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// a: what it holds plus chunks copied out for it (written after it
	// was taken: the origin has data there anyway).
	for c := range aData {
		aData[c] = aData[c] || owritten[c]
	}
	for _, x := range []struct {
		id   SnapID
		want []bool
	}{{a.ID, aData}, {b.ID, owritten}, {Origin, owritten}} {
		for _, limit := range []int{0, 1, 3} {
			got := diffAll(t, e, NoSnapshot, x.id, 0, limit)
			if want := expectedExtents(x.want, cs, cs*nc, 0); !reflect.DeepEqual(got, want) {
				t.Fatalf("full diff of %d (limit %d):\n got %v\nwant %v", x.id, limit, got, want)
			}
		}
	}
}

// TestDiffErrors: unknown, deleted and dropped snapshots are refused.
func TestDiffErrors(t *testing.T) {
	ctx := context.Background()
	od, sd := NewMemDevice(1<<20), NewMemDevice(4<<20)
	if err := Format(od, sd, FormatOptions{ChunkSize: 4096, TableCapacity: 16, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	a, _ := e.CreateSnapshot(ctx, "a", CreateOptions{})
	b, _ := e.CreateSnapshot(ctx, "b", CreateOptions{})
	if _, _, err := e.Diff(ctx, a.ID, 9, 0, 0); !errors.Is(err, ErrNoSuchSnapshot) {
		t.Fatalf("diff to unknown: %v", err)
	}
	if _, _, err := e.Diff(ctx, 9, b.ID, 1<<30, 0); !errors.Is(err, ErrNoSuchSnapshot) {
		t.Fatalf("diff from unknown past the end: %v", err)
	}
	if err := e.DeleteSnapshot(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.Diff(ctx, a.ID, b.ID, 0, 0); !errors.Is(err, ErrNoSuchSnapshot) {
		t.Fatalf("diff from deleted: %v", err)
	}
	if _, _, err := e.Diff(ctx, b.ID, b.ID, -1, 0); err == nil {
		t.Fatal("negative offset accepted")
	}
	if exts, next, err := e.Diff(ctx, b.ID, b.ID, 0, 0); err != nil || len(exts) != 0 || next != -1 {
		t.Fatalf("diff of a snapshot with itself: %v %d %v", exts, next, err)
	}
}

// TestDiffFullSparseFile: FileDevice.NextData reports a sparse file's
// holes, so a full diff of a snapshot on a sparse origin file leaves out
// the chunks never written.
func TestDiffFullSparseFile(t *testing.T) {
	const cs, nc = 65536, 64
	ctx := context.Background()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "origin"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(cs * nc); err != nil {
		t.Fatal(err)
	}
	od := NewFileDevice(f)
	defer od.Close()
	written := make([]bool, nc)
	for _, c := range []int{3, 4, 10, 40, 63} {
		if _, err := od.WriteAt(bytes.Repeat([]byte{7}, cs), int64(c)*cs); err != nil {
			t.Fatal(err)
		}
		written[c] = true
	}
	if err := od.Flush(); err != nil {
		t.Fatal(err)
	}
	// Does this file system report holes? (tmpfs, ext4, xfs, btrfs do.)
	if s, _, ok, err := od.NextData(0); err != nil || !ok || s != 3*cs {
		t.Fatalf("NextData(0) on a file with data from chunk 3: start %d, ok %v, err %v", s, ok, err)
	}
	sd := NewMemDevice(4 << 20)
	if err := Format(od, sd, FormatOptions{ChunkSize: cs, TableCapacity: 16, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	a, err := e.CreateSnapshot(ctx, "a", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := diffAll(t, e, NoSnapshot, a.ID, 0, 2)
	if want := expectedExtents(written, cs, cs*nc, 0); !reflect.DeepEqual(got, want) {
		t.Fatalf("full diff on a sparse file:\n got %v\nwant %v", got, want)
	}
}
