package consul

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/clock"
)

// LockAPI is what the election needs of Consul. The implementation over
// github.com/hashicorp/consul/api binds sessions to serfHealth and to
// csnapd's own service check, and gives every call a client-side deadline
// (ctx); tests use an in-memory fake.
type LockAPI interface {
	// CreateSession creates a session for this node (bound to its health
	// checks, with the configured lock-delay) and returns its id.
	CreateSession(ctx context.Context) (string, error)
	// DestroySession ends a session, releasing any lock it holds.
	DestroySession(ctx context.Context, session string) error
	// Acquire tries to take key for session with value. It reports whether
	// the lock is now held and the key's LockIndex.
	Acquire(ctx context.Context, key, session string, value []byte) (bool, uint64, error)
	// Holder returns the session holding key ("" when free) and its
	// LockIndex, read consistently.
	Holder(ctx context.Context, key string) (string, uint64, error)
	// Release gives key up if session holds it.
	Release(ctx context.Context, key, session string) error
}

// ElectionConfig configures RunElection.
type ElectionConfig struct {
	Key   string // the lock key, e.g. csnap/volumes/V/server
	Value []byte // what the key says while held (node, address, term)
	// Lease is how long the holder may serve after the send time of its
	// latest confirmation (see Lease); Check how often it confirms;
	// Retry how often a non-holder tries to acquire; RequestTimeout the
	// client-side deadline of every Consul call (below Check).
	Lease, Check, Retry, RequestTimeout time.Duration
	// OnElected is called when this node starts serving under term, with
	// the session holding the lock (registry writes check it); OnDeposed
	// when it must stop (lease expired, lock lost, or the election ends).
	// Calls alternate, starting with OnElected, and both run on the
	// election's goroutine. An error from OnElected ends the term (and
	// OnDeposed is called for it).
	OnElected func(term uint64, session string) error
	// OnDeposed's leaseValid reports whether the lease still held when
	// it was called (a graceful stop, or a failed start): the lock is
	// still ours until OnDeposed returns, so a clean shutdown may write
	// to shared storage. When false, another node may already serve:
	// write nothing more.
	OnDeposed func(term uint64, leaseValid bool)
	// Announce, if set, gives the key's value once elected and OnElected
	// has returned (so it can name the term): the holder re-acquires the
	// key with it, which updates the value without changing LockIndex.
	Announce func(term uint64) []byte
	Log      *logrus.Entry
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Resign, if set, receives terms the holder must give up at once
	// (its engine failed, or it is fenced): the election deposes
	// (OnDeposed), releases the lock and destroys its session, so another
	// node can be elected, then competes again. Terms other than the
	// current one are ignored.
	Resign <-chan uint64
}

// RunElection competes for the lock until ctx ends, serving (between
// OnElected and OnDeposed) only while its Lease allows. On return it has
// called OnDeposed if it was serving, released the lock and destroyed its
// session, best effort.
func RunElection(ctx context.Context, api LockAPI, cfg ElectionConfig) error {
	if cfg.Lease <= 0 || cfg.Check <= 0 || cfg.Retry <= 0 || cfg.RequestTimeout <= 0 {
		return errors.New("consul: election needs positive Lease, Check, Retry and RequestTimeout")
	}
	if cfg.Check >= cfg.Lease || cfg.RequestTimeout >= cfg.Lease {
		return fmt.Errorf("consul: Check (%v) and RequestTimeout (%v) must be shorter than the lease (%v)", cfg.Check, cfg.RequestTimeout, cfg.Lease)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	log = log.WithField("key", cfg.Key)
	e := &election{api: api, cfg: cfg, log: log, lease: NewLease(cfg.Lease)}
	defer e.stop()
	for ctx.Err() == nil {
		if err := e.round(ctx); err != nil && ctx.Err() == nil {
			log.WithError(err).Warn("election round failed; retrying")
		}
		e.stop()
		clock.Sleep(ctx, cfg.Retry)
	}
	return nil
}

type election struct {
	api     LockAPI
	cfg     ElectionConfig
	log     *logrus.Entry
	lease   *Lease
	session string
	serving bool
	term    uint64
	// stale holds sessions of ours that stop could not destroy (Consul
	// had no leader, say). Such a session stays valid while this node's
	// checks pass, and if it still holds the lock nobody, this node
	// included, can take it: no new session is made until they are gone.
	stale []string
}

// call runs one Consul request with the client-side deadline.
func (e *election) call(ctx context.Context, f func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, e.cfg.RequestTimeout)
	defer cancel()
	return f(cctx)
}

// round creates a session, acquires the lock (retrying) and monitors it
// until it is lost, the lease runs out, or ctx ends.
func (e *election) round(ctx context.Context) error {
	for len(e.stale) > 0 {
		s := e.stale[0]
		if err := e.call(ctx, func(c context.Context) error { return e.api.DestroySession(c, s) }); err != nil {
			return fmt.Errorf("destroying session %s of an earlier term (it may still hold the lock): %w", s, err)
		}
		e.log.WithField("session", s).Info("destroyed the session of an earlier term")
		e.stale = e.stale[1:]
	}
	if err := e.call(ctx, func(c context.Context) (err error) {
		e.session, err = e.api.CreateSession(c)
		return err
	}); err != nil {
		return fmt.Errorf("creating a session: %w", err)
	}
	for {
		sent := e.cfg.Now()
		var ok bool
		var idx uint64
		err := e.call(ctx, func(c context.Context) (err error) {
			ok, idx, err = e.api.Acquire(c, e.cfg.Key, e.session, e.cfg.Value)
			return err
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("acquiring %s: %w", e.cfg.Key, err)
		}
		if ok {
			e.lease.Acquired(sent, idx)
			break
		}
		clock.Sleep(ctx, e.cfg.Retry)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if ok, term := e.lease.Serving(e.cfg.Now()); ok {
		e.serving, e.term = true, term
		e.log.WithField("term", term).Info("elected: serving")
		if err := e.cfg.OnElected(term, e.session); err != nil {
			return fmt.Errorf("starting to serve term %d: %w", term, err)
		}
		if err := e.announce(ctx, term); err != nil {
			return err
		}
	} else {
		return errors.New("acquired the lock, but the acquisition took longer than the lease")
	}
	return e.monitor(ctx)
}

// announce rewrites the key's value to name the term, if configured.
func (e *election) announce(ctx context.Context, term uint64) error {
	if e.cfg.Announce == nil {
		return nil
	}
	v := e.cfg.Announce(term)
	var ok bool
	var idx uint64
	err := e.call(ctx, func(c context.Context) (err error) {
		ok, idx, err = e.api.Acquire(c, e.cfg.Key, e.session, v)
		return err
	})
	switch {
	case err != nil:
		return fmt.Errorf("announcing term %d: %w", term, err)
	case !ok || idx != term:
		e.lease.Lost()
		return fmt.Errorf("announcing term %d: the lock moved on (now held=%v, index %d)", term, ok, idx)
	}
	return nil
}

// monitor confirms the lock every Check and deposes as soon as the lease
// does not allow serving, even while a confirmation is still in flight.
func (e *election) monitor(ctx context.Context) error {
	type answer struct {
		sent    time.Time
		session string
		idx     uint64
		err     error
	}
	answers := make(chan answer, 1)
	inFlight := false
	tick := time.NewTicker(e.cfg.Check)
	defer tick.Stop()
	for {
		now := e.cfg.Now()
		if ok, _ := e.lease.Serving(now); !ok {
			return fmt.Errorf("lease of term %d expired or lost", e.term)
		}
		// Wake at the next check or at the lease deadline, whichever is
		// first, so an unanswered confirmation cannot keep us serving.
		deadline := time.NewTimer(e.lease.Deadline().Sub(now))
		select {
		case <-ctx.Done():
			deadline.Stop()
			return ctx.Err()
		case <-deadline.C:
		case t := <-e.cfg.Resign:
			deadline.Stop()
			if t == e.term {
				return fmt.Errorf("resigned term %d: this node can no longer serve it", t)
			}
		case <-tick.C:
			deadline.Stop()
			if inFlight {
				continue
			}
			inFlight = true
			sent := e.cfg.Now()
			go func() {
				var a answer
				a.sent = sent
				a.err = e.call(ctx, func(c context.Context) (err error) {
					a.session, a.idx, err = e.api.Holder(c, e.cfg.Key)
					return err
				})
				answers <- a
			}()
		case a := <-answers:
			deadline.Stop()
			inFlight = false
			switch {
			case a.err != nil:
				e.log.WithError(a.err).Warn("could not confirm the lock; the lease keeps running")
			case a.session != e.session:
				e.lease.Lost()
				return fmt.Errorf("lock of term %d taken by session %q", e.term, a.session)
			default:
				if err := e.lease.Confirmed(a.sent, a.idx); err != nil {
					return err
				}
			}
		}
	}
}

// stop ends serving (OnDeposed) and gives the lock and session up with
// fresh deadlines. A session it cannot destroy is kept in e.stale for the
// next round to destroy before anything else.
func (e *election) stop() {
	if e.serving {
		e.serving = false
		valid, _ := e.lease.Serving(e.cfg.Now())
		e.lease.Lost()
		e.log.WithFields(logrus.Fields{"term": e.term, "lease_valid": valid}).Warn("deposed: stopped serving")
		e.cfg.OnDeposed(e.term, valid)
	}
	if e.session == "" {
		return
	}
	bg := context.Background()
	e.call(bg, func(c context.Context) error { return e.api.Release(c, e.cfg.Key, e.session) })
	if err := e.call(bg, func(c context.Context) error { return e.api.DestroySession(c, e.session) }); err != nil {
		e.log.WithError(err).WithField("session", e.session).Warn("could not destroy the session; destroying it before the next attempt")
		e.stale = append(e.stale, e.session)
	}
	e.session = ""
}
