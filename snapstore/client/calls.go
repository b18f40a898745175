package client

import (
	"sort"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

// callBook is the client's call bookkeeping: every request from issue to
// answer, which ones wait to be sent, which are outstanding on which
// connection, and the server's flow control limits. It is a pure ledger
// (no goroutines, clock, channels or I/O; the Client holds it under its
// mutex, passes the time in, and does the sending): its rules are checked
// against a brute-force oracle by TestCallBookModel.
//
// Connections are named by a number the Client gives each (never 0, never
// reused); 0 means none. A call is in exactly one of three states while it
// is registered (pending): waiting (queued, in issue order), outstanding
// on the current connection, or parked (off the connection after a busy
// answer, until requeue puts it back).
type callBook struct {
	pending  map[uint64]*call
	waiting  []*call // unsent calls, issue order
	inflight int     // requests outstanding on conn (internal ones included)
	readsOut int     // SNAPSHOT_READs outstanding on conn
	nextID   uint64  // request id counter: never reset
	nextSeq  uint64
	conn     uint64 // the current connection; 0: none
	maxIn    int    // requests the server allows in flight (for our calls, minus reserve)
	maxLocks int    // 0: no limit announced
}

func newCallBook() *callBook {
	return &callBook{pending: make(map[uint64]*call)}
}

// newID returns a fresh request id (for requests that are not calls:
// HELLO, PING).
func (b *callBook) newID() uint64 {
	b.nextID++
	return b.nextID
}

// issue registers a new call and queues it.
func (b *callBook) issue(kind callKind, msg wire.Message) *call {
	cl := &call{kind: kind, msg: msg}
	switch r := msg.(type) {
	case *wire.SnapshotRead:
		cl.snapshot = r.Snapshot
	case *wire.SnapshotWrite:
		cl.snapshot = r.Snapshot
	}
	b.nextSeq++
	cl.seq = b.nextSeq
	cl.id = b.newID()
	b.pending[cl.id] = cl
	b.waiting = append(b.waiting, cl)
	return cl
}

// issueNow registers a new internal call and puts it on the current
// connection at once, ahead of everything waiting (UPLOAD_DONE).
func (b *callBook) issueNow(msg wire.Message, now time.Time) *call {
	cl := &call{kind: kindInternal, msg: msg, id: b.newID()}
	b.nextSeq++
	cl.seq = b.nextSeq
	b.pending[cl.id] = cl
	b.markSent(cl, now)
	return cl
}

// canSend reports whether flow control lets cl go out now, with held read
// locks held.
func (b *callBook) canSend(cl *call, held int) bool {
	if cl.kind == kindInternal {
		return true
	}
	if b.inflight >= b.maxIn {
		return false
	}
	if cl.kind == kindSnapRead && b.maxLocks > 0 && b.readsOut+held >= b.maxLocks {
		return false
	}
	return true
}

// pump takes the waiting calls that flow control admits, in order,
// skipping (not blocking on) snapshot reads that wait for a lock slot,
// marks them outstanding on the current connection (sent at now) and
// returns them, to be sent in that order. With no connection it returns
// nothing.
func (b *callBook) pump(held int, now time.Time) []*call {
	if b.conn == 0 || len(b.waiting) == 0 {
		return nil
	}
	var out []*call
	kept := b.waiting[:0]
	for i, cl := range b.waiting {
		if cl.kind != kindInternal && b.inflight >= b.maxIn {
			kept = append(kept, b.waiting[i:]...)
			break
		}
		if !b.canSend(cl, held) {
			kept = append(kept, cl)
			continue
		}
		b.markSent(cl, now)
		out = append(out, cl)
	}
	clear(b.waiting[len(kept):])
	b.waiting = kept
	return out
}

func (b *callBook) markSent(cl *call, now time.Time) {
	cl.on = b.conn
	if cl.sent {
		cl.resent = true
	}
	cl.sent, cl.sentAt = true, now
	b.inflight++
	if cl.kind == kindSnapRead {
		b.readsOut++
	}
}

// outstanding returns the call with request id id outstanding on
// connection conn, or nil (abandoned and lost with an older connection,
// or a server bug).
func (b *callBook) outstanding(id, conn uint64) *call {
	cl := b.pending[id]
	if cl == nil || cl.on != conn || conn == 0 {
		return nil
	}
	return cl
}

// land takes cl off its connection (an answer came): it stops counting
// against the server's limits.
func (b *callBook) land(cl *call) {
	if cl.on == 0 {
		return
	}
	if cl.on == b.conn {
		b.inflight--
		if cl.kind == kindSnapRead {
			b.readsOut--
		}
	}
	cl.on = 0
}

// park takes cl off its connection without finishing it (the server was
// busy): requeue puts it back in the queue later.
func (b *callBook) park(cl *call) { b.land(cl) }

// requeue queues a parked call again; it reports false if cl was finished
// or abandoned meanwhile, or is not parked.
func (b *callBook) requeue(cl *call) bool {
	if b.pending[cl.id] != cl || cl.on != 0 || b.isWaiting(cl) {
		return false
	}
	b.waiting = append(b.waiting, cl)
	return true
}

func (b *callBook) isWaiting(cl *call) bool {
	for _, w := range b.waiting {
		if w == cl {
			return true
		}
	}
	return false
}

// finish unregisters cl (answered, failed): off its connection, out of the
// queue, forgotten. It reports whether cl was registered.
func (b *callBook) finish(cl *call) bool {
	if b.pending[cl.id] != cl {
		return false
	}
	b.land(cl)
	delete(b.pending, cl.id)
	b.removeWaiting(cl)
	return true
}

func (b *callBook) removeWaiting(cl *call) {
	for i, w := range b.waiting {
		if w == cl {
			b.waiting = append(b.waiting[:i], b.waiting[i+1:]...)
			return
		}
	}
}

// abandon forgets a call whose caller gave up. A call outstanding on the
// connection stays registered (it still counts against the server's
// in-flight limit) until its answer comes, which the Client then drops
// (releasing a read lock it granted at once).
func (b *callBook) abandon(cl *call) {
	if b.pending[cl.id] != cl {
		return
	}
	if cl.on != 0 {
		cl.abandon = true
		return
	}
	delete(b.pending, cl.id)
	b.removeWaiting(cl)
}

// takeWaiting unregisters and returns every waiting call (to fail them).
func (b *callBook) takeWaiting() []*call {
	out := b.waiting
	for _, cl := range out {
		delete(b.pending, cl.id)
	}
	b.waiting = nil
	return out
}

// takeAll unregisters and returns every call (the client is closing).
func (b *callBook) takeAll() []*call {
	out := make([]*call, 0, len(b.pending))
	for _, cl := range b.pending {
		b.land(cl)
		out = append(out, cl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	clear(b.pending)
	b.waiting = nil
	return out
}

// connect makes conn the current connection with the server's limits, and
// prepares the unanswered calls for re-sending: a sent snapshot read or
// block lock gets a new id (its id is the handle of the lock it may be
// granted, and a lock granted under the old id, if the old server
// answered into the void, must not be confused with this one). It
// returns how many waiting calls are re-sends.
func (b *callBook) connect(conn uint64, maxInFlight, maxLocks uint32) (resend int) {
	b.conn = conn
	b.inflight, b.readsOut = 0, 0
	b.maxIn = int(min(maxInFlight, 1<<20))
	if b.maxIn > 2 {
		b.maxIn -= 2 // kept for PING and UPLOAD_DONE
	}
	b.maxLocks = int(min(maxLocks, 1<<30))
	for _, cl := range b.waiting {
		if cl.sent && (cl.kind == kindSnapRead || cl.kind == kindBlockLock) {
			delete(b.pending, cl.id)
			cl.id = b.newID()
			b.pending[cl.id] = cl
		}
		if cl.sent {
			resend++
		}
	}
	return resend
}

// disconnect forgets connection conn (if current): its outstanding calls
// go back to the queue in issue order, to be re-sent on the next
// connection, except abandoned ones (forgotten) and internal ones, which
// are unregistered and returned to be failed.
func (b *callBook) disconnect(conn uint64) (lost []*call) {
	if conn == 0 || b.conn != conn {
		return nil
	}
	b.conn = 0
	b.inflight, b.readsOut = 0, 0
	var back []*call
	for _, cl := range b.pending {
		if cl.on != conn {
			continue
		}
		cl.on = 0
		switch {
		case cl.kind == kindInternal:
			delete(b.pending, cl.id)
			lost = append(lost, cl)
		case cl.abandon:
			delete(b.pending, cl.id)
		default:
			back = append(back, cl)
		}
	}
	if len(back) > 0 {
		back = append(back, b.waiting...)
		sort.Slice(back, func(i, j int) bool { return back[i].seq < back[j].seq })
		b.waiting = back
	}
	sort.Slice(lost, func(i, j int) bool { return lost[i].seq < lost[j].seq })
	return lost
}
