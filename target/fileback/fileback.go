// Package fileback is a scsi.Backend over a plain file or block device: the
// reference backend the snapshot client is measured against, and what
// csnapd exports where no snapshot store is involved.
package fileback

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/csnap/csnap/target/scsi"
)

// File is a scsi.Backend over an open file.
type File struct {
	f        *os.File
	size     int64
	readOnly bool
	id       scsi.Identity
	punch    bool // fallocate(PUNCH_HOLE) works here
}

// Open opens path read-write (or read-only) as a backend. size 0 means the
// file's current size (rounded down to whole blocks); a larger size grows a
// regular file sparsely.
func Open(path string, size int64, readOnly bool, id scsi.Identity) (*File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("fileback: %w", err)
	}
	cur, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fileback: size of %s: %w", path, err)
	}
	if size == 0 {
		size = cur
	}
	size -= size % scsi.BlockSize
	if size <= 0 {
		f.Close()
		return nil, fmt.Errorf("fileback: %s is empty", path)
	}
	if size > cur {
		if readOnly {
			f.Close()
			return nil, fmt.Errorf("fileback: %s is %d bytes, smaller than %d", path, cur, size)
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("fileback: growing %s: %w", path, err)
		}
	}
	// No readahead: the initiator reads ahead if it wants to, and the
	// kernel's readahead caches the file in large folios that make every
	// later small write slower (snapstore.AdviseRandom explains; this
	// package must not import snapstore). Advice only, so errors are
	// ignored.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
	return &File{f: f, size: size, readOnly: readOnly, id: id, punch: !readOnly}, nil
}

// Create makes a sparse file of the given size if it does not exist yet.
// The file and its directory entry are durable when it returns.
func Create(path string, size int64) error {
	return create(path, size, syncDir)
}

// create is Create with the directory sync it calls after creating the
// file (tests watch it).
func create(path string, size int64, syncDir func(dir string) error) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fileback: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("fileback: sizing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fileback: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("fileback: syncing the directory of %s: %w", path, err)
	}
	return nil
}

// syncDir makes the directory's entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// IdentityFor derives a stable identity from a name; see scsi.IdentityFor.
func IdentityFor(name, product string) scsi.Identity { return scsi.IdentityFor(name, product) }

func (b *File) ReadAt(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > b.size {
		return fmt.Errorf("fileback: read [%d,+%d) beyond size %d", off, len(p), b.size)
	}
	n, err := b.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err == io.EOF {
		// A regular file shorter than its exported size reads zeros.
		clear(p[n:])
		err = nil
	}
	return err
}

func (b *File) WriteAt(p []byte, off int64, fua bool) error {
	if b.readOnly {
		return &scsi.SenseError{Key: scsi.SenseDataProtect, ASC: 0x27, Err: errors.New("read-only backend")}
	}
	if off < 0 || off+int64(len(p)) > b.size {
		return fmt.Errorf("fileback: write [%d,+%d) beyond size %d", off, len(p), b.size)
	}
	if err := writePieces(b.f, p, off); err != nil {
		return err
	}
	if fua {
		return b.Flush()
	}
	return nil
}

// writePiece bounds each buffered write, as snapstore.FileDevice does: a
// kernel that caches files in large folios makes later small writes into
// ranges written by large ones much slower (tests/bench/RESULTS.md).
const writePiece = 64 << 10

// writePieces writes p at off in pieces that never cross a multiple of
// writePiece.
func writePieces(f *os.File, p []byte, off int64) error {
	for len(p) > 0 {
		k := min(int64(len(p)), writePiece-off%writePiece)
		if _, err := f.WriteAt(p[:k], off); err != nil {
			return err
		}
		p, off = p[k:], off+k
	}
	return nil
}

// Flush makes completed writes durable with fdatasync.
func (b *File) Flush() error {
	if b.readOnly {
		return nil
	}
	return syscall.Fdatasync(int(b.f.Fd()))
}

// Unmap punches a hole (reads return zeros); where the file system cannot,
// it writes zeros.
func (b *File) Unmap(off, length int64) error {
	if b.readOnly {
		return &scsi.SenseError{Key: scsi.SenseDataProtect, ASC: 0x27, Err: errors.New("read-only backend")}
	}
	if off < 0 || off+length > b.size {
		return fmt.Errorf("fileback: unmap [%d,+%d) beyond size %d", off, length, b.size)
	}
	const punchHole, keepSize = 0x02, 0x01
	if b.punch {
		err := syscall.Fallocate(int(b.f.Fd()), punchHole|keepSize, off, length)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.ENOTTY) && !errors.Is(err, syscall.ENODEV) {
			return fmt.Errorf("fileback: punching hole: %w", err)
		}
		b.punch = false
	}
	zero := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if _, err := b.f.WriteAt(zero[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

func (b *File) Size() int64             { return b.size }
func (b *File) ReadOnly() bool          { return b.readOnly }
func (b *File) Identity() scsi.Identity { return b.id }
func (b *File) Close() error            { return b.f.Close() }

// Mapped reports whether the block range starting at off is allocated in the
// file and how far that state extends, using SEEK_DATA / SEEK_HOLE. It lets
// GET LBA STATUS report deallocated ranges.
func (b *File) Mapped(off int64) (mapped bool, length int64, err error) {
	const seekData, seekHole = 3, 4
	fd := int(b.f.Fd())
	data, err := syscall.Seek(fd, off, seekData)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) {
			return false, b.size - off, nil // a hole to the end
		}
		return true, b.size - off, nil // no SEEK_DATA support: all mapped
	}
	if data > off {
		return false, min(data, b.size) - off, nil
	}
	hole, err := syscall.Seek(fd, off, seekHole)
	if err != nil {
		return true, b.size - off, nil
	}
	return true, min(hole, b.size) - off, nil
}
