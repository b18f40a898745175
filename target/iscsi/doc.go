// Package iscsi is csnap's iSCSI target: the transport of RFC 7143 between
// initiators and the SCSI command sets of package scsi. It knows nothing of
// snapshots; each target (one IQN) is a scsi.Executor given to AddTarget.
//
// # Pieces
//
//   - Server: the registered targets, the portals it accepts on, the
//     sessions by (InitiatorName, ISID, target), the node-wide limits.
//   - conn: one TCP connection: its login, then its full feature phase.
//   - session: one I_T nexus (MaxConnections is always 1, so one conn at a
//     time); the CmdSN window and the session's write budget.
//   - task: one SCSI command, from its SCSI Command PDU until its response
//     is on the wire.
//   - PDU, pduReader (pdu.go): framing, digests, and the header fields by
//     name (fieldCmdSN, fieldBufferOffset...), each with its RFC section.
//   - text.go: key=value parsing and the operational-key negotiation;
//     chap.go: CHAP; login.go: the login state machine.
//
// # A connection's life
//
// Serve accepts a connection unless a limit refuses it (connections and
// pending logins, per source address and in total; docs/SECURITY.md lists
// every limit with its default). An accept error never stops Serve: it is
// logged and retried with backoff. The connection starts with a 4 KiB read
// buffer and no write buffer. conn.login reads login requests until full
// feature phase or failure (LoginTimeout bounds it):
//
//   - InitiatorName, SessionType and TargetName come from the first complete
//     request and may not change later (identify);
//   - the target named there decides whether CHAP is needed, and whether
//     the initiator is on its allow-list;
//   - entering full feature phase decides again, against the target's
//     configuration at that moment, and a login may reinstate a session only
//     as the CHAP identity that session authenticated as (authorize,
//     enterFullFeature).
//
// Failed authentications are counted per source address (failureLimiter).
// After the login the connection gets its full-size buffers (growBuffers)
// and three kinds of goroutine:
//
//   - the reader (readLoop) reads every PDU and owns the data-transfer state
//     of tasks; at most one goroutine runs readLoop at a time;
//   - the pinger sends NOP-In pings to a silent initiator, drops one that
//     does not answer, and fails writes whose data does not come in time;
//   - one goroutine per executing command, except that the reader runs a
//     command itself when nothing else executes and nothing is buffered
//     behind it (queue depth 1): see conn.start. A watchdog (watchInline)
//     hands reading to a new goroutine if such a command runs longer than
//     inlineBudget, so pings and task management never wait behind it.
//
// Output goes through conn.send: whoever holds conn.wr.mu writes, and
// flushes if nobody waits behind it. StatSN is assigned under that mutex,
// so it follows send order.
//
// # A task's life
//
// handleSCSICmd builds the task, checks its size (MaxTransferLength), takes
// the write budget for a write (per session and per node, else TASK SET
// FULL), reads its immediate data, and admits it to the CmdSN order (admit):
// a command outside [ExpCmdSN, MaxCmdSN] is ignored (RFC 7143 4.2.2.1); one
// ahead of a gap waits in session.waiting until deliverLocked releases it.
// Immediate commands skip the ordering but not the window: beyond
// QueueDepth in flight they are rejected. MaxCmdSN shrinks as commands are
// in flight, so at most QueueDepth run at once.
//
// A write collects its data before it runs: the immediate data, then the
// unsolicited Data-Out (up to FirstBurstLength unless InitialR2T), then R2T
// bursts of at most MaxBurstLength, MaxOutstandingR2T at a time
// (solicitLocked). Every Data-Out must carry the next offset and DataSN of
// its sequence; anything else ends the task with CHECK CONDITION and nothing
// written (handleDataOut). So a command runs only once every byte of its
// buffer came from the initiator, and the pooled buffers (bufpool.go, not
// zeroed) never carry another command's bytes to the backend. The task runs
// when it has all its data and its CmdSN turn has come (progressLocked);
// writeResult sends Data-In PDUs and the status, and finish ends the task
// and gives its budget back.
//
// ABORT TASK and the task-set functions (mgmt.go) mark tasks aborted: a task
// that has not started never runs, one running finishes but its response is
// dropped, and Data-Out still on its way for it is discarded quietly
// (tombstones in conn.abortedTags).
//
// # Locks
//
//   - Server.mu: targets, sessions, connections, listeners, per-source counts.
//   - session.mu: the waiting commands and ExpCmdSN advances.
//   - conn.mu: the task table (tasks by ITT and by TTT), task state that
//     other goroutines change (aborted, started), text continuations.
//   - conn.wr.mu: output and StatSN.
//
// Never queue output while holding conn.mu: the writer takes conn.mu too
// (writeResult), so R2Ts are built under it and sent after it is released.
package iscsi
