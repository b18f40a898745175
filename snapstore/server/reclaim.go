package server

import (
	"context"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/wire"
)

// Reclamation (wire protocol version 4): before the engine reuses the
// store space of deleted or dropped snapshots, every client that may read
// their store chunks is told (RECLAIM) and answers (RECLAIM_OK) once it
// has forgotten their cached locations and finished its reads of them. See
// the package doc, "Reclamation and client location caches".

// reclaimPass is one BeforeReclaim fan-out in progress.
type reclaimPass struct {
	snaps []uint32
	// pending: the clients whose answer the pass waits for, with the time
	// it stops waiting for each.
	pending map[wire.ClientID]time.Time
}

// awayReader is a version-4 client whose connection was lost after it was
// answered store locations: until its lease has lapsed (BarrierTimeout
// after the loss) it may still be reading them.
type awayReader struct {
	node  string
	since time.Time
}

// beforeReclaim is the engine's BeforeReclaim hook: it returns once every
// version-4 client that may read the store chunks of ids has answered
// RECLAIM, been disconnected for not answering within BarrierTimeout, or
// (disconnected) seen its lease lapse; or when ctx ends or the server
// closes. It holds no lock of the engine's and none of the server's while
// waiting.
func (s *Server) beforeReclaim(ctx context.Context, ids []snapstore.SnapID) {
	select {
	case s.reclaimSem <- struct{}{}:
	case <-ctx.Done():
		return
	case <-s.closeCh:
		return
	}
	defer func() { <-s.reclaimSem }()
	snaps := make([]uint32, len(ids))
	for i, id := range ids {
		snaps[i] = uint32(id)
	}
	slices.Sort(snaps)
	snaps = slices.Compact(snaps)
	for len(snaps) > 0 {
		n := min(len(snaps), wire.MaxReclaimIDs)
		if !s.reclaimFanOut(ctx, snaps[:n]) {
			return
		}
		snaps = snaps[n:]
	}
}

// reclaimFanOut runs one RECLAIM round for snaps; false if ctx ended or
// the server closed.
func (s *Server) reclaimFanOut(ctx context.Context, snaps []uint32) bool {
	start := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	// Every SNAPSHOT_READ_OK computed so far (while snaps were readable)
	// goes on the wire before the RECLAIM, so a client counts the reads
	// they start as in flight when it gets the RECLAIM.
	era := s.readEra
	s.readEra++
	s.readDrain++
	err := s.waitLocked(ctx, func() bool { return s.readsUpToLocked(era) == 0 })
	s.readDrain--
	if err != nil {
		return false
	}

	now := s.cfg.Now()
	deadline := now.Add(s.cfg.BarrierTimeout)
	p := &reclaimPass{snaps: snaps, pending: map[wire.ClientID]time.Time{}}
	type req struct {
		ss  *session
		rid uint64
	}
	var reqs []req
	for id, ss := range s.sessions {
		if ss.closed || ss.version < wire.VersionReclaim {
			continue
		}
		p.pending[id] = deadline
		if ss.live { // otherwise at UPLOAD_DONE
			reqs = append(reqs, req{ss, ss.reclaimCallLocked(p)})
		}
	}
	for id, a := range s.away {
		until := a.since.Add(s.cfg.BarrierTimeout)
		if !until.After(now) {
			delete(s.away, id) // lease lapsed
			continue
		}
		if _, ok := p.pending[id]; !ok {
			p.pending[id] = until
		}
	}
	if len(p.pending) == 0 {
		return true
	}
	s.reclaim = p
	for _, r := range reqs {
		r.ss.sendAsync(r.rid, &wire.Reclaim{Snapshots: snaps})
	}
	clients := len(p.pending)

	timer := time.NewTimer(s.cfg.BarrierTimeout)
	defer timer.Stop()
	var late []*session
	for len(p.pending) > 0 && !s.closed && ctx.Err() == nil {
		now := s.cfg.Now()
		next := time.Time{}
		for id, until := range p.pending {
			if now.Before(until) {
				if next.IsZero() || until.Before(next) {
					next = until
				}
				continue
			}
			delete(p.pending, id)
			if ss := s.sessions[id]; ss != nil {
				s.dropSessionLocked(ss)
				// Its lease runs from the last frame it received, before
				// this RECLAIM or (if it got it) it reads none of snaps
				// any more: nothing left to wait for.
				delete(s.away, id)
				late = append(late, ss)
			} else {
				s.log.WithFields(logrus.Fields{"client": id.String(), "snapshots": snaps}).
					Warn("reclaim: disconnected client did not come back; its lease has lapsed")
			}
		}
		if len(p.pending) == 0 {
			break
		}
		timer.Reset(time.Until(next))
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
		case <-ctx.Done():
		case <-s.closeCh:
		}
		s.mu.Lock()
	}
	s.reclaim = nil
	s.notifyLocked()
	for _, ss := range late {
		ss.log.WithFields(logrus.Fields{"snapshots": snaps, "timeout": s.cfg.BarrierTimeout.String()}).
			Error("client did not answer RECLAIM in time; disconnected")
		ss.kill()
	}
	ok := !s.closed && ctx.Err() == nil
	s.log.WithFields(logrus.Fields{"snapshots": snaps, "clients": clients, "late": len(late),
		"took": s.cfg.Now().Sub(start).Round(time.Microsecond).String()}).Debug("reclaim: clients drained")
	return ok
}

// reclaimCallLocked registers a RECLAIM of pass p on ss and returns its
// request id.
func (ss *session) reclaimCallLocked(p *reclaimPass) uint64 {
	return ss.calls.add(clientCall{req: wire.TypeReclaim, pass: p})
}

// reclaimAfterUpload sends RECLAIM to a client that became live while a
// pass waits for it (its previous connection may have had reads in
// flight). Called with s.mu held; returns the send to do after unlocking.
func (ss *session) reclaimAfterUploadLocked() func() {
	s := ss.s
	delete(s.away, ss.id)
	p := s.reclaim
	if p == nil || ss.version < wire.VersionReclaim {
		return nil
	}
	if _, ok := p.pending[ss.id]; !ok {
		return nil
	}
	rid := ss.reclaimCallLocked(p)
	return func() { ss.sendAsync(rid, &wire.Reclaim{Snapshots: p.snaps}) }
}

// enterRead counts a SNAPSHOT_READ in progress (lookup to answer sent)
// under the current era; leaveRead uncounts it.
func (s *Server) enterRead() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	era := s.readEra
	s.readsByEra[era]++
	return era
}

func (s *Server) leaveRead(era uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.readsByEra[era]--; s.readsByEra[era] <= 0 {
		delete(s.readsByEra, era)
	}
	if s.readDrain > 0 {
		s.notifyLocked()
	}
}

// readsUpToLocked counts SNAPSHOT_READs in progress that began in an era
// up to era.
func (s *Server) readsUpToLocked(era uint64) int {
	n := 0
	for e, k := range s.readsByEra {
		if e <= era {
			n += k
		}
	}
	return n
}

// noteSessionEndLocked records a version-4 client that lost its
// connection after it was answered store locations: it may go on reading
// them for its lease.
func (s *Server) noteSessionEndLocked(ss *session) {
	if ss.version >= wire.VersionReclaim && ss.storeReads.Load() {
		s.away[ss.id] = awayReader{node: ss.node, since: s.cfg.Now()}
	}
}
