// Package testutil holds the helpers the packages' tests share: polling
// for a condition, and serving a server on a loopback port for the life
// of a test. It is for tests only.
package testutil

import (
	"context"
	"net"
	"testing"
	"time"
)

// Eventually polls cond every few milliseconds until it holds, and fails
// the test (naming what it waited for) if it does not within d.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Server is what Serve serves: a snapshot server, an iSCSI target, ...
type Server interface {
	Serve(ctx context.Context, ln net.Listener) error
	Close() error
}

// Serve serves srv on a listener of an ephemeral loopback port (wrapped
// by wrap if it is not nil, a TLS listener for instance) until the test
// ends, and returns the port's address and a function that stops
// serving early. At the test's cleanup it cancels Serve's context, closes
// srv, and fails the test if Serve does not return within 10 s. Cleanups
// registered before Serve run after it (close the engine there).
func Serve(t testing.TB, srv Server, wrap func(net.Listener) net.Listener) (addr string, cancel context.CancelFunc) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	var l net.Listener = ln
	if wrap != nil {
		l = wrap(ln)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("Serve on %s did not return", addr)
		}
	})
	return addr, cancel
}
