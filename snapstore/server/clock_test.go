package server

import (
	"testing"
	"time"

	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/snapstore/wire"
)

// TestServerClock: the server reads the time from Config.Now. A read lock
// held past LockBound by that clock is revoked at the next sweep (every
// quarter of the bound), long before the bound passes on the system
// clock, and the write parked behind it proceeds.
func TestServerClock(t *testing.T) {
	var clk testutil.Clock
	e := start(t, Config{LockBound: wire.LockLease, Now: clk.Now})
	lw := writeBehindReadLock(t, e)
	wch, granted := lw.wch, lw.granted
	clk.Advance(2 * wire.LockLease)
	select {
	case m := <-wch:
		mustType[*wire.OriginWriteOK](t, m)
	case <-time.After(waitLong):
		t.Fatal("the write is still parked behind a lock held past the bound by the server's clock")
	}
	if d := time.Since(granted); d >= wire.LockLease {
		t.Fatalf("lock revoked %v after the grant by the system clock: the server did not use its clock", d)
	}
}
