package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/target/scsi"
)

// task is one SCSI command on a connection, from its arrival until its
// response is on the wire.
type task struct {
	itt       uint32
	cmdSN     uint32
	immediate bool
	lun       uint64
	read      bool
	write     bool
	edtl      uint32
	cmd       scsi.Command

	// Data-out state, owned by the reader goroutine.
	// Every byte of buf is received before the command runs: Data-Out
	// must come in order (DataPDUInOrder and DataSequenceInOrder are
	// always Yes here), each PDU at the next offset of its sequence, so
	// received bytes are always exactly buf[:received] of the unsolicited
	// burst plus the completed R2T bursts, and a recycled buffer never
	// reaches the backend with another command's bytes in it.
	buf         []byte // write data, edtl bytes
	received    uint32 // bytes of data received so far
	unsolicited uint32 // bytes the initiator may send without R2T
	unsolDone   bool   // the unsolicited sequence has ended
	unsolDataSN uint32
	unsolNext   uint32 // offset the next unsolicited Data-Out must carry
	nextOffset  uint32 // next offset to solicit with an R2T
	outstanding int    // R2Ts not yet satisfied
	r2tSN       uint32
	delivered   atomic.Bool // its CmdSN turn has come (set under sess.mu)
	started     bool        // handed to the executor
	responding  bool        // its response is being sent: too late to abort
	// placeholder stands for a CmdSN that an ABORT TASK cancelled before
	// the command arrived (or while it waited behind a CmdSN gap): it only
	// holds the CmdSN's place in order and never runs.
	placeholder bool
	bursts      map[uint32]*burst // outstanding R2T bursts by TTT
	// reserved is the data budget this task holds (see byteBudget),
	// given back once by releaseBuffer.
	reserved atomic.Int64
	// lastData is when the task last received data or was created (unix
	// nanos, under conn.mu): DataOutTimeout counts from it.
	lastData int64
	aborted  atomic.Bool
	// cancel (under conn.mu) cancels the context the task executes
	// with: an abort ends a command that waits (a SANITIZE without IMMED
	// waiting for its background operation) instead of waiting for it.
	cancel context.CancelFunc
	done   chan struct{} // closed once the task is finished
}

// burst is the state of one R2T's data sequence.
type burst struct {
	dataSN uint32 // DataSN the next Data-Out must carry
	next   uint32 // buffer offset the next Data-Out must carry
	remain uint32 // bytes still to come
}

// opSanitize is SANITIZE's operation code (SBC-3): the one command whose
// execution an abort cancels (see execute).
const opSanitize = 0x48

// maxCDB bounds the CDB length we accept (16 bytes in the BHS plus an
// extended-CDB AHS).
const maxCDB = 260

func (c *conn) handleSCSICmd(p *PDU) error {
	s := c.sess
	flags := p.Flags()
	t := &task{
		itt:       p.ITT(),
		cmdSN:     p.get(fieldCmdSN),
		immediate: p.Immediate(),
		lun:       decodeLUN(p.LUNField()),
		read:      flags&flagRead != 0,
		write:     flags&flagWrite != 0,
		edtl:      p.get(fieldEDTL),
		done:      make(chan struct{}),
	}
	cdb := append([]byte(nil), p.BHS[32:48]...)
	if len(p.AHS) > 0 {
		ext, err := extendedCDB(p.AHS)
		if err != nil {
			c.rd.readData(p, nil)
			return err
		}
		cdb = append(cdb, ext...)
	}
	dlen := p.dataLen()
	if s.discovery {
		c.rd.readData(p, nil)
		return &protoError{rejectProtocolError, "SCSI command in a discovery session"}
	}
	if t.immediate && s.inflight.Load() >= int32(c.srv.cfg.QueueDepth) {
		// Immediate commands skip the CmdSN order, not the window:
		// otherwise an initiator could have any number in flight (and
		// buffers allocated for them). Only this reader adds to
		// inflight, so the check cannot be overtaken.
		c.rd.readData(p, nil)
		return &protoError{rejectImmCmd, fmt.Sprintf("immediate command with %d commands in flight (window %d)", s.inflight.Load(), c.srv.cfg.QueueDepth)}
	}
	if t.edtl > c.srv.cfg.MaxTransferLength {
		// Too large to buffer: swallow its immediate data and fail it
		// without asking for the rest.
		if err := c.rd.readData(p, nil); err != nil && !isDigest(err) {
			return err
		}
		if !c.admit(t, p) {
			return nil // outside the window: never counted, never answered
		}
		t.write = false
		t.edtl = 0
		c.finishEarly(t, senseResult(scsi.SenseIllegalRequest, 0x24, 0x00))
		return nil
	}
	if dlen > 0 && (!t.write || !c.params.ImmediateData || uint32(dlen) > t.edtl || uint32(dlen) > c.params.FirstBurstLength) {
		c.rd.readData(p, nil)
		return &protoError{rejectProtocolError, fmt.Sprintf("unexpected immediate data (%d bytes)", dlen)}
	}
	c.mu.Lock()
	_, dup := c.tasks[t.itt]
	if !dup {
		for tag := range c.abortedTags {
			if uint32(tag>>32) == t.itt {
				delete(c.abortedTags, tag)
			}
		}
	}
	c.mu.Unlock()
	if dup {
		c.rd.readData(p, nil)
		return &protoError{rejectTaskInProgress, fmt.Sprintf("ITT %#x already in use", t.itt)}
	}
	if (t.write || t.read) && t.edtl > 0 && !c.reserveData(t) {
		// Over the data budget: take the immediate data off the wire,
		// discard what else comes, and ask the initiator to retry.
		if err := c.rd.readData(p, nil); err != nil && !isDigest(err) {
			return err
		}
		if !c.admit(t, p) {
			return nil
		}
		t.write, t.read = false, false
		c.mu.Lock()
		c.tombstoneLocked(uint64(t.itt)<<32 | reservedTag)
		c.mu.Unlock()
		c.finishEarly(t, scsi.Result{Status: scsi.StatusTaskSetFull})
		return nil
	}
	if t.write && t.edtl > 0 {
		t.lastData = time.Now().UnixNano()
		// The buffer comes with the first data: a write announced and
		// never sent costs its budget, not memory.
		if dlen > 0 {
			t.buf = c.srv.bufs.get(int(t.edtl))
		}
		if err := c.rd.readData(p, t.buf[:dlen]); err != nil {
			// The task was never registered: nobody else gives its
			// budget back.
			c.releaseBuffer(t)
			if isDigest(err) {
				// The command is lost; the initiator retries it.
				return &protoError{rejectDataDigest, err.Error()}
			}
			return err
		}
		t.received = uint32(dlen)
		t.unsolNext = t.received
		t.unsolicited = min(c.params.FirstBurstLength, t.edtl)
		if c.params.InitialR2T || t.received >= t.unsolicited {
			t.unsolDone = true
		}
		if c.params.InitialR2T {
			t.unsolicited = t.received
		}
		t.nextOffset = t.unsolicited
	} else if err := c.rd.readData(p, nil); err != nil {
		c.releaseBuffer(t)
		return err
	}
	t.cmd = scsi.Command{
		CDB:         cdb,
		LUN:         t.lun,
		Nexus:       s.nexus,
		Attr:        scsi.TaskAttr(flags & 7),
		ExpectedLen: t.edtl,
	}
	if !c.admit(t, p) {
		c.releaseBuffer(t)
		return nil
	}
	c.mu.Lock()
	c.tasks[t.itt] = t
	c.mu.Unlock()
	return c.progress(t, true)
}

// reserveData takes a command's data length from the session's and the
// node's data budgets: a write's buffer holds its data until it runs, a
// read's its result until it is sent. A bidirectional command needs both.
func (c *conn) reserveData(t *task) bool {
	n := int64(t.edtl)
	if t.read && t.write {
		n *= 2
	}
	if !c.sess.dataBuf.take(n) {
		return false
	}
	if !c.srv.dataBuf.take(n) {
		c.sess.dataBuf.give(n)
		return false
	}
	t.reserved.Store(n)
	return true
}

// releaseBuffer gives a task's data budget back (once).
func (c *conn) releaseBuffer(t *task) {
	if n := t.reserved.Swap(0); n > 0 {
		c.sess.dataBuf.give(n)
		c.srv.dataBuf.give(n)
	}
}

// expireWrites fails write commands whose initiator has sent none of the
// data they still need for DataOutTimeout, freeing their buffers.
func (c *conn) expireWrites(now time.Time) {
	limit := now.Add(-c.srv.cfg.DataOutTimeout).UnixNano()
	var stale []*task
	c.mu.Lock()
	for _, t := range c.tasks {
		if t.write && !t.started && t.reserved.Load() > 0 && t.lastData < limit {
			stale = append(stale, t)
		}
	}
	c.mu.Unlock()
	for _, t := range stale {
		c.log.WithFields(logrus.Fields{"itt": t.itt, "timeout": c.srv.cfg.DataOutTimeout}).Warn("write command got no data in time; failed")
		// ABORTED COMMAND, DATA PHASE ERROR: the initiator may retry.
		c.failTask(t, senseResult(scsi.SenseAbortedCommand, 0x4b, 0x00))
	}
}

// admit places a new command in the CmdSN order. It returns false if the
// command is outside the window and was dropped.
func (c *conn) admit(t *task, p *PDU) bool {
	s := c.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.immediate {
		s.inflight.Add(1)
		t.delivered.Store(true)
		return true
	}
	if !s.inWindow(t.cmdSN) {
		c.log.WithFields(logrus.Fields{"cmdsn": t.cmdSN, "expcmdsn": s.expCmdSN.Load(), "maxcmdsn": s.maxCmdSN()}).
			Warn("SCSI command outside the CmdSN window; ignored")
		return false
	}
	if w, ok := s.waiting[t.cmdSN]; ok && w.placeholder {
		// Cancelled by an ABORT TASK before it arrived: never run it.
		c.log.WithField("cmdsn", t.cmdSN).Debug("command aborted before it arrived; dropped")
		return false
	}
	s.inflight.Add(1)
	if t.cmdSN == s.expCmdSN.Load() {
		t.delivered.Store(true)
		s.expCmdSN.Add(1)
		c.deliverLocked()
	} else {
		s.waiting[t.cmdSN] = t
	}
	return true
}

// deliverLocked releases waiting commands whose CmdSN turn has come.
// Called with sess.mu held.
func (c *conn) deliverLocked() {
	s := c.sess
	for {
		t, ok := s.waiting[s.expCmdSN.Load()]
		if !ok {
			return
		}
		delete(s.waiting, t.cmdSN)
		s.expCmdSN.Add(1)
		if t.placeholder {
			if t.itt != 0 || t.cmd.CDB != nil {
				// A real task cancelled while it waited.
				go c.finish(t)
			}
			continue
		}
		t.delivered.Store(true)
		// A released command may already have all its data.
		go c.progressLater(t)
	}
}

func (c *conn) progressLater(t *task) { c.progress(t, false) }

// progress moves a task forward: solicit data it still needs, or start it
// once it has everything and its turn has come. R2Ts are queued after c.mu
// is released: the writer takes c.mu too, so queueing under it could
// deadlock on a full queue. onReader says the caller is the reader
// goroutine, which may run the command itself (see start).
func (c *conn) progress(t *task, onReader bool) error {
	c.mu.Lock()
	r2ts, ready := c.progressLocked(t)
	c.mu.Unlock()
	for _, p := range r2ts {
		c.send(outMsg{pdu: p})
	}
	if ready != nil {
		return c.start(ready, onReader)
	}
	return nil
}

// progressLocked does progress's work under c.mu and returns the R2Ts to
// send and, when the task is ready to run, the task to start.
func (c *conn) progressLocked(t *task) ([]*PDU, *task) {
	if t.aborted.Load() || t.started {
		return nil, nil
	}
	if t.write && t.received < t.edtl {
		if t.unsolDone {
			return c.solicitLocked(t), nil
		}
		return nil, nil
	}
	if !t.delivered.Load() {
		return nil, nil
	}
	t.started = true
	t.cmd.DataOut = t.buf
	if t.read && t.edtl > 0 {
		t.cmd.DataInBuf = c.srv.bufs.get(int(t.edtl))
	}
	c.execWG.Add(1)
	return nil, t
}

// inlineBudget is how long a command may run on the reader goroutine
// before reading moves to a new goroutine.
const inlineBudget = time.Millisecond

// errHandedOff tells the old reader goroutine, after a command it ran
// inline outlived inlineBudget, that another goroutine now reads the
// connection and it must stop.
var errHandedOff = errors.New("reading handed to another goroutine")

// start runs a ready task. When the reader goroutine starts a task, no
// other command is executing and no further PDU is already buffered (queue
// depth 1, the latency case), it runs it itself: a new goroutine would
// make the Go runtime wake a second thread, which costs more than the
// command. With PDUs buffered behind it the initiator is pipelining, and
// running inline would execute its commands one at a time: over O_DIRECT,
// where a read waits for the disk, that held random 4 KiB reads at queue
// depth 32 to queue-depth-1 speed (tests/bench/RESULTS.md, cluster rows).
// Should an inline command be slow (a snapshot server round trip, a
// failover), the watchdog (watchInline) hands reading to a new goroutine
// after inlineBudget, so NOP pings and task management are never stuck
// behind it.
func (c *conn) start(t *task, onReader bool) error {
	if !onReader || c.executing.Load() != 0 || c.in.Buffered() > 0 {
		go c.execute(t)
		return nil
	}
	c.srv.inlineRuns.Add(1)
	c.inlineSince.Store(time.Now().UnixNano())
	s := c.inline.Add(1) // odd: running inline
	c.armWatch()
	c.execute(t)
	if c.inline.CompareAndSwap(s, s+1) {
		return nil
	}
	return errHandedOff // the watchdog moved s on and started a reader
}

// armWatch arms the watchdog unless it is armed already. One timer per
// connection stays armed while commands run inline back to back and
// re-arms itself about once per inlineBudget: a timer started for every
// command cost a wake-up of another thread each time (time.AfterFunc
// wakes the network poller), about 7% of the CPU at queue depth 1.
func (c *conn) armWatch() {
	if c.watchArmed.CompareAndSwap(false, true) {
		c.watch.Reset(inlineBudget)
	}
}

// watchInline is the watchdog's timer function: it hands reading off from
// an inline command older than inlineBudget, re-arms itself while inline
// execution goes on, and disarms when it has stopped.
func (c *conn) watchInline() {
	s := c.inline.Load()
	if s&1 == 0 {
		c.watchArmed.Store(false)
		// A command may have started inline between the load and the
		// store, seen the watchdog armed and not armed it.
		if c.inline.Load()&1 == 1 {
			c.armWatch()
		}
		return
	}
	left := inlineBudget - time.Duration(time.Now().UnixNano()-c.inlineSince.Load())
	if left > 0 {
		c.watch.Reset(left)
		return
	}
	if c.inline.CompareAndSwap(s, s+1) {
		c.watchArmed.Store(false)
		go c.reader()
		return
	}
	c.watch.Reset(inlineBudget) // it ended meanwhile; check the next one
}

// solicitLocked builds R2Ts for data not yet requested, keeping at most
// MaxOutstandingR2T in flight, each at most MaxBurstLength.
func (c *conn) solicitLocked(t *task) []*PDU {
	var out []*PDU
	for t.nextOffset < t.edtl && t.outstanding < int(c.params.MaxOutstandingR2T) {
		n := min(t.edtl-t.nextOffset, c.params.MaxBurstLength)
		c.nextTTT++
		if c.nextTTT == reservedTag || c.nextTTT >= 0x80000000 {
			c.nextTTT = 1
		}
		ttt := c.nextTTT
		if t.bursts == nil {
			t.bursts = map[uint32]*burst{}
		}
		t.bursts[ttt] = &burst{next: t.nextOffset, remain: n}
		c.byTTT[ttt] = t
		p := new(PDU)
		p.setOpcode(opR2T, flagFinal)
		binary.BigEndian.PutUint64(p.BHS[8:], encodeLUN(t.lun))
		p.set(fieldITT, t.itt)
		p.set(fieldTTT, ttt)
		p.set(fieldR2TSN, t.r2tSN)
		p.set(fieldBufferOffset, t.nextOffset)
		p.set(fieldDesiredLen, n)
		t.r2tSN++
		t.outstanding++
		t.nextOffset += n
		out = append(out, p)
	}
	return out
}

func (c *conn) handleDataOut(p *PDU) error {
	itt, ttt := p.ITT(), p.get(fieldTTT)
	off, n := p.get(fieldBufferOffset), uint32(p.dataLen())
	dataSN := p.get(fieldDataSN)
	// Validate under the lock (abort and delivery change task state from
	// other goroutines), then read the data without it.
	c.mu.Lock()
	var t *task
	if ttt == reservedTag {
		t = c.tasks[itt]
	} else {
		t = c.byTTT[ttt]
	}
	var verr error
	var fail *scsi.Result // the PDU is well formed but the task must end
	var want uint32
	var b *burst
	_, tomb := c.abortedTags[uint64(itt)<<32|uint64(ttt)]
	switch {
	case tomb || (t != nil && t.aborted.Load()):
		c.mu.Unlock()
		// Data of an aborted (or failed) task: discard it quietly.
		if err := c.rd.readData(p, nil); err != nil && !isDigest(err) {
			return err
		}
		return nil
	case t == nil || t.itt != itt || !t.write || t.started:
		verr = &protoError{rejectInvalidField, fmt.Sprintf("Data-Out for unknown task ITT %#x TTT %#x", itt, ttt)}
	case uint64(off)+uint64(n) > uint64(t.edtl):
		verr = &protoError{rejectProtocolError, fmt.Sprintf("Data-Out offset %d+%d beyond expected length %d", off, n, t.edtl)}
	case ttt == reservedTag && (t.unsolDone || off+n > t.unsolicited):
		verr = &protoError{rejectProtocolError, "unsolicited Data-Out beyond FirstBurstLength"}
	case ttt == reservedTag && off != t.unsolNext:
		r := dataOffsetError()
		fail = &r
	case ttt == reservedTag:
		want = t.unsolDataSN
	default:
		b = t.bursts[ttt]
		switch {
		case b == nil:
			verr = &protoError{rejectInvalidField, fmt.Sprintf("Data-Out for finished burst TTT %#x", ttt)}
		case n > b.remain:
			verr = &protoError{rejectProtocolError, "Data-Out longer than the R2T asked for"}
		case off != b.next:
			r := dataOffsetError()
			fail = &r
		case p.Final() && n != b.remain:
			// The sequence ends short of what the R2T asked for: the
			// rest of the buffer would never be filled.
			r := senseResult(scsi.SenseAbortedCommand, 0x4b, 0x00) // DATA PHASE ERROR
			fail = &r
		default:
			want = b.dataSN
		}
	}
	if verr == nil && fail == nil && t.buf == nil {
		t.buf = c.srv.bufs.get(int(t.edtl)) // its first data (see handleSCSICmd)
	}
	c.mu.Unlock()
	if verr != nil || fail != nil {
		if err := c.rd.readData(p, nil); err != nil && !isDigest(err) {
			return err
		}
		if fail != nil {
			c.log.WithFields(logrus.Fields{"itt": itt, "offset": off, "length": n}).Warn("Data-Out not at the next offset of its sequence; command failed, nothing written")
			c.failTask(t, *fail)
			return nil
		}
		return verr
	}
	if err := c.rd.readData(p, t.buf[off:off+n]); err != nil {
		if isDigest(err) {
			// ERL 0 cannot recover a lost data PDU: the command fails.
			c.failTask(t, senseResult(scsi.SenseAbortedCommand, 0x47, 0x01))
			return &protoError{rejectDataDigest, err.Error()}
		}
		return err
	}
	if dataSN != want {
		// A DataSN gap means lost data; at ERL 0 the command ends with
		// CHECK CONDITION (protocol service CRC error / sequence error).
		c.failTask(t, senseResult(scsi.SenseAbortedCommand, 0x0c, 0x0d))
		return nil
	}
	c.mu.Lock()
	t.received += n
	t.lastData = time.Now().UnixNano()
	if ttt == reservedTag {
		t.unsolDataSN++
		t.unsolNext += n
		if p.Final() || t.unsolNext >= t.unsolicited {
			t.unsolDone = true
			// Solicit the rest from where the unsolicited data ended.
			t.nextOffset = t.unsolNext
		}
	} else if b != nil {
		b.dataSN++
		b.next += n
		b.remain -= n
		if b.remain == 0 {
			delete(c.byTTT, ttt)
			delete(t.bursts, ttt)
			t.outstanding--
		}
	}
	r2ts, ready := c.progressLocked(t)
	c.mu.Unlock()
	for _, p := range r2ts {
		c.send(outMsg{pdu: p})
	}
	if ready != nil {
		return c.start(ready, true)
	}
	return nil
}

// dataOffsetError is the result of a task whose Data-Out came at the wrong
// buffer offset: CHECK CONDITION, ABORTED COMMAND, DATA OFFSET ERROR.
func dataOffsetError() scsi.Result {
	return senseResult(scsi.SenseAbortedCommand, 0x4b, 0x05)
}

// failTask ends a task that is still collecting data with the given result.
func (c *conn) failTask(t *task, res scsi.Result) {
	c.mu.Lock()
	if t.started {
		c.mu.Unlock()
		return
	}
	t.started = true
	// Data-Out still on its way for this task is discarded quietly.
	c.tombstoneLocked(uint64(t.itt)<<32 | reservedTag)
	for ttt := range t.bursts {
		delete(c.byTTT, ttt)
		c.tombstoneLocked(uint64(t.itt)<<32 | uint64(ttt))
	}
	c.mu.Unlock()
	c.send(outMsg{task: t, res: res})
}

// finishEarly answers a command that never reaches the executor.
func (c *conn) finishEarly(t *task, res scsi.Result) {
	c.mu.Lock()
	c.tasks[t.itt] = t
	t.started = true
	c.mu.Unlock()
	c.send(outMsg{task: t, res: res})
}

func isDigest(err error) bool {
	for e := err; e != nil; {
		if e == ErrDigest {
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}

func (c *conn) execute(t *task) {
	defer c.execWG.Done()
	c.executing.Add(1)
	defer c.executing.Add(-1)
	ctx := c.ctx
	if len(t.cmd.CDB) > 0 && t.cmd.CDB[0] == opSanitize {
		// SANITIZE without IMMED waits for the sanitize, which an abort
		// must end (the sanitize goes on). Only it gets a context of its
		// own: one per command costs every command a registration with
		// the connection's context, measurable at 100k IOPS.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(c.ctx)
		defer cancel()
		c.mu.Lock()
		t.cancel = cancel
		if t.aborted.Load() {
			cancel()
		}
		c.mu.Unlock()
	}
	res := c.sess.tgt.cfg.Exec.Execute(ctx, &t.cmd)
	c.send(outMsg{task: t, res: res})
	// The command ran and its response is written (or dropped): nobody
	// uses its buffers any more. Buffers of tasks that never ran are left
	// to the garbage collector, since the reader may still be filling them.
	c.srv.bufs.put(t.buf)
	c.srv.bufs.put(t.cmd.DataInBuf)
}

// finish removes a task whose response is sent (or dropped).
func (c *conn) finish(t *task) {
	c.mu.Lock()
	if c.tasks[t.itt] == t {
		delete(c.tasks, t.itt)
	}
	c.mu.Unlock()
	c.releaseBuffer(t)
	c.sess.inflight.Add(-1)
	select {
	case <-t.done:
	default:
		close(t.done)
	}
}

// writeResult sends a command's data and status: Data-In PDUs of at most
// MaxXmitDataSegmentLength, the last carrying the status when there is no
// sense data, otherwise a SCSI Response after them.
func (c *conn) writeResult(w *bufio.Writer, hdr []byte, t *task, res scsi.Result) ([]byte, error) {
	defer c.finish(t)
	c.mu.Lock()
	if t.aborted.Load() {
		c.mu.Unlock()
		return hdr, nil
	}
	t.responding = true
	c.mu.Unlock()
	s := c.sess
	// want is how much the command would have moved; the difference to
	// the expected length is the residual (RFC 7143 section 11.4.5).
	var data []byte
	var want int
	switch {
	case t.read:
		data, want = res.Data, len(res.Data)
	case t.write:
		want = res.DataOutLen
	default:
		want = max(len(res.Data), res.DataOutLen)
	}
	if len(data) > int(t.edtl) {
		data = data[:t.edtl]
	}
	var resid uint32
	var flags byte
	switch {
	case want > int(t.edtl):
		resid, flags = uint32(want)-t.edtl, flagOverflow
	case want < int(t.edtl):
		resid, flags = t.edtl-uint32(want), flagUnder
	}
	collapse := res.Status == scsi.StatusGood && len(res.Sense) == 0 && len(data) > 0
	var dataSN uint32
	maxSeg := int(c.params.MaxXmitDataSegmentLength)
	burst := int(c.params.MaxBurstLength)
	var err error
	for off := 0; off < len(data); {
		n := min(maxSeg, len(data)-off)
		// Data-In sequences end at MaxBurstLength boundaries (F bit).
		if b := burst - off%burst; n > b {
			n = b
		}
		last := off+n == len(data)
		p := new(PDU)
		var f byte
		if last || (off+n)%burst == 0 {
			f |= flagFinal
		}
		if last && collapse {
			f |= flagStatus | flags
			p.BHS[3] = res.Status
			p.set(fieldStatSN, c.statSN)
			c.statSN++
			p.set(fieldResidual, resid)
		}
		p.setOpcode(opDataIn, f)
		p.set(fieldITT, t.itt)
		p.set(fieldTTT, reservedTag)
		p.set(fieldExpCmdSN, s.expCmdSN.Load())
		p.set(fieldMaxCmdSN, s.maxCmdSN())
		p.set(fieldDataSN, dataSN)
		p.set(fieldBufferOffset, uint32(off))
		p.Data = data[off : off+n]
		dataSN++
		if hdr, err = c.writePDU(w, hdr, p); err != nil {
			return hdr, err
		}
		off += n
	}
	if collapse {
		return hdr, nil
	}
	p := new(PDU)
	p.setOpcode(opSCSIResp, flagFinal|flags)
	p.BHS[2] = 0 // command completed at target
	p.BHS[3] = res.Status
	p.set(fieldITT, t.itt)
	p.set(fieldStatSN, c.statSN)
	c.statSN++
	p.set(fieldExpCmdSN, s.expCmdSN.Load())
	p.set(fieldMaxCmdSN, s.maxCmdSN())
	p.set(fieldExpDataSN, dataSN)
	p.set(fieldResidual, resid)
	if len(res.Sense) > 0 {
		sd := make([]byte, 2+len(res.Sense))
		binary.BigEndian.PutUint16(sd, uint16(len(res.Sense)))
		copy(sd[2:], res.Sense)
		p.Data = sd
	}
	return c.writePDU(w, hdr, p)
}

// releaseTasks drops every task of a dead connection.
func (c *conn) releaseTasks() {
	c.mu.Lock()
	tasks := make([]*task, 0, len(c.tasks))
	for _, t := range c.tasks {
		tasks = append(tasks, t)
	}
	c.tasks = map[uint32]*task{}
	c.byTTT = map[uint32]*task{}
	c.mu.Unlock()
	s := c.sess
	s.mu.Lock()
	for sn, t := range s.waiting {
		delete(s.waiting, sn)
		_ = t
	}
	s.mu.Unlock()
	for _, t := range tasks {
		c.releaseBuffer(t)
		t.aborted.Store(true)
		select {
		case <-t.done:
		default:
			close(t.done)
		}
	}
}

// senseResult builds a CHECK CONDITION with fixed-format sense data.
func senseResult(key, asc, ascq byte) scsi.Result {
	sense := make([]byte, 18)
	sense[0] = 0x70
	sense[2] = key
	sense[7] = 10
	sense[12] = asc
	sense[13] = ascq
	return scsi.Result{Status: scsi.StatusCheckCondition, Sense: sense}
}

// extendedCDB returns the bytes of an Extended CDB AHS (type 1) beyond the
// 16 in the BHS.
func extendedCDB(ahs []byte) ([]byte, error) {
	for len(ahs) >= 4 {
		l := int(binary.BigEndian.Uint16(ahs))
		typ := ahs[2]
		total := (3 + l + 3) &^ 3
		if total > len(ahs) || l < 1 {
			return nil, &protoError{rejectInvalidField, "malformed AHS"}
		}
		if typ == 1 {
			ext := ahs[4 : 3+l]
			if 16+len(ext) > maxCDB {
				return nil, &protoError{rejectInvalidField, "CDB too long"}
			}
			return ext, nil
		}
		ahs = ahs[total:]
	}
	return nil, nil
}

// decodeLUN turns the 8-byte LUN field into a flat LUN number (SAM-5
// peripheral and flat addressing, first level only).
func decodeLUN(f uint64) uint64 {
	hi := uint16(f >> 48)
	switch hi >> 14 {
	case 0: // peripheral device addressing: byte 0 is the bus identifier
		if hi>>8 != 0 {
			return uint64(hi) | 0xffff0000 // another bus: no such LUN here
		}
		return uint64(hi & 0xff)
	case 1: // flat space addressing
		return uint64(hi & 0x3fff)
	}
	return uint64(hi) | 0xffff0000 // unsupported format: a LUN that does not exist
}

// encodeLUN is the inverse of decodeLUN for LUNs below 16384.
func encodeLUN(lun uint64) uint64 {
	if lun < 256 {
		return lun << 48
	}
	return (0x4000 | lun&0x3fff) << 48
}
