package locks

import (
	"errors"
	"reflect"
	"testing"

	"github.com/csnap/csnap/snapstore/wire"
)

// The server converts wire types to table types with plain conversions;
// this stops compiling if their shapes drift apart.
var (
	_ = Range(wire.Range{})
	_ = ClientID(wire.ClientID{})
)

var (
	alice = ClientID{1}
	bob   = ClientID{2}
)

func rs(start uint64, count uint32) []Range { return []Range{{Start: start, Count: count}} }

// A write waits for locks granted before it and never for later ones, so
// a stream of new readers cannot starve it.
func TestNoStarvation(t *testing.T) {
	tb := New(Limits{})
	must(t, tb.Acquire(Key{alice, 1}, rs(10, 4)))
	ready, err := tb.WaitFor(Key{bob, 100}, rs(12, 1))
	if err != nil || ready {
		t.Fatalf("write over a held chunk: ready %v err %v", ready, err)
	}
	// Readers keep coming (their reads now go to the store copy, but even
	// if they locked the origin chunk the write must not wait for them).
	for i := uint64(2); i < 50; i++ {
		must(t, tb.Acquire(Key{alice, i}, rs(12, 1)))
	}
	if got := tb.Blockers(Key{bob, 100}); !reflect.DeepEqual(got, []Key{{alice, 1}}) {
		t.Fatalf("blockers %v", got)
	}
	got, err := tb.Release(Key{alice, 1})
	if err != nil || !reflect.DeepEqual(got, []Key{{bob, 100}}) {
		t.Fatalf("release: ready %v err %v", got, err)
	}
	// A new write does wait for the locks now held.
	if ready, _ := tb.WaitFor(Key{bob, 101}, rs(12, 1)); ready {
		t.Fatal("second write did not wait for held locks")
	}
	if n := len(tb.Blockers(Key{bob, 101})); n != 48 {
		t.Fatalf("second write waits for %d locks, want 48", n)
	}
}

// ddsnap freed a parked write's state when its client disconnected while a
// reader's release still referred to it. Here the parked write of a
// dropped client is simply never reported, and the reader's release works.
func TestDropClientWithParkedWrite(t *testing.T) {
	tb := New(Limits{})
	must(t, tb.Acquire(Key{alice, 1}, rs(0, 8)))
	if ready, _ := tb.WaitFor(Key{bob, 7}, rs(3, 2)); ready {
		t.Fatal("not parked")
	}
	if ready, _ := tb.WaitFor(Key{alice, 8}, rs(4, 1)); ready {
		t.Fatal("not parked")
	}
	if got := tb.DropClient(bob); got != nil {
		t.Fatalf("dropping the writer reported %v ready", got)
	}
	if tb.Parked(bob) != nil || tb.Usage(bob) != (Usage{}) || len(tb.Clients()) != 1 {
		t.Fatalf("bob left traces: %v %v", tb.Parked(bob), tb.Clients())
	}
	got, err := tb.Release(Key{alice, 1})
	if err != nil || !reflect.DeepEqual(got, []Key{{alice, 8}}) {
		t.Fatalf("release after drop: %v %v", got, err)
	}
	// Dropping the reader instead releases its locks.
	must(t, tb.Acquire(Key{alice, 2}, rs(0, 1)))
	tb.WaitFor(Key{bob, 9}, rs(0, 1))
	if got := tb.DropClient(alice); !reflect.DeepEqual(got, []Key{{bob, 9}}) {
		t.Fatalf("dropping the reader: %v", got)
	}
	if l, w := tb.Len(); l != 0 || w != 0 || len(tb.Clients()) != 0 {
		t.Fatalf("table not empty: %d %d", l, w)
	}
}

// Upload after reconnecting: a lock the table did not know blocks writes
// already parked; a lock it knew keeps its place; undeclared locks go.
func TestUpload(t *testing.T) {
	tb := New(Limits{})
	must(t, tb.Acquire(Key{alice, 1}, rs(0, 1)))
	tb.WaitFor(Key{bob, 50}, rs(0, 10))
	must(t, tb.Acquire(Key{alice, 2}, rs(5, 1))) // later: bob's write ignores it
	ready, err := tb.Upload(alice, []Lock{
		{ID: 2, Ranges: rs(5, 1)}, // kept as is
		{ID: 3, Ranges: rs(9, 1)}, // new: bob's write must wait for it
	}) // lock 1 not declared: released
	if err != nil || ready != nil {
		t.Fatalf("upload: ready %v err %v", ready, err)
	}
	if got := tb.Blockers(Key{bob, 50}); !reflect.DeepEqual(got, []Key{{alice, 3}}) {
		t.Fatalf("blockers after upload %v", got)
	}
	if _, err := tb.Upload(alice, []Lock{{ID: 4, Ranges: rs(0, 1)}, {ID: 4, Ranges: rs(1, 1)}}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate id: %v", err)
	}
	if got := tb.Held(alice); len(got) != 2 {
		t.Fatalf("failed upload changed the table: %v", got)
	}
	ready, err = tb.Upload(alice, nil)
	if err != nil || !reflect.DeepEqual(ready, []Key{{bob, 50}}) {
		t.Fatalf("empty upload: %v %v", ready, err)
	}
}

// A write over a range far larger than the index walks the index instead.
func TestHugeWrite(t *testing.T) {
	tb := New(Limits{})
	must(t, tb.Acquire(Key{alice, 1}, rs(1<<40, 1)))
	if ready, _ := tb.WaitFor(Key{bob, 1}, rs(0, 1<<32-1)); !ready {
		t.Fatal("write below the lock waited")
	}
	if ready, _ := tb.WaitFor(Key{bob, 2}, rs(1<<40-5, 1<<32-1)); ready {
		t.Fatal("write over the lock did not wait")
	}
}

func TestLimits(t *testing.T) {
	tb := New(Limits{MaxLocks: 2, MaxChunks: 10, MaxWrites: 1, MaxRanges: 2})
	must(t, tb.Acquire(Key{alice, 1}, rs(0, 6)))
	if err := tb.Acquire(Key{alice, 2}, rs(0, 5)); !errors.Is(err, ErrLimit) {
		t.Fatalf("chunks: %v", err)
	}
	must(t, tb.Acquire(Key{alice, 2}, rs(0, 4)))
	if err := tb.Acquire(Key{alice, 3}, rs(0, 1)); !errors.Is(err, ErrLimit) {
		t.Fatalf("locks: %v", err)
	}
	if err := tb.Acquire(Key{bob, 1}, []Range{{0, 1}, {2, 1}, {4, 1}}); !errors.Is(err, ErrLimit) {
		t.Fatalf("ranges: %v", err)
	}
	if err := tb.Acquire(Key{alice, 1}, rs(0, 1)); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := tb.WaitFor(Key{bob, 1}, rs(0, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.WaitFor(Key{bob, 2}, rs(0, 1)); !errors.Is(err, ErrLimit) {
		t.Fatalf("writes: %v", err)
	}
	if _, err := tb.Release(Key{bob, 9}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown release: %v", err)
	}
	for _, bad := range [][]Range{nil, {{1, 0}}, {{^uint64(0), 1}}, {{5, 2}, {6, 1}}} {
		if err := tb.Acquire(Key{bob, 5}, bad); !errors.Is(err, ErrBadRange) {
			t.Errorf("ranges %v: %v", bad, err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
