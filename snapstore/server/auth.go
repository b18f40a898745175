package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/pki"
	"github.com/csnap/csnap/snapstore/wire"
)

// TLSPeerNode is a Config.PeerNode for connections accepted on a TLS
// listener whose configuration verifies client certificates
// (pki.Holder.ServerConfig): the node the peer's certificate names.
func TLSPeerNode(conn net.Conn) (string, error) { return pki.PeerNode(conn) }

// tlsHandshake completes the TLS handshake of conn (a *tls.Conn, or a
// connection wrapping one, see pki.PeerNode) within timeout, so that a
// peer without a valid certificate is logged as such (through lim). Other
// connections pass untouched.
func tlsHandshake(conn net.Conn, timeout time.Duration, log *logrus.Entry, lim *logLimiter, now func() time.Time) bool {
	tc := tlsConn(conn)
	if tc == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		lvl := logrus.WarnLevel
		if host, _, _ := net.SplitHostPort(conn.RemoteAddr().String()); !lim.allow(host, now()) {
			lvl = logrus.DebugLevel
		}
		log.WithError(err).Log(lvl, "TLS handshake failed; connection closed")
		return false
	}
	return true
}

// logLimiter lets one warning per source through per tlsLogEvery (a peer
// with a bad certificate retries several times a second); the others are
// logged at debug level. The zero value is ready; a nil one allows all.
type logLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
}

const tlsLogEvery = time.Minute

func (l *logLimiter) allow(key string, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < tlsLogEvery {
		return false
	}
	if l.last == nil || len(l.last) > 1024 {
		l.last = map[string]time.Time{}
	}
	l.last[key] = now
	return true
}

// tlsConn finds the *tls.Conn under conn, if any.
func tlsConn(conn net.Conn) *tls.Conn {
	for range 8 {
		switch c := conn.(type) {
		case *tls.Conn:
			return c
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// authenticate checks, before the HELLO touches any state, who the client
// is: with Config.PeerNode, the node its connection proved to be must be
// the node the HELLO claims, and the client id must be that node's
// (wire.ClientIDFor); the node must be a member; and in every case a
// client id the server knows as another node's is refused (a node cannot
// take over another's connection, locks or approvals). It returns the
// reason to reject, or 0.
func (ss *session) authenticate(h *wire.Hello) (wire.RejectReason, string) {
	s := ss.s
	if s.cfg.PeerNode != nil {
		node, err := s.cfg.PeerNode(ss.conn)
		switch {
		case err != nil:
			return wire.RejectIdentity, fmt.Sprintf("connection not authenticated: %v", err)
		case node != h.Node:
			return wire.RejectIdentity, fmt.Sprintf("HELLO claims node %q, the certificate is node %q's", h.Node, node)
		case h.Client != wire.ClientIDFor(node, h.Volume):
			return wire.RejectIdentity, fmt.Sprintf("client id %v is not node %q's", h.Client, node)
		}
	}
	if !s.mem.IsMember(h.Node) {
		return wire.RejectNotMember, fmt.Sprintf("node %q is not a cluster member", h.Node)
	}
	s.mu.Lock()
	owner, known := s.clientNodeLocked(h.Client)
	s.mu.Unlock()
	if known && owner != h.Node {
		return wire.RejectIdentity, fmt.Sprintf("client id %v belongs to node %q", h.Client, owner)
	}
	return 0, ""
}

// clientNodeLocked is the node the server knows client id as, if any.
func (s *Server) clientNodeLocked(id wire.ClientID) (string, bool) {
	if ss := s.sessions[id]; ss != nil {
		return ss.node, true
	}
	if e, ok := s.awaited[id]; ok {
		return e.Node, true
	}
	if d := s.detached[id]; d != nil {
		return d.node, true
	}
	if u, ok := s.unsettled[id]; ok {
		return u.node, true
	}
	if n, ok := s.uploadAwait[id]; ok {
		return n, true
	}
	if a, ok := s.away[id]; ok {
		return a.node, true
	}
	return "", false
}
