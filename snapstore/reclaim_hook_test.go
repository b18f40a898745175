package snapstore

import (
	"context"
	"testing"
	"time"
)

// TestReadOnlyLocationsStable is the engine property the client's location
// cache rests on: the store location of a read-only snapshot's chunk never
// changes while the snapshot lives, whatever happens to the origin, to
// writable snapshots sharing the chunk, and to other snapshots deleted and
// reclaimed.
func TestReadOnlyLocationsStable(t *testing.T) {
	const cs = 4096
	const n = 16
	od, sd := formatted(t, cs*n, 4<<20, FormatOptions{ChunkSize: cs, JournalBlocks: 256})
	e, err := Open(od, sd, Options{ManualReclaim: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	overwrite := func() {
		t.Helper()
		if _, err := e.PrepareOriginWrite(ctx, 0, n); err != nil {
			t.Fatal(err)
		}
	}
	old, _ := e.CreateSnapshot(ctx, "old", CreateOptions{})
	ro, _ := e.CreateSnapshot(ctx, "ro", CreateOptions{})
	w, _ := e.CreateSnapshot(ctx, "w", CreateOptions{Writable: true})
	overwrite() // one shared exception per chunk: old, ro and w
	want, err := e.MapSnapshotRead(ctx, ro.ID, 0, n)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range want {
		if l.Origin {
			t.Fatalf("chunk %d still on the origin after the copy-out", i)
		}
	}
	check := func(what string) {
		t.Helper()
		got, err := e.MapSnapshotRead(ctx, ro.ID, 0, n)
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("after %s: chunk %d moved from %+v to %+v", what, i, want[i], got[i])
			}
		}
	}
	if _, err := e.PrepareSnapshotWrite(ctx, w.ID, 0, n); err != nil { // w takes private copies
		t.Fatal(err)
	}
	check("writes to a writable snapshot sharing the chunks")
	later, _ := e.CreateSnapshot(ctx, "later", CreateOptions{})
	overwrite()
	check("origin overwrites for a newer snapshot")
	for _, id := range []SnapID{old.ID, w.ID, later.ID} {
		if err := e.DeleteSnapshot(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	check("deleting and reclaiming every other snapshot")
	next, _ := e.CreateSnapshot(ctx, "next", CreateOptions{})
	overwrite() // reuses the space just reclaimed
	check("reuse of the reclaimed space")
	_ = next
}

// TestBeforeReclaimCloseDoesNotHang: a hook that waits is released by
// Close (its context ends) instead of holding Close up.
func TestBeforeReclaimCloseDoesNotHang(t *testing.T) {
	const cs = 4096
	od, sd := formatted(t, cs*16, 4<<20, FormatOptions{ChunkSize: cs, JournalBlocks: 256})
	entered := make(chan []SnapID, 1)
	e, err := Open(od, sd, Options{BeforeReclaim: func(ctx context.Context, ids []SnapID) {
		entered <- ids
		<-ctx.Done()
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, _ := e.CreateSnapshot(ctx, "a", CreateOptions{})
	if err := e.DeleteSnapshot(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case ids := <-entered:
		if len(ids) != 1 || ids[0] != a.ID {
			t.Fatalf("hook saw %v, want [%d]", ids, a.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the background reclaimer did not call the hook")
	}
	done := make(chan error, 1)
	go func() { done <- e.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on a waiting BeforeReclaim")
	}
}

// TestSetBeforeReclaim: the hook installed after Open is the one called,
// and nil removes it.
func TestSetBeforeReclaim(t *testing.T) {
	const cs = 4096
	od, sd := formatted(t, cs*16, 4<<20, FormatOptions{ChunkSize: cs, JournalBlocks: 256})
	e, err := Open(od, sd, Options{ManualReclaim: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	var seen []SnapID
	e.SetBeforeReclaim(func(_ context.Context, ids []SnapID) { seen = append(seen, ids...) })
	a, _ := e.CreateSnapshot(ctx, "a", CreateOptions{})
	b, _ := e.CreateSnapshot(ctx, "b", CreateOptions{})
	if err := e.DeleteSnapshot(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	e.SetBeforeReclaim(nil)
	if err := e.DeleteSnapshot(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.Reclaim(ctx); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0] != a.ID {
		t.Fatalf("hook saw %v, want [%d]", seen, a.ID)
	}
}
