package client

import "github.com/csnap/csnap/snapstore/wire"

// locCache holds store locations of read-only snapshots' chunks, as the
// server answered them (never origin answers: those hold only under the
// read lock granted with them). A read-only snapshot's store chunks never
// move while it lives; they are freed only when it is deleted or dropped
// and its space reclaimed, which the server announces with RECLAIM first.
//
// Locations are kept in pages of locPageChunks consecutive chunks of one
// snapshot, created on first use and kept in least-recently-used order;
// memory is bounded by maxPages, the least recently used page going first.
// Forgetting is always safe (the client merely asks the server again).
// Not safe for concurrent use: the Client's mutex guards it.
type locCache struct {
	pages    map[locKey]*locPage
	lru      locPage // sentinel of the LRU ring: lru.next is the most recent
	maxPages int
	chunks   int // locations held

	hits, misses uint64 // reads served from the cache, and not
}

const (
	locPageChunks = 256
	locPageShift  = 8 // log2(locPageChunks)
	// locPageBytes is what a page costs, for the bound: the offsets, the
	// bitmap, the links and the map entry, rounded up.
	locPageBytes   = locPageChunks*8 + 128
	defLocCacheMiB = 8
)

type locKey struct {
	snap uint32
	page uint64 // chunk >> locPageShift
}

type locPage struct {
	key        locKey
	have       [locPageChunks / 64]uint64
	off        [locPageChunks]uint64 // store byte offset of each chunk held
	prev, next *locPage
}

// newLocCache returns a cache bounded by maxBytes (0: the default, 8 MiB;
// negative: nil, no cache).
func newLocCache(maxBytes int) *locCache {
	if maxBytes < 0 {
		return nil
	}
	if maxBytes == 0 {
		maxBytes = defLocCacheMiB << 20
	}
	c := &locCache{pages: make(map[locKey]*locPage), maxPages: max(1, maxBytes/locPageBytes)}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	return c
}

func (c *locCache) unlink(p *locPage) {
	p.prev.next, p.next.prev = p.next, p.prev
}

func (c *locCache) pushFront(p *locPage) {
	p.prev, p.next = &c.lru, c.lru.next
	c.lru.next.prev = p
	c.lru.next = p
}

func (c *locCache) remove(p *locPage) {
	c.unlink(p)
	delete(c.pages, p.key)
	for _, w := range p.have {
		c.chunks -= popcount(w)
	}
}

func popcount(w uint64) int {
	n := 0
	for ; w != 0; w &= w - 1 {
		n++
	}
	return n
}

// lookup returns the store extents of chunks r of snapshot snap if every
// one of them is cached (adjacent chunks adjacent in the store merged), or
// false. It counts a hit or a miss and refreshes the pages it used.
func (c *locCache) lookup(snap uint32, r wire.Range, chunkSize int64) ([]wire.Extent, bool) {
	var xs []wire.Extent
	var p *locPage
	for ch, end := r.Start, r.Start+uint64(r.Count); ch < end; ch++ {
		if p == nil || p.key.page != ch>>locPageShift {
			p = c.pages[locKey{snap, ch >> locPageShift}]
			if p == nil {
				c.misses++
				return nil, false
			}
		}
		i := ch & (locPageChunks - 1)
		if p.have[i/64]&(1<<(i%64)) == 0 {
			c.misses++
			return nil, false
		}
		off := p.off[i]
		if n := len(xs); n > 0 && xs[n-1].StoreOffset+uint64(xs[n-1].Count)*uint64(chunkSize) == off {
			xs[n-1].Count++
			continue
		}
		xs = append(xs, wire.Extent{Start: ch, Count: 1, StoreOffset: off})
	}
	// Refresh the pages used (after the fact: a miss refreshes nothing).
	for pg := r.Start >> locPageShift; pg <= (r.Start+uint64(r.Count)-1)>>locPageShift; pg++ {
		if p := c.pages[locKey{snap, pg}]; p != nil {
			c.unlink(p)
			c.pushFront(p)
		}
	}
	c.hits++
	return xs, true
}

// has reports whether chunk ch of snap is cached (no accounting).
func (c *locCache) has(snap uint32, ch uint64) bool {
	p := c.pages[locKey{snap, ch >> locPageShift}]
	if p == nil {
		return false
	}
	i := ch & (locPageChunks - 1)
	return p.have[i/64]&(1<<(i%64)) != 0
}

// add records the store extent x (Origin false) of snapshot snap.
func (c *locCache) add(snap uint32, x wire.Extent, chunkSize int64) {
	var p *locPage
	for k := uint64(0); k < uint64(x.Count); k++ {
		ch := x.Start + k
		if p == nil || p.key.page != ch>>locPageShift {
			key := locKey{snap, ch >> locPageShift}
			p = c.pages[key]
			if p == nil {
				if len(c.pages) >= c.maxPages {
					c.remove(c.lru.prev) // the least recently used
				}
				p = &locPage{key: key}
				c.pages[key] = p
				c.pushFront(p)
			}
		}
		i := ch & (locPageChunks - 1)
		if p.have[i/64]&(1<<(i%64)) == 0 {
			p.have[i/64] |= 1 << (i % 64)
			c.chunks++
		}
		p.off[i] = x.StoreOffset + k*uint64(chunkSize)
	}
}

// dropSnapshots forgets every location of the snapshots ids.
func (c *locCache) dropSnapshots(ids []uint32) {
	for _, p := range c.pages {
		for _, id := range ids {
			if p.key.snap == id {
				c.remove(p)
				break
			}
		}
	}
}

// clear forgets everything.
func (c *locCache) clear() {
	clear(c.pages)
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	c.chunks = 0
}

// bytes is the memory the cache accounts for.
func (c *locCache) bytes() int { return len(c.pages) * locPageBytes }
