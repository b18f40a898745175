package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/csnap/csnap/snapstore"
)

// createStoreFile makes a snapshot-store file of size bytes with every
// block allocated (fallocate), so the file system cannot run out of space
// under the store later (SPEC "Store full": a store that still meets
// ENOSPC, on a thin device say, drops snapshots like a full store). It
// reports whether the file was created (false: it existed and is left
// alone). When the file system has no room the file is removed and the
// error says how much was needed. A file system without fallocate gets a
// sparse file. The directory is synced so the new name survives a crash.
func createStoreFile(path string, size int64) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		os.Remove(path)
		return false, err
	}
	if err := allocateFile(f, size); err != nil && !errors.Is(err, errNoFallocate) {
		os.Remove(path)
		return false, fmt.Errorf("allocating the %d bytes of store %s: %w", size, path, err)
	}
	if err := f.Sync(); err != nil {
		return true, err
	}
	return true, syncDir(filepath.Dir(path))
}

// errNoFallocate: the file system cannot preallocate.
var errNoFallocate = errors.New("fallocate not supported")

// allocateFile allocates every block of f's first size bytes without
// changing its contents (fallocate mode 0: holes become allocated,
// unwritten extents; data already there stays).
func allocateFile(f *os.File, size int64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return errNoFallocate
	}
	return err
}

// allocateStore allocates the holes of an existing regular store file
// (one made sparse by an older csnapd, or by hand) when the volume is
// opened. A block device, or a file system that cannot, is left as it is;
// ENOSPC is returned for the caller to log: the engine copes with a store
// that runs out of space (it drops snapshots), it just should not have to.
func allocateStore(d *fileDev) error {
	fi, err := d.f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return err
	}
	if err := allocateFile(d.f, fi.Size()); err != nil && !errors.Is(err, errNoFallocate) {
		return fmt.Errorf("allocating store %s (%d bytes): %w", d.f.Name(), fi.Size(), err)
	}
	return nil
}

// allocateDevice is allocateStore for a store that is a file.
func allocateDevice(d Device) error {
	if fd, ok := d.(*fileDev); ok {
		return allocateStore(fd)
	}
	return nil
}

// FlushErrors forwards the device's count of failed flushes
// (snapstore.FlushErrorCounter), so the engine learns of a flush of the
// store that failed in the node's client, and the other way round.
func (d *fencedDev) FlushErrors() uint64 {
	if fc, ok := d.Device.(snapstore.FlushErrorCounter); ok {
		return fc.FlushErrors()
	}
	return 0
}
