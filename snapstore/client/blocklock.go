package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/csnap/csnap/snapstore/wire"
)

// errNoBlockLocks: the server speaks a protocol version without
// BLOCK_LOCK.
var errNoBlockLocks = errors.New("the snapshot server does not support block locks (protocol version 5)")

// ErrBlockLockLost: a block lock may no longer be held (its connection
// was lost, or wire.LockTrust has passed since it was asked for): the
// operation it protects must not write.
var ErrBlockLockLost = errors.New("snapclient: block lock may have been released")

// LockBlocks takes an exclusive lock on bytes [off, off+n) of the volume,
// against every LockBlocks of every client of the server (BLOCK_LOCK),
// waiting in arrival order; COMPARE AND WRITE runs under it so that it is
// atomic across nodes. check, called just before the write the lock
// protects, returns ErrBlockLockLost unless the lock is certainly still
// held; unlock releases it (it must be called, once). With a server older
// than protocol version 5 the lock covers nothing beyond this client:
// check and unlock do nothing, and a warning is logged once.
func (v *Volume) LockBlocks(ctx context.Context, off int64, n int) (check func() error, unlock func(), err error) {
	c := v.c
	if n <= 0 || n > wire.MaxBlockLock {
		return nil, nil, v.errorf("block lock", off, int64(n), fmt.Errorf("length not in 1..%d", wire.MaxBlockLock))
	}
	if err := v.check(off, int64(n)); err != nil {
		return nil, nil, v.errorf("block lock", off, int64(n), err)
	}
	cl, err := c.start(kindBlockLock, &wire.BlockLock{Snapshot: v.snap, Offset: uint64(off), Length: uint32(n)})
	if err != nil {
		return nil, nil, v.errorf("block lock", off, int64(n), err)
	}
	m, err := c.wait(ctx, cl, c.cfg.Now().Add(c.cfg.IOTimeout))
	if errors.Is(err, errNoBlockLocks) {
		c.noBlocksLog.Do(func() {
			c.log.Warn("the snapshot server is too old for block locks: COMPARE AND WRITE is atomic on this node only")
		})
		return func() error { return nil }, func() {}, nil
	}
	if err == nil {
		if e, ok := m.(*wire.Error); ok {
			err = e
		}
	}
	if err != nil {
		return nil, nil, v.errorf("block lock", off, int64(n), err)
	}
	h := cl.id // final once answered: the handle
	check = func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.held.blockTrusted(h, c.cfg.Now()) {
			return ErrBlockLockLost
		}
		return nil
	}
	unlock = func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.unlockBlockLocked(h)
	}
	return check, unlock, nil
}

// unlockBlockLocked forgets block lock h and tells the current connection
// (with none, the server ends it with the connection it was granted on).
func (c *Client) unlockBlockLocked(h uint64) {
	if !c.held.releaseBlock(h) {
		return
	}
	if c.cn != nil {
		if err := c.cn.send(0, &wire.BlockUnlock{Handle: h}); err != nil {
			c.log.WithError(err).WithField("handle", h).Error("sending BLOCK_UNLOCK")
		}
	}
}
