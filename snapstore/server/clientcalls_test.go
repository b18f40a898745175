package server

import (
	"math/rand"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

// TestClientCallsModel drives the server's ledger of requests to a client
// with random requests and answers (right, wrong, unknown, repeated)
// against the brute-force rules: an answer is accepted only once, for an
// open request, with that request's reply type (and, for INVALIDATE_ACK,
// its generation); ERROR to an open request is a refusal; anything else
// is invalid; every answer to an open request closes it.
func TestClientCallsModel(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewSource(seed))
	reqs := []wire.MsgType{wire.TypeInvalidate, wire.TypeSharedState, wire.TypeReclaim}
	for it := 0; it < 200; it++ {
		l := newClientCalls()
		type oCall struct {
			req  wire.MsgType
			gen  uint64
			open bool
		}
		var oracle []oCall // by id - 1
		pass := &reclaimPass{}
		for step := 0; step < 200; step++ {
			if r.Intn(3) == 0 {
				req := reqs[r.Intn(len(reqs))]
				c := clientCall{req: req}
				switch req {
				case wire.TypeInvalidate:
					c.gen = uint64(1 + r.Intn(4))
				case wire.TypeReclaim:
					c.pass = pass
				}
				id := l.add(c)
				oracle = append(oracle, oCall{req: req, gen: c.gen, open: true})
				if id != uint64(len(oracle)) {
					t.Fatalf("request id %d, want %d", id, len(oracle))
				}
				continue
			}
			id := uint64(r.Intn(len(oracle) + 2))
			var m wire.Message
			switch r.Intn(5) {
			case 0:
				m = &wire.InvalidateAck{Generation: uint64(1 + r.Intn(4))}
			case 1:
				m = &wire.OK{}
			case 2:
				m = &wire.ReclaimOK{}
			case 3:
				m = &wire.Error{Code: wire.CodeInternal, Message: "no"}
			case 4:
				m = &wire.Pong{}
			}
			c, v, why := l.answer(id, m)
			want := answerInvalid
			var o *oCall
			if id >= 1 && id <= uint64(len(oracle)) && oracle[id-1].open {
				o = &oracle[id-1]
				o.open = false
				switch {
				case m.Type() == wire.TypeError:
					want = answerRefused
				case o.req == wire.TypeInvalidate && m.Type() == wire.TypeInvalidateAck:
					if m.(*wire.InvalidateAck).Generation == o.gen {
						want = answerAccepted
					}
				case o.req == wire.TypeSharedState && m.Type() == wire.TypeOK,
					o.req == wire.TypeReclaim && m.Type() == wire.TypeReclaimOK:
					want = answerAccepted
				}
			}
			if v != want {
				t.Fatalf("step %d: answer(%d, %v) = %v (%s), oracle %v (request %+v)", step, id, m.Type(), v, why, want, o)
			}
			if (v == answerInvalid) != (why != "") {
				t.Fatalf("step %d: verdict %v with reason %q", step, v, why)
			}
			if o != nil && (c.req != o.req || c.gen != o.gen || (c.req == wire.TypeReclaim) != (c.pass == pass)) {
				t.Fatalf("step %d: answer(%d) returned request %+v, oracle %+v", step, id, c, *o)
			}
			n := 0
			for _, o := range oracle {
				if o.open {
					n++
				}
			}
			if l.len() != n {
				t.Fatalf("step %d: %d open requests, oracle %d", step, l.len(), n)
			}
		}
	}
}
