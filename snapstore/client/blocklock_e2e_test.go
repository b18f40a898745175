package client

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/snapstore/wire"
)

// TestE2EBlockLockMutualExclusion: clients of two nodes increment a
// counter in the origin's first sector by read-modify-write under
// LockBlocks, concurrently; no increment is lost.
func TestE2EBlockLockMutualExclusion(t *testing.T) {
	e := newE2E(t)
	c2 := e.client(t, wire.ClientID{2}, "node-2")
	const per = 100
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, c := range []*Client{e.c, c2} {
		wg.Go(func() {
			o := c.Origin()
			buf := make([]byte, 512)
			for range per {
				check, unlock, err := o.LockBlocks(ctx5(t), 0, 512)
				if err != nil {
					errs <- err
					return
				}
				err = o.ReadAt(buf, 0)
				time.Sleep(100 * time.Microsecond) // widen the window a lost update needs
				if err == nil {
					binary.BigEndian.PutUint64(buf, binary.BigEndian.Uint64(buf)+1)
					if err = check(); err == nil {
						err = o.WriteAt(buf, 0, false)
					}
				}
				unlock()
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	if err := e.c.Origin().ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint64(buf); got != 2*per {
		t.Fatalf("counter %d after %d locked increments: the block locks did not exclude each other", got, 2*per)
	}
}

// TestE2EBlockLockStruckOff: a new server grants its first block lock
// only after wire.LockLease. A client holding a block lock is struck
// off (its node left). Another client's lock on the same bytes is
// granted no earlier than wire.LockLease after the first was asked for,
// and the first client's check then says its lock may be gone.
func TestE2EBlockLockStruckOff(t *testing.T) {
	var left atomic.Bool
	e := newE2EWith(t, server.MembershipFunc(func(node string) bool { return node != "node-1" || !left.Load() }))
	c2 := e.client(t, wire.ClientID{2}, "node-2")
	// A new server grants no block lock in its first wire.LockLease.
	started := time.Now()
	_, unlock1, err := c2.Origin().LockBlocks(ctx5(t), 0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	unlock1()
	if d := time.Since(started); d < wire.LockLease-100*time.Millisecond {
		t.Fatalf("a new server granted a block lock after %v", d)
	}
	asked := time.Now()
	check, unlock, err := e.c.Origin().LockBlocks(ctx5(t), 4096, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := check(); err != nil {
		t.Fatalf("a fresh lock: %v", err)
	}
	// Disjoint bytes are not held back.
	_, unlock2, err := c2.Origin().LockBlocks(ctx5(t), 0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
	left.Store(true)
	e.srv.NodeLeft("node-1")
	_, unlock3, err := c2.Origin().LockBlocks(ctx5(t), 4096+512, 512)
	if err != nil {
		t.Fatal(err)
	}
	unlock3()
	if d := time.Since(asked); d < wire.LockLease {
		t.Fatalf("the struck-off client's block lock was given to another %v after it was asked for, within the lease %v", d, wire.LockLease)
	}
	if err := check(); !errors.Is(err, ErrBlockLockLost) {
		t.Fatalf("check of the struck-off client's lock: %v, want ErrBlockLockLost", err)
	}
}
