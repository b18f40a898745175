package snapstore

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gateDev blocks reads of block 0 (a superblock copy: only Check reads it
// after Open) while armed, until released.
type gateDev struct {
	Device
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (d *gateDev) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 && d.armed.CompareAndSwap(true, false) {
		close(d.reached)
		<-d.release
	}
	return d.Device.ReadAt(p, off)
}

// TestCheckDoesNotStallWrites: while a check is in the middle of reading
// the store, origin writes that need copy-outs, snapshot creation and
// deletion complete; the check then reports the store as it was when it
// started, clean.
func TestCheckDoesNotStallWrites(t *testing.T) {
	ctx := context.Background()
	od, msd := formatted(t, 4<<20, 16<<20, FormatOptions{ChunkSize: 16 << 10, JournalBlocks: 256})
	sd := &gateDev{Device: msd, reached: make(chan struct{}), release: make(chan struct{})}
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreateSnapshot(ctx, "s1", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for c := uint64(0); c < 64; c += 2 {
		if _, err := e.PrepareOriginWrite(ctx, c, 1); err != nil {
			t.Fatal(err)
		}
	}
	sd.armed.Store(true)
	type res struct {
		r   *CheckResult
		err error
	}
	done := make(chan res, 1)
	go func() {
		r, err := e.Check(ctx, nil)
		done <- res{r, err}
	}()
	<-sd.reached
	ops := make(chan error, 1)
	go func() {
		for c := uint64(1); c < 200; c += 2 {
			if _, err := e.PrepareOriginWrite(ctx, c, 1); err != nil {
				ops <- err
				return
			}
		}
		si, err := e.CreateSnapshot(ctx, "s2", CreateOptions{})
		if err == nil {
			_, err = e.PrepareOriginWrite(ctx, 0, 8)
		}
		if err == nil {
			err = e.DeleteSnapshot(ctx, si.ID)
		}
		if err == nil {
			err = e.Reclaim(ctx)
		}
		ops <- err
	}()
	select {
	case err := <-ops:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(sd.release)
		t.Fatal("copy-outs and snapshot operations stalled behind a running check")
	}
	close(sd.release)
	r := <-done
	if r.err != nil || !r.r.Clean() {
		t.Fatalf("check during writes: %v %v", r.err, r.r.Problems)
	}
	if r.r.Exceptions != 32 {
		t.Fatalf("check saw %d exceptions, want the 32 of its start", r.r.Exceptions)
	}
	r2, err := e.Check(ctx, nil)
	if err != nil || !r2.Clean() {
		t.Fatalf("check after: %v %v", err, r2.Problems)
	}
}

// TestCheckUnderLoad runs checks back to back (one at a time) while
// writers copy out and snapshots come and go; every check is clean.
func TestCheckUnderLoad(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	od, sd := formatted(t, 8<<20, 32<<20, FormatOptions{ChunkSize: 16 << 10, JournalBlocks: 512})
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(w)}, 16<<10)
			for i := 0; ctx.Err() == nil; i++ {
				if w == 0 && i%40 == 0 {
					si, err := e.CreateSnapshot(ctx, fmt.Sprintf("s%d", i), CreateOptions{Writable: i%80 == 0})
					if err != nil {
						errs <- err
						return
					}
					if i%120 == 0 {
						if err := e.DeleteSnapshot(ctx, si.ID); err != nil {
							errs <- err
							return
						}
					}
				}
				c := uint64((i*7 + w*131) % 512)
				if _, err := e.PrepareOriginWrite(ctx, c, 1); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				od.WriteAt(buf, int64(c)*(16<<10))
			}
		}(w)
	}
	var checks sync.WaitGroup
	for k := 0; k < 2; k++ { // two checkers: they take turns
		checks.Add(1)
		go func() {
			defer checks.Done()
			for i := 0; i < 5; i++ {
				r, err := e.Check(ctx, nil)
				if err != nil {
					errs <- err
					return
				}
				if !r.Clean() {
					errs <- fmt.Errorf("check under load: %v", r.Problems)
					return
				}
			}
		}()
	}
	checks.Wait()
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
