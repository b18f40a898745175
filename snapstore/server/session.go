package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore/locks"
	"github.com/csnap/csnap/snapstore/wire"
)

var errSessionClosed = errors.New("connection closed")

// session is one client connection.
type session struct {
	s      *Server
	conn   net.Conn
	w      *wire.Writer
	log    *logrus.Entry
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{} // requests in flight
	killed sync.Once

	id      wire.ClientID // set by HELLO
	node    string
	version uint16 // protocol version chosen at HELLO

	// guarded by s.mu
	live   bool              // UPLOAD_DONE accepted
	closed bool              // dropped: no new table state for it
	calls  *clientCalls      // the server's requests to the client (clientcalls.go)
	seen   map[string]uint64 // shared entries uploaded before UPLOAD_DONE, by key
	// blockKeys: the handles of its block locks, granted or waiting
	blockKeys map[uint64]struct{}

	// storeReads: answered a SNAPSHOT_READ with store extents (version 4:
	// the client may cache them) or a SNAPSHOT_WRITE, so after a
	// disconnect it may still read or write the store for its lease
	// (reclaim.go).
	storeReads atomic.Bool

	// guarded by s.regMu
	regDone, regHolds bool

	// reader goroutine only
	upload   []locks.Lock
	overflow bool
	bad      int
}

// deadlineWriter bounds every frame write, so a client that stops reading
// is disconnected instead of blocking its repliers forever.
type deadlineWriter struct {
	c net.Conn
	d time.Duration
}

func (w deadlineWriter) Write(p []byte) (int, error) {
	_ = w.c.SetWriteDeadline(time.Now().Add(w.d))
	return w.c.Write(p)
}

func (s *Server) startSession(ctx context.Context, conn net.Conn) bool {
	sctx, cancel := context.WithCancel(ctx)
	ss := &session{
		s: s, conn: conn, ctx: sctx, cancel: cancel,
		w:     wire.NewWriter(deadlineWriter{conn, s.cfg.WriteTimeout}),
		log:   s.log.WithField("remote", conn.RemoteAddr().String()),
		sem:   make(chan struct{}, s.cfg.MaxInFlight),
		calls: newClientCalls(),

		blockKeys: map[uint64]struct{}{},
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return false
	}
	s.conns[ss] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go ss.run()
	return true
}

// kill closes the connection; the reader goroutine then tears down.
func (ss *session) kill() {
	ss.killed.Do(func() {
		ss.cancel()
		ss.conn.Close()
	})
}

func (ss *session) send(id uint64, m wire.Message) {
	err := ss.w.Write(id, m)
	if err == nil {
		return
	}
	var me *wire.MessageError
	if errors.As(err, &me) && id != 0 && m.Type() != wire.TypeError {
		// Refused by the encoder (a server bug or an over-limit answer);
		// nothing was written, the stream is intact.
		ss.log.WithError(err).Error("cannot encode reply")
		ss.sendErr(id, wire.CodeInternal, "cannot encode reply: "+err.Error())
		return
	}
	ss.log.WithError(err).Debug("write failed; closing connection")
	ss.kill()
}

func (ss *session) sendErr(id uint64, code wire.ErrorCode, msg string) {
	msg = clip(msg)
	ss.send(id, &wire.Error{Code: code, Message: msg})
}

// fatal reports a connection-level error and closes.
func (ss *session) fatal(code wire.ErrorCode, msg string) {
	ss.log.WithField("reason", msg).Warn("closing client connection")
	ss.sendErr(0, code, msg)
	ss.kill()
}

func (ss *session) run() {
	s := ss.s
	defer s.wg.Done()
	defer ss.teardown()
	r := wire.NewReader(bufio.NewReader(ss.conn))
	_ = ss.conn.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if !tlsHandshake(ss.conn, s.cfg.HandshakeTimeout, ss.log, &s.tlsLog, s.cfg.Now) || !ss.handshake(r) {
		return
	}
	for {
		id, m, err := r.Read()
		if err != nil {
			var me *wire.MessageError
			if errors.As(err, &me) {
				ss.bad++
				if ss.bad > maxBadFrames {
					ss.fatal(wire.CodeBadRequest, "too many malformed messages")
					return
				}
				if me.ID != 0 && me.Type.Kind() == wire.KindRequest {
					ss.sendErr(me.ID, wire.CodeBadRequest, me.Error())
				}
				ss.log.WithError(err).Debug("malformed message")
				continue
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && ss.ctx.Err() == nil {
				ss.log.WithError(err).Info("client connection lost")
			}
			return
		}
		if !ss.dispatch(id, m) {
			return
		}
	}
}

func (ss *session) teardown() {
	s := ss.s
	ss.kill()
	s.mu.Lock()
	current := s.endSessionLocked(ss, endDetach)
	_, kept := s.detached[ss.id]
	_, unsettled := s.unsettled[ss.id]
	delete(s.conns, ss)
	s.mu.Unlock()
	switch {
	case !current || kept:
	case unsettled:
		// Kept in the registry: a new server must know it may still be
		// writing under an approval.
		ss.log.Info("client disconnected; it may still be writing under an approval, so the next snapshot waits for it")
	default:
		s.regDelete(ss.id)
		ss.log.Info("client disconnected")
	}
}

// handshake reads HELLO and answers it. It reports whether the client was
// accepted.
func (ss *session) handshake(r *wire.Reader) bool {
	s := ss.s
	id, m, err := r.Read()
	if err != nil {
		ss.log.WithError(err).Debug("no HELLO")
		return false
	}
	h, ok := m.(*wire.Hello)
	if !ok {
		ss.fatal(wire.CodeBadRequest, fmt.Sprintf("expected HELLO, got %v", m.Type()))
		return false
	}
	ss.log = ss.log.WithFields(logrus.Fields{"client": h.Client.String(), "node": h.Node})
	reject := func(reason wire.RejectReason, format string, a ...any) bool {
		msg := fmt.Sprintf(format, a...)
		ss.log.WithFields(logrus.Fields{"reason": reason.String(), "client_term": h.Term}).Warn("rejected client: " + msg)
		ss.send(id, &wire.HelloReject{Reason: reason, Term: s.cfg.Term, Message: clip(msg)})
		return false
	}
	if reason, msg := ss.authenticate(h); reason != 0 {
		return reject(reason, "%s", msg)
	}
	version := min(h.MaxVersion, wire.MaxVersion)
	switch {
	case version < max(h.MinVersion, wire.MinVersion):
		return reject(wire.RejectVersion, "client speaks versions %d-%d, server %d-%d",
			h.MinVersion, h.MaxVersion, wire.MinVersion, wire.MaxVersion)
	case h.Volume != s.cfg.Volume:
		return reject(wire.RejectForeignVolume, "this server serves volume %q, not %q", s.cfg.Volume, h.Volume)
	case !s.mem.IsMember(h.Node):
		return reject(wire.RejectNotMember, "node %q is not a cluster member", h.Node)
	case h.Term > s.cfg.Term:
		// Never taken on the peer's word: the lock decides (lockcheck.go).
		why := s.claimedTerm(ss.ctx, ss.log, h.Term)
		return reject(wire.RejectStaleTerm, "server term %d is older than term %d the client knows (%s)", s.cfg.Term, h.Term, why)
	}
	ss.id, ss.node, ss.version = h.Client, h.Node, version
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return reject(wire.RejectShuttingDown, "server is shutting down")
	}
	if owner, known := s.clientNodeLocked(ss.id); known && owner != ss.node {
		s.mu.Unlock()
		return reject(wire.RejectIdentity, "client id %v belongs to node %q", ss.id, owner)
	}
	old := s.sessions[ss.id]
	if old != nil {
		s.endSessionLocked(old, endReplace)
	}
	if d := s.detached[ss.id]; d != nil {
		// Back in time: its locks stay until its upload re-declares them.
		s.stopDetachLocked(d)
		delete(s.detached, ss.id)
	}
	s.sessions[ss.id] = ss
	s.mu.Unlock()
	if old != nil {
		ss.log.Info("client reconnected; closing its previous connection")
		old.kill()
	}
	maxLocks := s.cfg.Limits.MaxLocks
	if maxLocks <= 0 {
		maxLocks = defaultMaxLocks
	}
	ss.send(id, &wire.HelloOK{
		Version: version, Term: s.cfg.Term, Node: s.cfg.Node,
		ChunkSize: uint32(s.eng.ChunkSize()), VolumeSize: uint64(s.eng.OriginSize()),
		StoreUUID: s.eng.UUID(), Generation: s.eng.Generation(),
		MaxInFlight: uint32(s.cfg.MaxInFlight), MaxLocks: uint32(maxLocks),
	})
	ss.log.WithField("version", version).Debug("client accepted")
	return true
}

// dispatch handles one frame. FINISH_SNAPSHOT_READ and the lock upload are
// applied here, in order; other requests run in their own goroutines. It
// reports whether to go on reading.
func (ss *session) dispatch(id uint64, m wire.Message) bool {
	s := ss.s
	switch m := m.(type) {
	case *wire.UploadLocks:
		return ss.uploadLocks(m)
	case *wire.UploadDone:
		return ss.uploadDone(id, m)
	case *wire.FinishSnapshotRead:
		s.mu.Lock()
		live := ss.live
		var err error
		if live {
			var ready []locks.Key
			ready, err = s.tab.Release(locks.Key{Client: locks.ClientID(ss.id), ID: m.Handle})
			s.wakeLocked(ready)
		}
		s.mu.Unlock()
		if !live {
			ss.fatal(wire.CodeBadRequest, "FINISH_SNAPSHOT_READ before UPLOAD_DONE")
			return false
		}
		if err != nil {
			// A client bug, a lock dropped with an earlier connection, or
			// one revoked past the bound (lockbound.go).
			s.mu.Lock()
			revoked := s.finishRevokedLocked(locks.Key{Client: locks.ClientID(ss.id), ID: m.Handle})
			s.mu.Unlock()
			if revoked {
				ss.log.WithField("handle", m.Handle).Debug("FINISH_SNAPSHOT_READ of a revoked lock")
			} else {
				ss.log.WithError(err).Warn("FINISH_SNAPSHOT_READ of an unknown lock")
			}
		}
		return true
	case *wire.UploadShared:
		return ss.uploadShared(m)
	case *wire.BlockUnlock:
		ss.blockUnlock(m.Handle)
		return true
	case *wire.InvalidateAck, *wire.OK, *wire.ReclaimOK:
		return ss.clientReply(id, m)
	case *wire.Error:
		if id == 0 {
			ss.log.WithField("error", m.Error()).Info("client reported a connection error")
			return false
		}
		return ss.clientReply(id, m)
	case *wire.Pong:
		return true
	case *wire.Hello:
		ss.sendErr(id, wire.CodeBadRequest, "HELLO on an established connection")
		return true
	}
	if m.Type().Kind() != wire.KindRequest {
		ss.fatal(wire.CodeBadRequest, fmt.Sprintf("unexpected %v", m.Type()))
		return false
	}
	if _, ok := m.(*wire.Ping); ok {
		ss.send(id, &wire.Pong{})
		return true
	}
	s.mu.Lock()
	live := ss.live
	s.mu.Unlock()
	if !live {
		ss.sendErr(id, wire.CodeBadRequest, fmt.Sprintf("%v before UPLOAD_DONE", m.Type()))
		return true
	}
	select {
	case ss.sem <- struct{}{}:
	default:
		ss.sendErr(id, wire.CodeLimit, fmt.Sprintf("busy: %d requests in flight", cap(ss.sem)))
		return true
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-ss.sem }()
		reply, err := s.handle(ss, id, m)
		if err != nil {
			if errors.Is(err, errSessionClosed) || ss.ctx.Err() != nil {
				return
			}
			code, msg := errorCode(err)
			if code == wire.CodeInternal {
				ss.log.WithError(err).WithField("request", m.Type().String()).Error("request failed")
			}
			ss.sendErr(id, code, msg)
			return
		}
		if reply != nil {
			ss.send(id, reply)
		}
	}()
	return true
}

func (ss *session) uploadLocks(m *wire.UploadLocks) bool {
	s := ss.s
	s.mu.Lock()
	live := ss.live
	s.mu.Unlock()
	if live {
		ss.fatal(wire.CodeBadRequest, "UPLOAD_LOCKS after UPLOAD_DONE")
		return false
	}
	maxLocks := s.cfg.Limits.MaxLocks
	if maxLocks <= 0 {
		maxLocks = defaultMaxLocks
	}
	for _, l := range m.Locks {
		if len(ss.upload) >= maxLocks {
			ss.overflow = true
			break
		}
		rs := make([]locks.Range, len(l.Ranges))
		for i, r := range l.Ranges {
			rs[i] = locks.Range(r)
		}
		ss.upload = append(ss.upload, locks.Lock{ID: l.Handle, Ranges: rs})
	}
	return true
}

func (ss *session) uploadDone(id uint64, m *wire.UploadDone) bool {
	s := ss.s
	up, overflow := ss.upload, ss.overflow
	ss.upload, ss.overflow = nil, false
	s.mu.Lock()
	live := ss.live
	s.mu.Unlock()
	switch {
	case live:
		ss.sendErr(id, wire.CodeBadRequest, "UPLOAD_DONE twice")
		return true
	case overflow:
		ss.sendErr(id, wire.CodeLimit, "more locks uploaded than HELLO_OK's max locks")
		return true
	case int(m.Locks) != len(up):
		ss.sendErr(id, wire.CodeBadRequest, fmt.Sprintf("UPLOAD_DONE says %d locks, %d were uploaded", m.Locks, len(up)))
		return true
	}
	s.mu.Lock()
	if ss.closed {
		s.mu.Unlock()
		return false
	}
	ready, err := s.tab.Upload(locks.ClientID(ss.id), s.unrevokedLocked(ss.id, up))
	s.wakeLocked(ready)
	s.uploadedLocked(ss.id)
	s.mu.Unlock()
	if err != nil {
		code, msg := errorCode(err)
		ss.sendErr(id, code, msg)
		return true
	}
	if err := s.regPut(ss.ctx, ss, len(up) > 0); err != nil {
		if !errors.Is(err, errSessionClosed) {
			ss.log.WithError(err).Error("cannot register client")
			ss.sendErr(id, wire.CodeInternal, err.Error())
		}
		return false
	}
	s.mu.Lock()
	if ss.closed {
		s.mu.Unlock()
		return false
	}
	ss.live = true
	delete(s.uploadAwait, ss.id)
	if _, ok := s.awaited[ss.id]; ok {
		delete(s.awaited, ss.id)
		ss.log.WithField("locks", len(up)).Info("awaited client is back")
		if len(s.awaited) == 0 {
			s.log.Info("every awaited client is back: origin writes proceed")
		}
	}
	reclaim := ss.reclaimAfterUploadLocked()
	var inval uint64
	if b := s.barrier; b != nil && b.gen != 0 {
		// A snapshot is being created: this client must drain its old
		// writes (maybe approved on an earlier connection) too.
		b.pending[ss] = struct{}{}
		inval = b.gen
	}
	s.notifyLocked()
	s.mu.Unlock()
	_ = ss.conn.SetReadDeadline(time.Time{})
	ss.send(id, &wire.OK{})
	ss.pushSharedAfterUpload()
	if inval != 0 {
		ss.invalidate(inval)
	}
	if reclaim != nil {
		reclaim()
	}
	ss.log.WithField("locks", len(up)).Debug("client ready")
	return true
}

// invalidate sends INVALIDATE{gen}; the ack arrives in clientReply.
func (ss *session) invalidate(gen uint64) {
	s := ss.s
	s.mu.Lock()
	rid := ss.calls.add(clientCall{req: wire.TypeInvalidate, gen: gen})
	s.mu.Unlock()
	ss.sendAsync(rid, &wire.Invalidate{Generation: gen})
}

// clientReply handles the client's answer m (INVALIDATE_ACK, OK,
// RECLAIM_OK or ERROR) to the server's request id: the call ledger judges
// it; an accepted answer completes what the request was for, a refusal
// disconnects the client, anything else fails the connection. It reports
// whether to go on reading.
func (ss *session) clientReply(id uint64, m wire.Message) bool {
	s := ss.s
	s.mu.Lock()
	c, verdict, why := ss.calls.answer(id, m)
	if verdict == answerAccepted {
		switch c.req {
		case wire.TypeInvalidate:
			ss.invalidatedLocked(c.gen)
		case wire.TypeReclaim:
			if s.reclaim == c.pass {
				delete(c.pass.pending, ss.id)
				s.notifyLocked()
			}
		case wire.TypeSharedState:
			if c.done != nil {
				close(c.done)
			}
		}
	}
	s.mu.Unlock()
	switch verdict {
	case answerInvalid:
		ss.fatal(wire.CodeBadRequest, why)
		return false
	case answerRefused:
		// A refused RECLAIM stays pending in its pass: the client may
		// still be reading until it answers on a new connection or the
		// pass gives up on it.
		ss.log.WithField("error", m.(*wire.Error).Error()).Warn(fmt.Sprintf("client refused %v; disconnecting it", c.req))
		ss.kill()
		return false
	}
	return true
}

// invalidatedLocked records that the client acknowledged INVALIDATE{gen}.
func (ss *session) invalidatedLocked(gen uint64) {
	s := ss.s
	if b := s.barrier; b != nil && b.gen == gen {
		if _, p := b.pending[ss]; p {
			delete(b.pending, ss)
			s.notifyLocked()
		}
	}
	// Every write it was approved before gen has completed.
	if u, found := s.unsettled[ss.id]; found && u.gen < gen {
		delete(s.unsettled, ss.id)
		s.notifyLocked()
	}
}
