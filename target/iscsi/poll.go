package iscsi

import (
	"errors"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// Polling reads. At queue depth 1 an initiator sends its next command a few
// tens of microseconds after our response. A reader parked on the netpoller
// costs a thread going to sleep in epoll_wait and being woken, about a
// fifth of the round trip on loopback (tests/bench/RESULTS.md). So when none
// of a connection's commands is executing, its reader first polls the socket
// with non-blocking reads (yielding to other goroutines between attempts)
// for up to the budget, and only then parks. Polls that find nothing make
// the connection skip polling for a growing number of reads (up to
// maxPollBackoff), so a session whose initiator pauses between commands
// costs almost nothing.

// pollSlots bounds the readers polling at once.
type pollSlots struct {
	busy atomic.Int32
	max  int32
}

func newPollSlots(procs int) pollSlots {
	return pollSlots{max: int32(max(1, procs/2))}
}

func (p *pollSlots) acquire() bool {
	if p.busy.Add(1) <= p.max {
		return true
	}
	p.busy.Add(-1)
	return false
}

func (p *pollSlots) release() { p.busy.Add(-1) }

// pollingReader is a connection's reader (under its bufio.Reader).
type pollingReader struct {
	nc     net.Conn
	raw    syscall.RawConn // nil: never poll
	budget time.Duration
	slots  *pollSlots
	idle   func() bool // no command of the connection is executing
	// skip is how many reads to do without polling, after polls that
	// found nothing: backoff doubles with each such poll (up to
	// maxPollBackoff) and a poll that finds data resets it.
	skip, backoff int
}

// maxPollBackoff bounds the reads between polls of a connection whose
// polls find nothing (an initiator pausing between commands).
const maxPollBackoff = 64

func newPollingReader(nc net.Conn, budget time.Duration, slots *pollSlots, idle func() bool) *pollingReader {
	r := &pollingReader{nc: nc, budget: budget, slots: slots, idle: idle}
	if sc, ok := nc.(syscall.Conn); ok && budget > 0 {
		if raw, err := sc.SyscallConn(); err == nil {
			r.raw = raw
		}
	}
	return r
}

func (r *pollingReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.raw != nil && r.idle() {
		if r.skip > 0 {
			r.skip--
		} else if r.slots.acquire() {
			n, ok := r.poll(p, time.Now().Add(r.budget))
			r.slots.release()
			if ok {
				r.backoff = 0
				return n, nil
			}
			r.backoff = min(max(1, 2*r.backoff), maxPollBackoff)
			r.skip = r.backoff
		}
	}
	return r.nc.Read(p)
}

// poll tries non-blocking reads until data comes (ok) or deadline passes;
// an error or end of stream is left to the blocking read to report.
func (r *pollingReader) poll(p []byte, deadline time.Time) (n int, ok bool) {
	for {
		var rerr error
		if err := r.raw.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), p)
			return true // never wait: we poll
		}); err != nil {
			return 0, false
		}
		switch {
		case n > 0:
			return n, true
		case !errors.Is(rerr, syscall.EAGAIN) || !time.Now().Before(deadline):
			return 0, false
		}
		runtime.Gosched()
	}
}
