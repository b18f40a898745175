package server

import (
	"testing"

	"github.com/csnap/csnap/snapstore/wire"
)

// TestBlockLocks: BLOCK_LOCK is granted at once on free bytes and
// waits, in arrival order, behind an overlapping lock of another client
// until BLOCK_UNLOCK; a waiting request is withdrawn with its
// connection; a client of protocol version 4 is told it is unsupported.
func TestBlockLocks(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	c := connect(t, e.addr, cid(3), "n3")
	ha, ch := a.send(&wire.BlockLock{Offset: 4096, Length: 1024})
	mustType[*wire.BlockLockOK](t, a.wait(ch))
	// Other bytes, or the same bytes of another snapshot: granted.
	mustType[*wire.BlockLockOK](t, b.call(&wire.BlockLock{Offset: 0, Length: 4096}))
	mustType[*wire.BlockLockOK](t, b.call(&wire.BlockLock{Snapshot: 1, Offset: 4096, Length: 1024}))
	// Overlapping: b waits, then c (arrived later, wanting bytes b wants).
	_, bch := b.send(&wire.BlockLock{Offset: 5000, Length: 100})
	b.pending(bch, "an overlapping block lock")
	_, cch := c.send(&wire.BlockLock{Offset: 5050, Length: 10})
	c.pending(cch, "a block lock behind a waiting one")
	// A third client waiting on it goes away: withdrawn, no harm.
	d := connect(t, e.addr, cid(4), "n4")
	_, dch := d.send(&wire.BlockLock{Offset: 4096, Length: 1})
	d.pending(dch, "a block lock")
	d.conn.Close()
	a.notice(&wire.BlockUnlock{Handle: ha})
	mustType[*wire.BlockLockOK](t, b.wait(bch))
	c.pending(cch, "a block lock behind a granted one")
	eventually(t, "the departed client's request withdrawn", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		g, w := e.srv.blocks.Len()
		return g == 3 && w == 1
	})
	a.notice(&wire.BlockUnlock{Handle: 999}) // unknown: logged, ignored

	h := hello(cid(5), "n5")
	h.MaxVersion = wire.VersionReclaim
	old, m := dial(t, e.addr, h)
	mustType[*wire.HelloOK](t, m)
	mustType[*wire.OK](t, old.call(&wire.UploadDone{}))
	wantErr(t, old.call(&wire.BlockLock{Offset: 0, Length: 512}), wire.CodeUnsupported)
}
