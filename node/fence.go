package node

import (
	"errors"
	"sync/atomic"

	"github.com/csnap/csnap/snapstore"
)

// errFenced is what a fenced device answers to writes.
var errFenced = errors.New("device fenced: this node no longer serves the volume")

// fencedDev is the device a snapshot server's engine writes through. When
// the node is deposed (its lease ran out, or a newer term appeared) the
// device is fenced before anything else happens: every later write and
// flush fails, so the deposed engine cannot touch metadata that a newer
// server now owns, whatever its goroutines were doing.
type fencedDev struct {
	snapstore.Device
	fenced atomic.Bool
}

func (d *fencedDev) fence() { d.fenced.Store(true) }

func (d *fencedDev) isFenced() bool { return d.fenced.Load() }

func (d *fencedDev) WriteAt(p []byte, off int64) (int, error) {
	if d.fenced.Load() {
		return 0, errFenced
	}
	return d.Device.WriteAt(p, off)
}

func (d *fencedDev) Flush() error {
	if d.fenced.Load() {
		return errFenced
	}
	return d.Device.Flush()
}
