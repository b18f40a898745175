//go:build !linux

package snapstore

import "fmt"

// NextData implements DataExtents; on this system it cannot tell (the
// caller assumes data everywhere).
func (d *FileDevice) NextData(off int64) (start, end int64, ok bool, err error) {
	return 0, 0, false, fmt.Errorf("%s: %w", d.f.Name(), ErrNoExtentInfo)
}
