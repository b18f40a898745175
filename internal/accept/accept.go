// Package accept owns what every listener of csnap does the same way: it
// rides out accept errors (out of file descriptors, a connection aborted
// before it was accepted) instead of stopping the node, and it names the
// source a connection counts against for per-source limits.
package accept

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/csnap/csnap/internal/clock"
)

// MaxBackoff is the longest wait between two failed accepts.
const MaxBackoff = time.Second

// Acceptor accepts connections on one listener. Its zero value is ready.
type Acceptor struct {
	// LogErr, if set, is told of a failed accept, at most once a second.
	LogErr  func(error)
	backoff time.Duration
	lastLog time.Time
}

// Accept returns the next connection. A failure other than the listener
// being closed is logged and retried after a backoff that doubles from 5 ms
// to MaxBackoff; Accept returns an error only once ln is closed
// (net.ErrClosed) or ctx ends.
func (a *Acceptor) Accept(ctx context.Context, ln net.Listener) (net.Conn, error) {
	for {
		conn, err := ln.Accept()
		if err == nil {
			a.backoff = 0
			return conn, nil
		}
		if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
			return nil, err
		}
		if now := time.Now(); a.LogErr != nil && now.Sub(a.lastLog) >= time.Second {
			a.lastLog = now
			a.LogErr(err)
		}
		a.backoff = min(max(2*a.backoff, 5*time.Millisecond), MaxBackoff)
		if !clock.Sleep(ctx, a.backoff) {
			return nil, ctx.Err()
		}
	}
}

// Source is the source a connection from a counts against for per-source
// limits: its IPv4 address, or the /64 of its IPv6 address (one host
// commonly holds a whole /64, so counting single IPv6 addresses would let
// it take as many slots as it likes).
func Source(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip4 := ta.IP.To4(); ip4 != nil {
			return ip4.String()
		}
		return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
