package server

import (
	"context"
	"net"
	"testing"

	"github.com/csnap/csnap/snapstore/wire"
)

// TestMux routes connections by the volume their HELLO names, rejects
// volumes it does not serve with RejectNotServer, and stops routing a
// volume whose server was removed.
func TestMux(t *testing.T) {
	engA, _, _ := newEngine(t)
	engB, _, _ := newEngine(t)
	a, err := New(Config{Engine: engA, Volume: "a", Term: 1, Node: "n1", Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Engine: engB, Volume: "b", Term: 7, Node: "n1", Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	m := NewMux(testLog(t), 0)
	m.Handle("a", a)
	m.Handle("b", b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := ln.Addr().String()

	h := func(vol string) wire.Hello {
		x := hello(cid(1), "n2")
		x.Volume = vol
		return x
	}
	for vol, term := range map[string]uint64{"a": 1, "b": 7} {
		_, r := dial(t, addr, h(vol))
		ok, isOK := r.(*wire.HelloOK)
		if !isOK || ok.Term != term {
			t.Fatalf("HELLO for %s answered %#v, want HELLO_OK of term %d", vol, r, term)
		}
	}
	_, r := dial(t, addr, h("c"))
	if rej, ok := r.(*wire.HelloReject); !ok || rej.Reason != wire.RejectNotServer {
		t.Fatalf("HELLO for an unserved volume answered %#v, want RejectNotServer", r)
	}
	m.Handle("b", nil)
	_, r = dial(t, addr, h("b"))
	if rej, ok := r.(*wire.HelloReject); !ok || rej.Reason != wire.RejectNotServer {
		t.Fatalf("HELLO for a removed volume answered %#v, want RejectNotServer", r)
	}
	// A closed server is not handed connections either.
	a.Close()
	_, r = dial(t, addr, h("a"))
	if _, ok := r.(*wire.HelloReject); !ok {
		t.Fatalf("HELLO for a closed server answered %#v, want HELLO_REJECT", r)
	}
}
