// Package faultdev provides in-memory block devices that simulate a power
// cut: writes not yet flushed are lost, kept or torn (at 512-byte sector
// granularity) at random, as a disk with a volatile write cache would do.
// Several devices share one Power, so a cut hits them all at the same
// instant. The devices satisfy snapstore.Device.
//
// Besides power cuts, a Power injects IO errors (FailAt) and a Device can
// be made thin (SetThin: writes into space never written before fail with
// ENOSPC once a budget is used up). Errors follow what Linux does with a
// file in the page cache:
//   - a failed WriteAt changes nothing;
//   - a failed Flush forgets the writes it should have made durable: they
//     stay visible to reads (the page cache still holds them) but are no
//     longer pending, so a later successful Flush does not make them
//     durable and a power cut loses them. This is why a failed flush must
//     never be followed by a GOOD flush for the same data.
package faultdev

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"syscall"
	"time"
)

// SectorSize is the unit of write atomicity.
const SectorSize = 512

// ErrPowerCut is returned by every operation after the power was cut.
var ErrPowerCut = errors.New("faultdev: power cut")

// ErrNoSpace is what a thin device's write returns when its budget is used
// up: it is syscall.ENOSPC, as a file system would return.
var ErrNoSpace error = syscall.ENOSPC

// Power is the power supply shared by a set of devices.
type Power struct {
	mu       sync.Mutex
	rng      *rand.Rand
	ops      int64
	crashAt  int64
	cut      bool
	broken   error // a sticky fault fired: every write and flush fails
	failures int64
	devs     []*Device
	delay    time.Duration
	fails    []fault
}

// fault is an armed error injection.
type fault struct {
	at     int64 // counted operation number
	err    error
	flush  bool // only a Flush can take it (the first one at or after at)
	sticky bool // every later operation fails too, until Heal
}

// Fault describes an error to inject with FailAt.
type Fault struct {
	// Err is returned by the failing operation (e.g. syscall.EIO,
	// syscall.ENOSPC).
	Err error
	// FlushOnly: the fault hits the first Flush at or after the chosen
	// operation (a failed fdatasync) rather than whatever operation comes.
	FlushOnly bool
	// Sticky: the device stays failed: every later WriteAt and Flush on
	// any device of this Power fails with Err until Heal.
	Sticky bool
}

// FailAt arms f at the n-th counted operation (WriteAt or Flush on any
// device) from now (n >= 1). Several faults may be armed at once.
func (p *Power) FailAt(n int64, f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n < 1 {
		n = 1
	}
	p.fails = append(p.fails, fault{at: p.ops + n, err: f.Err, flush: f.FlushOnly, sticky: f.Sticky})
}

// Heal disarms every fault, sticky ones included.
func (p *Power) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fails = nil
	p.broken = nil
}

// Failures returns the number of operations that failed by injection.
func (p *Power) Failures() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failures
}

// injected returns the error the operation just counted must fail with, if
// any. p.mu held; called after count.
func (p *Power) injected(flush bool) error {
	if p.broken != nil {
		p.failures++
		return p.broken
	}
	for i, f := range p.fails {
		if p.ops < f.at || (f.flush && !flush) {
			continue
		}
		p.fails = append(p.fails[:i], p.fails[i+1:]...)
		if f.sticky {
			p.broken = f.err
		}
		p.failures++
		return f.err
	}
	return nil
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
	d := &Device{p: p, cur: make([]byte, size), durable: make([]byte, size),
		written: make([]bool, (size+ThinPage-1)/ThinPage)}
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
	// thin provisioning (SetThin): written marks the pages ever written
	// (or loaded); budget is how many more may be.
	thin    bool
	written []bool
	budget  int64
	// flushErrs counts failed flushes (FlushErrors).
	flushErrs uint64
}

// FlushErrors returns the number of this device's flushes that failed
// (snapstore.FlushErrorCounter).
func (d *Device) FlushErrors() uint64 {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	return d.flushErrs
}

// ThinPage is the allocation unit of a thin device.
const ThinPage = 4096

// SetThin makes the device thin: a write that touches pages (ThinPage
// bytes) never written before needs that many pages of budget and fails
// with ENOSPC, changing nothing, when there are not enough left. Pages
// loaded or written before count as allocated. budget < 0 turns
// thin provisioning off.
func (d *Device) SetThin(budget int64) {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	if budget < 0 {
		d.thin = false
		return
	}
	d.thin = true
	d.budget = budget
}

// AddBudget gives a thin device n more pages (space freed on the thin
// pool, say).
func (d *Device) AddBudget(n int64) {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	d.budget += n
}

// allocate accounts a write on a thin device. d.p.mu held.
func (d *Device) allocate(off, n int64) error {
	if !d.thin {
		d.markWritten(off, n)
		return nil
	}
	var fresh []int64
	for pg := off / ThinPage; pg*ThinPage < off+n; pg++ {
		if !d.written[pg] {
			fresh = append(fresh, pg)
		}
	}
	if int64(len(fresh)) > d.budget {
		return ErrNoSpace
	}
	d.budget -= int64(len(fresh))
	d.markWritten(off, n)
	return nil
}

func (d *Device) markWritten(off, n int64) {
	for pg := off / ThinPage; pg*ThinPage < off+n; pg++ {
		d.written[pg] = true
	}
}

// Load sets the device contents durably, without counting an operation
// (test setup).
func (d *Device) Load(data []byte, off int64) {
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	copy(d.cur[off:], data)
	copy(d.durable[off:], data)
	d.markWritten(off, int64(len(data)))
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
	if err := d.p.injected(false); err != nil {
		return 0, err
	}
	if err := d.allocate(off, int64(len(b))); err != nil {
		return 0, err
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
	if err := d.p.injected(true); err != nil {
		// Like Linux after a failed fdatasync: the pages are marked clean,
		// what they hold is readable but no later flush writes it.
		d.pending = nil
		d.flushErrs++
		return err
	}
	for _, w := range d.pending {
		copy(d.durable[w.off:], w.data)
	}
	d.pending = nil
	return nil
}

func (d *Device) Size() (int64, error) { return int64(len(d.cur)), nil }
