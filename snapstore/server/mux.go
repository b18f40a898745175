package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/accept"
	"github.com/csnap/csnap/snapstore/wire"
)

// Mux serves the snapshot-server protocol of several volumes on one
// listener: it reads each connection's HELLO and hands the connection to
// the Server registered for the volume it names. A HELLO for a volume
// this node does not serve (not elected, or deposed) gets HELLO_REJECT
// with RejectNotServer, so the client asks its locator again.
type Mux struct {
	log     *logrus.Entry
	timeout time.Duration

	mu      sync.Mutex
	servers map[string]*Server
	tlsLog  logLimiter // failed TLS handshakes
	pending pendingConns
}

// Limits on connections that have not yet been handed to a volume's
// server (TLS handshake and HELLO not done): an unauthenticated peer can
// hold one for the HELLO timeout at most, and no more than these many.
const (
	MaxPendingConns          = 128
	MaxPendingConnsPerSource = 16
)

// pendingConns counts the connections being authenticated, per source.
type pendingConns struct {
	mu       sync.Mutex
	total    int
	bySource map[string]int
}

// admit counts a new connection from src, or says which limit refuses it.
func (p *pendingConns) admit(src string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.total >= MaxPendingConns:
		return "total"
	case p.bySource[src] >= MaxPendingConnsPerSource:
		return "per source"
	}
	if p.bySource == nil {
		p.bySource = map[string]int{}
	}
	p.total++
	p.bySource[src]++
	return ""
}

func (p *pendingConns) done(src string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total--
	if p.bySource[src]--; p.bySource[src] <= 0 {
		delete(p.bySource, src)
	}
}

// NewMux returns a Mux serving no volume yet. HELLOs must arrive within
// helloTimeout (default DefaultHandshakeTimeout).
func NewMux(log *logrus.Entry, helloTimeout time.Duration) *Mux {
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	if helloTimeout <= 0 {
		helloTimeout = DefaultHandshakeTimeout
	}
	return &Mux{log: log, timeout: helloTimeout, servers: map[string]*Server{}}
}

// Handle routes the volume's connections to s (nil: stop routing them).
// Connections already handed over stay with their server.
func (m *Mux) Handle(volume string, s *Server) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s == nil {
		delete(m.servers, volume)
		return
	}
	m.servers[volume] = s
}

// Serve accepts connections on ln until ctx ends or ln fails.
func (m *Mux) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	err := acceptLoop(ln, func(conn net.Conn) bool {
		src := accept.Source(conn.RemoteAddr())
		if why := m.pending.admit(src); why != "" {
			conn.Close()
			if m.tlsLog.allow("pending "+src, time.Now()) {
				m.log.WithFields(logrus.Fields{"remote": conn.RemoteAddr().String(), "limit": why}).Warn("snapshot-server connection refused before authentication")
			}
			return true
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer m.pending.done(src)
			m.route(ctx, conn)
		}()
		return true
	}, func(err error) { m.log.WithError(err).Warn("snapshot-server accept failed; retrying") })
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// route reads the HELLO (keeping its bytes) and hands the connection over.
func (m *Mux) route(ctx context.Context, conn net.Conn) {
	log := m.log.WithField("remote", conn.RemoteAddr().String())
	if !tlsHandshake(conn, m.timeout, log, &m.tlsLog, time.Now) {
		conn.Close()
		return
	}
	var seen bytes.Buffer
	_ = conn.SetReadDeadline(time.Now().Add(m.timeout))
	id, msg, err := wire.NewReader(io.TeeReader(conn, &seen)).Read()
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil {
		log.WithError(err).Debug("no HELLO; closing")
		conn.Close()
		return
	}
	h, ok := msg.(*wire.Hello)
	if !ok {
		log.WithField("type", msg.Type().String()).Warn("first frame is not HELLO; closing")
		conn.Close()
		return
	}
	m.mu.Lock()
	s := m.servers[h.Volume]
	m.mu.Unlock()
	if s != nil && s.ServeConn(ctx, &replayConn{Conn: conn, r: io.MultiReader(&seen, conn)}) == nil {
		return
	}
	reject := &wire.HelloReject{Reason: wire.RejectNotServer,
		Message: fmt.Sprintf("this node does not serve volume %q now", h.Volume)}
	if b, err := wire.Encode(id, reject); err == nil {
		_ = conn.SetWriteDeadline(time.Now().Add(m.timeout))
		_, _ = conn.Write(b)
	}
	log.WithFields(logrus.Fields{"volume": h.Volume, "node": h.Node}).Debug("HELLO for a volume not served here")
	conn.Close()
}

// replayConn is a connection whose first bytes were already read once:
// reads return them again, then the rest of the stream.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// NetConn returns the connection underneath (pki.PeerNode reads its TLS
// state).
func (c *replayConn) NetConn() net.Conn { return c.Conn }
