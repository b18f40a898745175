package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/pki"
	"github.com/csnap/csnap/snapstore/server"
)

// tlsWatchInterval is how often csnapd looks at its TLS files'
// modification times (a changed file is reloaded; so is every file on
// SIGHUP).
const tlsWatchInterval = 10 * time.Second

// errNoTLS: cluster mode without TLS files and without -insecure-no-tls.
var errNoTLS = errors.New("cluster mode needs TLS files for the snapshot-server protocol: " +
	"give -tls-ca, -tls-cert and -tls-key (config: tls { ca_file cert_file key_file }); " +
	"make them with `csnap-admin tls ca create` and `csnap-admin tls cert create --node NODE`; " +
	"-insecure-no-tls runs without (any process that reaches the port can then act as a node: tests only)")

// nodeTLS is the node's TLS material for the snapshot-server protocol,
// reloaded on SIGHUP and when its files change, until ctx ends. The files
// come from -tls-ca, -tls-cert and -tls-key (all three, or none); without
// them -dev makes its own in DATA_DIR/tls at first start (a CA and node's
// certificate, reused after), and cluster mode refuses to start unless
// -insecure-no-tls is given (then nodeTLS returns nil: no TLS).
func nodeTLS(ctx context.Context, o *Config, dev bool, dataDir, node string, log *logrus.Entry) (*pki.Holder, error) {
	var p pki.Paths
	switch given := btoi(o.TLSCA != "") + btoi(o.TLSCert != "") + btoi(o.TLSKey != ""); {
	case given == 3:
		p = pki.Paths{CA: o.TLSCA, Cert: o.TLSCert, Key: o.TLSKey}
	case given > 0:
		return nil, errors.New("TLS: give all of -tls-ca, -tls-cert and -tls-key (tls { ca_file cert_file key_file }), or none")
	case dev:
		var err error
		if p, err = devTLS(filepath.Join(dataDir, "tls"), node, log); err != nil {
			return nil, err
		}
	case o.InsecureNoTLS:
		log.Warn("-insecure-no-tls: the snapshot-server protocol runs WITHOUT TLS; any process that reaches its port can act as a cluster node")
		return nil, nil
	default:
		return nil, errNoTLS
	}
	h, err := pki.NewHolder(p, node)
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	m := h.Current()
	log.WithFields(logrus.Fields{"ca": p.CA, "cert": p.Cert, "node": m.Node,
		"expires": m.Leaf.NotAfter.UTC().Format(time.RFC3339)}).Info("snapshot-server protocol over mutual TLS")
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}
	}()
	go h.Watch(ctx, tlsWatchInterval, reload, log.WithField("component", "tls"))
	return h, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// devTLS makes, in dir, a CA and node's certificate, unless they exist;
// a certificate that does not load with the CA or expires within a day is
// made anew.
func devTLS(dir, node string, log *logrus.Entry) (pki.Paths, error) {
	p := pki.NodePaths(dir, node)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, fmt.Errorf("TLS directory: %w", err)
	}
	var ca *pki.CA
	if _, err := os.Stat(p.CA); errors.Is(err, os.ErrNotExist) {
		if ca, err = pki.NewCA("csnap -dev CA", 0); err != nil {
			return p, err
		}
		if err := ca.Write(dir, false); err != nil {
			return p, fmt.Errorf("TLS: %w", err)
		}
		log.WithField("dir", dir).Info("TLS: made a CA for -dev")
	}
	if _, err := os.Stat(p.Cert); err == nil {
		m, err := pki.Load(p)
		if err == nil && m.Node == node && time.Until(m.Leaf.NotAfter) > 24*time.Hour {
			return p, nil
		}
		// Expired (or about to), of another node, or not of this CA: -dev
		// holds its CA's key, so it makes a new one.
		log.WithError(err).WithField("cert", p.Cert).Warn("TLS: this node's -dev certificate is not usable; making a new one")
	}
	if ca == nil {
		var err error
		if ca, err = pki.LoadCA(dir); err != nil {
			return p, fmt.Errorf("TLS: %w", err)
		}
	}
	nc, err := ca.Sign(node, 0)
	if err != nil {
		return p, fmt.Errorf("TLS: %w", err)
	}
	if err := nc.Write(p, true); err != nil {
		return p, fmt.Errorf("TLS: %w", err)
	}
	log.WithFields(logrus.Fields{"dir": dir, "node": node}).Info("TLS: made this node's certificate for -dev")
	return p, nil
}

// tlsListener wraps ln in TLS with h (none if h is nil).
func tlsListener(ln net.Listener, h *pki.Holder) net.Listener {
	if h == nil {
		return ln
	}
	return tls.NewListener(ln, h.ServerConfig())
}

// clientTLS is the client.Config TLS of h (nil if h is nil).
func clientTLS(h *pki.Holder) func(string) *tls.Config {
	if h == nil {
		return nil
	}
	return h.ClientConfig
}

// peerNode is the server.Config PeerNode for h (nil if h is nil).
func peerNode(h *pki.Holder) func(net.Conn) (string, error) {
	if h == nil {
		return nil
	}
	return server.TLSPeerNode
}
