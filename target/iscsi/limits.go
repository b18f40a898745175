package iscsi

import (
	"sync"
	"sync/atomic"
	"time"
)

// failureLimiter counts failed logins per source address: after max
// failures within window, the source's logins are refused until the window
// that began with its first failure has passed. Time is passed in, so the
// rules are tested without a clock.
type failureLimiter struct {
	max    int
	window time.Duration

	mu       sync.Mutex
	bySource map[string]*failures
}

type failures struct {
	since time.Time // first failure of the current window
	n     int
}

// maxTrackedSources bounds the limiter's memory. Beyond it, expired
// entries are dropped, and if none has expired the entry whose window
// began first is (a new source is always tracked).
const maxTrackedSources = 4096

// blocked reports whether src has used up its failures in the current
// window.
func (l *failureLimiter) blocked(src string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.bySource[src]
	if f == nil {
		return false
	}
	if now.Sub(f.since) >= l.window {
		delete(l.bySource, src)
		return false
	}
	return f.n >= l.max
}

// failed records a failed login from src and reports whether src is now
// blocked (true exactly once per window, when the limit is reached).
func (l *failureLimiter) failed(src string, now time.Time) (nowBlocked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.bySource[src]
	if f != nil && now.Sub(f.since) >= l.window {
		f = nil
	}
	if f == nil {
		if len(l.bySource) >= maxTrackedSources {
			for k, v := range l.bySource {
				if now.Sub(v.since) >= l.window {
					delete(l.bySource, k)
				}
			}
			if len(l.bySource) >= maxTrackedSources {
				oldest, first := "", time.Time{}
				for k, v := range l.bySource {
					if oldest == "" || v.since.Before(first) {
						oldest, first = k, v.since
					}
				}
				delete(l.bySource, oldest)
			}
		}
		f = &failures{since: now}
		l.bySource[src] = f
	}
	f.n++
	return f.n == l.max
}

// byteBudget bounds the bytes of command data buffered at once (per
// session and per node): a command takes its expected data length from
// both before its buffer is allocated and gives it back when it ends, so
// initiators that announce writes and hold their data back, or queue reads
// and stop reading, cannot make the node allocate without limit. Lock-free:
// every command of every session takes and gives.
type byteBudget struct {
	used atomic.Int64
	max  int64
}

func (b *byteBudget) take(n int64) bool {
	for {
		cur := b.used.Load()
		if cur+n > b.max {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

func (b *byteBudget) give(n int64) { b.used.Add(-n) }

func (b *byteBudget) inUse() int64 { return b.used.Load() }
