package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Holder holds a node's current Material and reloads it from its files.
// The TLS configurations it builds read the current material on every
// handshake, so a reload takes effect for new connections at once.
type Holder struct {
	paths Paths
	node  string // the node the certificate must name ("" : any)

	mu  sync.Mutex
	cur *Material
	mod [3]time.Time // modification times of CA, Cert, Key at the last load
}

// NewHolder loads p. If node is not empty, the certificate must name it
// (a node must not start with another node's certificate).
func NewHolder(p Paths, node string) (*Holder, error) {
	h := &Holder{paths: p, node: node}
	if err := h.Reload(); err != nil {
		return nil, err
	}
	return h, nil
}

// Paths are the files the holder loads.
func (h *Holder) Paths() Paths { return h.paths }

// Current returns the material in use.
func (h *Holder) Current() *Material {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur
}

func (h *Holder) modTimes() [3]time.Time {
	var out [3]time.Time
	for i, p := range []string{h.paths.CA, h.paths.Cert, h.paths.Key} {
		if fi, err := os.Stat(p); err == nil {
			out[i] = fi.ModTime()
		}
	}
	return out
}

// Reload reads the files again. On error the material in use is kept.
func (h *Holder) Reload() error {
	mod := h.modTimes()
	m, err := Load(h.paths)
	if err != nil {
		return err
	}
	if h.node != "" && m.Node != h.node {
		return fmt.Errorf("%s is the certificate of node %q, this node is %q", h.paths.Cert, m.Node, h.node)
	}
	h.mu.Lock()
	h.cur, h.mod = m, mod
	h.mu.Unlock()
	return nil
}

// Changed reports whether a file's modification time differs from the
// last successful load.
func (h *Holder) Changed() bool {
	mod := h.modTimes()
	h.mu.Lock()
	defer h.mu.Unlock()
	return mod != h.mod
}

// Watch reloads the files when reload receives a value (csnapd sends one
// on SIGHUP) and when their modification times change (checked every
// interval, default 10 s), until ctx ends. Outcomes are logged; a failed
// reload keeps the material in use.
func (h *Holder) Watch(ctx context.Context, interval time.Duration, reload <-chan struct{}, log *logrus.Entry) {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		why := ""
		select {
		case <-ctx.Done():
			return
		case <-reload:
			why = "signal"
		case <-t.C:
			if !h.Changed() {
				continue
			}
			why = "files changed"
		}
		if err := h.Reload(); err != nil {
			log.WithError(err).WithField("trigger", why).Error("TLS certificates not reloaded; keeping the ones in use")
			// Do not retry a broken file every tick: wait for it to change again.
			h.mu.Lock()
			h.mod = h.modTimes()
			h.mu.Unlock()
			continue
		}
		m := h.Current()
		log.WithFields(logrus.Fields{"trigger": why, "node": m.Node, "expires": m.Leaf.NotAfter.UTC().Format(time.RFC3339)}).
			Info("TLS certificates reloaded")
	}
}

// ServerConfig is the TLS configuration of a snapshot-server listener:
// TLS 1.3, the node's current certificate, and a client certificate of
// the current CA required (verified; the node it names is checked by the
// protocol layer against the node the client claims, see PeerNode).
func (h *Holder) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := h.Current()
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{m.Cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    m.Pool,
				VerifyConnection: func(cs tls.ConnectionState) error {
					_, err := m.VerifyPeer(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
					return err
				},
			}, nil
		},
	}
}

// ClientConfig is the TLS configuration of a connection to the server of
// node server: TLS 1.3, the node's current certificate, and the server
// accepted only if its certificate chains to the current CA and names
// exactly node server.
func (h *Holder) ClientConfig(server string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: server,
		// The chain and the node are verified below, by VerifyPeer
		// (x509 hostname matching would accept wildcards).
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := h.Current().Cert
			return &c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := h.Current().VerifyPeer(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("server expected to be node %q: %w", server, err)
			}
			if got != server {
				return fmt.Errorf("server presents the certificate of node %q, the volume's server is node %q: %w", got, server, ErrWrongNode)
			}
			return nil
		},
	}
}

// ErrWrongNode: a peer's certificate names another node than expected.
var ErrWrongNode = errors.New("certificate of the wrong node")

// PeerNode returns the node the peer of an established TLS connection
// proved to be: the node its verified certificate names. conn may wrap a
// *tls.Conn if it has a NetConn method that returns the wrapped one.
func PeerNode(conn net.Conn) (string, error) {
	for range 8 {
		switch c := conn.(type) {
		case interface{ ConnectionState() tls.ConnectionState }:
			cs := c.ConnectionState()
			if !cs.HandshakeComplete {
				return "", errors.New("TLS handshake not complete")
			}
			if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
				return "", errors.New("peer has no verified certificate")
			}
			return NodeName(cs.PeerCertificates[0])
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return "", errors.New("not a TLS connection")
		}
	}
	return "", errors.New("not a TLS connection")
}
