package client

import (
	"errors"
	"testing"
	"time"

	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/snapstore/wire"
)

// TestClientClock: the client reads the time from Config.Now. A block
// lock is trusted until wire.LockTrust after it was asked for by that
// clock: moved ahead past it, the lock's check fails at once.
func TestClientClock(t *testing.T) {
	e := newE2E(t)
	var clk testutil.Clock
	c, err := New(ctx5(t), Config{Volume: "vol", Node: "node-2", ID: wire.ClientID{2}, Locator: StaticLocator(e.addr),
		Origin: e.origin, Store: e.store, Log: testLog(), IOTimeout: 5 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	check, unlock, err := c.Origin().LockBlocks(ctx5(t), 0, 512)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := check(); err != nil {
		t.Fatalf("a fresh block lock: %v", err)
	}
	clk.Advance(wire.LockTrust + time.Second)
	if err := check(); !errors.Is(err, ErrBlockLockLost) {
		t.Fatalf("a block lock past its trust time by the client's clock: check() = %v, want ErrBlockLockLost", err)
	}
}
