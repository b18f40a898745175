package iscsi

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/csnap/csnap/target/scsi"
)

// handleTMF performs a task management function (RFC 7143 section 11.5).
// It runs in its own goroutine: aborting waits for running commands to
// finish, and the reader must keep serving other tasks meanwhile.
func (c *conn) handleTMF(p *PDU) {
	fn := scsi.TMF(p.Flags() & 0x7f)
	lun := decodeLUN(p.LUNField())
	ref := p.get(fieldRefTaskTag)
	refCmdSN := p.get(fieldRefCmdSN)
	var resp scsi.TMFResponse
	exec := c.sess.tgt.cfg.Exec
	switch fn {
	case scsi.TMFAbortTask:
		c.mu.Lock()
		t := c.tasks[ref]
		c.mu.Unlock()
		// RFC 7143 section 11.5.1: a task found is aborted; a task not
		// found whose RefCmdSN is still in the command window and below
		// the TMF's own CmdSN has not arrived yet: its CmdSN counts as
		// received (the command will never run) and the abort is
		// complete; otherwise the task completed already and does not
		// exist.
		switch {
		case t != nil && c.abort([]*task{t}) == 1:
			resp = scsi.TMFComplete
		case t != nil:
			// Its response is already on the way: the task completed.
			resp = scsi.TMFTaskNotExist
		case int32(refCmdSN-p.get(fieldCmdSN)) < 0 && c.cancelCmdSN(refCmdSN):
			resp = scsi.TMFComplete
		default:
			resp = scsi.TMFTaskNotExist
		}
	case scsi.TMFAbortTaskSet, scsi.TMFClearTaskSet, scsi.TMFLogicalUnitReset:
		if !hasLUN(exec, lun) {
			resp = scsi.TMFLUNNotExist
			break
		}
		c.abort(c.tasksWhere(func(t *task) bool { return t.lun == lun }))
		resp = exec.TaskManagement(fn, lun, c.sess.nexus)
	case scsi.TMFTargetWarmReset, scsi.TMFTargetColdReset:
		c.abort(c.tasksWhere(func(*task) bool { return true }))
		resp = exec.TaskManagement(fn, lun, c.sess.nexus)
	case scsi.TMFClearACA:
		resp = scsi.TMFNotSupported
	case scsi.TMFTaskReassign:
		resp = scsi.TMFReassignNotSupp
	default:
		resp = scsi.TMFRejected
	}
	r := new(PDU)
	r.setOpcode(opTaskMgmtRsp, flagFinal)
	r.BHS[2] = byte(resp)
	r.set(fieldITT, p.ITT())
	// send returns once the response is flushed when it has an after
	// function; a cold reset then ends the connection (RFC 7143 section
	// 11.5.1: the target drops all connections after answering).
	c.send(outMsg{pdu: r, advance: true, after: func() {}})
	if fn == scsi.TMFTargetColdReset && resp == scsi.TMFComplete {
		c.shutdown(errors.New("target cold reset"))
	}
}

func hasLUN(e scsi.Executor, lun uint64) bool {
	for _, l := range e.LUNs() {
		if l == lun {
			return true
		}
	}
	return false
}

func (c *conn) tasksWhere(pred func(*task) bool) []*task {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*task
	for _, t := range c.tasks {
		if pred(t) {
			out = append(out, t)
		}
	}
	return out
}

// abort marks tasks aborted (their responses are never sent) and waits for
// those already executing to finish, so a TMF response follows them. A task
// whose response is already on its way is left alone. abort returns how
// many tasks it aborted.
func (c *conn) abort(tasks []*task) int {
	var running []*task
	n := 0
	for _, t := range tasks {
		c.mu.Lock()
		if t.responding {
			c.mu.Unlock()
			continue
		}
		t.aborted.Store(true)
		if t.cancel != nil {
			t.cancel()
		}
		started := t.started
		if !started {
			t.started = true
			if t.write && t.received < t.edtl {
				c.tombstoneLocked(uint64(t.itt)<<32 | reservedTag)
			}
			for ttt, tt := range c.byTTT {
				if tt == t {
					delete(c.byTTT, ttt)
					c.tombstoneLocked(uint64(t.itt)<<32 | uint64(ttt))
				}
			}
		}
		c.mu.Unlock()
		n++
		if started {
			running = append(running, t)
			continue
		}
		c.sess.mu.Lock()
		if c.sess.waiting[t.cmdSN] == t {
			delete(c.sess.waiting, t.cmdSN)
		}
		c.sess.mu.Unlock()
		c.finish(t)
	}
	for _, t := range running {
		select {
		case <-t.done:
		case <-c.ctx.Done():
			return n
		}
	}
	return n
}

// maxTombstones bounds the remembered tags of aborted tasks.
const maxTombstones = 1024

// tombstoneLocked remembers an aborted task's (ITT, TTT) so that its
// in-flight Data-Out PDUs are discarded quietly (RFC 7143 section
// 4.2.3.3: data may still arrive after an abort).
func (c *conn) tombstoneLocked(tag uint64) {
	if _, ok := c.abortedTags[tag]; ok {
		return
	}
	if len(c.abortedFIFO) >= maxTombstones {
		delete(c.abortedTags, c.abortedFIFO[0])
		c.abortedFIFO = c.abortedFIFO[1:]
	}
	c.abortedTags[tag] = struct{}{}
	c.abortedFIFO = append(c.abortedFIFO, tag)
}

// handleLogout closes the session or the connection (RFC 7143 section
// 11.14) once outstanding commands have completed.
func (c *conn) handleLogout(p *PDU) {
	reason := p.Flags() & 0x7f
	var resp byte
	switch reason {
	case 0, 1: // close the session / close this connection
		if reason == 1 && uint16(p.BHS[20])<<8|uint16(p.BHS[21]) != c.sessCID() {
			resp = 1 // CID not found
		}
	case 2:
		resp = 2 // connection recovery is not supported at ERL 0
	default:
		c.reject(p, rejectInvalidField)
		return
	}
	if resp == 0 {
		// Wait for outstanding commands so their responses precede ours.
		for _, t := range c.tasksWhere(func(*task) bool { return true }) {
			select {
			case <-t.done:
			case <-c.ctx.Done():
				return
			}
		}
	}
	if resp == 0 {
		// The nexus ends with the logout (one connection per session):
		// release what it holds before the initiator hears it is out, so
		// a command it sends next, on another nexus, finds it released.
		c.sess.nexusLost()
	}
	r := new(PDU)
	r.setOpcode(opLogoutResp, flagFinal)
	r.BHS[2] = resp
	r.set(fieldITT, p.ITT())
	r.BHS[40], r.BHS[41] = 0, byte(c.sess.params.DefaultTime2Wait)
	r.BHS[42], r.BHS[43] = 0, byte(c.sess.params.DefaultTime2Retain)
	c.send(outMsg{pdu: r, advance: true, after: func() {}})
	if resp != 0 {
		return
	}
	c.shutdown(errLogout)
}

var errLogout = errors.New("logged out")

func (c *conn) sessCID() uint16 { return c.cid }

// handleText answers Text Requests: SendTargets (discovery), and a
// continuation of a long response (RFC 7143 section 11.10).
func (c *conn) handleText(p *PDU) error {
	if p.Flags()&flagContinue != 0 {
		return &protoError{rejectNotSupported, "continued text requests are not supported"}
	}
	var out []byte
	ttt := p.get(fieldTTT)
	if ttt != reservedTag {
		c.mu.Lock()
		if ttt != c.textTTT || c.textRem == nil {
			c.mu.Unlock()
			return &protoError{rejectInvalidField, "text continuation with unknown TTT"}
		}
		out = c.textRem
		c.textRem = nil
		c.mu.Unlock()
	} else {
		pairs, err := parseText(p.Data, false)
		if err != nil {
			return &protoError{rejectProtocolError, err.Error()}
		}
		var resp []kv
		for _, kv0 := range pairs {
			switch kv0.Key {
			case "SendTargets":
				resp = append(resp, c.sendTargets(kv0.Value)...)
			default:
				resp = append(resp, kv{kv0.Key, "NotUnderstood"})
			}
		}
		out = encodeText(resp)
	}
	r := new(PDU)
	maxSeg := int(c.params.MaxXmitDataSegmentLength)
	f := byte(flagFinal)
	nextTTT := uint32(reservedTag)
	if len(out) > maxSeg {
		f = flagContinue
		c.mu.Lock()
		c.nextTTT++
		if c.nextTTT >= 0x80000000 {
			c.nextTTT = 1
		}
		c.textTTT = c.nextTTT
		nextTTT = c.textTTT
		c.textRem = out[maxSeg:]
		c.mu.Unlock()
		out = out[:maxSeg]
	}
	r.setOpcode(opTextResp, f)
	copy(r.BHS[8:16], p.BHS[8:16])
	r.set(fieldITT, p.ITT())
	r.set(fieldTTT, nextTTT)
	r.Data = out
	c.send(outMsg{pdu: r, advance: true})
	return nil
}

// sendTargets lists targets with this connection's portal address: every
// target for "All" in a discovery session, else the named or current one.
func (c *conn) sendTargets(v string) []kv {
	addr := c.portalAddr()
	var names []string
	switch {
	case v == "All" && c.sess.discovery:
		names = c.srv.TargetNames()
	case v == "All" || v == "":
		if c.sess.tgt != nil {
			names = []string{c.sess.tgt.cfg.Name}
		}
	default:
		if c.srv.lookupTarget(v) != nil {
			names = []string{v}
		}
	}
	var out []kv
	for _, n := range names {
		// Targets whose allow-list leaves this initiator out are not
		// shown to it.
		if t := c.srv.lookupTarget(n); t == nil || !t.allows(c.sess.key.initiator) {
			continue
		}
		out = append(out, kv{"TargetName", n}, kv{"TargetAddress", addr})
	}
	return out
}

// portalAddr is "ip:port,tpgt" of the address the initiator connected to.
func (c *conn) portalAddr() string {
	host, port, err := net.SplitHostPort(c.nc.LocalAddr().String())
	if err != nil {
		return c.nc.LocalAddr().String()
	}
	ip := net.ParseIP(host)
	if ip != nil && ip.To4() == nil {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("%s:%s,%s", host, port, strconv.Itoa(int(c.srv.cfg.PortalGroupTag)))
}

// PreemptAbort aborts the tasks on LUN lun of every session whose I_T nexus
// is among preempted, except the command that asked (SPC-4 PREEMPT AND
// ABORT). It is a scsi.PreemptAbortFunc; wire it with
// Target.SetPreemptAbortHandler. It returns once the aborted tasks have
// finished.
func (s *Server) PreemptAbort(lun uint64, preempted []scsi.NexusID, except *scsi.Command) {
	s.mu.Lock()
	var conns []*conn
	for _, sess := range s.sessions {
		if sess.discovery {
			continue
		}
		for _, n := range preempted {
			if n.InitiatorPort == sess.nexus.InitiatorPort && (n.TargetPort == "" || n.TargetPort == sess.nexus.Port.Name) {
				sess.mu.Lock()
				if sess.conn != nil {
					conns = append(conns, sess.conn)
				}
				sess.mu.Unlock()
				break
			}
		}
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.abort(c.tasksWhere(func(t *task) bool { return t.lun == lun && &t.cmd != except }))
	}
}

// cancelCmdSN marks a command that has not arrived as received, so that it
// is dropped if it ever comes. It reports false when sn is outside the
// command window (the command came and went).
func (c *conn) cancelCmdSN(sn uint32) bool {
	s := c.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inWindow(sn) {
		return false
	}
	if t, ok := s.waiting[sn]; ok {
		// Waiting behind a CmdSN gap: it is a task; abort it there.
		t.aborted.Store(true)
		t.placeholder = true
		return true
	}
	ph := &task{cmdSN: sn, placeholder: true, done: make(chan struct{})}
	ph.aborted.Store(true)
	if sn == s.expCmdSN.Load() {
		s.expCmdSN.Add(1)
		c.deliverLocked()
		return true
	}
	s.waiting[sn] = ph
	return true
}
