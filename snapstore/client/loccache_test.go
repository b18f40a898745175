package client

import (
	"testing"

	"github.com/csnap/csnap/snapstore/wire"
)

func TestLocCacheLookupMerges(t *testing.T) {
	const cs = 4096
	c := newLocCache(1 << 20)
	if _, ok := c.lookup(1, wire.Range{Start: 0, Count: 1}, cs); ok {
		t.Fatal("hit in an empty cache")
	}
	c.add(1, wire.Extent{Start: 250, Count: 10, StoreOffset: 1 << 20}, cs) // spans two pages
	c.add(1, wire.Extent{Start: 260, Count: 2, StoreOffset: 5 << 20}, cs)
	xs, ok := c.lookup(1, wire.Range{Start: 252, Count: 10}, cs)
	want := []wire.Extent{{Start: 252, Count: 8, StoreOffset: 1<<20 + 2*cs}, {Start: 260, Count: 2, StoreOffset: 5 << 20}}
	if !ok || len(xs) != len(want) || xs[0] != want[0] || xs[1] != want[1] {
		t.Fatalf("lookup: %v %+v, want %+v", ok, xs, want)
	}
	if _, ok := c.lookup(1, wire.Range{Start: 252, Count: 11}, cs); ok {
		t.Fatal("hit with chunk 262 not cached")
	}
	if _, ok := c.lookup(2, wire.Range{Start: 252, Count: 1}, cs); ok {
		t.Fatal("hit for another snapshot")
	}
	if c.hits != 1 || c.misses != 3 || c.chunks != 12 || len(c.pages) != 2 {
		t.Fatalf("hits %d misses %d chunks %d pages %d", c.hits, c.misses, c.chunks, len(c.pages))
	}
	c.add(1, wire.Extent{Start: 250, Count: 1, StoreOffset: 9 << 20}, cs) // replaced, not counted twice
	if xs, _ := c.lookup(1, wire.Range{Start: 250, Count: 1}, cs); xs[0].StoreOffset != 9<<20 || c.chunks != 12 {
		t.Fatalf("replace: %+v, %d chunks", xs, c.chunks)
	}
}

func TestLocCacheBoundAndLRU(t *testing.T) {
	const cs = 4096
	c := newLocCache(3 * locPageBytes)
	if c.maxPages != 3 {
		t.Fatalf("max pages %d", c.maxPages)
	}
	page := func(p uint64) wire.Extent {
		return wire.Extent{Start: p * locPageChunks, Count: locPageChunks, StoreOffset: p << 30}
	}
	for p := uint64(0); p < 3; p++ {
		c.add(7, page(p), cs)
	}
	c.lookup(7, wire.Range{Start: 0, Count: 1}, cs) // page 0 is now the most recent
	c.add(7, page(3), cs)                           // evicts page 1, the least recent
	if !c.has(7, 0) || c.has(7, locPageChunks) || !c.has(7, 2*locPageChunks) || !c.has(7, 3*locPageChunks) {
		t.Fatal("wrong page evicted")
	}
	if len(c.pages) != 3 || c.bytes() != 3*locPageBytes || c.chunks != 3*locPageChunks {
		t.Fatalf("%d pages, %d bytes, %d chunks", len(c.pages), c.bytes(), c.chunks)
	}
	for i := uint64(0); i < 100; i++ { // many pages through a small cache
		c.add(uint32(i%5), page(i), cs)
		if len(c.pages) > 3 {
			t.Fatalf("%d pages over the bound", len(c.pages))
		}
	}
	if newLocCache(-1) != nil {
		t.Fatal("a negative bound makes a cache")
	}
	if d := newLocCache(0); d.maxPages != (8<<20)/locPageBytes {
		t.Fatalf("default: %d pages", d.maxPages)
	}
	if d := newLocCache(1); d.maxPages != 1 {
		t.Fatalf("tiny: %d pages", d.maxPages)
	}
}

func TestLocCacheDropSnapshots(t *testing.T) {
	const cs = 4096
	c := newLocCache(1 << 20)
	for s := uint32(1); s <= 4; s++ {
		c.add(s, wire.Extent{Start: 0, Count: 600, StoreOffset: uint64(s) << 30}, cs)
	}
	c.dropSnapshots([]uint32{2, 4})
	for s := uint32(1); s <= 4; s++ {
		_, ok := c.lookup(s, wire.Range{Start: 0, Count: 600}, cs)
		if ok != (s == 1 || s == 3) {
			t.Fatalf("snapshot %d: cached %v after dropping 2 and 4", s, ok)
		}
	}
	if c.chunks != 1200 || len(c.pages) != 6 {
		t.Fatalf("%d chunks, %d pages", c.chunks, len(c.pages))
	}
	c.clear()
	if c.chunks != 0 || len(c.pages) != 0 || c.has(1, 0) {
		t.Fatal("clear left locations")
	}
	c.add(1, wire.Extent{Start: 0, Count: 1}, cs) // the LRU ring still works
	if !c.has(1, 0) {
		t.Fatal("add after clear")
	}
}
