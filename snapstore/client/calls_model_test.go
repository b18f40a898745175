package client

import (
	"flag"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

var modelSeed = flag.Int64("calls.seed", 0, "seed of the call-book and held-lock model tests (0: time)")

func modelRand(t *testing.T) *rand.Rand {
	seed := *modelSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (-calls.seed to repeat)", seed)
	return rand.New(rand.NewSource(seed))
}

// The call-book oracle is the brute-force statement of the rules: every
// call is a record with a state, the queue is the waiting records ordered
// by a position, and every count is recomputed from the records each time.

type oState int

const (
	oWaiting oState = iota
	oOut            // outstanding on oracle.conn
	oParked         // off the connection after a busy answer
	oGone           // unregistered
)

type oCall struct {
	seq, id uint64
	kind    callKind
	state   oState
	pos     int
	sent    bool
	abandon bool
	conn    uint64
}

type callOracle struct {
	calls    []*oCall // by seq
	nextID   uint64
	nextPos  int
	conn     uint64
	maxIn    int
	maxLocks int
}

func (o *callOracle) newID() uint64 { o.nextID++; return o.nextID }

func (o *callOracle) waiting() []*oCall {
	var w []*oCall
	for _, c := range o.calls {
		if c.state == oWaiting {
			w = append(w, c)
		}
	}
	sort.Slice(w, func(i, j int) bool { return w[i].pos < w[j].pos })
	return w
}

func (o *callOracle) out() (inflight, reads int) {
	for _, c := range o.calls {
		if c.state == oOut && c.conn == o.conn && o.conn != 0 {
			inflight++
			if c.kind == kindSnapRead {
				reads++
			}
		}
	}
	return
}

func (o *callOracle) issue(kind callKind) *oCall {
	c := &oCall{seq: uint64(len(o.calls) + 1), kind: kind, state: oWaiting, pos: o.nextPos}
	o.nextPos++
	c.id = o.newID()
	o.calls = append(o.calls, c)
	return c
}

// pump: in queue order, an internal call always goes; any other goes if
// fewer than maxIn are outstanding, and a snapshot read also only if the
// reads outstanding plus the locks held stay below maxLocks; the first
// call refused for maxIn stops the pass.
func (o *callOracle) pump(held int) []uint64 {
	if o.conn == 0 {
		return nil
	}
	var sent []uint64
	for _, c := range o.waiting() {
		in, reads := o.out()
		if c.kind != kindInternal {
			if in >= o.maxIn {
				break
			}
			if c.kind == kindSnapRead && o.maxLocks > 0 && reads+held >= o.maxLocks {
				continue
			}
		}
		c.state, c.conn, c.sent = oOut, o.conn, true
		sent = append(sent, c.id)
	}
	return sent
}

func (o *callOracle) connect(conn uint64, maxIn, maxLocks uint32) int {
	o.conn = conn
	o.maxIn = int(maxIn)
	if o.maxIn > 2 {
		o.maxIn -= 2
	}
	o.maxLocks = int(maxLocks)
	n := 0
	for _, c := range o.waiting() {
		if c.sent && (c.kind == kindSnapRead || c.kind == kindBlockLock) {
			c.id = o.newID()
		}
		if c.sent {
			n++
		}
	}
	return n
}

func (o *callOracle) disconnect() (lost []uint64) {
	back := false
	for _, c := range o.calls {
		if c.state != oOut || c.conn != o.conn {
			continue
		}
		switch {
		case c.kind == kindInternal:
			c.state = oGone
			lost = append(lost, c.seq)
		case c.abandon:
			c.state = oGone
		default:
			c.state = oWaiting
			back = true
		}
	}
	// Calls that come back put the queue in issue order.
	for _, c := range o.calls {
		if back && c.state == oWaiting {
			c.pos = o.nextPos
			o.nextPos++
		}
	}
	o.conn = 0
	return lost
}

func TestCallBookModel(t *testing.T) {
	r := modelRand(t)
	iters := 200
	if testing.Short() {
		iters = 40
	}
	for it := 0; it < iters; it++ {
		runCallBookModel(t, r, 300)
		if t.Failed() {
			return
		}
	}
}

// callModel is one run of the call-book model: the ledger, the oracle,
// and the history for failure messages.
type callModel struct {
	t     *testing.T
	r     *rand.Rand
	b     *callBook
	o     *callOracle
	byseq map[uint64]*call
	conns uint64
	now   time.Time
	log   []string
}

func runCallBookModel(t *testing.T, r *rand.Rand, steps int) {
	t.Helper()
	m := &callModel{t: t, r: r, b: newCallBook(), o: &callOracle{}, byseq: map[uint64]*call{}, now: time.Unix(1000, 0)}
	for step := 0; step < steps; step++ {
		m.now = m.now.Add(time.Millisecond)
		if op := r.Intn(12); op < 9 {
			m.callStep(op, r.Intn(3))
		} else {
			m.connStep(op)
		}
		checkCallBook(t, m.b, m.o, m.byseq, m.fail)
	}
}

func (m *callModel) fail(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("%s\nafter:\n%s", fmt.Sprintf(format, args...), joinLines(m.log))
}

// pick returns a random oracle call in one of the states st, or nil.
func (m *callModel) pick(st ...oState) *oCall {
	var cs []*oCall
	for _, c := range m.o.calls {
		if slices.Contains(st, c.state) {
			cs = append(cs, c)
		}
	}
	if len(cs) == 0 {
		return nil
	}
	return cs[m.r.Intn(len(cs))]
}

// callStep does one operation on calls (0-8), with held read locks held.
func (m *callModel) callStep(op, held int) {
	m.t.Helper()
	switch op {
	case 0, 1, 2: // issue
		kind := []callKind{kindIO, kindSnapRead, kindAdmin, kindBlockLock}[m.r.Intn(4)]
		var msg wire.Message = &wire.OriginWrite{}
		if kind == kindSnapRead {
			msg = &wire.SnapshotRead{Snapshot: 1}
		}
		cl := m.b.issue(kind, msg)
		oc := m.o.issue(kind)
		m.byseq[cl.seq] = cl
		m.log = append(m.log, fmt.Sprintf("issue %v seq %d", kind, cl.seq))
		if cl.seq != oc.seq || cl.id != oc.id {
			m.fail("issue: seq %d id %d, oracle %d %d", cl.seq, cl.id, oc.seq, oc.id)
		}
	case 3, 4: // pump
		got := ids(m.b.pump(held, m.now))
		want := m.o.pump(held)
		m.log = append(m.log, fmt.Sprintf("pump held %d: %v", held, want))
		if !slices.Equal(got, want) {
			m.fail("pump sent %v, oracle %v", got, want)
		}
	case 5: // an answer to an outstanding call
		oc := m.pick(oOut)
		if oc == nil || oc.conn != m.o.conn {
			return
		}
		cl := m.b.outstanding(oc.id, m.o.conn)
		if cl == nil || cl.seq != oc.seq {
			m.fail("outstanding(%d) = %v, want seq %d", oc.id, cl, oc.seq)
		}
		m.b.land(cl)
		m.b.finish(cl)
		oc.state = oGone
		m.log = append(m.log, fmt.Sprintf("answer seq %d", oc.seq))
	case 6: // busy: parked, requeued later
		oc := m.pick(oOut)
		if oc == nil || oc.kind == kindInternal || oc.abandon {
			return
		}
		m.b.park(m.b.outstanding(oc.id, m.o.conn))
		oc.state = oParked
		m.log = append(m.log, fmt.Sprintf("park seq %d", oc.seq))
	case 7: // a busy retry's timer fires
		oc := m.pick(oParked, oGone)
		if oc == nil {
			return
		}
		got := m.b.requeue(m.byseq[oc.seq])
		want := oc.state == oParked
		if want {
			oc.state, oc.pos = oWaiting, m.o.nextPos
			m.o.nextPos++
		}
		m.log = append(m.log, fmt.Sprintf("requeue seq %d", oc.seq))
		if got != want {
			m.fail("requeue seq %d = %v, oracle %v", oc.seq, got, want)
		}
	case 8: // the caller gives up
		oc := m.pick(oWaiting, oOut, oParked)
		if oc == nil {
			return
		}
		m.b.abandon(m.byseq[oc.seq])
		if oc.state == oOut {
			oc.abandon = true
		} else {
			oc.state = oGone
		}
		m.log = append(m.log, fmt.Sprintf("abandon seq %d", oc.seq))
	}
}

// connStep does one operation on the connection (9-11).
func (m *callModel) connStep(op int) {
	m.t.Helper()
	switch op {
	case 9: // connection lost
		lost := m.b.disconnect(m.b.conn)
		want := m.o.disconnect()
		m.log = append(m.log, "disconnect")
		var got []uint64
		for _, cl := range lost {
			got = append(got, cl.seq)
		}
		if !slices.Equal(got, want) {
			m.fail("disconnect lost %v, oracle %v", got, want)
		}
	case 10: // connection made (after a loss)
		if m.o.conn != 0 {
			return
		}
		m.conns++
		maxIn, maxLocks := uint32(1+m.r.Intn(6)), uint32(m.r.Intn(4))
		got := m.b.connect(m.conns, maxIn, maxLocks)
		want := m.o.connect(m.conns, maxIn, maxLocks)
		m.log = append(m.log, fmt.Sprintf("connect %d maxIn %d maxLocks %d", m.conns, maxIn, maxLocks))
		if got != want {
			m.fail("connect: %d re-sends, oracle %d", got, want)
		}
		if m.r.Intn(2) == 0 { // UPLOAD_DONE
			cl := m.b.issueNow(&wire.UploadDone{}, m.now)
			m.byseq[cl.seq] = cl
			oc := m.o.issue(kindInternal)
			oc.state, oc.conn, oc.sent = oOut, m.o.conn, true
			m.log = append(m.log, fmt.Sprintf("issueNow seq %d", cl.seq))
		}
	case 11:
		if m.r.Intn(4) == 0 { // outage: everything waiting fails
			for _, cl := range m.b.takeWaiting() {
				if oc := m.o.calls[cl.seq-1]; oc.state != oWaiting {
					m.fail("takeWaiting returned seq %d in state %v", cl.seq, oc.state)
				}
			}
			for _, oc := range m.o.waiting() {
				oc.state = oGone
			}
			m.log = append(m.log, "takeWaiting")
		} else if oc := m.pick(oWaiting, oOut, oParked); oc != nil { // failed to send
			m.b.finish(m.byseq[oc.seq])
			oc.state = oGone
			m.log = append(m.log, fmt.Sprintf("finish seq %d", oc.seq))
		}
	}
}

func checkCallBook(t *testing.T, b *callBook, o *callOracle, byseq map[uint64]*call, fail func(string, ...any)) {
	t.Helper()
	in, reads := o.out()
	if b.inflight != in || b.readsOut != reads {
		fail("inflight %d reads %d, oracle %d %d", b.inflight, b.readsOut, in, reads)
	}
	var gotW, wantW []uint64
	for _, cl := range b.waiting {
		gotW = append(gotW, cl.seq)
	}
	for _, oc := range o.waiting() {
		wantW = append(wantW, oc.seq)
	}
	if !slices.Equal(gotW, wantW) {
		fail("waiting %v, oracle %v", gotW, wantW)
	}
	n := 0
	for _, oc := range o.calls {
		cl := byseq[oc.seq]
		if oc.state == oGone {
			if b.pending[cl.id] == cl {
				fail("seq %d still pending", oc.seq)
			}
			continue
		}
		n++
		if cl.id != oc.id || b.pending[oc.id] != cl {
			fail("seq %d: id %d (pending: %v), oracle id %d", oc.seq, cl.id, b.pending[oc.id] == cl, oc.id)
		}
		if (oc.state == oOut) != (cl.on != 0) || cl.abandon != oc.abandon || cl.sent != oc.sent {
			fail("seq %d: on %d abandon %v sent %v, oracle state %v abandon %v sent %v", oc.seq, cl.on, cl.abandon, cl.sent, oc.state, oc.abandon, oc.sent)
		}
	}
	if len(b.pending) != n {
		fail("%d pending, oracle %d", len(b.pending), n)
	}
}

func ids(cs []*call) []uint64 {
	var out []uint64
	for _, c := range cs {
		out = append(out, c.id)
	}
	return out
}

func joinLines(ss []string) string {
	if len(ss) > 40 {
		ss = ss[len(ss)-40:]
	}
	out := ""
	for _, s := range ss {
		out += "  " + s + "\n"
	}
	return out
}
