package client

// chunkCache is the set of origin chunks known to be unique since the
// current generation: the server approved an origin write to them under
// that generation, so no snapshot needs them copied out until the next
// INVALIDATE, and rewrites need not ask again.
//
// It is a sparse bitmap: pages of pageBits chunks, created on first use.
// Memory is bounded by maxPages; when a new page is needed and the cache
// is full, an arbitrary page is dropped. Forgetting is always safe (the
// client merely asks the server again), so eviction needs no care beyond
// staying cheap. Not safe for concurrent use: the Client's mutex guards it.
type chunkCache struct {
	pages    map[uint64]*cachePage
	maxPages int
}

const (
	pageWords = 1024                  // 8 KiB per page
	pageBits  = pageWords * 64        // chunks per page
	pageBytes = pageWords * 8         // memory per page, for the bound
	pageShift = 16                    // log2(pageBits)
	pageMask  = pageBits - 1          // chunk index within its page
	minPages  = 1                     // a cache of zero pages would never hit
	defPages  = (8 << 20) / pageBytes // default: 8 MiB of bitmap
)

type cachePage [pageWords]uint64

func newChunkCache(maxBytes int) *chunkCache {
	n := maxBytes / pageBytes
	if maxBytes <= 0 {
		n = defPages
	}
	if n < minPages {
		n = minPages
	}
	return &chunkCache{pages: make(map[uint64]*cachePage), maxPages: n}
}

func (c *chunkCache) has(chunk uint64) bool {
	p := c.pages[chunk>>pageShift]
	if p == nil {
		return false
	}
	i := chunk & pageMask
	return p[i/64]&(1<<(i%64)) != 0
}

// add records chunks [start, start+count).
func (c *chunkCache) add(start uint64, count uint32) {
	for ch, end := start, start+uint64(count); ch < end; ch++ {
		key := ch >> pageShift
		p := c.pages[key]
		if p == nil {
			if len(c.pages) >= c.maxPages {
				for k := range c.pages { // evict one arbitrary page
					delete(c.pages, k)
					break
				}
			}
			p = new(cachePage)
			c.pages[key] = p
		}
		i := ch & pageMask
		p[i/64] |= 1 << (i % 64)
	}
}

// clear forgets everything (a new generation).
func (c *chunkCache) clear() { clear(c.pages) }

// len returns the number of pages in use (for tests and status).
func (c *chunkCache) len() int { return len(c.pages) }
