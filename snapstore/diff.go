package snapstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// Changed-block queries.
//
// Diff answers "which byte ranges of snapshot TO may differ from snapshot
// FROM" from the exception tree alone, so its cost grows with the number
// of exceptions (and, for a full diff, of the origin's data extents), never
// with the volume size.
//
// Where a snapshot s's chunk c lives (as MapSnapshotRead resolves it): its
// private exception for c if s is writable and has one, else the shared
// exception whose range [lo, hi] holds s, else the origin. Two snapshots
// read the same bytes at c when they resolve to the same place: both to
// the origin (nobody wrote c after either was taken) or both to one
// exception (one copy serves both). When they resolve to different places,
// c was written after the older one was taken (an origin write copied it
// out for one of them, or a writable snapshot wrote its private copy), and
// Diff reports c, although the bytes written may happen to be the same.
// So the answer is exact with respect to writes, and chunks without any
// exception are never reported: their cost is zero.
//
// A full diff (FROM = NoSnapshot) reports every chunk of TO that may hold
// non-zero data. The engine does not track which origin chunks were ever
// written (clients write the origin themselves), so it asks the origin
// device: a device implementing DataExtents (FileDevice on Linux: a sparse
// file's holes via SEEK_DATA/SEEK_HOLE) reports where it holds data, and
// the chunks TO still shares with the origin are reported only where the
// origin holds data. Chunks TO has in the store (copied-out or private)
// are always reported. On a device that cannot tell (a block device, a
// MemDevice), every chunk may hold data and a full diff is the whole
// volume: a sender then skips the chunks that read as all zero itself.
// Origin holes that are not chunk aligned are rounded out to whole chunks.

// NoSnapshot as Diff's FROM asks for a full diff: every chunk of TO that
// may hold non-zero data.
const NoSnapshot SnapID = 0

// Origin as Diff's FROM or TO stands for the origin as it is now: Diff(s,
// Origin) is where the origin may differ from snapshot s, i.e. the chunks
// s no longer shares with the origin (written on the origin since s was
// taken, or privately in s). It is never a snapshot id (ids stop below it).
const Origin SnapID = ^SnapID(0)

// DefaultDiffLimit is the number of extents Diff returns when limit <= 0.
const DefaultDiffLimit = 4096

// diffBatch bounds the exceptions one critical section of Diff visits
// (whole chunks are always finished, so a chunk with more exceptions than
// this is still read in one go).
const diffBatch = 4096

// Extent is a byte range [Offset, Offset+Length) of a volume.
type Extent struct {
	Offset int64
	Length int64
}

// End returns Offset + Length.
func (x Extent) End() int64 { return x.Offset + x.Length }

// DataExtents is implemented by devices that know where they hold data
// (the rest reads as zeros, never written or discarded). NextData returns
// the first range [start, end) at or after off that may hold data; ok is
// false when none remains below the device's end. A device that cannot
// tell for this particular device returns an error wrapping
// ErrNoExtentInfo, and the caller assumes data everywhere.
type DataExtents interface {
	NextData(off int64) (start, end int64, ok bool, err error)
}

// Diff returns the byte ranges where snapshot to may differ from snapshot
// from (both live; either may be writable, its private chunks included;
// any order), or, with from == NoSnapshot, where to may hold non-zero data
// (see above); either may be Origin (the origin now). Extents are maximal (adjacent changed chunks merged), in
// offset order, start at or after offset (the first one is clipped to
// it), and end at most at the origin size. At most limit extents are
// returned (DefaultDiffLimit if limit <= 0); next is the offset to pass to
// continue, or -1 when nothing follows.
//
// Diff holds the engine lock for bounded batches of the tree walk. Origin
// writes in between do not change the answer (a copy-out gives every
// snapshot sharing the origin chunk one common copy); writes to a writable
// from or to made meanwhile may or may not be seen, as with any read.
func (e *Engine) Diff(ctx context.Context, from, to SnapID, offset int64, limit int) (exts []Extent, next int64, err error) {
	if limit <= 0 {
		limit = DefaultDiffLimit
	}
	size := int64(e.sb.originSize)
	if offset < 0 {
		return nil, -1, fmt.Errorf("diff %d..%d: negative offset %d", from, to, offset)
	}
	if offset >= size {
		// Still validate the snapshots, so a bad id is not answered "empty".
		if _, err := e.diffBatch(from, to, 0, nil); err != nil {
			return nil, -1, err
		}
		return nil, -1, nil
	}
	var dev DataExtents
	if from == NoSnapshot {
		dev, _ = e.origin.(DataExtents)
	}
	b := extentBuilder{cs: e.cs, size: size, limit: limit}
	pos := uint64(offset / e.cs)
	var runs []chunkRun
	for pos < e.originChunks && !b.full() {
		if err := ctx.Err(); err != nil {
			return nil, -1, err
		}
		runs = runs[:0]
		upTo, err := e.diffBatch(from, to, pos, &runs)
		if err != nil {
			return nil, -1, err
		}
		if from == NoSnapshot {
			if runs, dev, upTo, err = e.addDataRuns(runs, dev, pos, upTo, limit); err != nil {
				return nil, -1, err
			}
		}
		for _, r := range runs {
			if !b.add(r) {
				break
			}
		}
		pos = upTo
	}
	exts, next = b.result()
	if len(exts) > 0 && exts[0].Offset < offset {
		exts[0].Length -= offset - exts[0].Offset
		exts[0].Offset = offset
	}
	return exts, next, nil
}

// chunkRun is chunks [first, end).
type chunkRun struct{ first, end uint64 }

// addDataRuns adds to runs (the tree's, in [pos, upTo)) the chunks in
// [pos, upTo) where the origin device holds data, and returns the runs
// sorted and the chunk below which they are complete: after more than
// limit+1 data extents it stops early (a fragmented origin file does not
// make a page's memory grow), dropping the tree runs beyond. Without
// extent information (dev nil, or its query failing with ErrNoExtentInfo)
// every chunk counts as data, and dev comes back nil.
func (e *Engine) addDataRuns(runs []chunkRun, dev DataExtents, pos, upTo uint64, limit int) ([]chunkRun, DataExtents, uint64, error) {
	if dev == nil {
		return append(runs[:0], chunkRun{pos, upTo}), nil, upTo, nil
	}
	tree := len(runs)
	off, end := int64(pos)*e.cs, int64(upTo)*e.cs
	for off < end {
		if len(runs)-tree > limit+1 {
			// Complete below the last data run's end; clip the tree runs.
			stop := runs[len(runs)-1].end
			k := 0
			for _, r := range runs {
				if r.first < stop {
					r.end = min(r.end, stop)
					runs[k] = r
					k++
				}
			}
			runs, upTo = runs[:k], stop
			break
		}
		s, t, ok, err := dev.NextData(off)
		if err != nil {
			if isNoExtentInfo(err) {
				return append(runs[:0], chunkRun{pos, upTo}), nil, upTo, nil
			}
			return nil, dev, upTo, fmt.Errorf("diff: origin data extents at %d: %w", off, err)
		}
		if !ok || s >= end {
			break
		}
		s, t = max(s, off), min(t, end)
		if t <= s {
			break
		}
		runs = append(runs, chunkRun{uint64(s / e.cs), uint64((t + e.cs - 1) / e.cs)})
		off = t
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].first < runs[j].first })
	return runs, dev, upTo, nil
}

// diffBatch walks the exception tree from chunk pos for about diffBatch
// exceptions (finishing the last chunk), appends the chunks where from and
// to resolve differently (from == NoSnapshot: where to resolves to the
// store) to *runs (if runs is nil it only validates the snapshots), and
// returns the chunk below which the walk is complete.
func (e *Engine) diffBatch(from, to SnapID, pos uint64, runs *[]chunkRun) (uint64, error) {
	e.lock()
	defer e.unlock()
	if err := e.usable(); err != nil {
		return 0, err
	}
	toWritable := false
	if to != Origin {
		tt, err := e.liveSnapshot(to)
		if err != nil {
			return 0, fmt.Errorf("diff: to: %w", err)
		}
		toWritable = tt.flags&flagWritable != 0
	}
	fromWritable := false
	if from != NoSnapshot && from != Origin {
		ft, err := e.liveSnapshot(from)
		if err != nil {
			return 0, fmt.Errorf("diff: from: %w", err)
		}
		fromWritable = ft.flags&flagWritable != 0
	}
	if runs == nil || from == to {
		return e.originChunks, nil
	}
	defer e.trimCache()
	cur, err := e.seekGE(key{chunk: pos})
	if err != nil {
		return 0, e.fail(err)
	}
	const origin = ^uint64(0)
	f, t := uint32(from), uint32(to)
	seen := 0
	for cur.valid() {
		c := cur.entry().chunk
		if seen >= diffBatch {
			return c, nil
		}
		// One chunk's exceptions: shared ones ordered by lo, a private one
		// after the shared one of the same lo.
		fs, fp, ts, tp := origin, origin, origin, origin
		for cur.valid() && cur.entry().chunk == c {
			x := cur.entry()
			seen++
			switch {
			case x.priv:
				if toWritable && x.lo == t {
					tp = x.store
				}
				if fromWritable && x.lo == f {
					fp = x.store
				}
			default:
				if x.lo <= t && t <= x.hi {
					ts = x.store
				}
				if x.lo <= f && f <= x.hi {
					fs = x.store
				}
			}
			if err := cur.next(); err != nil {
				return 0, e.fail(err)
			}
		}
		tl, fl := ts, fs
		if tp != origin {
			tl = tp
		}
		if fp != origin {
			fl = fp
		}
		changed := tl != fl
		if from == NoSnapshot {
			changed = tl != origin
		}
		if changed {
			if n := len(*runs); n > 0 && (*runs)[n-1].end == c {
				(*runs)[n-1].end++
			} else {
				*runs = append(*runs, chunkRun{c, c + 1})
			}
		}
	}
	return e.originChunks, nil
}

// extentBuilder merges chunk runs (added in order of first chunk) into
// byte extents, keeping one more than the limit to know the last is
// complete and where the next page starts.
type extentBuilder struct {
	cs, size int64
	limit    int
	exts     []Extent
}

func (b *extentBuilder) full() bool { return len(b.exts) > b.limit }

// add merges r; it returns false once the page is full.
func (b *extentBuilder) add(r chunkRun) bool {
	off, end := int64(r.first)*b.cs, min(int64(r.end)*b.cs, b.size)
	if n := len(b.exts); n > 0 && b.exts[n-1].End() >= off {
		b.exts[n-1].Length = max(b.exts[n-1].End(), end) - b.exts[n-1].Offset
		return true
	}
	if b.full() {
		return false
	}
	b.exts = append(b.exts, Extent{Offset: off, Length: end - off})
	return !b.full()
}

func (b *extentBuilder) result() ([]Extent, int64) {
	if len(b.exts) > b.limit {
		return b.exts[:b.limit:b.limit], b.exts[b.limit].Offset
	}
	return b.exts, -1
}

// ErrNoExtentInfo: a DataExtents device cannot tell where it holds data.
var ErrNoExtentInfo = errors.New("the device cannot report where it holds data")

func isNoExtentInfo(err error) bool { return errors.Is(err, ErrNoExtentInfo) }
