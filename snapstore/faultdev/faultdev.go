// Package faultdev provides in-memory block devices that simulate a power
// cut: writes not yet flushed are lost, kept or torn (at 512-byte sector
// granularity) at random, as a disk with a volatile write cache would do.
// Several devices share one Power, so a cut hits them all at the same
// instant. The devices satisfy snapstore.Device.
package faultdev

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"time"
)

// SectorSize is the unit of write atomicity.
const SectorSize = 512

// ErrPowerCut is returned by every operation after the power was cut.
var ErrPowerCut = errors.New("faultdev: power cut")

// Power is the power supply shared by a set of devices.
type Power struct {
	mu      sync.Mutex
	rng     *rand.Rand
	ops     int64
	crashAt int64
	cut     bool
	devs    []*Device
	delay   time.Duration
}

// SetFlushDelay makes every Flush take d (outside any lock), like a real
// disk cache flush, so concurrent callers overlap with it.
func (p *Power) SetFlushDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// NewPower returns a power supply whose tear decisions come from seed.
func NewPower(seed int64) *Power { return &Power{rng: rand.New(rand.NewSource(seed))} }

// NewDevice returns a zero-filled device of size bytes.
func (p *Power) NewDevice(size int64) *Device {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := &Device{p: p, cur: make([]byte, size), durable: make([]byte, size)}
	p.devs = append(p.devs, d)
	return d
}

// CrashAfter arms a power cut at the n-th counted operation (WriteAt or
// Flush on any device) from now; n <= 0 disarms.
func (p *Power) CrashAfter(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n <= 0 {
		p.crashAt = 0
		return
	}
	p.crashAt = p.ops + n
}

// Ops returns the number of counted operations so far.
func (p *Power) Ops() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ops
}

// IsCut reports whether the power is cut.
func (p *Power) IsCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// Cut cuts the power now.
func (p *Power) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
}

// Restore brings the power back: on every device, each write since the last
// flush is independently lost, kept, or torn (a random subset of its
// sectors kept), in issue order. Reads then see the surviving image.
func (p *Power) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range p.devs {
		img := d.durable
		for _, w := range d.pending {
			switch p.rng.Intn(3) {
			case 0: // lost
			case 1:
				copy(img[w.off:], w.data)
			case 2:
				for s := w.off / SectorSize * SectorSize; s < w.off+int64(len(w.data)); s += SectorSize {
					if p.rng.Intn(2) == 0 {
						continue
					}
					lo, hi := max(s, w.off), min(s+SectorSize, w.off+int64(len(w.data)))
					copy(img[lo:hi], w.data[lo-w.off:hi-w.off])
				}
			}
		}
		d.pending = nil
		d.cur = append([]byte(nil), img...)
	}
	p.cut = false
	p.crashAt = 0
}

// count registers one operation. It reports whether the power is cut and
// whether this very operation was the one cut short. p.mu held.
func (p *Power) count() (cut, now bool) {
	if p.cut {
		return true, false
	}
	p.ops++
	if p.crashAt > 0 && p.ops >= p.crashAt {
		p.cut = true
		return true, true
	}
	return false, false
}

type write struct {
	off  int64
	data []byte
}

// Device is a simulated disk with a volatile write cache.
type Device struct {
	p       *Power
	cur     []byte // what reads return
	durable []byte // what survives a power cut
	pending []write
}

// Load sets the device contents durably, without counting an operation
// (test setup).
func (d *Device) Load(data []byte, off int64) {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	copy(d.cur[off:], data)
	copy(d.durable[off:], data)
}

func (d *Device) ReadAt(b []byte, off int64) (int, error) {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	if d.p.cut {
		return 0, ErrPowerCut
	}
	if off < 0 || off > int64(len(d.cur)) {
		return 0, io.EOF
	}
	n := copy(b, d.cur[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func (d *Device) WriteAt(b []byte, off int64) (int, error) {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	if off < 0 || off+int64(len(b)) > int64(len(d.cur)) {
		return 0, fmt.Errorf("faultdev: write [%d,+%d) beyond size %d", off, len(b), len(d.cur))
	}
	if cut, now := d.p.count(); cut {
		if now {
			// The write in flight at the cut may be partly on the media.
			d.pending = append(d.pending, write{off: off, data: append([]byte(nil), b...)})
		}
		return 0, ErrPowerCut
	}
	copy(d.cur[off:], b)
	d.pending = append(d.pending, write{off: off, data: append([]byte(nil), b...)})
	return len(b), nil
}

func (d *Device) Flush() error {
	d.p.mu.Lock()
	delay := d.p.delay
	d.p.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	if cut, _ := d.p.count(); cut {
		return ErrPowerCut
	}
	for _, w := range d.pending {
		copy(d.durable[w.off:], w.data)
	}
	d.pending = nil
	return nil
}

func (d *Device) Size() (int64, error) { return int64(len(d.cur)), nil }
