package client

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore/wire"
)

// Snapshot-read location caching (see the package doc, "The location
// cache"). Everything here runs under c.mu unless it says otherwise.

// LocationCacheStats describes the location cache of read-only snapshots.
type LocationCacheStats struct {
	Hits    uint64 // snapshot read batches served without asking the server
	Misses  uint64 // batches of read-only snapshots that asked
	Entries int    // chunk locations held
	Bytes   int    // memory accounted for them
}

// LocationCacheStats returns the location cache's counters (all zero
// without a cache).
func (c *Client) LocationCacheStats() LocationCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loc == nil {
		return LocationCacheStats{}
	}
	return LocationCacheStats{Hits: c.loc.hits, Misses: c.loc.misses, Entries: c.loc.chunks, Bytes: c.loc.bytes()}
}

// cachingLocked reports whether reads of v may use and fill the location
// cache: a read-only snapshot, a cache, and a connection to a server that
// will send RECLAIM before reusing space.
func (c *Client) cachingLocked(v *Volume) bool {
	return c.loc != nil && v.snap != 0 && !v.writable && c.cn != nil && c.proto >= wire.VersionReclaim
}

// leaseLocked returns until when cached locations may be used, and
// whether that is now or later: three ping intervals after the connection
// last received a frame. A server that lost us waits BarrierTimeout (above
// that) before it reuses space without our answer, so a client cut off
// stops using its cache in time. A read from cached locations must also
// finish by then (see snapRead): a client frozen in the middle of one may
// find, when it resumes, that the space was reused meanwhile.
func (c *Client) leaseLocked() (time.Time, bool) {
	if c.cn == nil {
		return time.Time{}, false
	}
	until := time.Unix(0, c.cn.lastRecv.Load()).Add(3 * c.cfg.PingInterval)
	return until, c.cfg.Now().Before(until)
}

// dropLocationsLocked forgets every cached location (connection lost or
// made).
func (c *Client) dropLocationsLocked() {
	c.locEpoch++
	if c.loc != nil {
		c.loc.clear()
	}
}

// cachedLocations returns, if useCache, the store extents of chunks r of
// v if they are all cached and may be used, and until when the read of
// them must have finished (leaseLocked); the read then counts in
// storeReading until storeReadDone. Otherwise it returns the epoch under
// which an answer to a request sent now may be cached.
func (c *Client) cachedLocations(v *Volume, r wire.Range, useCache bool) (xs []wire.Extent, until time.Time, hit bool, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !useCache || !c.cachingLocked(v) {
		return nil, time.Time{}, false, c.locEpoch
	}
	if until, ok := c.leaseLocked(); ok {
		if xs, ok := c.loc.lookup(v.snap, r, c.chunkSize); ok {
			c.storeReading[v.snap]++
			return xs, until, true, 0
		}
	}
	return nil, time.Time{}, false, c.locEpoch
}

// cacheAnswer records the store extents of an answer to a request made
// under epoch, unless locations were dropped since.
func (c *Client) cacheAnswer(v *Volume, epoch uint64, xs []wire.Extent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.locEpoch || !c.cachingLocked(v) {
		return
	}
	for _, x := range xs {
		if !x.Origin {
			c.loc.add(v.snap, x, c.chunkSize)
		}
	}
}

// storeReadDone ends a read counted in storeReading (a cache hit, or an
// answer delivered).
func (c *Client) storeReadDone(snap uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.storeReading[snap]--; c.storeReading[snap] <= 0 {
		delete(c.storeReading, snap)
	}
	c.readsC.Broadcast()
}

// reclaim handles RECLAIM{snaps} from cn (request id id): the locations of
// snaps are forgotten at once (and answers in flight will not be cached:
// the epoch changes); RECLAIM_OK goes out once no read of snaps that may
// be reading the store, and no write of snaps that may be writing it
// (snapWrite), is left. Reads and writes of snaps that start later cannot
// learn a location: the cache has none and the server answers ERROR.
func (c *Client) reclaim(cn *conn, id uint64, snaps []uint32) {
	c.mu.Lock()
	c.locEpoch++
	dropped := 0
	if c.loc != nil {
		before := c.loc.chunks
		c.loc.dropSnapshots(snaps)
		dropped = before - c.loc.chunks
	}
	c.mu.Unlock()
	c.answerWhenDrained(cn, id, &wire.ReclaimOK{}, c.readsC,
		func() bool { return c.readingAnyLocked(snaps) },
		func(waited time.Duration) {
			c.log.WithFields(logrus.Fields{"snapshots": snaps, "dropped": dropped, "waited": waited}).
				Debug("reclaim acknowledged")
		})
}

func (c *Client) readingAnyLocked(snaps []uint32) bool {
	for _, s := range snaps {
		if c.storeReading[s] > 0 {
			return true
		}
	}
	return false
}

// readahead asks, in the background, for the locations of the chunks of v
// after chunk last, unless they are cached (up to half the read-ahead
// window) or being asked for already, so that a sequential pass finds
// them cached. The window is one SNAPSHOT_READ of at most
// LocationReadahead bytes (wire.MaxChunks chunks, the volume end). The read
// lock the server grants with it on the window's origin-mapped chunks is
// released as soon as the answer arrives: nothing reads the origin for it,
// and origin answers are not cached, so no lock is held longer than a
// round trip.
func (v *Volume) readahead(last uint64) {
	c := v.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || !c.cachingLocked(v) || c.cfg.LocationReadahead < 0 {
		return
	}
	ra := uint64(c.cfg.LocationReadahead)
	if ra == 0 {
		ra = 16 << 20
	}
	n := min(max(ra>>c.chunkShift, 1), wire.MaxChunks)
	chunks := uint64((c.volSize + c.chunkSize - 1) >> c.chunkShift)
	from := last + 1
	probe := min(from+n/2, chunks-1)
	if from >= chunks {
		return
	}
	for ; from <= probe && c.loc.has(v.snap, from); from++ {
	}
	if from > probe {
		return // enough is cached ahead
	}
	for _, w := range c.raWin[v.snap] {
		if from >= w.Start && from < w.Start+uint64(w.Count) {
			return // being asked for
		}
	}
	r := wire.Range{Start: from, Count: uint32(min(n, chunks-from))}
	cl, err := c.startLocked(kindSnapRead, &wire.SnapshotRead{Snapshot: v.snap, Ranges: []wire.Range{r}})
	if err != nil {
		return
	}
	c.raWin[v.snap] = append(c.raWin[v.snap], r)
	epoch := c.locEpoch
	deadline := c.cfg.Now().Add(c.cfg.IOTimeout)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		m, err := c.wait(context.Background(), cl, deadline)
		if ok, is := m.(*wire.SnapshotReadOK); err == nil && is {
			if ok.HoldsLock() {
				c.releaseLock(cl.id)
			}
			if wire.CheckExtents(ok.Extents, []wire.Range{r}) == nil {
				c.cacheAnswer(v, epoch, ok.Extents)
			}
			c.storeReadDone(v.snap)
		} else if e, is := m.(*wire.Error); err == nil && is {
			_ = v.snapError(e) // remembers a snapshot gone
		}
		c.mu.Lock()
		ws := c.raWin[v.snap]
		for i, w := range ws {
			if w == r {
				ws = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(c.raWin, v.snap)
		} else {
			c.raWin[v.snap] = ws
		}
		c.mu.Unlock()
	}()
}
