package server

import (
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore/locks"
	"github.com/csnap/csnap/snapstore/wire"
)

// Lock bounds. A read lock (SNAPSHOT_READ answered "read the origin")
// holds back origin writes to its chunks, and a block lock (BLOCK_LOCK)
// the other block locks on its bytes, until its client releases it. A
// client trusts either only for wire.LockTrust after sending its request
// (plus the wait BLOCK_LOCK_OK reports): a read under a read lock that
// finished later is done again, a write under a block lock is not made
// (see wire's package doc). So the server honours a lock no longer than
// Config.LockBound (DefaultLockBound, 4 × wire.LockLease; never less than
// wire.LockLease) after it granted it, or, for a lock a reconnecting
// client re-declared, after the upload: then it revokes it, waking the
// writes and block-lock requests behind it, whether or not the client is
// connected. The client notices nothing but a late release of an unknown
// lock (logged at debug level); a revoked read lock the client
// re-declares after a reconnect is not taken back into the table.
//
// The number of chunks one client holds under read locks at once is
// bounded too (locks.Limits.MaxChunks, DefaultMaxLockedChunks by default;
// its number of locks by MaxLocks, announced in HELLO_OK): a SNAPSHOT_READ
// beyond it is answered ERROR limit, which a client takes as "busy" and
// retries after it released some (within its IO deadline).
const (
	// DefaultLockBound is the default Config.LockBound.
	DefaultLockBound = 4 * wire.LockLease
	// DefaultMaxLockedChunks is the default locks.Limits.MaxChunks: the
	// chunks one client may hold under read locks at once.
	DefaultMaxLockedChunks = 65536
	// revokedKeep is how long, in LockBounds, a revoked lock's key is
	// remembered (so an upload does not re-establish it).
	revokedKeep = 8
)

// sweepLocks revokes the locks held past the bound, every quarter of it,
// until the server closes.
func (s *Server) sweepLocks() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.LockBound / 4)
	defer t.Stop()
	for {
		select {
		case <-s.closeCh:
			return
		case <-t.C:
			s.revokeExpired(s.cfg.Now())
		}
	}
}

// revokeExpired revokes every read and block lock granted (or uploaded)
// LockBound or more before now.
func (s *Server) revokeExpired(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	bound := s.cfg.LockBound
	perClient := map[wire.ClientID]int{}
	seen := map[locks.Key]struct{}{}
	for _, c := range s.tab.Clients() {
		for _, l := range s.tab.Held(c) {
			k := locks.Key{Client: c, ID: l.ID}
			seen[k] = struct{}{}
			at, ok := s.lockAt[k]
			if !ok {
				s.lockAt[k] = now // uploaded: counts from the upload
				continue
			}
			if now.Sub(at) < bound {
				continue
			}
			ready, err := s.tab.Release(k)
			if err != nil {
				continue
			}
			s.wakeLocked(ready)
			delete(s.lockAt, k)
			s.revoked[k] = now
			perClient[wire.ClientID(c)]++
		}
	}
	for k := range s.lockAt {
		if _, ok := seen[k]; !ok {
			delete(s.lockAt, k) // released meanwhile
		}
	}
	for k, at := range s.blockAt {
		if now.Sub(at) < bound {
			continue
		}
		s.unlockBlockLocked(k)
		if ss := s.sessions[wire.ClientID(k.Client)]; ss != nil {
			delete(ss.blockKeys, k.ID)
		}
		perClient[wire.ClientID(k.Client)]++
	}
	for k, at := range s.revoked {
		if now.Sub(at) >= revokedKeep*bound {
			delete(s.revoked, k)
		}
	}
	if len(perClient) == 0 {
		return
	}
	for id, n := range perClient {
		s.log.WithFields(logrus.Fields{"client": id.String(), "locks": n, "bound": bound.String()}).
			Warn("locks held past the bound revoked: the writes behind them proceed")
	}
	s.notifyLocked()
}

// unrevokedLocked drops from a client's upload the locks the server
// revoked.
func (s *Server) unrevokedLocked(id wire.ClientID, up []locks.Lock) []locks.Lock {
	if len(s.revoked) == 0 {
		return up
	}
	out := up[:0:0]
	for _, l := range up {
		if _, gone := s.revoked[locks.Key{Client: locks.ClientID(id), ID: l.ID}]; !gone {
			out = append(out, l)
		}
	}
	return out
}

// finishRevokedLocked reports whether k is a revoked lock (and forgets
// it): its client's FINISH_SNAPSHOT_READ came after the revocation.
func (s *Server) finishRevokedLocked(k locks.Key) bool {
	if _, ok := s.revoked[k]; ok {
		delete(s.revoked, k)
		return true
	}
	return false
}

// uploadedLocked starts the bound of the locks client id re-declared that
// the table did not have (the ones it kept keep their grant time).
func (s *Server) uploadedLocked(id wire.ClientID) {
	now := s.cfg.Now()
	for _, l := range s.tab.Held(locks.ClientID(id)) {
		k := locks.Key{Client: locks.ClientID(id), ID: l.ID}
		if _, ok := s.lockAt[k]; !ok {
			s.lockAt[k] = now
		}
	}
}
