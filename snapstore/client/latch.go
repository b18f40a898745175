package client

import (
	"errors"
	"fmt"
	"sync"
)

// The fsync error policy (snapstore/doc.go "IO errors"): after a write or
// flush of a device fails, what the device holds is unknown (Linux marks
// the pages of a failed fdatasync clean: a later one succeeds without
// writing them). So every later Flush of that device through this client,
// and so every SYNCHRONIZE CACHE and FUA write of the volumes that use it,
// fails, until the error is cleared by reopening (a new Client: csnapd's
// restart) or by ClearIOErrors (`csnap-admin volume recover --accept-data-loss`), which an
// operator runs once the cause is fixed, knowing that writes acknowledged
// before the failure without a successful flush may be lost.

// ErrEarlierIOError wraps the error a Flush returns because an earlier
// write or flush of the same device failed.
var ErrEarlierIOError = errors.New("an earlier write or flush of the device failed: data written since the last good flush may be lost")

// latchDev remembers the first failed write or flush of a Device.
type latchDev struct {
	Device
	name string
	mu   sync.Mutex
	err  error
	base uint64 // the device's failed-flush count at the last clear
}

// flushErrors is the device's count of failed flushes by any of its users
// (snapstore.FlushErrorCounter), 0 if it does not count.
func (d *latchDev) flushErrors() uint64 {
	if fc, ok := d.Device.(interface{ FlushErrors() uint64 }); ok {
		return fc.FlushErrors()
	}
	return 0
}

func (d *latchDev) set(err error) {
	d.mu.Lock()
	if d.err == nil {
		d.err = err
	}
	d.mu.Unlock()
}

// Err returns the latched error (nil if none).
func (d *latchDev) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (d *latchDev) clear() {
	d.mu.Lock()
	d.err = nil
	d.base = d.flushErrors()
	d.mu.Unlock()
}

func (d *latchDev) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Device.WriteAt(p, off)
	if err != nil {
		d.set(err)
	}
	return n, err
}

// Flush flushes the device and fails if it, or any write or flush before
// it since the last clear, failed.
func (d *latchDev) Flush() error {
	if err := d.Device.Flush(); err != nil {
		d.set(err)
		return err
	}
	d.mu.Lock()
	if n := d.flushErrors(); n != d.base && d.err == nil {
		// Another user of the device (the engine) saw a flush fail: the
		// writes it dropped may be ours.
		d.err = fmt.Errorf("%d flush(es) of the device by another user failed", n-d.base)
	}
	d.mu.Unlock()
	if err := d.Err(); err != nil {
		return fmt.Errorf("%s: %w (%w)", d.name, ErrEarlierIOError, err)
	}
	return nil
}

// PunchHole forwards to the device; one that cannot punch reports an
// error, and the client writes zeros instead.
func (d *latchDev) PunchHole(off, n int64) error {
	if ph, ok := d.Device.(PunchHoler); ok {
		return ph.PunchHole(off, n)
	}
	return errors.New("device cannot punch holes")
}

// IOError returns the write or flush error that makes this client's
// flushes fail (the origin's first, then the store's), nil if none.
func (c *Client) IOError() error {
	for _, d := range []*latchDev{c.originLatch, c.storeLatch} {
		if err := d.Err(); err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
	}
	return nil
}

// ClearIOErrors forgets the failed writes and flushes: flushes succeed
// again. For an operator who fixed the cause and accepts that writes
// acknowledged before the failure without a good flush may be lost.
func (c *Client) ClearIOErrors() {
	c.originLatch.clear()
	c.storeLatch.clear()
}
