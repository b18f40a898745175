package testutil

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
)

type fakeServer struct{ served, closed atomic.Bool }

func (s *fakeServer) Serve(ctx context.Context, ln net.Listener) error {
	s.served.Store(true)
	<-ctx.Done()
	return ln.Close()
}

func (s *fakeServer) Close() error { s.closed.Store(true); return nil }

func TestServe(t *testing.T) {
	s := &fakeServer{}
	t.Run("serve", func(t *testing.T) {
		addr, _ := Serve(t, s, nil)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		Eventually(t, testTimeout, "Serve to run", s.served.Load)
	})
	if !s.closed.Load() {
		t.Error("the server was not closed at cleanup")
	}
}

const testTimeout = 5e9
