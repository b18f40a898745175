package server

import (
	"context"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Terms are never taken on a peer's word. A client that says it knows a
// newer term than ours (HELLO) may be a client that met a newer server,
// or a peer that lies. Either way the server does not depose itself on
// the claim: it asks its LockCheck (in cluster mode, a consistent read of
// the volume's lock key in Consul: our session and our term as LockIndex)
// and calls Config.OnDeposed only if the lock is confirmed lost. The
// claim itself is refused (HELLO_REJECT stale term) either way. Checks
// are shared: one is in flight at a time, and an answer is reused for
// lockCheckReuse after it came, so a stream of HELLOs makes at most a few
// Consul reads per second.

// LockCheck confirms with the cluster's lock service whether this server
// still holds its volume's lock. Implementations must be safe for
// concurrent use.
type LockCheck interface {
	// HoldsLock reports whether the lock is still this server's (the
	// term it was started with). An error means it could not tell: the
	// server then changes nothing.
	HoldsLock(ctx context.Context) (bool, error)
}

// LockCheckFunc adapts a function to LockCheck.
type LockCheckFunc func(ctx context.Context) (bool, error)

// HoldsLock calls f.
func (f LockCheckFunc) HoldsLock(ctx context.Context) (bool, error) { return f(ctx) }

// StillOurs is the LockCheck of a single-node (-dev) setup: there is no
// other server, so the lock is always ours.
type StillOurs struct{}

// HoldsLock always reports true.
func (StillOurs) HoldsLock(context.Context) (bool, error) { return true, nil }

const (
	// lockCheckTimeout bounds one LockCheck call.
	lockCheckTimeout = 5 * time.Second
	// lockCheckReuse is how long an answer of the LockCheck is reused.
	lockCheckReuse = time.Second
)

// lockChecker shares LockCheck calls between handshakes.
type lockChecker struct {
	lc  LockCheck
	now func() time.Time

	mu       sync.Mutex
	inflight chan struct{} // closed when the call in flight is answered
	at       time.Time     // when the last answer came
	held     bool
	err      error
	lost     bool // a check confirmed the lock lost (sticky)
}

// holds reports what the LockCheck says, sharing a call in flight and
// reusing a recent answer. Once the lock was found lost it stays lost.
func (c *lockChecker) holds(ctx context.Context) (bool, error) {
	c.mu.Lock()
	for {
		if c.lost {
			c.mu.Unlock()
			return false, nil
		}
		if c.inflight == nil && !c.at.IsZero() && c.now().Sub(c.at) < lockCheckReuse {
			held, err := c.held, c.err
			c.mu.Unlock()
			return held, err
		}
		if c.inflight == nil {
			break
		}
		ch := c.inflight
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		c.mu.Lock()
	}
	ch := make(chan struct{})
	c.inflight = ch
	c.mu.Unlock()

	cctx, cancel := context.WithTimeout(ctx, lockCheckTimeout)
	held, err := c.lc.HoldsLock(cctx)
	cancel()

	c.mu.Lock()
	c.inflight = nil
	c.at, c.held, c.err = c.now(), held, err
	if err == nil && !held {
		c.lost = true
	}
	close(ch)
	c.mu.Unlock()
	return held, err
}

// claimedTerm handles a HELLO that claims a newer term than ours, from a
// member: it checks the lock and, only if it is confirmed lost, calls
// OnDeposed. It returns the reason for the log.
func (s *Server) claimedTerm(ctx context.Context, log *logrus.Entry, term uint64) string {
	held, err := s.lockCheck.holds(ctx)
	switch {
	case err != nil:
		log.WithError(err).WithField("claimed_term", term).
			Warn("a client claims a newer term and the lock could not be checked: ignoring the claim")
		return "the server's lock could not be checked"
	case held:
		log.WithField("claimed_term", term).
			Warn("a client claims a newer term, but the lock is still ours: ignoring the claim")
		return "the server still holds the volume's lock"
	}
	s.deposedOnce.Do(func() {
		s.log.WithField("newer_term", term).Error("the lock is no longer ours (confirmed): this server has been deposed")
		if s.cfg.OnDeposed != nil {
			s.cfg.OnDeposed(term)
		}
	})
	return "this server has been deposed"
}
