package server

import (
	"fmt"
	"slices"

	"github.com/csnap/csnap/snapstore/wire"
)

// clientCalls is one session's bookkeeping of the server's own requests
// to its client (INVALIDATE, SHARED_STATE, RECLAIM): their request ids,
// what each was for, and the judgement of every answer the client sends.
// It is a pure ledger (no goroutines, clock or I/O; the session holds it
// under Server.mu and acts on the verdicts); TestClientCallsModel checks
// it against a brute-force oracle.
//
// Ids count from 1 per connection, in the server's own id space (a
// client's answer carries the id of the server request it answers).
type clientCalls struct {
	next uint64
	open map[uint64]clientCall
}

// clientCall is one server request outstanding at the client.
type clientCall struct {
	req  wire.MsgType  // wire.TypeInvalidate, wire.TypeSharedState or wire.TypeReclaim
	gen  uint64        // INVALIDATE: the generation it announces
	pass *reclaimPass  // RECLAIM: the reclamation pass it belongs to
	done chan struct{} // SHARED_STATE: closed by the session when acknowledged (nil: nobody waits)
}

// answerVerdict is what an answer from the client means.
type answerVerdict uint8

const (
	answerAccepted answerVerdict = iota // the request is done
	answerRefused                       // ERROR: the client cannot comply; it must be disconnected
	answerInvalid                       // a protocol violation: the connection is failed (ERROR bad request)
)

func newClientCalls() *clientCalls {
	return &clientCalls{open: make(map[uint64]clientCall)}
}

// add registers a request to the client and returns its request id.
func (l *clientCalls) add(c clientCall) uint64 {
	l.next++
	l.open[l.next] = c
	return l.next
}

// len returns the number of requests outstanding.
func (l *clientCalls) len() int { return len(l.open) }

// answer consumes request id, answered by m (INVALIDATE_ACK, OK,
// RECLAIM_OK or ERROR), and judges the answer: accepted, refused (ERROR),
// or invalid (no such request, an answer of the wrong type, an
// INVALIDATE_ACK of another generation), with the reason for an invalid
// one. The request is forgotten whatever the verdict.
func (l *clientCalls) answer(id uint64, m wire.Message) (clientCall, answerVerdict, string) {
	c, ok := l.open[id]
	if !ok {
		return c, answerInvalid, fmt.Sprintf("%v answering unknown server request %d", m.Type(), id)
	}
	delete(l.open, id)
	if _, isErr := m.(*wire.Error); isErr {
		return c, answerRefused, ""
	}
	if !slices.Contains(c.req.Replies(), m.Type()) {
		return c, answerInvalid, fmt.Sprintf("%v answering %v (server request %d)", m.Type(), c.req, id)
	}
	if ack, isAck := m.(*wire.InvalidateAck); isAck && ack.Generation != c.gen {
		return c, answerInvalid, fmt.Sprintf("INVALIDATE_ACK for generation %d, expected %d", ack.Generation, c.gen)
	}
	return c, answerAccepted, ""
}
