package snapstore

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// NextData implements DataExtents with lseek SEEK_DATA and SEEK_HOLE: on
// a sparse regular file the holes are reported as zeros; a block device
// or a file system without hole tracking reports data everywhere (the
// kernel's generic answer). Each lseek returns its own result, so
// concurrent calls (and ReadAt, WriteAt: pread, pwrite) do not interfere.
func (d *FileDevice) NextData(off int64) (start, end int64, ok bool, err error) {
	fd := int(d.f.Fd())
	start, err = unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return 0, 0, false, nil // no data at or after off
	}
	if err != nil {
		return 0, 0, false, fmt.Errorf("%s: seek data from %d: %w", d.f.Name(), off, err)
	}
	end, err = unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, false, fmt.Errorf("%s: seek hole from %d: %w", d.f.Name(), start, err)
	}
	return start, end, true, nil
}
