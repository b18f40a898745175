package snapstore

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"
)

// ErrDirectIOUnsupported reports that a file or device cannot be opened
// for direct IO (O_DIRECT): tmpfs and some network and FUSE file systems
// refuse it.
var ErrDirectIOUnsupported = errors.New("the file system or device does not support direct IO (O_DIRECT)")

const (
	// directRegion is the granularity of the write locks: writes touching
	// the same aligned block always share a region.
	directRegion = 64 << 10
	// directStripes is the number of write locks; region r uses stripe
	// r % directStripes. 64 stripes fit the lock set in one uint64.
	directStripes = 64
	// bounceMax bounds one bounce buffer; longer unaligned IO is done in
	// pieces of this size.
	bounceMax = 1 << 20
	// maxDirectAlign is the largest alignment OpenDirect accepts (it must
	// divide directRegion and bounceMax).
	maxDirectAlign = 64 << 10
)

// directIO does a FileDevice's IO on a file opened O_DIRECT, where the
// kernel refuses (EINVAL) any transfer whose buffer address, offset or
// length is not a multiple of the device's alignment. Aligned IO is one
// pread/pwrite straight from the caller's buffer; anything else goes
// through an aligned bounce buffer covering the whole aligned blocks it
// touches, and a write that covers only part of its first or last block
// reads that block first (read-modify-write).
//
// An RMW writes back bytes it did not change, so a concurrent write to the
// same block could be lost. Every write therefore holds the stripe locks
// of the 64 KiB regions it covers, taken in ascending stripe order (no
// deadlock), whether it is aligned or not: an aligned write racing an RMW
// of the same block would be undone by the RMW's stale copy just the same.
// Reads take no lock. These locks serialise the writers of this process
// only; see the package documentation for what that means across hosts.
type directIO struct {
	rw      rawIO
	align   int64
	regular bool // a regular file (it has an end that writes may move)
	stripes [directStripes]sync.Mutex
	// extend is held shared by every write and exclusively by an unaligned
	// write that would pad the file past its end: that write must set the
	// size back, and no other write may extend the file meanwhile.
	extend sync.RWMutex
	// bounced counts unaligned reads and writes (tests check that hot
	// paths avoid them).
	bounced atomic.Uint64
	// bounces recycles bounce buffers of up to directRegion and up to
	// bounceMax bytes: an initiator that sends 512-byte-aligned IO makes
	// every command take the slow path, and a fresh buffer for each would
	// be garbage-collector work at the IO rate.
	bounces [2]sync.Pool
}

// rawIO is the system interface directIO needs: one pread or pwrite (no
// retry loop: short transfers are handled here), and the file's size and
// truncation for regular files.
type rawIO interface {
	pread(p []byte, off int64) (int, error)
	pwrite(p []byte, off int64) (int, error)
	size() (int64, error)
	truncate(size int64) error
}

func (d *directIO) aligned(p []byte, off int64) bool {
	a := d.align
	return off%a == 0 && int64(len(p))%a == 0 && isAlignedAddr(p, int(max(a, 1)))
}

// bounce returns an aligned buffer of n bytes (n <= bounceMax) with
// undefined contents, and the function that gives it back.
func (d *directIO) bounce(n int) ([]byte, func()) {
	class, size := 0, directRegion
	if n > directRegion {
		class, size = 1, bounceMax
	}
	bp, ok := d.bounces[class].Get().(*[]byte)
	if !ok {
		b := d.buffer(size)
		bp = &b
	}
	return (*bp)[:n], func() { d.bounces[class].Put(bp) }
}

// buffer returns a zeroed buffer of n bytes aligned for this device.
func (d *directIO) buffer(n int) []byte {
	if d.align <= MemAlign {
		return AlignedBuffer(n)
	}
	return alignedIn(make([]byte, n+int(d.align)-1), n, int(d.align))
}

func (d *directIO) readAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("direct read at negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if d.aligned(p, off) {
		return d.readDirect(p, off)
	}
	d.bounced.Add(1)
	return d.readBounced(p, off)
}

// readDirect reads aligned p at aligned off until p is full or the end of
// the file; like io.ReaderAt it returns io.EOF with a short count.
func (d *directIO) readDirect(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := d.rw.pread(p[done:], off+int64(done))
		if err != nil {
			return done, err
		}
		if n == 0 {
			return done, io.EOF
		}
		done += n
		// A direct read stops mid-block only at the end of the file; a
		// retry there would be an unaligned (refused) read.
		if int64(done)%d.align != 0 && done < len(p) {
			return done, io.EOF
		}
	}
	return done, nil
}

// readBounced reads p at off through a bounce buffer, a piece of at most
// bounceMax bytes at a time.
func (d *directIO) readBounced(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	buf, put := d.bounce(int(min(bounceMax, alignUp(end, d.align)-alignDown(off, d.align))))
	defer put()
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		lo := alignDown(pos, d.align)
		hi := min(alignUp(end, d.align), lo+int64(len(buf)))
		n, err := d.readDirect(buf[:hi-lo], lo)
		if skip := pos - lo; int64(n) > skip {
			done += copy(p[done:], buf[skip:n])
		}
		if err != nil && done < len(p) {
			return done, err
		}
	}
	return done, nil
}

func (d *directIO) writeAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("direct write at negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	d.extend.RLock()
	n, extend, err := d.writeLocked(p, off)
	d.extend.RUnlock()
	if extend {
		return d.writeExtending(p, off)
	}
	return n, err
}

// writeLocked writes p at off under the stripe locks of its blocks; it
// reports extend, having written nothing, when the write must pad the
// file's last block (writeExtending does it).
func (d *directIO) writeLocked(p []byte, off int64) (n int, extend bool, err error) {
	end := off + int64(len(p))
	unlock := d.lockRange(alignDown(off, d.align), alignUp(end, d.align))
	defer unlock()
	if d.aligned(p, off) {
		n, err = d.writeDirect(p, off)
		return n, false, err
	}
	d.bounced.Add(1)
	if pads, err := d.padsPastEnd(end); err != nil || pads {
		return 0, pads, err
	}
	n, err = d.writeBounced(p, off)
	return n, false, err
}

// padsPastEnd reports whether an unaligned write ending at end would
// write padding beyond the end of a regular file (block devices do not
// grow).
func (d *directIO) padsPastEnd(end int64) (bool, error) {
	if !d.regular || end%d.align == 0 {
		return false, nil
	}
	size, err := d.rw.size()
	if err != nil {
		return false, fmt.Errorf("direct write: file size: %w", err)
	}
	return alignUp(end, d.align) > size, nil
}

// writeExtending does an unaligned write whose last block lies past the
// end of the file. O_DIRECT writes whole blocks, so the file grows to the
// block's end; the size is then set back to where io.WriterAt semantics
// put it. It runs alone (extend held exclusively): a concurrent write
// beyond our end could otherwise be cut off by the truncation.
func (d *directIO) writeExtending(p []byte, off int64) (int, error) {
	d.extend.Lock()
	defer d.extend.Unlock()
	size, err := d.rw.size()
	if err != nil {
		return 0, fmt.Errorf("direct write: file size: %w", err)
	}
	n, err := d.writeBounced(p, off)
	if err != nil {
		return n, err
	}
	if want := max(size, off+int64(len(p))); alignUp(off+int64(len(p)), d.align) > want {
		if err := d.rw.truncate(want); err != nil {
			return n, fmt.Errorf("direct write: setting the file size back to %d after padding its last block: %w", want, err)
		}
	}
	return n, nil
}

// lockRange locks the stripes of the regions [lo, hi) touches, in
// ascending stripe order, and returns the unlock function.
func (d *directIO) lockRange(lo, hi int64) func() {
	first, last := lo/directRegion, (hi-1)/directRegion
	set := ^uint64(0) // every stripe, when the range covers them all
	if last-first+1 < directStripes {
		set = 0
		for r := first; r <= last; r++ {
			set |= 1 << uint(r%directStripes)
		}
	}
	for s := set; s != 0; s &= s - 1 {
		d.stripes[bits.TrailingZeros64(s)].Lock()
	}
	return func() {
		for s := set; s != 0; s &= s - 1 {
			d.stripes[bits.TrailingZeros64(s)].Unlock()
		}
	}
}

// writeDirect writes aligned p at aligned off in full.
func (d *directIO) writeDirect(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := d.rw.pwrite(p[done:], off+int64(done))
		if err != nil {
			return done, err
		}
		done += n
		if n == 0 || (int64(done)%d.align != 0 && done < len(p)) {
			// No progress, or a partial block that cannot be resumed.
			return done, io.ErrShortWrite
		}
	}
	return done, nil
}

// writeBounced writes p at off through a bounce buffer, a piece of at
// most bounceMax bytes at a time, reading first the partial blocks at the
// ends. The caller holds the stripe locks of the whole range.
func (d *directIO) writeBounced(p []byte, off int64) (int, error) {
	a := d.align
	end := off + int64(len(p))
	buf, put := d.bounce(int(min(bounceMax, alignUp(end, a)-alignDown(off, a))))
	defer put()
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		lo := alignDown(pos, a)
		hi := min(alignUp(end, a), lo+int64(len(buf)))
		stop := min(end, hi) // this piece writes p's bytes [pos, stop)
		piece := buf[:hi-lo]
		if pos > lo {
			if err := d.readBlock(piece[:a], lo); err != nil {
				return done, err
			}
		}
		if tail := hi - a; stop < hi && (tail > lo || pos == lo) {
			if err := d.readBlock(piece[tail-lo:], tail); err != nil {
				return done, err
			}
		}
		m := copy(piece[pos-lo:stop-lo], p[done:])
		if _, err := d.writeDirect(piece, lo); err != nil {
			return done, err
		}
		done += m
	}
	return done, nil
}

// readBlock fills the aligned block b from off; what lies past the end of
// the file reads as zeros.
func (d *directIO) readBlock(b []byte, off int64) error {
	n, err := d.readDirect(b, off)
	if err != nil && err != io.EOF {
		return fmt.Errorf("direct write: reading the partial block at %d: %w", off, err)
	}
	clear(b[n:])
	return nil
}
