package iscsi

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/csnap/csnap/target/scsi"
)

// session is an iSCSI session: one I_T nexus. csnap negotiates
// MaxConnections=1, so a session has at most one connection at a time; a
// connection that fails leaves the session to be reinstated or dropped.
type session struct {
	srv       *Server
	key       sessionKey
	tsih      uint16
	discovery bool
	// identity is the CHAP user the session authenticated as, "" without
	// CHAP; only a login with the same identity may reinstate it.
	identity string
	tgt      *target
	nexus    scsi.Nexus
	params   Params

	// CmdSN window (RFC 7143 section 4.2.2.1). expCmdSN is the next
	// CmdSN to deliver; inflight counts delivered-or-waiting commands
	// not yet answered, and shrinks the window so that at most
	// QueueDepth commands are in flight.
	expCmdSN atomic.Uint32
	inflight atomic.Int32
	// dataBuf bounds the session's buffered write data.
	dataBuf byteBudget

	mu      sync.Mutex
	conn    *conn
	waiting map[uint32]*task // out-of-order commands, by CmdSN
	closed  bool

	lost sync.Once // the SCSI layer was told the nexus is gone
}

// nexusLost tells the SCSI layer, once, that the session's I_T nexus is
// gone (its SPC-2 reservation released, and so on).
func (s *session) nexusLost() {
	if s.tgt != nil {
		s.lost.Do(func() { s.tgt.cfg.Exec.NexusLost(s.nexus) })
	}
}

func (s *session) maxCmdSN() uint32 {
	depth := int32(s.srv.cfg.QueueDepth) - s.inflight.Load()
	if depth < 1 {
		depth = 1
	}
	return s.expCmdSN.Load() + uint32(depth) - 1
}

// inWindow reports whether sn lies in [ExpCmdSN, MaxCmdSN] in serial
// number arithmetic (RFC 1982).
func (s *session) inWindow(sn uint32) bool {
	exp := s.expCmdSN.Load()
	return int32(sn-exp) >= 0 && int32(s.maxCmdSN()-sn) >= 0
}

// close ends the session: its connection is shut down and the SCSI layer
// learns that the nexus is gone.
func (s *session) close(reason error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	c := s.conn
	s.mu.Unlock()
	if c != nil {
		c.shutdown(reason)
	}
	s.srv.mu.Lock()
	if s.srv.sessions[s.key] == s {
		delete(s.srv.sessions, s.key)
	}
	s.srv.mu.Unlock()
	s.srv.cfg.Observer.SessionEnded(s.key.target)
	s.nexusLost()
}

// enterFullFeature binds the connection to a new or reinstated session once
// the login succeeds.
func (c *conn) enterFullFeature(ls *loginState) error {
	srv := c.srv
	key := sessionKey{initiator: ls.initiator, isid: ls.isid}
	var tgt *target
	if !ls.discovery {
		key.target = ls.targetName
		tgt = srv.lookupTarget(ls.targetName)
	}
	identity, err := ls.authorize(tgt)
	if err != nil {
		return err
	}
	params := ls.neg.finish()
	srv.mu.Lock()
	old := srv.sessions[key]
	if ls.tsih != 0 && (old == nil || old.tsih != ls.tsih) {
		srv.mu.Unlock()
		return loginFail(loginNoSession, "no session with TSIH %d to add a connection to", ls.tsih)
	}
	srv.mu.Unlock()
	if old != nil && old.identity != identity {
		// Knowing an initiator's name and ISID must not be enough to end
		// its session: only the identity it authenticated as may.
		return loginFail(loginForbidden, "session of %s authenticated as %q; a login as %q may not reinstate it",
			ls.initiator, old.identity, identity)
	}
	if old != nil {
		// Session reinstatement (TSIH 0) or connection reinstatement
		// (same TSIH, MaxConnections=1): either way the old connection
		// and its tasks go. With ErrorRecoveryLevel 0 the tasks are not
		// carried over, so the old session ends and a fresh one starts.
		old.close(fmt.Errorf("reinstated by a new login from %s", c.nc.RemoteAddr()))
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.closed {
		return loginFail(loginServiceUnavail, "server shutting down")
	}
	if cur := srv.sessions[key]; cur != nil && cur != old {
		// Another login of the same nexus got in while this one ended
		// the old session: two live sessions on one I_T nexus would
		// share (and, on either's end, drop) its reservations.
		return loginFail(loginServiceUnavail, "a concurrent login of the same session won; try again")
	}
	tsih := ls.tsih
	if tsih == 0 {
		srv.nextTSIH++
		if srv.nextTSIH == 0 {
			srv.nextTSIH = 1
		}
		tsih = srv.nextTSIH
	}
	s := &session{
		srv:       srv,
		key:       key,
		tsih:      tsih,
		discovery: ls.discovery,
		identity:  identity,
		params:    params,
		conn:      c,
		waiting:   map[uint32]*task{},
		dataBuf:   byteBudget{max: srv.cfg.SessionDataBufferBytes},
	}
	if !ls.discovery {
		s.tgt = tgt
		s.nexus = scsi.Nexus{
			InitiatorPort: fmt.Sprintf("%s,i,0x%02x%02x%02x%02x%02x%02x", ls.initiator,
				ls.isid[0], ls.isid[1], ls.isid[2], ls.isid[3], ls.isid[4], ls.isid[5]),
			Port: s.tgt.port,
		}
	}
	s.expCmdSN.Store(ls.cmdSN)
	srv.sessions[key] = s
	ls.tsih = tsih
	c.sess = s
	c.params = params
	c.cid = ls.cid
	c.statSN = ls.statSN + 1 // the final login response takes ls.statSN
	c.log = c.log.WithFields(map[string]any{"initiator": ls.initiator, "tsih": tsih})
	if s.tgt != nil {
		c.log = c.log.WithField("target", s.tgt.cfg.Name)
	}
	return nil
}
