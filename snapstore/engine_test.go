package snapstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func formatted(t testing.TB, originSize, storeSize int64, fo FormatOptions) (*MemDevice, *MemDevice) {
	t.Helper()
	od, sd := NewMemDevice(originSize), NewMemDevice(storeSize)
	if err := Format(od, sd, fo); err != nil {
		t.Fatal(err)
	}
	return od, sd
}

func TestBadInput(t *testing.T) {
	od, sd := formatted(t, 1<<20, 8<<20, FormatOptions{ChunkSize: 8192, JournalBlocks: 256})
	image := append([]byte(nil), sd.buf...)
	try := func(name string, origin, store *MemDevice, o Options, want error) {
		t.Helper()
		before := append([]byte(nil), store.buf...)
		_, err := Open(origin, store, o)
		if !errors.Is(err, want) {
			t.Errorf("%s: got %v, want %v", name, err, want)
		} else {
			t.Logf("%s: %v", name, err)
		}
		if !bytes.Equal(before, store.buf) {
			t.Errorf("%s: the failed open wrote to the store", name)
		}
	}
	try("zeroes", od, NewMemDevice(8<<20), Options{}, ErrNotStore)
	garbage := NewMemDevice(8 << 20)
	rand.New(rand.NewSource(1)).Read(garbage.buf)
	try("garbage", od, garbage, Options{}, ErrNotStore)
	try("chunk size", od, sd, Options{ChunkSize: 65536}, ErrChunkSize)
	short := NewMemDevice(4 << 20)
	copy(short.buf, image)
	try("truncated store", od, short, Options{}, ErrTruncated)
	try("truncated origin", NewMemDevice(1<<19), sd, Options{}, ErrTruncated)
	newer := NewMemDevice(8 << 20)
	copy(newer.buf, image)
	for slot := 0; slot < 2; slot++ {
		b := newer.buf[slot*BlockSize : (slot+1)*BlockSize]
		b[5] = FormatVersion + 1
		sealBlock(b)
	}
	try("newer version", od, newer, Options{}, ErrVersion)
	both := NewMemDevice(8 << 20)
	copy(both.buf, image)
	both.buf[100] ^= 1
	both.buf[BlockSize+100] ^= 1
	try("both superblocks corrupt", od, both, Options{}, ErrCorrupt)

	// One damaged superblock copy: the other is used.
	one := NewMemDevice(8 << 20)
	copy(one.buf, image)
	one.buf[BlockSize+100] ^= 1
	e, err := Open(od, one, Options{})
	if err != nil {
		t.Fatalf("open with one damaged superblock copy: %v", err)
	}
	if r, err := e.Check(context.Background(), nil); err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
	e.Close()

	// A corrupt tree node is reported by check and by the operation.
	e, err = Open(od, sd, Options{ManualReclaim: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := e.CreateSnapshot(ctx, "a", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PrepareOriginWrite(ctx, 3, 2); err != nil {
		t.Fatal(err)
	}
	root := e.st.root
	e.Close()
	sd.buf[root*BlockSize+200] ^= 0xff
	e, err = Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.Check(ctx, nil)
	if err != nil || r.Clean() {
		t.Fatalf("check of a corrupt node: %v, problems %v", err, r.Problems)
	}
	t.Logf("check reports: %v", r.Problems)
	_, err = e.MapSnapshotRead(ctx, 1, 3, 1)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read through a corrupt node: %v", err)
	}
}

func TestFileDevice(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, size int64) *FileDevice {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		d, err := OpenFile(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	od, sd := mk("origin", 4<<20), mk("store", 16<<20)
	if err := Format(od, sd, FormatOptions{}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	old := bytes.Repeat([]byte{7}, DefaultChunkSize)
	od.WriteAt(old, 0)
	si, err := e.CreateSnapshot(ctx, "one", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.PrepareOriginWrite(ctx, 0, 1); err != nil {
		t.Fatal(err)
	}
	od.WriteAt(bytes.Repeat([]byte{9}, DefaultChunkSize), 0)
	if err := e.SetEpoch(ctx, 42); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err = Open(od, sd, Options{ChunkSize: DefaultChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Epoch() != 42 {
		t.Fatalf("epoch %d", e.Epoch())
	}
	locs, err := e.MapSnapshotRead(ctx, si.ID, 0, 1)
	if err != nil || locs[0].Origin {
		t.Fatalf("map: %v %+v", err, locs)
	}
	got := make([]byte, DefaultChunkSize)
	sd.ReadAt(got, locs[0].Offset)
	if !bytes.Equal(got, old) {
		t.Fatal("snapshot data wrong after reopen")
	}
}

// TestManySnapshots takes 4096 live snapshots, each after writes, and
// checks that a copy-out is one chunk regardless, that reads are right,
// and that the store checks clean.
func TestManySnapshots(t *testing.T) {
	n := 4096
	if testing.Short() {
		n = 1024
	}
	const cs = 4096
	const chunks = 64
	od, sd := formatted(t, cs*chunks, 64<<20, FormatOptions{ChunkSize: cs})
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	rng := rand.New(rand.NewSource(3))
	// Chunk 0 is rewritten before every snapshot: one exception each.
	// Other chunks are written rarely: long shared ranges.
	val := func(i int) []byte { return bytes.Repeat([]byte{byte(i), byte(i >> 8)}, cs/2) }
	for i := 1; i <= n; i++ {
		before := e.Stats().CopyOuts
		if _, err := e.PrepareOriginWrite(ctx, 0, 1); err != nil {
			t.Fatal(err)
		}
		if i > 1 && e.Stats().CopyOuts != before+1 {
			t.Fatalf("snapshot %d: copy-out of one chunk did %d copies", i, e.Stats().CopyOuts-before)
		}
		od.WriteAt(val(i), 0)
		if i%97 == 0 {
			c := uint64(1 + rng.Intn(chunks-1))
			if _, err := e.PrepareOriginWrite(ctx, c, 1); err != nil {
				t.Fatal(err)
			}
			od.WriteAt(val(-i), int64(c)*cs)
		}
		if _, err := e.CreateSnapshot(ctx, fmt.Sprintf("s%d", i), CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(e.Snapshots()); got != n {
		t.Fatalf("%d snapshots listed", got)
	}
	for _, id := range []SnapID{1, 2, SnapID(n / 2), SnapID(n - 1), SnapID(n)} {
		locs, err := e.MapSnapshotRead(ctx, id, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, cs)
		if locs[0].Origin {
			od.ReadAt(got, 0)
		} else {
			sd.ReadAt(got, locs[0].Offset)
		}
		if !bytes.Equal(got, val(int(id))) {
			t.Fatalf("snapshot %d chunk 0 wrong", id)
		}
	}
	r, err := e.Check(ctx, nil)
	if err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems[:min(10, len(r.Problems))])
	}
	// Delete half of them in the background and check again.
	for id := 1; id <= n; id += 2 {
		if err := e.DeleteSnapshot(ctx, SnapID(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	r, err = e.Check(ctx, nil)
	if err != nil || !r.Clean() {
		t.Fatalf("check after deletes: %v %v", err, r.Problems[:min(10, len(r.Problems))])
	}
}

// TestConcurrent runs writers, readers, snapshot creates and deletes at
// once (go test -race), with the server-side barrier the engine expects
// around snapshot creation, and verifies every snapshot at the end.
func TestConcurrent(t *testing.T) {
	t.Run("roomy", func(t *testing.T) {
		testConcurrent(t, 32<<20, FormatOptions{ChunkSize: 4096, JournalBlocks: 512})
	})
	// A store that fills up: snapshots are dropped while writers run.
	t.Run("full", func(t *testing.T) {
		testConcurrent(t, 2<<20, FormatOptions{ChunkSize: 4096, JournalBlocks: 256, TableCapacity: 64, metaBlocks: 64})
	})
}

func testConcurrent(t *testing.T, storeSize int64, fo FormatOptions) {
	const cs = 4096
	const chunks = 128
	const writers = 6
	od, sd := formatted(t, cs*chunks, storeSize, fo)
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var barrier sync.RWMutex // writers: RLock around prepare+write; create: Lock
	var omu sync.Mutex
	origin := make([]byte, cs*chunks)
	snaps := map[SnapID][]byte{}
	var wg sync.WaitGroup
	var nWrites atomic.Int64
	stop := make(chan struct{})
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			buf := make([]byte, cs)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := uint64(rng.Intn(chunks/writers)*writers + w) // chunks owned by this writer
				rng.Read(buf)
				barrier.RLock()
				if _, err := e.PrepareOriginWrite(ctx, c, 1); err != nil {
					t.Error(err)
					barrier.RUnlock()
					return
				}
				od.WriteAt(buf, int64(c)*cs)
				omu.Lock()
				copy(origin[c*cs:], buf)
				omu.Unlock()
				barrier.RUnlock()
				nWrites.Add(1)
			}
		}(w)
	}
	// reader: reads random snapshots under holds
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewSource(99))
		for {
			select {
			case <-stop:
				return
			default:
			}
			omu.Lock()
			var ids []SnapID
			for id := range snaps {
				ids = append(ids, id)
			}
			omu.Unlock()
			if len(ids) == 0 {
				continue
			}
			id := ids[rng.Intn(len(ids))]
			c := uint64(rng.Intn(chunks))
			locs, err := e.MapSnapshotReadHold(ctx, id, c, 1)
			if errors.Is(err, ErrNoSuchSnapshot) || errors.Is(err, ErrSnapshotDropped) {
				continue
			}
			if err != nil {
				t.Error(err)
				return
			}
			got := make([]byte, cs)
			if locs[0].Origin {
				od.ReadAt(got, locs[0].Offset)
				e.ReleaseOriginRead(c)
			} else {
				sd.ReadAt(got, locs[0].Offset)
			}
			omu.Lock()
			want, ok := snaps[id]
			omu.Unlock()
			if si, err := e.Snapshot(id); err != nil || si.State != StateLive {
				continue // dropped meanwhile: its chunks may have been reused
			}
			if ok && !bytes.Equal(got, want[c*cs:(c+1)*cs]) {
				t.Errorf("snapshot %d chunk %d differs during concurrent run", id, c)
				return
			}
		}
	}()
	for i := 0; i < 40; i++ {
		for w0 := nWrites.Load(); nWrites.Load() < w0+20 && !t.Failed(); {
			time.Sleep(100 * time.Microsecond) // let the writers work between snapshots
		}
		barrier.Lock()
		omu.Lock()
		img := append([]byte(nil), origin...)
		omu.Unlock()
		si, err := e.CreateSnapshot(ctx, fmt.Sprintf("c%d", i), CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		omu.Lock()
		snaps[si.ID] = img
		omu.Unlock()
		barrier.Unlock()
		if i%3 == 2 {
			omu.Lock()
			var victim SnapID
			for id := range snaps {
				victim = id
				break
			}
			delete(snaps, victim)
			omu.Unlock()
			if err := e.DeleteSnapshot(ctx, victim); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	dropped := 0
	for id, want := range snaps {
		locs, err := e.MapSnapshotRead(ctx, id, 0, chunks)
		if errors.Is(err, ErrSnapshotDropped) {
			dropped++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, cs)
		for c, l := range locs {
			if l.Origin {
				od.ReadAt(got, l.Offset)
			} else {
				sd.ReadAt(got, l.Offset)
			}
			if !bytes.Equal(got, want[c*cs:(c+1)*cs]) {
				t.Fatalf("snapshot %d chunk %d differs", id, c)
			}
		}
	}
	r, err := e.Check(ctx, nil)
	if err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
	st := e.Stats()
	t.Logf("stats: %+v (copy-outs per commit %.1f), %d snapshots dropped", st, float64(st.CopyOuts)/float64(max(1, st.Commits)), dropped)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestHooksAndAdmin covers BeforeReclaim, events, priorities, lookups,
// generation and the snapshot-write error cases.
func TestHooksAndAdmin(t *testing.T) {
	const cs = 4096
	od, sd := formatted(t, cs*16, 4<<20, FormatOptions{ChunkSize: cs, JournalBlocks: 256})
	var mu sync.Mutex
	var hooked []SnapID
	var events []Event
	e, err := Open(od, sd, Options{
		ManualReclaim: true,
		BeforeReclaim: func(_ context.Context, ids []SnapID) { mu.Lock(); hooked = append(hooked, ids...); mu.Unlock() },
		OnEvent:       func(ev Event) { mu.Lock(); events = append(events, ev); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	if e.Generation() != 0 {
		t.Fatal("generation of an empty store")
	}
	a, _ := e.CreateSnapshot(ctx, "a", CreateOptions{Priority: 5})
	ro, _ := e.CreateSnapshot(ctx, "ro", CreateOptions{})
	if e.Generation() != uint64(ro.ID) {
		t.Fatalf("generation %d after creating %d", e.Generation(), ro.ID)
	}
	if _, err := e.CreateSnapshot(ctx, "a", CreateOptions{}); !errors.Is(err, ErrSnapshotExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	if _, err := e.CreateSnapshot(ctx, "Bad_Name", CreateOptions{}); !errors.Is(err, ErrBadName) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := e.PrepareSnapshotWrite(ctx, ro.ID, 0, 1); !errors.Is(err, ErrReadOnlySnapshot) {
		t.Fatalf("write to read-only snapshot: %v", err)
	}
	if _, err := e.PrepareOriginWrite(ctx, 16, 1); !errors.Is(err, ErrRange) {
		t.Fatalf("write beyond origin: %v", err)
	}
	if err := e.SetPriority(ctx, ro.ID, -3); err != nil {
		t.Fatal(err)
	}
	if si, err := e.Lookup("ro"); err != nil || si.Priority != -3 {
		t.Fatalf("lookup: %+v %v", si, err)
	}
	gen, err := e.PrepareOriginWrite(ctx, 0, 4)
	if err != nil || gen != uint64(ro.ID) {
		t.Fatalf("prepare: gen %d err %v", gen, err)
	}
	if err := e.DeleteSnapshot(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.MapSnapshotRead(ctx, a.ID, 0, 1); !errors.Is(err, ErrNoSuchSnapshot) {
		t.Fatalf("read of deleted snapshot: %v", err)
	}
	if err := e.DeleteSnapshot(ctx, a.ID); !errors.Is(err, ErrNoSuchSnapshot) {
		t.Fatalf("second delete: %v", err)
	}
	if !e.Reclaiming() {
		t.Fatal("nothing to reclaim after delete")
	}
	if err := e.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(hooked) != 1 || hooked[0] != a.ID {
		t.Fatalf("BeforeReclaim saw %v", hooked)
	}
	var kinds []EventKind
	for _, ev := range events {
		kinds = append(kinds, ev.Kind)
	}
	mu.Unlock()
	if len(kinds) == 0 || kinds[len(kinds)-1] != EventReclaimed {
		t.Fatalf("events %v", kinds)
	}
	if _, err := e.Snapshot(a.ID); !errors.Is(err, ErrNoSuchSnapshot) {
		t.Fatalf("reclaimed snapshot still listed: %v", err)
	}
	// Fill the store: the lowest priority snapshot ("ro", -3) is dropped
	// before "b" (0).
	b, _ := e.CreateSnapshot(ctx, "b", CreateOptions{})
	for i := 0; i < 2000 && !e.mustDropped(t, ro.ID); i++ {
		c := uint64(i % 16)
		if _, err := e.PrepareOriginWrite(ctx, c, 1); err != nil {
			t.Fatal(err)
		}
		od.WriteAt([]byte{byte(i)}, int64(c)*cs)
		if i%16 == 15 {
			if _, err := e.CreateSnapshot(ctx, fmt.Sprintf("f%d", i), CreateOptions{Priority: 1}); err != nil && !errors.Is(err, ErrTableFull) {
				t.Fatal(err)
			}
		}
	}
	if !e.mustDropped(t, ro.ID) {
		t.Fatal("store never filled up")
	}
	if si, _ := e.Snapshot(b.ID); si.State != StateLive {
		t.Fatal("b (priority 0) dropped along with ro (priority -3)")
	}
	if _, err := e.MapSnapshotRead(ctx, ro.ID, 0, 1); !errors.Is(err, ErrSnapshotDropped) {
		t.Fatalf("read of dropped snapshot: %v", err)
	}
	if e.Stats().Drops == 0 {
		t.Fatal("drop not counted")
	}
	if err := e.DeleteSnapshot(ctx, ro.ID); err != nil {
		t.Fatalf("delete dropped snapshot: %v", err)
	}
	if r, err := e.Check(ctx, nil); err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
}

func (e *Engine) mustDropped(t *testing.T, id SnapID) bool {
	si, err := e.Snapshot(id)
	return err == nil && si.State == StateDropped
}

// TestLayoutLarge checks the layout arithmetic for a 256 TiB store with
// 4 KiB and 64 KiB chunks (formatting one is too slow for a unit test).
func TestLayoutLarge(t *testing.T) {
	storeBlocks := uint64(256<<40) / BlockSize
	for _, cs := range []uint64{4096, 65536, 1 << 20} {
		cpb := cs / BlockSize
		L, ok := computeLayout(storeBlocks, cpb, 8192, 16384, 0)
		if !ok {
			t.Fatalf("chunk %d: no layout", cs)
		}
		sb := superblock{chunkSize: uint32(cs), storeSize: storeBlocks * BlockSize, tableCap: 8192, tableStart: 3,
			tableBlocks: L.tableBlocks, journalStart: 3 + L.tableBlocks, journalBlocks: L.journalBlocks,
			dbmStart: 3 + L.tableBlocks + L.journalBlocks, dbmBlocks: L.dbm,
			mbmStart: 3 + L.tableBlocks + L.journalBlocks + L.dbm, mbmBlocks: L.mbm,
			metaStart: L.metaStart, metaBlocks: L.metaBlocks, dataStart: L.dataStart, dataChunks: L.dataChunks, stateAddr: 2}
		if err := sb.validate(); err != nil {
			t.Fatalf("chunk %d: %v", cs, err)
		}
		overhead := float64(storeBlocks-L.dataChunks*cpb) / float64(storeBlocks)
		t.Logf("chunk %7d: %d data chunks, %d metadata blocks, overhead %.2f%%", cs, L.dataChunks, L.metaBlocks, 100*overhead)
		if overhead > 0.05 {
			t.Fatalf("chunk %d: metadata overhead %.1f%%", cs, 100*overhead)
		}
	}
}

// TestDeleteMany deletes far more snapshots at once than one reclamation
// pass takes, on a store with the smallest journal.
func TestDeleteMany(t *testing.T) {
	od, sd := formatted(t, 4096*32, 8<<20, FormatOptions{ChunkSize: 4096, JournalBlocks: 256, TableCapacity: 5000})
	e, err := Open(od, sd, Options{ManualReclaim: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	for i := 0; i < 4500; i++ {
		if _, err := e.CreateSnapshot(ctx, fmt.Sprintf("s%d", i), CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			if _, err := e.PrepareOriginWrite(ctx, uint64(i%32), 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, si := range e.Snapshots() {
		if err := e.DeleteSnapshot(ctx, si.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.Snapshots()); n != 0 {
		t.Fatalf("%d snapshots left", n)
	}
	st := e.Stats()
	if st.Exceptions != 0 || st.FreeChunks != st.DataChunks {
		t.Fatalf("space not reclaimed: %+v", st)
	}
	if r, err := e.Check(ctx, nil); err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
}

// TestInspect reads a store's identity without opening it, and tells a
// device holding no store apart.
func TestInspect(t *testing.T) {
	od, sd := formatted(t, 1<<20, 8<<20, FormatOptions{ChunkSize: 8192, JournalBlocks: 256})
	info, err := Inspect(sd)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if info.UUID != e.UUID() || info.ChunkSize != 8192 || info.OriginSize != 1<<20 {
		t.Fatalf("Inspect = %+v; engine: uuid %x, chunk %d", info, e.UUID(), e.ChunkSize())
	}
	if _, err := Inspect(NewMemDevice(8 << 20)); !errors.Is(err, ErrNotStore) {
		t.Fatalf("Inspect of zeroes: %v, want ErrNotStore", err)
	}
}

// dataWrites counts writes to the data area of a store device.
type dataWrites struct {
	*MemDevice
	from  int64 // first byte of the data area
	count atomic.Int64
}

func (d *dataWrites) WriteAt(p []byte, off int64) (int, error) {
	if off >= d.from {
		d.count.Add(1)
	}
	return d.MemDevice.WriteAt(p, off)
}

// TestCopyOutRuns: a multi-chunk origin write copies each run of adjacent
// chunks with one store write (runs break where a chunk needs no copy and
// at copyRunBytes), the origin's partial last chunk is copied with a zero
// tail, and the snapshot reads back the old data.
func TestCopyOutRuns(t *testing.T) {
	const cs = 8192
	const chunks = 200 // 1.6 MiB: more than one run of copyRunBytes
	osize := int64(cs*chunks - cs/2)
	od, sd := formatted(t, osize, 8<<20, FormatOptions{ChunkSize: cs})
	rng := rand.New(rand.NewSource(5))
	old := make([]byte, osize)
	rng.Read(old)
	od.WriteAt(old, 0)
	probe, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	from := int64(probe.sb.dataStart) * BlockSize
	probe.Close()
	store := &dataWrites{MemDevice: sd, from: from}
	e, err := Open(od, store, Options{ManualReclaim: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	if _, err := e.CreateSnapshot(ctx, "s", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PrepareOriginWrite(ctx, 5, 1); err != nil {
		t.Fatal(err)
	}
	store.count.Store(0)
	if _, err := e.PrepareOriginWrite(ctx, 0, chunks); err != nil {
		t.Fatal(err)
	}
	// Chunks 0-4, then 6-133 (128 chunks of 8 KiB = copyRunBytes), then
	// 134-199.
	if got := store.count.Load(); got != 3 {
		t.Errorf("%d data writes for 3 runs", got)
	}
	if got := e.Stats().CopyOuts; got != chunks {
		t.Errorf("%d copy-outs, want %d", got, chunks)
	}
	od.WriteAt(make([]byte, osize), 0) // the origin changes; the snapshot must not
	locs, err := e.MapSnapshotRead(ctx, 1, 0, chunks)
	if err != nil {
		t.Fatal(err)
	}
	for c, l := range locs {
		if l.Origin {
			t.Fatalf("chunk %d still on the origin", c)
		}
		got := make([]byte, cs)
		sd.ReadAt(got, l.Offset)
		want := make([]byte, cs)
		copy(want, old[c*cs:])
		if !bytes.Equal(got, want) {
			t.Fatalf("snapshot chunk %d differs", c)
		}
	}
	r, err := e.Check(ctx, nil)
	if err != nil || !r.Clean() {
		t.Fatalf("check: %v %v", err, r.Problems)
	}
}
