//go:build linux

package snapstore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// OpenDirect opens path (a regular file or a block device) read-write for
// direct IO (O_DIRECT): reads and writes bypass this host's page cache, so
// they see, and are seen by, other hosts sharing the device. ReadAt and
// WriteAt accept any buffer, offset and length; aligned ones (see
// Alignment and AlignedBuffer) go straight to the device, others through a
// bounce buffer. A file system that refuses direct IO gives an error
// matching ErrDirectIOUnsupported.
func OpenDirect(path string) (*FileDevice, error) { return openDirect(path, 0) }

// openDirect is OpenDirect with the alignment forced to align (a multiple
// of the device's own; 0: the device's own). Tests use it to exercise
// 4 KiB read-modify-writes on a file system that needs only 512 bytes.
func openDirect(path string, align int64) (*FileDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if errors.Is(err, syscall.EINVAL) {
		return nil, fmt.Errorf("open device %s: %w: %w", path, ErrDirectIOUnsupported, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open device: %w", err)
	}
	d, err := newDirect(f, align)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open device %s for direct IO: %w", path, err)
	}
	return &FileDevice{f: f, direct: d}, nil
}

func newDirect(f *os.File, force int64) (*directIO, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	align, err := deviceAlign(f, fi)
	if err != nil {
		return nil, err
	}
	if force != 0 {
		if force%align != 0 {
			return nil, fmt.Errorf("alignment %d is not a multiple of the device's %d", force, align)
		}
		align = force
	}
	if align <= 0 || align&(align-1) != 0 || align > maxDirectAlign {
		return nil, fmt.Errorf("direct IO alignment %d: want a power of two up to %d", align, maxDirectAlign)
	}
	d := &directIO{rw: fileRaw{f: f, fd: int(f.Fd())}, align: align, regular: fi.Mode().IsRegular()}
	// Some file systems accept O_DIRECT at open and refuse the IO itself.
	if _, err := d.readDirect(d.buffer(int(align)), 0); err != nil && err != io.EOF {
		if errors.Is(err, syscall.EINVAL) {
			return nil, fmt.Errorf("%w: a probe read failed: %w", ErrDirectIOUnsupported, err)
		}
		return nil, fmt.Errorf("probe read: %w", err)
	}
	return d, nil
}

// deviceAlign is the alignment the kernel requires of direct IO on f: the
// logical block size of a block device (BLKSSZGET), or what statx reports
// for a file (STATX_DIOALIGN, Linux 6.1 and later); 4096 when neither
// answers, which satisfies both 512-byte and 4 KiB-native devices. The
// smallest legal alignment is worth finding: a 512-byte write on a
// 512-byte-sector device is then a plain write, not a read-modify-write
// of 4 KiB (which another host writing the neighbouring sectors at the
// same moment could lose).
func deviceAlign(f *os.File, fi os.FileInfo) (int64, error) {
	fd := int(f.Fd())
	if fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0 {
		if n, err := unix.IoctlGetInt(fd, unix.BLKSSZGET); err == nil && n > 0 {
			return int64(n), nil
		}
		return 4096, nil
	}
	var st unix.Statx_t
	err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st)
	if err != nil || st.Mask&unix.STATX_DIOALIGN == 0 {
		return 4096, nil
	}
	if st.Dio_offset_align == 0 {
		return 0, ErrDirectIOUnsupported // statx's way of saying so
	}
	return int64(max(st.Dio_offset_align, st.Dio_mem_align)), nil
}

// fileRaw is rawIO over a file descriptor. It calls pread and pwrite
// itself rather than os.File's ReadAt and WriteAt, which loop over short
// transfers: after a short direct read at the end of a file the next
// offset is unaligned and the kernel would refuse it.
type fileRaw struct {
	f  *os.File // keeps the descriptor open while the device is in use
	fd int
}

func (r fileRaw) pread(p []byte, off int64) (int, error) {
	for {
		n, err := syscall.Pread(r.fd, p, off)
		if err == syscall.EINTR {
			continue
		}
		runtime.KeepAlive(r.f)
		if err != nil {
			return 0, &os.PathError{Op: "pread", Path: r.f.Name(), Err: err}
		}
		return n, nil
	}
}

func (r fileRaw) pwrite(p []byte, off int64) (int, error) {
	for {
		n, err := syscall.Pwrite(r.fd, p, off)
		if err == syscall.EINTR {
			continue
		}
		runtime.KeepAlive(r.f)
		if err != nil {
			return 0, &os.PathError{Op: "pwrite", Path: r.f.Name(), Err: err}
		}
		return n, nil
	}
}

func (r fileRaw) size() (int64, error) {
	fi, err := r.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (r fileRaw) truncate(size int64) error { return r.f.Truncate(size) }
