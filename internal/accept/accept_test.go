package accept

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
)

type failing struct {
	net.Listener
	n atomic.Int32
}

func (l *failing) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptRidesOutErrors: EMFILE is logged and retried; closing the
// listener ends Accept.
func TestAcceptRidesOutErrors(t *testing.T) {
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &failing{Listener: real}
	ln.n.Store(4)
	logged := 0
	a := Acceptor{LogErr: func(error) { logged++ }}
	go func() {
		if c, err := net.Dial("tcp", real.Addr().String()); err == nil {
			defer c.Close()
		}
	}()
	c, err := a.Accept(context.Background(), ln)
	if err != nil {
		t.Fatalf("Accept after EMFILE: %v", err)
	}
	c.Close()
	if logged != 1 {
		t.Errorf("%d log lines for 4 errors within a second, want 1", logged)
	}
	real.Close()
	if _, err := a.Accept(context.Background(), ln); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v", err)
	}
}

// TestSource: IPv4 addresses count on their own, IPv6 addresses by /64.
func TestSource(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.7:3260":               "192.0.2.7",
		"[2001:db8:1:2:aaaa::1]:3260":  "2001:db8:1:2::/64",
		"[2001:db8:1:2:bbbb::9]:50000": "2001:db8:1:2::/64",
		"[::ffff:192.0.2.8]:3260":      "192.0.2.8",
	} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := Source(a); got != want {
			t.Errorf("Source(%s) = %s, want %s", addr, got, want)
		}
	}
}
