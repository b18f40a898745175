package server

import (
	"context"
	"fmt"
	"time"

	"github.com/csnap/csnap/snapstore/locks"
	"github.com/csnap/csnap/snapstore/wire"
)

// Block locks (BLOCK_LOCK, version 5): exclusive locks on byte ranges,
// granted in arrival order by locks.Blocks, that make COMPARE AND WRITE
// atomic across nodes. A session's block locks end with it: those still
// waiting at once, granted ones once they are wire.LockLease old (a
// client trusts a lock for wire.LockTrust from its request's send plus
// the wait BLOCK_LOCK_OK reports). Clients never re-declare them after a
// reconnect, so a new server grants none in its first wire.LockLease.
// A waiting BLOCK_LOCK takes one of its connection's request slots, as a
// parked origin write does; locks.Blocks allows a client 64 at a time.

// blockLock handles BLOCK_LOCK: it returns once the lock is granted (the
// request id is its handle), or when the session ends.
func (s *Server) blockLock(ctx context.Context, ss *session, id uint64, m *wire.BlockLock) (wire.Message, error) {
	start := s.cfg.Now()
	if ss.version < wire.VersionBlockLock {
		return nil, &wire.Error{Code: wire.CodeUnsupported, Message: fmt.Sprintf("BLOCK_LOCK needs protocol version %d", wire.VersionBlockLock)}
	}
	// Block locks granted by a previous server are unknown here; their
	// holders trust them for less than wire.LockLease after asking, so
	// grant none before this server is that old.
	if wait := time.Until(s.started.Add(wire.LockLease)); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, errSessionClosed
		}
	}
	k := locks.Key{Client: locks.ClientID(ss.id), ID: id}
	s.mu.Lock()
	if ss.closed {
		s.mu.Unlock()
		return nil, errSessionClosed
	}
	ok, err := s.blocks.Lock(k, m.Snapshot, m.Offset, uint64(m.Length))
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	ss.blockKeys[id] = struct{}{}
	var ch chan struct{}
	if ok {
		s.blockAt[k] = s.cfg.Now()
	} else {
		ch = make(chan struct{})
		s.blockWait[k] = ch
	}
	s.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done(): // the session ended: its waiting lock is withdrawn with it
			return nil, errSessionClosed
		}
	}
	s.mu.Lock()
	at, ok := s.blockAt[k]
	s.mu.Unlock()
	if !ok {
		return nil, errSessionClosed // ended, and the lock with it
	}
	return &wire.BlockLockOK{Waited: max(0, at.Sub(start))}, nil
}

// blockUnlock handles BLOCK_UNLOCK.
func (ss *session) blockUnlock(h uint64) {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := ss.blockKeys[h]; !ok {
		ss.log.WithField("handle", h).Warn("BLOCK_UNLOCK of an unknown block lock")
		return
	}
	delete(ss.blockKeys, h)
	s.unlockBlockLocked(locks.Key{Client: locks.ClientID(ss.id), ID: h})
}

// unlockBlockLocked releases (or withdraws) block lock k and grants the
// requests waiting behind it.
func (s *Server) unlockBlockLocked(k locks.Key) {
	delete(s.blockAt, k)
	if ch := s.blockWait[k]; ch != nil {
		delete(s.blockWait, k) // its request ends with its session
	}
	for _, g := range s.blocks.Unlock(k) {
		s.blockAt[g] = s.cfg.Now()
		if ch := s.blockWait[g]; ch != nil {
			close(ch)
			delete(s.blockWait, g)
		}
	}
}

// endBlocksLocked ends the block locks of a session that is over: waiting
// ones now, granted ones when their lease ends.
func (s *Server) endBlocksLocked(ss *session) {
	for h := range ss.blockKeys {
		k := locks.Key{Client: locks.ClientID(ss.id), ID: h}
		at, granted := s.blockAt[k]
		left := time.Until(at.Add(wire.LockLease))
		if !granted || left <= 0 || s.closed {
			s.unlockBlockLocked(k)
			continue
		}
		time.AfterFunc(left, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.blockAt[k] == at {
				s.unlockBlockLocked(k)
			}
		})
	}
	clear(ss.blockKeys)
}
