package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/locks"
	"github.com/csnap/csnap/snapstore/wire"
)

// handle answers one request (in its own goroutine).
func (s *Server) handle(ss *session, id uint64, m wire.Message) (wire.Message, error) {
	ctx := ss.ctx
	switch m := m.(type) {
	case *wire.OriginWrite:
		gen, unique, err := s.originWrite(ctx, ss, id, m.Ranges)
		if err != nil {
			return nil, err
		}
		// The approval counts as a copy-out in progress until it is on the
		// wire, so a barrier's INVALIDATE follows it on the connection.
		if unique {
			ss.send(0, &wire.OriginUnique{Generation: gen})
		}
		ss.send(id, &wire.OriginWriteOK{Generation: gen})
		s.mu.Lock()
		s.leavePrepareLocked()
		s.mu.Unlock()
		return nil, nil
	case *wire.SnapshotRead:
		// From lookup until the answer is on the wire the read counts in
		// its era, so that a reclamation pass sends RECLAIM after it.
		era := s.enterRead()
		defer s.leaveRead(era)
		xs, err := s.snapshotRead(ctx, ss, id, m.Snapshot, m.Ranges)
		if err != nil {
			return nil, err
		}
		if ss.version >= wire.VersionReclaim && !ss.storeReads.Load() &&
			slices.ContainsFunc(xs, func(x wire.Extent) bool { return !x.Origin }) {
			ss.storeReads.Store(true)
		}
		ss.send(id, &wire.SnapshotReadOK{Extents: xs})
		return nil, nil
	case *wire.SnapshotWrite:
		// Counted like a read (the client writes the store locations it
		// is answered): a reclamation pass sends RECLAIM after the answer,
		// and the client answers RECLAIM_OK once the write has landed.
		era := s.enterRead()
		defer s.leaveRead(era)
		xs, err := s.snapshotWrite(ctx, m.Snapshot, m.Ranges)
		if err != nil {
			return nil, err
		}
		if ss.version >= wire.VersionReclaim && !ss.storeReads.Load() && len(xs) > 0 {
			ss.storeReads.Store(true)
		}
		ss.send(id, &wire.SnapshotWriteOK{Extents: xs})
		return nil, nil
	case *wire.CreateSnapshot:
		si, err := s.CreateSnapshot(ctx, m.Name, snapstore.CreateOptions{Priority: m.Priority, Writable: m.Writable})
		if err != nil {
			return nil, err
		}
		return &wire.CreateSnapshotOK{Snapshot: entry(si)}, nil
	case *wire.DeleteSnapshot:
		return &wire.OK{}, s.DeleteSnapshot(ctx, m.Snapshot)
	case *wire.SetPriority:
		return &wire.OK{}, s.SetPriority(ctx, m.Snapshot, m.Priority)
	case *wire.ListSnapshots:
		return s.listSnapshots(m.After, int(m.Max)), nil
	case *wire.Status:
		return s.statusMessage(), nil
	case *wire.SharedUpdate:
		return s.sharedUpdate(ctx, ss, m)
	case *wire.BlockLock:
		return s.blockLock(ctx, ss, id, m)
	case *wire.Check:
		return s.checkMessage(ctx)
	case *wire.Recover:
		return &wire.OK{}, s.Recover(ctx)
	}
	return nil, &wire.Error{Code: wire.CodeUnsupported, Message: fmt.Sprintf("%v is not a request to the server", m.Type())}
}

// ---------------------------------------------------------------------------
// Origin writes

// enterPrepare waits until copy-outs may start (no snapshot barrier, no
// awaited client) and counts this one in.
func (s *Server) enterPrepare(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.waitLocked(ctx, func() bool { return s.barrier == nil && len(s.awaited) == 0 }); err != nil {
		return err
	}
	s.preparing++
	return nil
}

func (s *Server) leavePrepareLocked() {
	if s.preparing--; s.preparing == 0 && s.barrier != nil {
		s.notifyLocked()
	}
}

// originWrite answers ORIGIN_WRITE: copy out and commit, then wait for the
// read locks granted before the commit, then approve under the generation
// the copy-out was made for (redoing it if a snapshot came meanwhile). On
// success it returns counted in s.preparing; the caller sends the approval
// and then calls leavePrepareLocked. unique reports that, at the approval,
// the volume had no live snapshot and no read lock, for a client that
// understands ORIGIN_UNIQUE (see package wire, "A volume without
// snapshots").
func (s *Server) originWrite(ctx context.Context, ss *session, id uint64, ranges []wire.Range) (uint64, bool, error) {
	key := locks.Key{Client: locks.ClientID(ss.id), ID: id}
	lr := make([]locks.Range, len(ranges))
	for i, r := range ranges {
		lr[i] = locks.Range(r)
	}
	for {
		if err := s.enterPrepare(ctx); err != nil {
			return 0, false, err
		}
		var gen uint64
		var err error
		for i, r := range ranges {
			var g uint64
			g, err = s.eng.PrepareOriginWrite(ctx, r.Start, uint64(r.Count))
			if err != nil {
				break
			}
			if i == 0 || g < gen {
				gen = g
			}
		}
		s.mu.Lock()
		s.leavePrepareLocked()
		if err != nil {
			s.mu.Unlock()
			return 0, false, err
		}
		if ss.closed {
			s.mu.Unlock()
			return 0, false, errSessionClosed
		}
		ready, err := s.tab.WaitFor(key, lr)
		var ch chan struct{}
		if err == nil && !ready {
			ch = make(chan struct{})
			s.parked[key] = ch
		}
		s.mu.Unlock()
		if err != nil {
			return 0, false, err
		}
		if ch != nil {
			select {
			case <-ch:
			case <-ctx.Done():
				s.mu.Lock()
				s.tab.CancelWrite(key)
				delete(s.parked, key)
				s.mu.Unlock()
				return 0, false, ctx.Err()
			}
		}
		s.mu.Lock()
		g, live := s.eng.LiveSnapshots()
		ok := s.barrier == nil && g == gen && !ss.closed
		unique := false
		if ok {
			s.preparing++ // until the approval is sent; see handle
			s.unsettled[ss.id] = unsettled{node: ss.node, gen: gen}
			if live == 0 && ss.version >= wire.VersionUnique {
				locks, _ := s.tab.Len()
				unique = locks == 0
			}
		}
		s.mu.Unlock()
		if ok {
			return gen, unique, nil
		}
		// A snapshot was created (or is being created) while this write
		// waited: its copy-out was made for an older generation. Redo it.
	}
}

// ---------------------------------------------------------------------------
// Snapshot reads and writes

// snapshotRead maps the chunks and grants the read lock on those mapped to
// the origin. The engine's transient hold on each origin-mapped chunk
// bridges the lookup and the table lock (see the package doc).
func (s *Server) snapshotRead(ctx context.Context, ss *session, id uint64, snap uint32, ranges []wire.Range) ([]wire.Extent, error) {
	var held []uint64
	defer func() {
		if len(held) > 0 {
			s.eng.ReleaseOriginRead(held...)
		}
	}()
	cs := uint64(s.eng.ChunkSize())
	var xs []wire.Extent
	var origin []locks.Range
	for _, r := range ranges {
		locs, err := s.eng.MapSnapshotReadHold(ctx, snapstore.SnapID(snap), r.Start, uint64(r.Count))
		for i, l := range locs {
			if l.Origin {
				held = append(held, r.Start+uint64(i))
			}
		}
		if err != nil {
			return nil, err
		}
		for i, l := range locs {
			c := r.Start + uint64(i)
			if n := len(xs); n > 0 {
				p := &xs[n-1]
				if p.Start+uint64(p.Count) == c && p.Origin == l.Origin &&
					(l.Origin || p.StoreOffset+uint64(p.Count)*cs == uint64(l.Offset)) {
					p.Count++
					if l.Origin {
						origin[len(origin)-1].Count++
					}
					continue
				}
			}
			x := wire.Extent{Start: c, Count: 1, Origin: l.Origin}
			if l.Origin {
				origin = append(origin, locks.Range{Start: c, Count: 1})
			} else {
				x.StoreOffset = uint64(l.Offset)
			}
			xs = append(xs, x)
		}
	}
	if len(origin) == 0 {
		return xs, nil
	}
	if len(origin) > wire.MaxRanges {
		// Too fragmented for one lock: lock the requested ranges instead (a
		// superset; writes to copied-out chunks among them merely wait).
		origin = origin[:0]
		for _, r := range ranges {
			origin = append(origin, locks.Range(r))
		}
	}
	key := locks.Key{Client: locks.ClientID(ss.id), ID: id}
	s.mu.Lock()
	if ss.closed {
		s.mu.Unlock()
		return nil, errSessionClosed
	}
	err := s.tab.Acquire(key, origin)
	if err == nil {
		s.granted[ss.id] = s.cfg.Now()
		s.lockAt[key] = s.granted[ss.id]
	}
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.eng.ReleaseOriginRead(held...)
	held = nil
	// The registry must say this client may hold locks before it can read
	// under one, so that a server elected after a crash awaits it.
	if err := s.regPut(ctx, ss, true); err != nil {
		s.mu.Lock()
		if ready, rerr := s.tab.Release(key); rerr == nil {
			s.wakeLocked(ready)
		}
		s.mu.Unlock()
		return nil, err
	}
	return xs, nil
}

func (s *Server) snapshotWrite(ctx context.Context, snap uint32, ranges []wire.Range) ([]wire.Extent, error) {
	cs := uint64(s.eng.ChunkSize())
	var xs []wire.Extent
	for _, r := range ranges {
		offs, err := s.eng.PrepareSnapshotWrite(ctx, snapstore.SnapID(snap), r.Start, uint64(r.Count))
		if err != nil {
			return nil, err
		}
		for i, off := range offs {
			c := r.Start + uint64(i)
			if n := len(xs); n > 0 {
				p := &xs[n-1]
				if p.Start+uint64(p.Count) == c && p.StoreOffset+uint64(p.Count)*cs == uint64(off) {
					p.Count++
					continue
				}
			}
			xs = append(xs, wire.Extent{Start: c, Count: 1, StoreOffset: uint64(off)})
		}
	}
	return xs, nil
}

// ---------------------------------------------------------------------------
// Snapshot creation barrier

// CreateSnapshot takes a snapshot, point in time across all clients:
//
//  1. new copy-outs are held back and those in progress drain;
//  2. the engine records the snapshot (the generation increases);
//  3. every connected client gets INVALIDATE{generation} and answers once
//     it has dropped its unique-chunk cache and finished every origin write
//     approved under an older generation; a client that does not answer
//     within BarrierTimeout is disconnected;
//  4. copy-outs resume; writes approved under the old generation are
//     re-examined first.
//
// Step 3 waits for acks even if ctx ends (the snapshot exists by then).
func (s *Server) CreateSnapshot(ctx context.Context, name string, o snapstore.CreateOptions) (snapstore.SnapshotInfo, error) {
	if !snapstore.ValidName(name) {
		return snapstore.SnapshotInfo{}, fmt.Errorf("create snapshot %q: %w", name, snapstore.ErrBadName)
	}
	if _, err := s.eng.Lookup(name); err == nil {
		return snapstore.SnapshotInfo{}, fmt.Errorf("create snapshot %q: %w", name, snapstore.ErrSnapshotExists)
	}
	select {
	case s.create <- struct{}{}:
	case <-ctx.Done():
		return snapstore.SnapshotInfo{}, ctx.Err()
	case <-s.closeCh:
		return snapstore.SnapshotInfo{}, ErrServerClosed
	}
	defer func() { <-s.create }()
	start := s.cfg.Now()

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return snapstore.SnapshotInfo{}, ErrServerClosed
	}
	b := &barrier{pending: map[*session]struct{}{}}
	s.barrier = b
	end := func() {
		s.barrier = nil
		s.notifyLocked()
		s.mu.Unlock()
	}
	if err := s.waitLocked(ctx, func() bool { return s.preparing == 0 }); err != nil {
		end()
		return snapstore.SnapshotInfo{}, err
	}
	s.mu.Unlock()

	si, err := s.eng.CreateSnapshot(ctx, name, o)
	s.mu.Lock()
	if err != nil {
		end()
		return snapstore.SnapshotInfo{}, err
	}
	b.gen = uint64(si.ID)
	var targets []*session
	for _, ss := range s.sessions {
		if ss.live && !ss.closed {
			b.pending[ss] = struct{}{}
			targets = append(targets, ss)
		}
	}
	for id := range s.unsettled {
		b.clients = append(b.clients, id)
	}
	if away := s.unsettledAwayLocked(b); len(away) > 0 {
		s.log.WithFields(logrus.Fields{"snapshot": name, "clients": away, "timeout": s.cfg.BarrierTimeout.String()}).
			Warn("snapshot waits for disconnected clients that may still be writing under an approval")
	}
	s.mu.Unlock()
	for _, ss := range targets {
		ss.invalidate(b.gen)
	}

	timer := time.NewTimer(s.cfg.BarrierTimeout)
	defer timer.Stop()
	timedOut := false
	s.mu.Lock()
	for (len(b.pending) > 0 || b.unsettledLocked(s) > 0) && !s.closed && !timedOut {
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			timedOut = true
		case <-s.closeCh:
		}
		s.mu.Lock()
	}
	var late []*session
	for ss := range b.pending {
		late = append(late, ss)
		s.dropSessionLocked(ss)
	}
	var away []string
	var forget []wire.ClientID
	if !s.closed {
		away = s.unsettledAwayLocked(b)
		for _, id := range b.clients {
			if _, ok := s.unsettled[id]; ok {
				delete(s.unsettled, id)
				forget = append(forget, id)
			}
		}
	}
	end()
	for _, ss := range late {
		ss.log.WithFields(logrus.Fields{"snapshot": name, "generation": b.gen, "timeout": s.cfg.BarrierTimeout.String()}).
			Error("client did not acknowledge the snapshot barrier in time; disconnected")
		ss.kill()
	}
	if len(away) > 0 {
		s.log.WithFields(logrus.Fields{"snapshot": name, "generation": b.gen, "clients": away, "timeout": s.cfg.BarrierTimeout.String()}).
			Error("disconnected clients did not come back in time: writes they were approved before the snapshot may still land in it")
	}
	for _, id := range forget {
		s.regDelete(id)
	}
	s.log.WithFields(logrus.Fields{"snapshot": name, "id": si.ID, "generation": b.gen, "clients": len(targets),
		"took": s.cfg.Now().Sub(start).String()}).Info("snapshot created")
	return si, nil
}

// unsettledLocked counts b's clients that are still unsettled.
func (b *barrier) unsettledLocked(s *Server) int {
	n := 0
	for _, id := range b.clients {
		if _, ok := s.unsettled[id]; ok {
			n++
		}
	}
	return n
}

// unsettledAwayLocked names b's unsettled clients that have no connection
// (id@node), for the logs.
func (s *Server) unsettledAwayLocked(b *barrier) []string {
	var out []string
	for _, id := range b.clients {
		u, ok := s.unsettled[id]
		if _, conn := s.sessions[id]; ok && !conn {
			out = append(out, id.String()+"@"+u.node)
		}
	}
	slices.Sort(out)
	return out
}

// ---------------------------------------------------------------------------
// Admin

func (s *Server) resolve(ref wire.SnapshotRef) (snapstore.SnapID, error) {
	if ref.ID != 0 {
		return snapstore.SnapID(ref.ID), nil
	}
	si, err := s.eng.Lookup(ref.Name)
	if err != nil {
		return 0, err
	}
	return si.ID, nil
}

// DeleteSnapshot deletes a snapshot by id or name; its space is reclaimed
// in the background.
func (s *Server) DeleteSnapshot(ctx context.Context, ref wire.SnapshotRef) error {
	id, err := s.resolve(ref)
	if err != nil {
		return err
	}
	if err := s.eng.DeleteSnapshot(ctx, id); err != nil {
		return err
	}
	s.log.WithFields(logrus.Fields{"snapshot": ref.Name, "id": id}).Info("snapshot deleted")
	s.announceList()
	return nil
}

// announceList tells every connected client that the snapshot list
// changed (a snapshot was deleted), so each node unexports it at once:
// INVALIDATE of the current generation. It asks nothing new of a client
// (its ack means, as for any INVALIDATE, that its writes approved under
// older generations are written) and the client reports the change
// (client.Config.OnChange).
func (s *Server) announceList() {
	gen := s.eng.Generation()
	s.mu.Lock()
	var targets []*session
	for _, ss := range s.sessions {
		if ss.live && !ss.closed {
			targets = append(targets, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range targets {
		ss.invalidate(gen)
	}
}

// SetPriority changes a snapshot's priority.
func (s *Server) SetPriority(ctx context.Context, ref wire.SnapshotRef, prio int32) error {
	id, err := s.resolve(ref)
	if err != nil {
		return err
	}
	return s.eng.SetPriority(ctx, id, prio)
}

// Snapshots lists the snapshots (live, deleting, dropped) by id.
func (s *Server) Snapshots() []snapstore.SnapshotInfo { return s.eng.Snapshots() }

// Check runs a full consistency check of the store.
func (s *Server) Check(ctx context.Context) (*snapstore.CheckResult, error) {
	return s.eng.Check(ctx, nil)
}

// Recover recovers a failed store engine in place now (admin "volume
// recover"); nil at once if it works.
func (s *Server) Recover(ctx context.Context) error {
	if err := s.eng.Recover(ctx); err != nil {
		return err
	}
	s.log.Info("snapshot store engine recovered in place on request")
	return nil
}

func entry(si snapstore.SnapshotInfo) wire.SnapshotEntry {
	return wire.SnapshotEntry{
		ID: uint32(si.ID), Name: si.Name, Created: si.Created.UnixNano(), Priority: si.Priority,
		Writable: si.Writable, Dropped: si.State == snapstore.StateDropped, Deleting: si.State == snapstore.StateDeleting,
		UniqueBytes: uint64(max(si.UniqueBytes, 0)), SharedBytes: uint64(max(si.SharedBytes, 0)),
	}
}

func (s *Server) listSnapshots(after uint32, n int) *wire.SnapshotList {
	out := &wire.SnapshotList{}
	for _, si := range s.eng.Snapshots() {
		if uint32(si.ID) <= after {
			continue
		}
		if len(out.Entries) == n {
			out.More = true
			break
		}
		out.Entries = append(out.Entries, entry(si))
	}
	return out
}

func (s *Server) statusMessage() *wire.StatusOK {
	st := s.Status()
	m := &wire.StatusOK{Term: st.Term, Since: st.Since.UnixNano(), Node: st.Node, Volume: st.Volume,
		Generation: st.Generation}
	size := 0
	for _, c := range st.Clients {
		size += 16 + 1 + len(c.Node) + 1 + 4
		if len(m.Clients) == wire.MaxClients || size > replyBudget {
			break
		}
		m.Clients = append(m.Clients, wire.ClientStatus{Client: c.ID, Node: c.Node, Connected: c.Connected,
			Locks: uint32(c.Locks)})
	}
	return m
}

func (s *Server) checkMessage(ctx context.Context) (wire.Message, error) {
	res, err := s.eng.Check(ctx, nil)
	if err != nil {
		return nil, err
	}
	m := &wire.CheckOK{}
	size := 0
	for _, p := range res.Problems {
		p = clip(p)
		size += 2 + len(p)
		if len(m.Problems) == wire.MaxProblems || size > replyBudget {
			m.Omitted++
			continue
		}
		m.Problems = append(m.Problems, p)
	}
	if len(res.Problems) > 0 {
		s.log.WithField("problems", len(res.Problems)).Warn("consistency check found problems")
	}
	return m, nil
}

// ---------------------------------------------------------------------------
// Errors

// clip makes s a valid wire text: valid UTF-8 of at most wire.MaxText bytes.
func clip(s string) string {
	if len(s) > wire.MaxText {
		s = s[:wire.MaxText]
	}
	return strings.ToValidUTF8(s, "")
}

// replyBudget bounds the variable part of a reply body below wire.MaxBody.
const replyBudget = wire.MaxBody - 64<<10

// errorCode maps an error to the wire's code and message.
func errorCode(err error) (wire.ErrorCode, string) {
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code, we.Message
	}
	code := wire.CodeInternal
	switch {
	case errors.Is(err, snapstore.ErrSnapshotDropped):
		code = wire.CodeSnapshotDropped
	case errors.Is(err, snapstore.ErrNoSuchSnapshot):
		code = wire.CodeNoSuchSnapshot
	case errors.Is(err, snapstore.ErrSnapshotExists):
		code = wire.CodeExists
	case errors.Is(err, snapstore.ErrReadOnlySnapshot):
		code = wire.CodeNotWritable
	case errors.Is(err, snapstore.ErrTableFull):
		code = wire.CodeNoSpace
	case errors.Is(err, snapstore.ErrBadName):
		code = wire.CodeBadRequest
	case errors.Is(err, snapstore.ErrRange):
		code = wire.CodeOutOfRange
	case errors.Is(err, locks.ErrLimit):
		code = wire.CodeLimit
	case errors.Is(err, locks.ErrExists), errors.Is(err, locks.ErrBadRange):
		code = wire.CodeBadRequest
	case errors.Is(err, snapstore.ErrClosed), errors.Is(err, ErrServerClosed),
		errors.Is(err, context.Canceled):
		code = wire.CodeShuttingDown
	}
	msg := err.Error()
	msg = clip(msg)
	return code, msg
}
