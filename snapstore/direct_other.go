//go:build !linux

package snapstore

import "fmt"

// OpenDirect is implemented on Linux only.
func OpenDirect(path string) (*FileDevice, error) { return openDirect(path, 0) }

func openDirect(path string, _ int64) (*FileDevice, error) {
	return nil, fmt.Errorf("open device %s: %w on this system", path, ErrDirectIOUnsupported)
}
