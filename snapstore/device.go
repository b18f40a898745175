package snapstore

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// Device is a block device or file the engine reads and writes. Origin and
// store devices are both Devices. Implementations must be safe for
// concurrent use.
type Device interface {
	// ReadAt and WriteAt follow io.ReaderAt / io.WriterAt.
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every write that completed before the call durable
	// (fdatasync for files, a cache flush for block devices).
	Flush() error
	// Size returns the device capacity in bytes.
	Size() (int64, error)
}

// FileDevice is a Device backed by an *os.File: a regular file or a block
// device node, opened for buffered IO (OpenFile, NewFileDevice) or for
// direct IO (OpenDirect).
type FileDevice struct {
	f         *os.File
	direct    *directIO     // nil: buffered IO through the page cache
	flushErrs atomic.Uint64 // failed flushes (FlushErrors)
}

// FlushErrorCounter is implemented by devices that count their failed
// flushes. Several users of one device (the engine and a client share the
// store in csnapd) compare the count with the one at their last good
// flush: Linux reports a failed fdatasync to one caller of a file
// descriptor only, and the writes it dropped are every user's (see the
// fsync error policy in the package documentation).
type FlushErrorCounter interface {
	FlushErrors() uint64
}

// OpenFile opens path (a regular file or a block device) read-write as a
// Device.
func OpenFile(path string) (*FileDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open device: %w", err)
	}
	return &FileDevice{f: f}, nil
}

// NewFileDevice wraps an open file.
func NewFileDevice(f *os.File) *FileDevice { return &FileDevice{f: f} }

func (d *FileDevice) ReadAt(p []byte, off int64) (int, error) {
	if d.direct != nil {
		return d.direct.readAt(p, off)
	}
	return d.f.ReadAt(p, off)
}

// WriteAt writes p at off. A buffered device writes in pieces that never
// cross a multiple of WritePiece: the page cache of current kernels (6.x)
// caches a file in folios as large as the writes that created them, and
// after 1 MiB writes a later 4 KiB write dirties (and has written back) a
// whole large folio, which measured 2.5 times slower for random 4 KiB
// writes than on a file written in 64 KiB pieces (tests/bench/RESULTS.md).
// A few more system calls per large write cost much less. Direct IO has
// no page cache to shape and writes in one piece.
func (d *FileDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.direct != nil {
		return d.direct.writeAt(p, off)
	}
	return WriteInPieces(d.f, p, off)
}

// WritePiece bounds the buffered writes of FileDevice.WriteAt.
const WritePiece = 64 << 10

// WriteInPieces writes p at off through w in pieces aligned to WritePiece.
func WriteInPieces(w io.WriterAt, p []byte, off int64) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(int64(len(p)), WritePiece-off%WritePiece)
		m, err := w.WriteAt(p[:k], off)
		n += m
		if err != nil {
			return n, err
		}
		p, off = p[k:], off+k
	}
	return n, nil
}

// Flush is fdatasync: for a device opened O_DIRECT it also flushes the
// device's volatile write cache, which direct writes may still sit in.
func (d *FileDevice) Flush() error {
	err := fdatasync(d.f)
	if err != nil {
		d.flushErrs.Add(1)
	}
	return err
}

// FlushErrors returns the number of failed flushes since the device was
// opened (FlushErrorCounter).
func (d *FileDevice) FlushErrors() uint64 { return d.flushErrs.Load() }

// Close closes the file; no IO may be running or start later.
func (d *FileDevice) Close() error { return d.f.Close() }
func (d *FileDevice) Name() string { return d.f.Name() }

// File returns the underlying file (for fallocate and the like; do not
// read or write it directly: a direct device's rules would be bypassed).
func (d *FileDevice) File() *os.File { return d.f }

// Direct reports whether the device was opened for direct IO (O_DIRECT).
func (d *FileDevice) Direct() bool { return d.direct != nil }

// Alignment is the alignment direct IO needs for buffer addresses, offsets
// and lengths to skip the bounce buffer (1 for a buffered device).
func (d *FileDevice) Alignment() int64 {
	if d.direct == nil {
		return 1
	}
	return d.direct.align
}

// Size works for regular files and for block devices (whose Stat size is 0).
func (d *FileDevice) Size() (int64, error) {
	fi, err := d.f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	return d.f.Seek(0, io.SeekEnd)
}

// MemDevice is a simple in-memory Device (no crash simulation; see package
// faultdev for that). Useful for tests and benchmarks.
type MemDevice struct {
	mu  sync.RWMutex
	buf []byte
}

// NewMemDevice returns a zero-filled in-memory device of size bytes.
func NewMemDevice(size int64) *MemDevice { return &MemDevice{buf: make([]byte, size)} }

func (m *MemDevice) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off > int64(len(m.buf)) {
		return 0, io.EOF
	}
	n := copy(p, m.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *MemDevice) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.buf)) {
		return 0, fmt.Errorf("memdevice: write [%d,+%d) beyond size %d", off, len(p), len(m.buf))
	}
	return copy(m.buf[off:], p), nil
}

func (m *MemDevice) Flush() error         { return nil }
func (m *MemDevice) Size() (int64, error) { return int64(len(m.buf)), nil }

// readFull reads exactly len(p) bytes at off; a short read past the end of
// the device is reported as ErrTruncated.
func readFull(d Device, p []byte, off int64) error {
	n, err := d.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		return fmt.Errorf("read %d bytes at %d: got %d: %w", len(p), off, n, ErrTruncated)
	}
	return err
}

func writeFull(d Device, p []byte, off int64) error {
	n, err := d.WriteAt(p, off)
	if err != nil {
		return err
	}
	if n != len(p) {
		return fmt.Errorf("short write at %d: %d of %d bytes", off, n, len(p))
	}
	return nil
}

// AdviseRandom turns off the kernel's readahead for reads through f
// (POSIX_FADV_RANDOM), for a file served as a block device: the initiator
// reads ahead itself if it wants to, and readahead on current kernels (6.x)
// caches what it reads in large folios (up to the readahead window, 8 MiB
// on some disks), into which every later small write costs time in
// proportion to the folio's size: 11-17 µs per 4 KiB write into a file
// read with readahead, 2.6 µs into one read without
// (BenchmarkSmallWriteAfterRead; tests/bench/RESULTS.md).
// Without readahead a read caches its pages in small folios; warm 1 MiB
// reads cost more CPU, cold sequential reads issued in parallel are as
// fast. Advice only: an error (or a kernel ignoring it) costs speed, not
// correctness, and is ignored.
func AdviseRandom(f *os.File) { adviseRandom(f) }
