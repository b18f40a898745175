package server

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore/wire"
)

// Shared state (wire protocol version 2): small entries every client keeps
// a replica of (the SCSI target's reservations and unit attentions). The
// server holds the authoritative copy in memory; a newly elected server
// rebuilds it from the clients' uploads (UPLOAD_SHARED), adopting the
// newest version of each entry, and refuses to commit an update until
// every client of its registry has uploaded (or left, or AwaitTimeout
// passed), so that a change acknowledged under the old server is never
// overwritten by one based on an older version.

// maxSharedEntries bounds the entries of one volume (one per logical unit
// in practice: the origin and each snapshot).
const maxSharedEntries = 4096

// sharedEntry is the current version of one entry.
type sharedEntry struct {
	version uint64
	value   []byte
}

// nextSharedVersion returns the version that follows cur under this
// server's term: term<<32 | counter, above every version of older terms.
func (s *Server) nextSharedVersion(cur uint64) uint64 {
	base := s.cfg.Term << 32
	if cur >= base {
		return cur + 1
	}
	return base | 1
}

// sharedUpdate answers SHARED_UPDATE: a compare-and-set of one entry, in
// force on every other connected client (SHARED_STATE acknowledged, or the
// client disconnected) before the answer.
func (s *Server) sharedUpdate(ctx context.Context, ss *session, m *wire.SharedUpdate) (wire.Message, error) {
	if ss.version < wire.VersionShared {
		return nil, &wire.Error{Code: wire.CodeUnsupported, Message: "SHARED_UPDATE needs protocol version 2"}
	}
	if err := s.validShared(m.Key, m.Value); err != nil {
		ss.log.WithError(err).WithField("key", m.Key).Warn("refused SHARED_UPDATE of an invalid value")
		return nil, &wire.Error{Code: wire.CodeBadRequest, Message: err.Error()}
	}
	s.mu.Lock()
	if err := s.waitLocked(ctx, func() bool { return len(s.uploadAwait) == 0 }); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	e := s.shared[m.Key]
	if e == nil {
		e = &sharedEntry{}
		if len(s.shared) >= maxSharedEntries {
			s.mu.Unlock()
			return nil, &wire.Error{Code: wire.CodeLimit, Message: fmt.Sprintf("volume already has %d shared-state entries", maxSharedEntries)}
		}
	}
	if m.Version != e.version {
		cur := wire.SharedValue{Key: m.Key, Version: e.version, Value: e.value}
		s.mu.Unlock()
		return &wire.SharedResult{SharedValue: cur}, nil
	}
	if err := s.persistLocked(ctx, m.Key, m.Value); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	ne := &sharedEntry{version: s.nextSharedVersion(e.version), value: slices.Clone(m.Value)}
	if err := s.commitShared(ctx, ss, m.Key, ne); err != nil {
		return nil, err
	}
	return &wire.SharedResult{Committed: true, SharedValue: wire.SharedValue{Key: m.Key, Version: ne.version}}, nil
}

// validShared checks a value before it enters the shared state.
func (s *Server) validShared(key string, value []byte) error {
	if len(value) == 0 || s.cfg.ValidateShared == nil {
		return nil
	}
	if err := s.cfg.ValidateShared(key, value); err != nil {
		return fmt.Errorf("invalid shared-state value for %q: %w", key, err)
	}
	return nil
}

// ResetShared puts shared-state entry key back to the state of an entry
// never written (an empty value, which a logical unit reads as no
// reservation and no pending unit attention) under a new version, in
// force on every connected client when it returns. It is the operator's
// repair for an entry whose value its users cannot decode (csnap-admin
// volume reset-state). It returns the new version.
func (s *Server) ResetShared(ctx context.Context, key string) (uint64, error) {
	if len(key) == 0 || len(key) > wire.MaxSharedKey {
		return 0, fmt.Errorf("shared state: key of %d bytes (1-%d)", len(key), wire.MaxSharedKey)
	}
	s.mu.Lock()
	if err := s.waitLocked(ctx, func() bool { return len(s.uploadAwait) == 0 }); err != nil {
		s.mu.Unlock()
		return 0, err
	}
	var cur uint64
	if e := s.shared[key]; e != nil {
		cur = e.version
	} else if len(s.shared) >= maxSharedEntries {
		s.mu.Unlock()
		return 0, &wire.Error{Code: wire.CodeLimit, Message: fmt.Sprintf("volume already has %d shared-state entries", maxSharedEntries)}
	}
	// Above any refused upload too, so a client holding the refused
	// value takes the reset.
	ne := &sharedEntry{version: s.nextSharedVersion(max(cur, s.refusedShared[key]))}
	delete(s.refusedShared, key)
	s.log.WithFields(logrus.Fields{"key": key, "old_version": cur, "version": ne.version}).Warn("shared-state entry reset")
	if err := s.commitShared(ctx, nil, key, ne); err != nil {
		return 0, err
	}
	return ne.version, nil
}

// RewriteShared applies f to every shared-state entry and commits, under a
// new version and in force on every connected client, each value f
// changes (it returns the new value and true; the value it gets is its
// own copy). f runs with the server's state locked and must be quick. The
// cluster layer uses it to forget what a departed node left in the
// volume's logical units' state. It returns how many entries changed.
func (s *Server) RewriteShared(ctx context.Context, f func(key string, value []byte) ([]byte, bool)) (int, error) {
	s.mu.Lock()
	keys := make([]string, 0, len(s.shared))
	for k := range s.shared {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	slices.Sort(keys)
	changed := 0
	for _, key := range keys {
		s.mu.Lock()
		if err := s.waitLocked(ctx, func() bool { return len(s.uploadAwait) == 0 }); err != nil {
			s.mu.Unlock()
			return changed, err
		}
		e := s.shared[key]
		if e == nil {
			s.mu.Unlock()
			continue
		}
		nv, ok := f(key, slices.Clone(e.value))
		if !ok {
			s.mu.Unlock()
			continue
		}
		if err := s.validShared(key, nv); err != nil {
			s.mu.Unlock()
			return changed, err
		}
		if err := s.persistLocked(ctx, key, nv); err != nil {
			s.mu.Unlock()
			return changed, err
		}
		ne := &sharedEntry{version: s.nextSharedVersion(e.version), value: nv}
		if err := s.commitShared(ctx, nil, key, ne); err != nil { // releases s.mu
			return changed, err
		}
		changed++
	}
	return changed, nil
}

// commitShared installs ne as entry key (s.mu held; released on return)
// and pushes it to every connected client but from, waiting until each
// has acknowledged it, disconnected, or BarrierTimeout passed (then it is
// disconnected).
func (s *Server) commitShared(ctx context.Context, from *session, key string, ne *sharedEntry) error {
	s.shared[key] = ne
	type push struct {
		ss  *session
		rid uint64
		ch  chan struct{}
	}
	var pushes []push
	// Every accepted connection, live or still uploading (an entry it
	// uploads later is older, and ignored).
	for _, o := range s.sessions {
		if o != from && !o.closed && o.version >= wire.VersionShared {
			rid, ch := o.callLocked()
			pushes = append(pushes, push{o, rid, ch})
		}
	}
	s.mu.Unlock()
	val := wire.SharedValue{Key: key, Version: ne.version, Value: ne.value}
	for _, p := range pushes {
		p.ss.sendAsync(p.rid, &wire.SharedState{SharedValue: val})
	}
	timer := time.NewTimer(s.cfg.BarrierTimeout)
	defer timer.Stop()
wait:
	for i, p := range pushes {
		select {
		case <-p.ch:
		case <-p.ss.ctx.Done(): // gone: it gets the entry when it is back
		case <-s.closeCh:
			return ErrServerClosed
		case <-timer.C:
			for _, late := range pushes[i:] {
				select {
				case <-late.ch:
				default:
					late.ss.log.WithFields(logrus.Fields{"key": key, "timeout": s.cfg.BarrierTimeout.String()}).
						Error("client did not acknowledge a shared-state change in time; disconnected")
					late.ss.kill()
				}
			}
			break wait
		}
	}
	return nil
}

// uploadShared takes a client's UPLOAD_SHARED (before its UPLOAD_DONE):
// the version it knows, and the value if it is newer than the server's,
// which then goes to the other connected clients.
func (ss *session) uploadShared(m *wire.UploadShared) bool {
	s := ss.s
	if ss.version < wire.VersionShared {
		ss.fatal(wire.CodeBadRequest, "UPLOAD_SHARED needs protocol version 2")
		return false
	}
	s.mu.Lock()
	if ss.live {
		s.mu.Unlock()
		ss.fatal(wire.CodeBadRequest, "UPLOAD_SHARED after UPLOAD_DONE")
		return false
	}
	// Not adopted: a value its users could not decode, or a version of a
	// term after ours (no such server has been; adopting it would put
	// the entry beyond every update of this term).
	err := s.validShared(m.Key, m.Value)
	if err == nil && m.Version>>32 > s.cfg.Term {
		err = fmt.Errorf("shared-state entry %q at version %#x, of term %d, after this server's term %d", m.Key, m.Version, m.Version>>32, s.cfg.Term)
	}
	if err != nil {
		if m.Version>>32 <= s.cfg.Term && m.Version > s.refusedShared[m.Key] && len(s.refusedShared) < maxSharedEntries {
			s.refusedShared[m.Key] = m.Version // a reset must go above it
		}
		s.mu.Unlock()
		ss.log.WithError(err).Warn("refused an uploaded shared-state entry")
		return true
	}
	if ss.seen == nil {
		ss.seen = map[string]uint64{}
	}
	ss.seen[m.Key] = m.Version
	e := s.shared[m.Key]
	var others []*session
	if (e == nil && len(s.shared) < maxSharedEntries) || (e != nil && m.Version > e.version) {
		s.shared[m.Key] = &sharedEntry{version: m.Version, value: slices.Clone(m.Value)}
		for _, o := range s.sessions {
			if o != ss && o.live && !o.closed && o.version >= wire.VersionShared {
				others = append(others, o)
			}
		}
	}
	var rids []uint64
	for _, o := range others {
		rid, _ := o.callLocked()
		rids = append(rids, rid)
	}
	s.mu.Unlock()
	for i, o := range others {
		o.sendAsync(rids[i], &wire.SharedState{SharedValue: m.SharedValue})
	}
	return true
}

// pushSharedAfterUpload sends ss every entry it did not upload at the
// current version (called once ss is live).
func (ss *session) pushSharedAfterUpload() {
	s := ss.s
	if ss.version < wire.VersionShared {
		return
	}
	type push struct {
		rid uint64
		val wire.SharedValue
	}
	var pushes []push
	s.mu.Lock()
	for k, e := range s.shared {
		if v, ok := ss.seen[k]; ok && v == e.version {
			continue
		}
		rid, _ := ss.callLocked()
		pushes = append(pushes, push{rid, wire.SharedValue{Key: k, Version: e.version, Value: e.value}})
	}
	ss.seen = nil
	s.mu.Unlock()
	for _, p := range pushes {
		ss.sendAsync(p.rid, &wire.SharedState{SharedValue: p.val})
	}
}

// callLocked registers a server-initiated request on ss whose answer is
// OK; the channel is closed when it comes.
func (ss *session) callLocked() (uint64, chan struct{}) {
	ch := make(chan struct{})
	return ss.calls.add(clientCall{req: wire.TypeSharedState, done: ch}), ch
}

// sendAsync sends m without blocking the caller (which may hold no lock,
// but must not wait on a slow client's socket).
func (ss *session) sendAsync(id uint64, m wire.Message) {
	s := ss.s
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ss.send(id, m)
	}()
}
