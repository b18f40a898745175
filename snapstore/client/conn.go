package client

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore/wire"
)

// conn is one connection to a server: a reader goroutine that dispatches
// frames, a writer goroutine that drains a queue of encoded frames (so
// that senders never block on the network, and frames queued under the
// client's mutex go out in exactly that order), and a pinger that notices
// a server gone silent.
type conn struct {
	c    *Client
	nc   net.Conn
	addr string
	num  uint64 // its number in the client's call book (set by install)
	rd   *wire.Reader

	mu   sync.Mutex
	q    [][]byte
	wake chan struct{}

	dead      chan struct{}
	closeOnce sync.Once
	lastRecv  atomic.Int64 // unix ns
}

func newConn(c *Client, nc net.Conn, addr string) *conn {
	cn := &conn{c: c, nc: nc, addr: addr, wake: make(chan struct{}, 1), dead: make(chan struct{})}
	cn.rd = wire.NewReader(bufio.NewReaderSize(nc, 64<<10))
	cn.lastRecv.Store(cn.c.cfg.Now().UnixNano())
	return cn
}

// handshake sends HELLO and reads the answer, synchronously, before any
// goroutine of the connection runs.
func (cn *conn) handshake(id uint64, h *wire.Hello, timeout time.Duration) (*wire.HelloOK, error) {
	_ = cn.nc.SetDeadline(time.Now().Add(timeout)) // socket deadlines: the system clock
	b, err := wire.Encode(id, h)
	if err != nil {
		return nil, err
	}
	if _, err := cn.nc.Write(b); err != nil {
		return nil, fmt.Errorf("sending HELLO: %w", err)
	}
	rid, m, err := cn.rd.Read()
	if err != nil {
		return nil, fmt.Errorf("reading the answer to HELLO: %w", err)
	}
	if rid != id {
		return nil, fmt.Errorf("answer to HELLO has request id %d, want %d: %w", rid, id, ErrProtocol)
	}
	_ = cn.nc.SetDeadline(time.Time{})
	switch m := m.(type) {
	case *wire.HelloOK:
		if m.Version < h.MinVersion || m.Version > h.MaxVersion {
			return nil, fmt.Errorf("server chose protocol version %d outside [%d,%d]: %w", m.Version, h.MinVersion, h.MaxVersion, ErrProtocol)
		}
		return m, nil
	case *wire.HelloReject:
		return nil, &rejectError{m}
	case *wire.Error:
		return nil, fmt.Errorf("HELLO: %w", m)
	}
	return nil, fmt.Errorf("HELLO answered with %v: %w", m.Type(), ErrProtocol)
}

// rejectError is a HELLO_REJECT as an error.
type rejectError struct{ r *wire.HelloReject }

func (e *rejectError) Error() string {
	return fmt.Sprintf("%v: %v (server term %d): %s", ErrRejected, e.r.Reason, e.r.Term, e.r.Message)
}
func (e *rejectError) Unwrap() error { return ErrRejected }

// start runs the connection's goroutines.
func (cn *conn) start() {
	cn.c.wg.Add(3)
	go cn.reader()
	go cn.writer()
	go cn.pinger()
}

func (cn *conn) close() {
	cn.closeOnce.Do(func() {
		close(cn.dead)
		cn.nc.Close()
	})
}

func (cn *conn) isDead() bool {
	select {
	case <-cn.dead:
		return true
	default:
		return false
	}
}

// send queues a frame. It fails only for a message that cannot be
// encoded; on a dead connection the frame is dropped silently (the
// connection's death is handled by the client as a whole).
func (cn *conn) send(id uint64, m wire.Message) error {
	b, err := wire.Encode(id, m)
	if err != nil {
		return err
	}
	cn.mu.Lock()
	cn.q = append(cn.q, b)
	cn.mu.Unlock()
	select {
	case cn.wake <- struct{}{}:
	default:
	}
	return nil
}

func (cn *conn) writer() {
	defer cn.c.wg.Done()
	defer cn.close()
	bw := bufio.NewWriterSize(cn.nc, 64<<10)
	var batch [][]byte
	for {
		select {
		case <-cn.dead:
			return
		case <-cn.wake:
		}
		cn.mu.Lock()
		batch, cn.q = cn.q, batch[:0]
		cn.mu.Unlock()
		_ = cn.nc.SetWriteDeadline(time.Now().Add(cn.c.cfg.IOTimeout))
		for _, b := range batch {
			if _, err := bw.Write(b); err != nil {
				cn.logDeath("writing", err)
				return
			}
		}
		if err := bw.Flush(); err != nil {
			cn.logDeath("writing", err)
			return
		}
		clear(batch)
	}
}

func (cn *conn) logDeath(what string, err error) {
	if cn.isDead() {
		return // closed on purpose
	}
	cn.c.log.WithError(err).WithField("server", cn.addr).Warn("snapshot server connection failed " + what)
}

func (cn *conn) reader() {
	defer cn.c.wg.Done()
	defer cn.close()
	c := cn.c
	for {
		id, m, err := cn.rd.Read()
		if err != nil {
			var me *wire.MessageError
			if errors.As(err, &me) {
				cn.lastRecv.Store(cn.c.cfg.Now().UnixNano())
				cn.badFrame(me)
				continue
			}
			if err == io.EOF {
				err = errors.New("server closed the connection")
			}
			cn.logDeath("reading", err)
			return
		}
		cn.lastRecv.Store(cn.c.cfg.Now().UnixNano())
		switch m := m.(type) {
		case *wire.Invalidate:
			c.invalidate(cn, id, m.Generation)
		case *wire.OriginUnique:
			c.originUnique(m.Generation)
		case *wire.Reclaim:
			c.reclaim(cn, id, m.Snapshots)
		case *wire.SharedState:
			c.installShared(m.SharedValue)
			_ = cn.send(id, &wire.OK{})
		case *wire.Ping:
			_ = cn.send(id, &wire.Pong{})
		case *wire.Pong:
			// liveness only (lastRecv)
		case *wire.Error:
			if id == 0 {
				c.log.WithFields(logrus.Fields{"server": cn.addr, "error": m.Error()}).Warn("server reported a connection error")
				return
			}
			c.deliver(cn, id, m)
		default:
			if m.Type().Kind() == wire.KindReply {
				c.deliver(cn, id, m)
				continue
			}
			// A request or notice the server has no business sending.
			if m.Type().Kind() == wire.KindRequest {
				_ = cn.send(id, &wire.Error{Code: wire.CodeUnsupported, Message: fmt.Sprintf("client does not accept %v", m.Type())})
			}
			c.log.WithFields(logrus.Fields{"server": cn.addr, "type": m.Type()}).Warn("unexpected message from the server")
		}
	}
}

// badFrame handles an intact frame with a bad message: a malformed answer
// fails its call; a malformed request is answered with ERROR.
func (cn *conn) badFrame(me *wire.MessageError) {
	c := cn.c
	c.log.WithError(me).WithField("server", cn.addr).Warn("malformed message from the server")
	if me.ID == 0 {
		return
	}
	switch me.Type.Kind() {
	case wire.KindReply:
		c.mu.Lock()
		defer c.mu.Unlock()
		cl := c.calls.outstanding(me.ID, cn.num)
		if cl == nil {
			return
		}
		// The server may have granted a lock we cannot see: declare the
		// connection unusable rather than guess.
		if cl.kind == kindSnapRead {
			cn.close()
			return
		}
		c.finishLocked(cl, result{err: fmt.Errorf("%v: %w: %w", cl.msg.Type(), ErrProtocol, me)})
		c.pumpLocked()
	case wire.KindRequest:
		_ = cn.send(me.ID, &wire.Error{Code: wire.CodeBadRequest, Message: me.Error()})
	}
}

// pinger probes a quiet connection and drops one that stays silent, so a
// server that vanished without closing (node crash, partition) is noticed
// within a few intervals instead of when TCP gives up.
func (cn *conn) pinger() {
	defer cn.c.wg.Done()
	iv := cn.c.cfg.PingInterval
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-cn.dead:
			return
		case <-t.C:
		}
		quiet := cn.c.cfg.Now().Sub(time.Unix(0, cn.lastRecv.Load()))
		switch {
		case quiet >= 3*iv:
			cn.logDeath("(silent)", fmt.Errorf("nothing received for %v", quiet.Round(time.Millisecond)))
			cn.close()
			return
		case quiet >= iv:
			cn.c.mu.Lock()
			id := cn.c.calls.newID()
			cn.c.mu.Unlock()
			_ = cn.send(id, &wire.Ping{})
		}
	}
}
