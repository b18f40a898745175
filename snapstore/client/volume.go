package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/wire"
)

// Volume is the origin or one snapshot of the client's volume, as a block
// device: what a LUN is backed by. Safe for concurrent use.
type Volume struct {
	c        *Client
	snap     uint32 // 0: the origin
	writable bool
	gone     atomic.Bool // the server said deleted or dropped: ids are never reused
}

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return v.c.volSize }

// ReadOnly reports whether writes are refused (a snapshot not created
// writable).
func (v *Volume) ReadOnly() bool { return v.snap != 0 && !v.writable }

// SnapshotID returns the snapshot id, or 0 for the origin.
func (v *Volume) SnapshotID() uint32 { return v.snap }

// Client returns the client the volume belongs to.
func (v *Volume) Client() *Client { return v.c }

func (v *Volume) String() string {
	if v.snap == 0 {
		return v.c.cfg.Volume
	}
	return fmt.Sprintf("%s snapshot %d", v.c.cfg.Volume, v.snap)
}

func (v *Volume) errorf(op string, off, n int64, err error) error {
	return fmt.Errorf("snapclient: %v: %s [%d,+%d): %w", v, op, off, n, err)
}

func (v *Volume) check(off, n int64) error {
	if off < 0 || n < 0 || off > v.c.volSize || n > v.c.volSize-off {
		return ErrOutOfRange
	}
	return nil
}

// ReadAt reads len(p) bytes at off. Origin reads go straight to the origin
// device; snapshot reads ask the server where the chunks live and read
// the store or, under a read lock, the origin.
func (v *Volume) ReadAt(p []byte, off int64) error {
	n := int64(len(p))
	if err := v.check(off, n); err != nil {
		return v.errorf("read", off, n, err)
	}
	if n == 0 {
		return nil
	}
	var err error
	if v.snap == 0 {
		err = readFull(v.c.cfg.Origin, p, off)
	} else {
		err = v.snapRead(p, off)
	}
	if err != nil {
		return v.errorf("read", off, n, err)
	}
	return nil
}

// WriteAt writes p at off; with fua the data is durable when it returns.
func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	n := int64(len(p))
	if err := v.check(off, n); err != nil {
		return v.errorf("write", off, n, err)
	}
	if v.ReadOnly() {
		return v.errorf("write", off, n, ErrReadOnly)
	}
	if n == 0 {
		return nil
	}
	var err error
	if v.snap == 0 {
		err = v.c.originModify(off, n, func() error {
			if err := writeFull(v.c.cfg.Origin, p, off); err != nil {
				return err
			}
			if fua {
				return v.c.cfg.Origin.Flush()
			}
			return nil
		})
	} else {
		err = v.snapWrite(p, off, fua)
	}
	if err != nil {
		return v.errorf("write", off, n, err)
	}
	return nil
}

// Flush makes every completed write durable.
func (v *Volume) Flush() error {
	d := v.c.cfg.Origin
	if v.snap != 0 {
		d = v.c.cfg.Store
	}
	if err := d.Flush(); err != nil {
		return fmt.Errorf("snapclient: %v: flush: %w", v, err)
	}
	return nil
}

// Unmap deallocates [off, off+n): afterwards it reads as zeros. On the
// origin it is a write (snapshots keep the old data): chunks are approved
// as for a write, then whole chunks are punched where the device can and
// the rest is zero-filled. On a writable snapshot it writes zeros.
func (v *Volume) Unmap(off, n int64) error {
	if err := v.check(off, n); err != nil {
		return v.errorf("unmap", off, n, err)
	}
	if v.ReadOnly() {
		return v.errorf("unmap", off, n, ErrReadOnly)
	}
	if n == 0 {
		return nil
	}
	var err error
	if v.snap == 0 {
		err = v.c.originModify(off, n, func() error { return v.c.unmapOrigin(off, n) })
	} else {
		err = zeroFill(n, func(z []byte, o int64) error { return v.snapWrite(z, off+o, false) })
	}
	if err != nil {
		return v.errorf("unmap", off, n, err)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Origin writes

// originModify runs fn, which changes origin bytes [off, off+n), once the
// server approved the chunks, counted as a write in flight under the
// generation of the approval (for the INVALIDATE barrier).
func (c *Client) originModify(off, n int64, fn func() error) error {
	gen, err := c.approve(uint64(off>>c.chunkShift), uint64((off+n-1)>>c.chunkShift))
	if err != nil {
		return err
	}
	defer c.writeDone(gen)
	return fn()
}

// approve obtains approval to overwrite chunks [first, last] and counts
// the write in flight. Chunks in the unique-chunk cache need no query (nor
// any chunk while the server says the volume has no snapshot); the rest
// are asked for. An approval older than the generation the client knows
// (an INVALIDATE came in meanwhile) is stale: ask again.
func (c *Client) approve(first, last uint64) (uint64, error) {
	deadline := c.cfg.Now().Add(c.cfg.IOTimeout)
	for try := 0; ; try++ {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, ErrClosed
		}
		g0, need, hits := c.appr.local(first, last, c.cn != nil)
		c.mu.Unlock()
		if len(need) == 0 {
			return g0, nil
		}

		approved, err := c.askOriginWrite(need, deadline)
		if err != nil {
			return 0, err
		}

		c.mu.Lock()
		g, ok := c.appr.settle(approved, g0, hits, need)
		current := c.appr.gen
		c.mu.Unlock()
		if ok {
			return g, nil
		}
		c.log.WithFields(logrus.Fields{"approved": approved, "generation": current, "chunk": first, "try": try}).
			Debug("origin write approval is stale; asking again")
	}
}

// askOriginWrite sends ORIGIN_WRITE for ranges (split to the protocol's
// limits, all in flight at once) and returns the lowest generation they
// were approved under.
func (c *Client) askOriginWrite(ranges []wire.Range, deadline time.Time) (uint64, error) {
	msgs := splitRanges(ranges)
	calls := make([]*call, 0, len(msgs))
	abandon := func() {
		done, cancel := context.WithCancel(context.Background())
		cancel()
		for _, cl := range calls {
			_, _ = c.wait(done, cl, time.Time{})
		}
	}
	for _, rs := range msgs {
		cl, err := c.start(kindIO, &wire.OriginWrite{Ranges: rs})
		if err != nil {
			abandon()
			return 0, err
		}
		calls = append(calls, cl)
	}
	gen := uint64(math.MaxUint64)
	for i, cl := range calls {
		m, err := c.wait(context.Background(), cl, deadline)
		if err == nil {
			switch m := m.(type) {
			case *wire.OriginWriteOK:
				gen = min(gen, m.Generation)
				continue
			case *wire.Error:
				err = serverError(m)
			}
		}
		calls = calls[i+1:]
		abandon()
		return 0, fmt.Errorf("origin write query: %w", err)
	}
	return gen, nil
}

func (c *Client) writeDone(gen uint64) {
	c.mu.Lock()
	c.appr.done(gen)
	c.writersC.Broadcast()
	c.mu.Unlock()
}

// unmapOrigin punches whole chunks if the device can, zero-fills the rest.
func (c *Client) unmapOrigin(off, n int64) error {
	dev := c.cfg.Origin
	lo := (off + c.chunkSize - 1) &^ (c.chunkSize - 1)
	hi := (off + n) &^ (c.chunkSize - 1)
	zero := func(a, b int64) error {
		return zeroFill(b-a, func(z []byte, o int64) error { return writeFull(dev, z, a+o) })
	}
	if ph, ok := dev.(PunchHoler); ok && lo < hi {
		if err := ph.PunchHole(lo, hi-lo); err == nil {
			if err := zero(off, lo); err != nil {
				return err
			}
			return zero(hi, off+n)
		}
	}
	return zero(off, off+n)
}

// ---------------------------------------------------------------------------
// Snapshot IO

// snapRead reads a snapshot: per batch of chunks, from the store at the
// locations cached for a read-only snapshot if all are cached, else
// SNAPSHOT_READ, then each extent from the store or (under the read lock)
// the origin, then FINISH_SNAPSHOT_READ if a lock was granted, whatever
// happened. The store extents of the answer are cached (read-only
// snapshots), and locations beyond the read are asked for ahead of need.
func (v *Volume) snapRead(p []byte, off int64) error {
	c := v.c
	if v.gone.Load() {
		return ErrSnapshotGone
	}
	deadline := c.cfg.Now().Add(c.cfg.IOTimeout)
	end := off + int64(len(p))
	first, last := uint64(off>>c.chunkShift), uint64((end-1)>>c.chunkShift)
	defer v.readahead(last)
	retry := uint64(math.MaxUint64) // the batch to ask the server for, not the cache
	for b := first; b <= last; {
		r := wire.Range{Start: b, Count: uint32(min(last-b+1, wire.MaxChunks))}
		// A batch that outlasted the cache's lease once asks the server.
		xs, until, hit, epoch := c.cachedLocations(v, r, retry != b)
		if hit {
			err := v.readStore(xs, p, off, end)
			c.storeReadDone(v.snap)
			if err != nil {
				return err
			}
			if c.cfg.Now().After(until) {
				// Finished past the cache's lease: the server may have
				// reused the space meanwhile. Ask it.
				c.log.WithFields(logrus.Fields{"snapshot": v.snap, "chunk": r.Start}).
					Info("a read from cached store locations outlasted their lease; reading again")
				retry = b
				continue
			}
			b += uint64(r.Count)
			continue
		}
		cl, err := c.start(kindSnapRead, &wire.SnapshotRead{Snapshot: v.snap, Ranges: []wire.Range{r}})
		if err != nil {
			return err
		}
		m, err := c.wait(context.Background(), cl, deadline)
		if err != nil {
			return err
		}
		// The id is final now: it is the handle of the lock, if any.
		err = v.readExtents(m, cl.id, r, p, off, end)
		if ok, is := m.(*wire.SnapshotReadOK); is {
			// Counted in storeReading by deliver.
			if err == nil || redo(err) {
				c.cacheAnswer(v, epoch, ok.Extents)
			}
			c.storeReadDone(v.snap)
		}
		if redo(err) {
			if c.cfg.Now().After(deadline) {
				return fmt.Errorf("snapshot read of chunk %d: %w, and the IO time limit has passed", r.Start, err)
			}
			c.log.WithError(err).WithFields(logrus.Fields{"snapshot": v.snap, "chunk": r.Start, "handle": cl.id}).
				Info("cannot trust a snapshot read under its read lock; reading again")
			continue // the same batch again
		}
		if err != nil {
			return err
		}
		b += uint64(r.Count)
	}
	return nil
}

// readStore reads the part of store extents xs within [off, end) into p
// (which holds [off, end)).
func (v *Volume) readStore(xs []wire.Extent, p []byte, off, end int64) error {
	c := v.c
	for _, x := range xs {
		xs, xe := int64(x.Start)<<c.chunkShift, int64(x.Start+uint64(x.Count))<<c.chunkShift
		lo, hi := max(xs, off), min(xe, end)
		if lo >= hi {
			continue
		}
		if err := readFull(c.cfg.Store, p[lo-off:hi-off], int64(x.StoreOffset)+(lo-xs)); err != nil {
			return err
		}
	}
	return nil
}

// errLockBroken and errLockExpired: the batch must be read again (see
// releaseLockLocked).
var (
	errLockBroken  = errors.New("read lock held across a lost connection")
	errLockExpired = errors.New("origin read under a read lock finished after the lock's trust time (wire.LockTrust)")
)

func redo(err error) bool { return errors.Is(err, errLockBroken) || errors.Is(err, errLockExpired) }

func (v *Volume) readExtents(m wire.Message, handle uint64, r wire.Range, p []byte, off, end int64) (err error) {
	c := v.c
	var ok *wire.SnapshotReadOK
	switch m := m.(type) {
	case *wire.SnapshotReadOK:
		ok = m
	case *wire.Error:
		return v.snapError(m)
	}
	if ok.HoldsLock() {
		defer func() {
			if rerr := c.releaseLock(handle); rerr != nil {
				err = rerr
			}
		}()
	}
	if err := wire.CheckExtents(ok.Extents, []wire.Range{r}); err != nil {
		return fmt.Errorf("SNAPSHOT_READ_OK: %w: %w", ErrProtocol, err)
	}
	for _, x := range ok.Extents {
		xs, xe := int64(x.Start)<<c.chunkShift, int64(x.Start+uint64(x.Count))<<c.chunkShift
		lo, hi := max(xs, off), min(xe, end)
		if lo >= hi {
			continue
		}
		buf := p[lo-off : hi-off]
		var err error
		if x.Origin {
			err = readFull(c.cfg.Origin, buf, lo)
		} else {
			err = readFull(c.cfg.Store, buf, int64(x.StoreOffset)+(lo-xs))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// snapWrite writes a writable snapshot: SNAPSHOT_WRITE makes the chunks
// private to it (copying shared data first, so partial chunk writes are
// right), then the data goes to the store offsets.
//
// The answer's store locations stay the snapshot's only until it is
// deleted or dropped and its space reclaimed, so from the answer until the
// data is written the write counts in storeReading, which a RECLAIM of the
// snapshot waits for (as for a read). A server that gets no RECLAIM_OK
// reuses the space no earlier than BarrierTimeout (at least
// wire.LockLease) after it sent the answer, so no store write is started
// later than wire.LockTrust after the SNAPSHOT_WRITE was sent, nor after
// the connection it was answered on was lost (a new server does not know
// the approval): the batch is asked of the server again instead (it
// answers the same, now private, locations, or that the snapshot is gone).
func (v *Volume) snapWrite(p []byte, off int64, fua bool) error {
	c := v.c
	if v.gone.Load() {
		return ErrSnapshotGone
	}
	deadline := c.cfg.Now().Add(c.cfg.IOTimeout)
	end := off + int64(len(p))
	first, last := uint64(off>>c.chunkShift), uint64((end-1)>>c.chunkShift)
	for b := first; b <= last; {
		r := wire.Range{Start: b, Count: uint32(min(last-b+1, wire.MaxChunks))}
		cl, err := c.start(kindIO, &wire.SnapshotWrite{Snapshot: v.snap, Ranges: []wire.Range{r}})
		if err != nil {
			return err
		}
		m, err := c.wait(context.Background(), cl, deadline)
		if err != nil {
			return err
		}
		var ok *wire.SnapshotWriteOK
		switch m := m.(type) {
		case *wire.SnapshotWriteOK:
			ok = m // counted in storeReading by deliver
		case *wire.Error:
			return v.snapError(m)
		}
		late, err := v.writeStore(cl, ok, r, p, off, end)
		c.storeReadDone(v.snap)
		if err != nil {
			return err
		}
		if late {
			if c.cfg.Now().After(deadline) {
				return fmt.Errorf("snapshot write of chunk %d: approval not trusted any more, and the IO time limit has passed", r.Start)
			}
			c.log.WithFields(logrus.Fields{"snapshot": v.snap, "chunk": r.Start}).
				Info("a snapshot write approval outlived its trust time (wire.LockTrust) or its connection; asking again")
			continue // the same batch again
		}
		b += uint64(r.Count)
	}
	if fua {
		return c.cfg.Store.Flush()
	}
	return nil
}

// writeStore writes the part of p within the store extents of ok (the
// answer to SNAPSHOT_WRITE call cl for r). It stops, reporting late, before
// a store write the approval no longer covers (storeWriteTrusted).
func (v *Volume) writeStore(cl *call, ok *wire.SnapshotWriteOK, r wire.Range, p []byte, off, end int64) (late bool, err error) {
	c := v.c
	if err := wire.CheckExtents(ok.Extents, []wire.Range{r}); err != nil {
		return false, fmt.Errorf("SNAPSHOT_WRITE_OK: %w: %w", ErrProtocol, err)
	}
	for _, x := range ok.Extents {
		xs, xe := int64(x.Start)<<c.chunkShift, int64(x.Start+uint64(x.Count))<<c.chunkShift
		lo, hi := max(xs, off), min(xe, end)
		if lo >= hi {
			continue
		}
		if !c.storeWriteTrusted(cl) {
			return true, nil
		}
		if err := writeFull(c.cfg.Store, p[lo-off:hi-off], int64(x.StoreOffset)+(lo-xs)); err != nil {
			return false, err
		}
	}
	return false, nil
}

// storeWriteTrusted reports whether the store locations answered to the
// SNAPSHOT_WRITE call cl may still be written: less than wire.LockTrust
// since it was sent, and the connection it was answered on still current.
func (c *Client) storeWriteTrusted(cl *call) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return cl.answeredOn != nil && c.cn == cl.answeredOn && !cl.answeredOn.isDead() &&
		c.cfg.Now().Before(cl.sentAt.Add(wire.LockTrust))
}

// snapError maps a server ERROR for a snapshot IO.
func (v *Volume) snapError(e *wire.Error) error {
	err := serverError(e)
	if errors.Is(err, ErrSnapshotGone) {
		v.gone.Store(true)
	}
	return err
}

// serverError turns an ERROR reply into an error that wraps both the
// matching sentinel (if any) and the *wire.Error.
func serverError(e *wire.Error) error {
	var s error
	switch e.Code {
	case wire.CodeNoSuchSnapshot, wire.CodeSnapshotDropped:
		s = ErrSnapshotGone
	case wire.CodeNotWritable:
		s = ErrReadOnly
	case wire.CodeExists:
		s = ErrExists
	case wire.CodeOutOfRange:
		s = ErrOutOfRange
	default:
		return fmt.Errorf("server: %w", e)
	}
	return fmt.Errorf("server: %w: %w", s, e)
}

// ---------------------------------------------------------------------------
// Helpers

// splitRanges splits ascending disjoint ranges into lists that each fit
// one message (MaxRanges ranges, MaxChunks chunks).
func splitRanges(rs []wire.Range) [][]wire.Range {
	var out [][]wire.Range
	var cur []wire.Range
	chunks := 0
	for _, r := range rs {
		for r.Count > 0 {
			if len(cur) == wire.MaxRanges || chunks == wire.MaxChunks {
				out = append(out, cur)
				cur, chunks = nil, 0
			}
			n := min(r.Count, uint32(wire.MaxChunks-chunks))
			cur = append(cur, wire.Range{Start: r.Start, Count: n})
			chunks += int(n)
			r.Start += uint64(n)
			r.Count -= n
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

func readFull(d Device, p []byte, off int64) error {
	n, err := d.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("device read of %d bytes at %d: %w", len(p), off, err)
}

func writeFull(d Device, p []byte, off int64) error {
	n, err := d.WriteAt(p, off)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("device write of %d bytes at %d: %w", len(p), off, err)
	}
	return nil
}

// zeroFill calls write with zero buffers covering n bytes (at most 1 MiB
// at a time), passing each buffer's offset relative to the start.
func zeroFill(n int64, write func(z []byte, off int64) error) error {
	if n <= 0 {
		return nil
	}
	// Aligned, so that a device opened O_DIRECT (snapstore.OpenDirect)
	// writes it without a bounce buffer when the offset is aligned too.
	z := snapstore.AlignedBuffer(int(min(n, 1<<20)))
	for o := int64(0); o < n; o += int64(len(z)) {
		if err := write(z[:min(int64(len(z)), n-o)], o); err != nil {
			return err
		}
	}
	return nil
}
