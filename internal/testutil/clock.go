package testutil

import (
	"sync/atomic"
	"time"
)

// Clock is a clock for a Config's Now that runs with the system clock
// but can be moved ahead, so that a test can let trust times and leases
// pass without waiting for them (timers still run on the system clock).
type Clock struct{ ahead atomic.Int64 }

// Now returns the system time plus how far the clock was moved ahead.
func (c *Clock) Now() time.Time { return time.Now().Add(time.Duration(c.ahead.Load())) }

// Advance moves the clock ahead by d.
func (c *Clock) Advance(d time.Duration) { c.ahead.Add(int64(d)) }
