package iscsi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/target/scsi"
)

// conn is one TCP connection. Its goroutine reads PDUs (the reader owns the
// task table's data-transfer state); a writer goroutine sends every PDU, so
// StatSN is assigned in send order; each SCSI command executes in its own
// goroutine.
type conn struct {
	srv    *Server
	nc     net.Conn
	log    *logrus.Entry
	rd     pduReader
	in     *bufio.Reader // under rd: what is buffered was received and not yet parsed
	poll   *pollingReader
	source string // the remote IP address, for per-source limits
	// loginTarget is the existing target a login named ("" for discovery
	// or none), for the Observer.
	loginTarget string
	loginOver   bool // its pending-login slot was given back (endLogin)
	sess        *session
	params      Params
	cid         uint16

	ctx    context.Context
	cancel context.CancelCauseFunc

	wr       connWriter
	pingerWG sync.WaitGroup
	statSN   uint32 // guarded by wr.mu after login

	lastRecv  atomic.Int64 // unix nanos of the last PDU received
	executing atomic.Int32 // commands executing now
	// inline is the reader's inline execution (see start): odd while a
	// command runs on the reader goroutine, bumped at its start and at its
	// end or hand-off; inlineSince is when it started (unix nanos); watch
	// is the timer that hands reading off when it runs too long, armed
	// (watchArmed) only while inline execution goes on.
	inline      atomic.Uint64
	inlineSince atomic.Int64
	watch       *time.Timer
	watchArmed  atomic.Bool
	readErr     chan error // the final reader goroutine's error
	pingTTT     atomic.Uint32

	mu      sync.Mutex
	tasks   map[uint32]*task // by ITT
	byTTT   map[uint32]*task // tasks waiting for solicited data
	nextTTT uint32
	textTTT uint32 // continuation of a long text response
	textRem []byte
	// Tags of tasks aborted while the initiator may still be sending
	// their data: such Data-Out PDUs are swallowed, not rejected.
	abortedTags map[uint64]struct{}
	abortedFIFO []uint64
	execWG      sync.WaitGroup

	closeOnce sync.Once
}

// connWriter serializes output. Senders write under mu, and whoever finds
// nobody waiting behind it flushes: one sender alone (queue depth 1) pays no
// goroutine handoff, many senders share flushes.
type connWriter struct {
	mu      sync.Mutex
	w       *bufio.Writer
	hdr     []byte
	err     error // the first write error; later sends are dropped
	waiting atomic.Int32
}

// outMsg is one thing to send. At most one of pdu and task is set.
type outMsg struct {
	pdu *PDU
	// advance: the PDU carries a new StatSN (responses), otherwise it
	// carries the next StatSN without consuming it (R2T, NOP-In pings).
	advance bool
	task    *task
	res     scsi.Result
	after   func() // run once the message is flushed to the socket
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:   s,
		nc:    nc,
		log:   s.log.WithField("remote", nc.RemoteAddr().String()),
		rd:    pduReader{},
		tasks: map[uint32]*task{},
		byTTT: map[uint32]*task{},

		abortedTags: map[uint64]struct{}{},
	}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	idle := func() bool { return c.executing.Load() == 0 }
	c.poll = newPollingReader(nc, s.cfg.PollBudget, &s.pollers, idle)
	// Small buffers until the login succeeds: a connection that never
	// logs in costs a few KiB, not the full-feature buffers.
	c.in = bufio.NewReaderSize(c.poll, loginBufSize)
	c.rd.r = c.in
	c.readErr = make(chan error, 1)
	c.watch = time.AfterFunc(time.Hour, c.watchInline)
	c.watch.Stop()
	return c
}

// shutdown closes the connection; the reader notices and cleans up.
func (c *conn) shutdown(reason error) {
	c.closeOnce.Do(func() {
		c.cancel(reason)
		c.nc.Close()
		c.watch.Stop()
	})
}

func (c *conn) serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { c.shutdown(errors.New("server stopping")) })
	defer stop()
	defer c.shutdown(errors.New("connection done"))
	err := c.login()
	c.endLogin()
	c.srv.cfg.Observer.LoginDone(c.loginTarget, loginResult(err))
	if err != nil {
		c.loginFailed(err)
		return
	}
	c.growBuffers()
	sess := c.sess
	c.log.WithField("discovery", sess.discovery).Info("iSCSI login")
	c.rd.headerDigest = c.params.HeaderDigest
	c.rd.dataDigest = c.params.DataDigest
	c.rd.maxData = int(c.params.MaxRecvDataSegmentLength)
	c.lastRecv.Store(time.Now().UnixNano())
	c.pingerWG.Add(1)
	go c.pinger()
	go c.reader()
	err = <-c.readErr
	c.shutdown(err)
	// Let running commands finish (their results are dropped) so the
	// backend is quiet before the nexus is declared lost.
	c.execWG.Wait()
	c.pingerWG.Wait()
	c.releaseTasks()
	sess.mu.Lock()
	mine := sess.conn == c
	sess.mu.Unlock()
	if mine {
		sess.close(err)
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && c.ctx.Err() == nil {
		c.log.WithError(err).Warn("iSCSI connection failed")
	} else {
		c.log.WithField("reason", context.Cause(c.ctx)).Debug("iSCSI connection closed")
	}
}

// endLogin gives the connection's pending-login slot back, once.
func (c *conn) endLogin() {
	if !c.loginOver {
		c.loginOver = true
		c.srv.loginEnded(c.source)
	}
}

// Buffer sizes: during login, and in full feature phase.
const (
	loginBufSize = 4 << 10
	readBufSize  = 64 << 10
	writeBufSize = 256 << 10
)

// growBuffers replaces the login's small read buffer (keeping what it
// holds) and adds the write buffer, once the login has succeeded.
func (c *conn) growBuffers() {
	var r io.Reader = c.poll
	if n := c.in.Buffered(); n > 0 {
		rest, _ := c.in.Peek(n)
		r = io.MultiReader(bytes.NewReader(append([]byte(nil), rest...)), c.poll)
	}
	c.in = bufio.NewReaderSize(r, readBufSize)
	c.rd.r = c.in
	c.wr.w = bufio.NewWriterSize(c.nc, writeBufSize)
}

// countFailure counts an authentication failure against the source
// address.
func (c *conn) countFailure(le *loginError) {
	if le.status != loginAuthFailed && le.status != loginForbidden {
		return
	}
	if c.srv.authFails.failed(c.source, c.srv.now()) {
		c.log.WithFields(logrus.Fields{"source": c.source, "failures": c.srv.cfg.MaxAuthFailures, "window": c.srv.cfg.AuthFailureWindow}).
			Warn("too many failed iSCSI logins; refusing this source's logins for the rest of the window")
	}
}

// loginFailed logs a failed login.
func (c *conn) loginFailed(err error) {
	if errors.Is(err, io.EOF) {
		return
	}
	var le *loginError
	if errors.As(err, &le) && le.status == loginServiceUnavail && c.srv.authFails.blocked(c.source, c.srv.now()) {
		c.log.WithError(err).Debug("iSCSI login refused")
		return
	}
	c.log.WithError(err).Warn("iSCSI login failed")
}

// reader runs readLoop and reports how it ended, unless it handed reading
// to another goroutine (see conn.start), which then reports instead.
func (c *conn) reader() {
	if err := c.readLoop(); !errors.Is(err, errHandedOff) {
		c.readErr <- err
	}
}

// readLoop reads and dispatches PDUs until the connection ends. At most one
// goroutine runs it at a time.
func (c *conn) readLoop() error {
	for {
		p := new(PDU)
		if err := c.rd.readHeader(p); err != nil {
			return c.readFailed(p, err)
		}
		c.lastRecv.Store(time.Now().UnixNano())
		var err error
		switch p.Opcode() {
		case opSCSICmd:
			err = c.handleSCSICmd(p)
		case opDataOut:
			err = c.handleDataOut(p)
		default:
			if err = c.rd.readData(p, nil); err != nil {
				if errors.Is(err, ErrDigest) {
					c.reject(p, rejectDataDigest)
					continue
				}
				return err
			}
			err = c.handleOther(p)
		}
		if err != nil {
			var pe *protoError
			if errors.As(err, &pe) {
				c.reject(p, pe.reason)
				c.log.WithError(err).Warn("rejected PDU")
				continue
			}
			return err
		}
	}
}

func (c *conn) readFailed(p *PDU, err error) error {
	var pe *protoError
	if errors.As(err, &pe) {
		// The header was read but the PDU cannot be framed: reject it,
		// then close, since the stream cannot be trusted any more.
		c.reject(p, pe.reason)
		c.send(outMsg{after: func() {}}) // flush before the close
	}
	return err
}

// handleOther dispatches the PDUs that are not SCSI data transfers.
func (c *conn) handleOther(p *PDU) error {
	if c.sess.discovery {
		switch p.Opcode() {
		case opTextReq, opLogoutReq, opNopOut:
		default:
			return &protoError{rejectProtocolError, fmt.Sprintf("opcode %#x in a discovery session", p.Opcode())}
		}
	}
	switch p.Opcode() {
	case opNopOut:
		return c.handleNopOut(p)
	case opTaskMgmt:
		if !c.acceptCmdSN(p) {
			return nil
		}
		go c.handleTMF(p)
		return nil
	case opTextReq:
		if !c.acceptCmdSN(p) {
			return nil
		}
		return c.handleText(p)
	case opLogoutReq:
		if !c.acceptCmdSN(p) {
			return nil
		}
		go c.handleLogout(p)
		return nil
	case opSNACK:
		return &protoError{rejectSNACK, "SNACK at ErrorRecoveryLevel 0"}
	case opLoginReq:
		return &protoError{rejectProtocolError, "login request in full feature phase"}
	}
	return &protoError{rejectNotSupported, fmt.Sprintf("unknown opcode %#x", p.Opcode())}
}

// acceptCmdSN advances the command window for a non-SCSI request that
// carries a CmdSN. Such requests are answered at once (they do not wait
// behind a CmdSN gap); one outside the window is silently ignored as RFC
// 7143 section 4.2.2.1 requires.
func (c *conn) acceptCmdSN(p *PDU) bool {
	if p.Immediate() {
		return true
	}
	s := c.sess
	sn := p.get(fieldCmdSN)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inWindow(sn) {
		c.log.WithFields(logrus.Fields{"cmdsn": sn, "expcmdsn": s.expCmdSN.Load()}).Warn("CmdSN outside the window; ignored")
		return false
	}
	if sn == s.expCmdSN.Load() {
		s.expCmdSN.Add(1)
		c.deliverLocked()
	} else if _, taken := s.waiting[sn]; !taken {
		// Ahead of a gap: its CmdSN is used, so hold its place.
		ph := &task{cmdSN: sn, placeholder: true, done: make(chan struct{})}
		ph.aborted.Store(true)
		s.waiting[sn] = ph
	}
	return true
}

func (c *conn) handleNopOut(p *PDU) error {
	if p.ITT() == reservedTag {
		// Answer to our ping (or a bare keepalive): nothing to send.
		if ttt := p.get(fieldTTT); ttt != reservedTag && ttt == c.pingTTT.Load() {
			c.pingTTT.Store(0)
		}
		return nil
	}
	if !c.acceptCmdSN(p) {
		return nil
	}
	r := new(PDU)
	r.setOpcode(opNopIn, flagFinal)
	copy(r.BHS[8:16], p.BHS[8:16])
	r.set(fieldITT, p.ITT())
	r.set(fieldTTT, reservedTag)
	r.Data = p.Data
	c.send(outMsg{pdu: r, advance: true})
	return nil
}

// pinger sends a NOP-In when the initiator has been silent for PingInterval
// and drops the connection if no NOP-Out answers within PingTimeout.
func (c *conn) pinger() {
	defer c.pingerWG.Done()
	iv := c.srv.cfg.PingInterval
	t := time.NewTicker(iv / 2)
	defer t.Stop()
	var sent time.Time
	var ttt uint32 = 0x80000000
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-t.C:
			c.expireWrites(now)
			last := time.Unix(0, c.lastRecv.Load())
			if c.pingTTT.Load() != 0 {
				if last.After(sent) {
					// Any PDU proves the initiator is alive.
					c.pingTTT.Store(0)
				} else if now.Sub(sent) > c.srv.cfg.PingTimeout {
					c.log.Warn("initiator did not answer NOP-In ping; dropping connection")
					c.shutdown(errors.New("ping timeout"))
					return
				}
				continue
			}
			if now.Sub(last) < iv {
				continue
			}
			ttt++
			if ttt == reservedTag {
				ttt = 0x80000000
			}
			c.pingTTT.Store(ttt)
			sent = now
			p := new(PDU)
			p.setOpcode(opNopIn, flagFinal)
			p.set(fieldITT, reservedTag)
			p.set(fieldTTT, ttt)
			c.send(outMsg{pdu: p})
		}
	}
}

// send writes a message to the connection and flushes it unless another
// sender is already waiting to write (that one will flush both). A message
// with an after function is always flushed before after runs. Writes that
// cannot complete within the ping timeout fail, so a peer that stops
// reading cannot wedge the target.
func (c *conn) send(m outMsg) {
	cw := &c.wr
	cw.waiting.Add(1)
	cw.mu.Lock()
	cw.waiting.Add(-1)
	if cw.err != nil {
		cw.mu.Unlock()
		if m.task != nil {
			c.finish(m.task)
		}
		if m.after != nil {
			m.after()
		}
		return
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.PingInterval + c.srv.cfg.PingTimeout))
	var err error
	cw.hdr, err = c.write(cw.w, cw.hdr, m)
	if err == nil && (m.after != nil || cw.waiting.Load() == 0) {
		err = cw.w.Flush()
	}
	if err != nil {
		cw.err = err
	}
	cw.mu.Unlock()
	if err != nil {
		c.shutdown(err)
	}
	if m.after != nil {
		m.after()
	}
}

// reject answers a PDU we cannot process with a Reject PDU carrying its
// header (RFC 7143 section 11.17).
func (c *conn) reject(p *PDU, reason byte) {
	r := new(PDU)
	r.setOpcode(opReject, flagFinal)
	r.BHS[2] = reason
	r.set(fieldITT, reservedTag)
	r.Data = append([]byte(nil), p.BHS[:]...)
	c.send(outMsg{pdu: r, advance: true})
}

// write puts one message on the wire (buffered).
func (c *conn) write(w *bufio.Writer, hdr []byte, m outMsg) ([]byte, error) {
	if m.task != nil {
		return c.writeResult(w, hdr, m.task, m.res)
	}
	if m.pdu != nil {
		s := c.sess
		m.pdu.set(fieldStatSN, c.statSN)
		if m.advance {
			c.statSN++
		}
		m.pdu.set(fieldExpCmdSN, s.expCmdSN.Load())
		m.pdu.set(fieldMaxCmdSN, s.maxCmdSN())
		var err error
		hdr, err = c.writePDU(w, hdr[:0], m.pdu)
		if err != nil {
			return hdr, err
		}
	}
	return hdr, nil
}

func (c *conn) writePDU(w *bufio.Writer, hdr []byte, p *PDU) ([]byte, error) {
	hdr = encodeHeader(hdr[:0], p, c.params.HeaderDigest)
	if _, err := w.Write(hdr); err != nil {
		return hdr, err
	}
	if len(p.Data) > 0 {
		if _, err := w.Write(p.Data); err != nil {
			return hdr, err
		}
		hdr = dataTrailer(hdr[:0], p.Data, c.params.DataDigest)
		if _, err := w.Write(hdr); err != nil {
			return hdr, err
		}
	}
	return hdr, nil
}
