// Package consul ties csnap to Consul: the election of each volume's
// snapshot server, the replicated client registry, node departures and
// service registration (issue 5).
//
// This file holds the deterministic core of the election: the
// self-fencing lease. The rest of the package (the acquire and monitor
// loop against Consul's session and KV APIs) drives it; nothing here does
// I/O or reads a clock, so every rule is testable on its own.
//
// # Why a lease of our own
//
// Consul hands a volume's lock to another node some seconds after the
// holder's session is invalidated (node failure detected, or the session's
// health checks fail, plus the lock-delay). A holder cut off from Consul by
// a partition does not learn that: measured on this kind of machine, the
// stock api.Lock holder kept believing it held the lock for 38-42 s while
// another node took over after 11-13 s. So the holder must stop serving on
// its own, before anyone else can start: it may serve only until
// Duration after it *sent* the last request that confirmed the lock was
// still its own. Measuring from the send time, not the answer's arrival,
// means a slow network can shorten the holder's belief but never stretch
// it. Duration must be shorter than the time Consul needs to give the lock
// away (session TTL or failure detection, plus lock-delay); the election
// loop checks that at start.
package consul

import (
	"fmt"
	"time"
)

// Lease is the self-fencing lease of one lock. The zero value is not
// usable; create one with NewLease. A Lease is not safe for concurrent use:
// the election loop owns it.
type Lease struct {
	dur         time.Duration
	held        bool
	term        uint64    // the lock's LockIndex while held
	confirmedAt time.Time // send time of the latest request that proved the lock ours
}

// NewLease returns a lease that allows serving for d after each
// confirmation.
func NewLease(d time.Duration) *Lease {
	if d <= 0 {
		panic("consul: lease duration must be positive")
	}
	return &Lease{dur: d}
}

// Acquired records that a lock acquisition sent at sentAt succeeded with
// the given LockIndex, the term this node serves under.
func (l *Lease) Acquired(sentAt time.Time, term uint64) {
	l.held, l.term, l.confirmedAt = true, term, sentAt
}

// Confirmed records that a check sent at sentAt found the lock still held
// by this node's session with LockIndex term. A different term means the
// lock was lost and re-taken meanwhile (by us or anyone): the lease ends
// and Confirmed reports an error. Answers may arrive out of order; an
// older confirmation never moves the lease back.
func (l *Lease) Confirmed(sentAt time.Time, term uint64) error {
	if !l.held {
		return fmt.Errorf("consul: confirmation for term %d, but the lock is not held", term)
	}
	if term != l.term {
		l.Lost()
		return fmt.Errorf("consul: the lock's term moved from %d to %d: lost", l.term, term)
	}
	if sentAt.After(l.confirmedAt) {
		l.confirmedAt = sentAt
	}
	return nil
}

// Lost records that the lock is gone (the session was invalidated, the key
// holds another session, or this node released it).
func (l *Lease) Lost() { l.held = false }

// Serving reports whether this node may act as the server at now, and the
// term it serves under.
func (l *Lease) Serving(now time.Time) (bool, uint64) {
	if !l.held || !now.Before(l.confirmedAt.Add(l.dur)) {
		return false, 0
	}
	return true, l.term
}

// Deadline is the instant serving must stop unless the lock is confirmed
// again; zero when the lock is not held.
func (l *Lease) Deadline() time.Time {
	if !l.held {
		return time.Time{}
	}
	return l.confirmedAt.Add(l.dur)
}

// CheckTimings verifies that a lease of d stops a cut-off holder before
// Consul can give the lock to another node: failure detection (the time
// Consul needs to invalidate the holder's session after its last contact)
// plus the lock-delay must exceed d, with margin for clock rate
// differences between nodes.
func CheckTimings(d, failureDetection, lockDelay time.Duration) error {
	const margin = 500 * time.Millisecond
	if d+margin > failureDetection+lockDelay {
		return fmt.Errorf("consul: lease %v (+%v margin) is not shorter than failure detection %v + lock delay %v: two servers could overlap",
			d, margin, failureDetection, lockDelay)
	}
	return nil
}
