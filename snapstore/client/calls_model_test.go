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

func runCallBookModel(t *testing.T, r *rand.Rand, steps int) {
	t.Helper()
	b := newCallBook()
	o := &callOracle{}
	byseq := map[uint64]*call{}
	conns := uint64(0)
	now := time.Unix(1000, 0)
	var log []string
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s\nafter:\n%s", fmt.Sprintf(format, args...), joinLines(log))
	}
	pick := func(st ...oState) *oCall {
		var cs []*oCall
		for _, c := range o.calls {
			if slices.Contains(st, c.state) {
				cs = append(cs, c)
			}
		}
		if len(cs) == 0 {
			return nil
		}
		return cs[r.Intn(len(cs))]
	}
	for step := 0; step < steps; step++ {
		now = now.Add(time.Millisecond)
		held := r.Intn(3)
		switch op := r.Intn(12); op {
		case 0, 1, 2: // issue
			kind := []callKind{kindIO, kindSnapRead, kindAdmin, kindBlockLock}[r.Intn(4)]
			var msg wire.Message = &wire.OriginWrite{}
			if kind == kindSnapRead {
				msg = &wire.SnapshotRead{Snapshot: 1}
			}
			cl := b.issue(kind, msg)
			oc := o.issue(kind)
			byseq[cl.seq] = cl
			log = append(log, fmt.Sprintf("issue %v seq %d", kind, cl.seq))
			if cl.seq != oc.seq || cl.id != oc.id {
				fail("issue: seq %d id %d, oracle %d %d", cl.seq, cl.id, oc.seq, oc.id)
			}
		case 3, 4: // pump
			got := ids(b.pump(held, now))
			want := o.pump(held)
			log = append(log, fmt.Sprintf("pump held %d: %v", held, want))
			if !slices.Equal(got, want) {
				fail("pump sent %v, oracle %v", got, want)
			}
		case 5: // an answer to an outstanding call
			oc := pick(oOut)
			if oc == nil || oc.conn != o.conn {
				continue
			}
			cl := b.outstanding(oc.id, o.conn)
			if cl == nil || cl.seq != oc.seq {
				fail("outstanding(%d) = %v, want seq %d", oc.id, cl, oc.seq)
			}
			b.land(cl)
			b.finish(cl)
			oc.state = oGone
			log = append(log, fmt.Sprintf("answer seq %d", oc.seq))
		case 6: // busy: parked, requeued later
			oc := pick(oOut)
			if oc == nil || oc.kind == kindInternal || oc.abandon {
				continue
			}
			b.park(b.outstanding(oc.id, o.conn))
			oc.state = oParked
			log = append(log, fmt.Sprintf("park seq %d", oc.seq))
		case 7: // a busy retry's timer fires
			oc := pick(oParked, oGone)
			if oc == nil {
				continue
			}
			got := b.requeue(byseq[oc.seq])
			want := oc.state == oParked
			if want {
				oc.state, oc.pos = oWaiting, o.nextPos
				o.nextPos++
			}
			log = append(log, fmt.Sprintf("requeue seq %d", oc.seq))
			if got != want {
				fail("requeue seq %d = %v, oracle %v", oc.seq, got, want)
			}
		case 8: // the caller gives up
			oc := pick(oWaiting, oOut, oParked)
			if oc == nil {
				continue
			}
			b.abandon(byseq[oc.seq])
			if oc.state == oOut {
				oc.abandon = true
			} else {
				oc.state = oGone
			}
			log = append(log, fmt.Sprintf("abandon seq %d", oc.seq))
		case 9: // connection lost
			lost := b.disconnect(b.conn)
			want := o.disconnect()
			log = append(log, "disconnect")
			var got []uint64
			for _, cl := range lost {
				got = append(got, cl.seq)
			}
			if !slices.Equal(got, want) {
				fail("disconnect lost %v, oracle %v", got, want)
			}
		case 10: // connection made (after a loss)
			if o.conn != 0 {
				continue
			}
			conns++
			maxIn, maxLocks := uint32(1+r.Intn(6)), uint32(r.Intn(4))
			got := b.connect(conns, maxIn, maxLocks)
			want := o.connect(conns, maxIn, maxLocks)
			log = append(log, fmt.Sprintf("connect %d maxIn %d maxLocks %d", conns, maxIn, maxLocks))
			if got != want {
				fail("connect: %d re-sends, oracle %d", got, want)
			}
			if r.Intn(2) == 0 { // UPLOAD_DONE
				cl := b.issueNow(&wire.UploadDone{}, now)
				byseq[cl.seq] = cl
				oc := o.issue(kindInternal)
				oc.state, oc.conn, oc.sent = oOut, o.conn, true
				log = append(log, fmt.Sprintf("issueNow seq %d", cl.seq))
			}
		case 11:
			if r.Intn(4) == 0 { // outage: everything waiting fails
				for _, cl := range b.takeWaiting() {
					if oc := o.calls[cl.seq-1]; oc.state != oWaiting {
						fail("takeWaiting returned seq %d in state %v", cl.seq, oc.state)
					}
				}
				for _, oc := range o.waiting() {
					oc.state = oGone
				}
				log = append(log, "takeWaiting")
			} else if oc := pick(oWaiting, oOut, oParked); oc != nil { // failed to send
				b.finish(byseq[oc.seq])
				oc.state = oGone
				log = append(log, fmt.Sprintf("finish seq %d", oc.seq))
			}
		}
		checkCallBook(t, b, o, byseq, fail)
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
