package client

import (
	"errors"
	"sync"
	"syscall"
	"testing"
)

// faultyDev fails its next flush or write once when told to.
type faultyDev struct {
	*memDev
	mu                    sync.Mutex
	failFlush, failWrites int
}

func (d *faultyDev) Flush() error {
	d.mu.Lock()
	fail := d.failFlush > 0
	if fail {
		d.failFlush--
	}
	d.mu.Unlock()
	if fail {
		return syscall.EIO
	}
	return d.memDev.Flush()
}

func (d *faultyDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	fail := d.failWrites > 0
	if fail {
		d.failWrites--
	}
	d.mu.Unlock()
	if fail {
		return 0, syscall.EIO
	}
	return d.memDev.WriteAt(p, off)
}

// TestFlushErrorSticks: after a device's flush fails once, every later
// flush of the volume (SYNCHRONIZE CACHE) fails too, until the error is
// cleared: the writes that flush covered may be lost although the device
// would now report a good flush.
func TestFlushErrorSticks(t *testing.T) {
	var od *faultyDev
	e := newEnv(t, func(c *Config) {
		od = &faultyDev{memDev: c.Origin.(*memDev)}
		c.Origin = od
	})
	v := e.c.Origin()
	if err := v.WriteAt(fill(512, 'a'), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(fill(512, 'b'), 0, false); err != nil {
		t.Fatal(err)
	}
	od.mu.Lock()
	od.failFlush = 1
	od.mu.Unlock()
	if err := v.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("failing flush: %v", err)
	}
	for i := 0; i < 3; i++ {
		if err := v.Flush(); !errors.Is(err, ErrEarlierIOError) {
			t.Fatalf("flush %d after a failed flush: %v, want an error (no GOOD for possibly lost data)", i, err)
		}
	}
	if err := v.WriteAt(fill(512, 'c'), 0, true); err == nil {
		t.Fatal("FUA write after a failed flush reported durable")
	}
	if e.c.IOError() == nil {
		t.Fatal("IOError is nil after a failed flush")
	}
	e.c.ClearIOErrors()
	if err := v.Flush(); err != nil {
		t.Fatalf("flush after ClearIOErrors: %v", err)
	}
	// A failed write latches as well.
	od.mu.Lock()
	od.failWrites = 1
	od.mu.Unlock()
	if err := v.WriteAt(fill(512, 'd'), 4096, false); err == nil {
		t.Fatal("failing write succeeded")
	}
	if err := v.Flush(); !errors.Is(err, ErrEarlierIOError) {
		t.Fatalf("flush after a failed write: %v", err)
	}
}

// countingDev counts failed flushes like snapstore.FileDevice.
type countingDev struct {
	*memDev
	mu   sync.Mutex
	errs uint64
}

func (d *countingDev) FlushErrors() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.errs
}

// TestFlushErrorOfAnotherUser: a flush of the store that failed for
// another user of the device (the engine, sharing the file descriptor,
// which Linux tells once) also fails this client's next flush.
func TestFlushErrorOfAnotherUser(t *testing.T) {
	var sd *countingDev
	e := newEnv(t, func(c *Config) {
		sd = &countingDev{memDev: c.Store.(*memDev)}
		c.Store = sd
	})
	s := setupSnapshot(t, e, true)
	v := e.c.Snapshot(uint32(s.ID), true)
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	sd.mu.Lock()
	sd.errs++ // the engine's flush failed
	sd.mu.Unlock()
	if err := v.Flush(); !errors.Is(err, ErrEarlierIOError) {
		t.Fatalf("flush after another user's failed flush: %v", err)
	}
}
