package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"math"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/pki"
	"github.com/csnap/csnap/snapstore/wire"
)

// testPKI is a CA with node certificates, and a second CA.
type testPKI struct {
	holders map[string]*pki.Holder // by node, of the cluster's CA
	foreign *pki.Holder            // node "n1" of another CA
}

func newTestPKI(t *testing.T, nodes ...string) *testPKI {
	t.Helper()
	return &testPKI{holders: testutil.Holders(t, nodes...), foreign: testutil.Holders(t, "n1")["n1"]}
}

// startTLS is start with a TLS listener (the server node "srv"'s
// certificate) and PeerNode set. deposed counts OnDeposed calls.
func startTLS(t *testing.T, p *testPKI, cfg Config, deposed *atomic.Int32) *env {
	t.Helper()
	eng, od, sd := newEngine(t)
	cfg.Engine, cfg.Volume, cfg.Node, cfg.Term = eng, "dev", "srv", 1
	cfg.Log = testLog(t)
	cfg.PeerNode = TLSPeerNode
	cfg.OnDeposed = func(uint64) { deposed.Add(1) }
	reg := NewMemRegistry()
	cfg.Registry = reg
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, eng: eng, origin: od, store: sd, reg: reg, srv: srv}
	e.addr, e.cancel = testutil.Serve(t, srv, func(ln net.Listener) net.Listener {
		return tls.NewListener(ln, p.holders["srv"].ServerConfig())
	})
	return e
}

// dialTLS sends HELLO h over TLS with cfg and returns the server's answer
// (nil and the error if the connection failed).
func dialTLS(t *testing.T, addr string, cfg *tls.Config, h wire.Hello) (*client, wire.Message, error) {
	t.Helper()
	d := net.Dialer{Timeout: waitLong}
	conn, err := tls.DialWithDialer(&d, "tcp", addr, cfg)
	if err != nil {
		return nil, nil, err
	}
	c := &client{t: t, conn: conn, w: wire.NewWriter(conn), id: h.Client, next: 100,
		waiting: map[uint64]chan wire.Message{}, inval: make(chan frame, 16), autoAck: true, done: make(chan struct{}),
		reclaim: make(chan frame, 16)}
	t.Cleanup(func() { conn.Close() })
	if err := c.w.Write(1, &h); err != nil {
		return nil, nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(waitLong))
	r := wire.NewReader(bufio.NewReader(conn))
	_, m, err := r.Read()
	if err != nil {
		return nil, nil, err
	}
	_ = conn.SetReadDeadline(time.Time{})
	go c.read(r)
	return c, m, nil
}

// untouched checks that a refused HELLO changed nothing: no deposition,
// no client known, nothing in the registry.
func untouched(t *testing.T, e *env, deposed *atomic.Int32) {
	t.Helper()
	time.Sleep(waitShort)
	if n := deposed.Load(); n != 0 {
		t.Errorf("server deposed %d times by a refused HELLO", n)
	}
	if cl := e.srv.Clients(); len(cl) != 0 {
		t.Errorf("clients after a refused HELLO: %+v", cl)
	}
	if l, _ := e.reg.List(context.Background()); len(l) != 0 {
		t.Errorf("registry after a refused HELLO: %+v", l)
	}
}

// helloAs is a HELLO of node's own client, claiming the highest term.
func helloAs(node string) wire.Hello {
	h := hello(wire.ClientIDFor(node, "dev"), node)
	h.Term = math.MaxUint64
	return h
}

// Each attack on the handshake is refused before the HELLO touches any
// state (the claimed term MaxUint64 would depose the server otherwise).
func TestTLSHandshakeAttacks(t *testing.T) {
	p := newTestPKI(t, "srv", "n1", "n2", "n3")
	members := MembershipFunc(func(n string) bool { return n == "srv" || n == "n1" || n == "n2" })

	t.Run("no certificate", func(t *testing.T) {
		var deposed atomic.Int32
		e := startTLS(t, p, Config{Membership: members}, &deposed)
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
		if _, m, err := dialTLS(t, e.addr, cfg, helloAs("n1")); err == nil {
			t.Fatalf("HELLO without a certificate answered %#v", m)
		} else {
			t.Logf("as expected: %v", err)
		}
		untouched(t, e, &deposed)
	})
	t.Run("another CA", func(t *testing.T) {
		var deposed atomic.Int32
		e := startTLS(t, p, Config{Membership: members}, &deposed)
		// (The client trusts the server: only the server's check is tested.)
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
			Certificates: []tls.Certificate{p.foreign.Current().Cert}}
		if _, m, err := dialTLS(t, e.addr, cfg, helloAs("n1")); err == nil {
			t.Fatalf("HELLO with another CA's certificate answered %#v", m)
		} else {
			t.Logf("as expected: %v", err)
		}
		untouched(t, e, &deposed)
	})
	t.Run("another node's certificate", func(t *testing.T) {
		var deposed atomic.Int32
		e := startTLS(t, p, Config{Membership: members}, &deposed)
		_, m, err := dialTLS(t, e.addr, p.holders["n2"].ClientConfig("srv"), helloAs("n1"))
		if err != nil {
			t.Fatal(err)
		}
		if r := mustType[*wire.HelloReject](t, m); r.Reason != wire.RejectIdentity {
			t.Fatalf("rejected with %v", r.Reason)
		}
		untouched(t, e, &deposed)
	})
	t.Run("non-member", func(t *testing.T) {
		var deposed atomic.Int32
		e := startTLS(t, p, Config{Membership: members}, &deposed)
		_, m, err := dialTLS(t, e.addr, p.holders["n3"].ClientConfig("srv"), helloAs("n3"))
		if err != nil {
			t.Fatal(err)
		}
		if r := mustType[*wire.HelloReject](t, m); r.Reason != wire.RejectNotMember {
			t.Fatalf("rejected with %v", r.Reason)
		}
		untouched(t, e, &deposed)
	})
	t.Run("another node's client id", func(t *testing.T) {
		var deposed atomic.Int32
		e := startTLS(t, p, Config{Membership: members}, &deposed)
		h := helloAs("n2")
		h.Client = wire.ClientIDFor("n1", "dev")
		_, m, err := dialTLS(t, e.addr, p.holders["n2"].ClientConfig("srv"), h)
		if err != nil {
			t.Fatal(err)
		}
		if r := mustType[*wire.HelloReject](t, m); r.Reason != wire.RejectIdentity {
			t.Fatalf("rejected with %v", r.Reason)
		}
		untouched(t, e, &deposed)
	})
	t.Run("member with its own certificate", func(t *testing.T) {
		var deposed atomic.Int32
		e := startTLS(t, p, Config{Membership: members}, &deposed)
		h := hello(wire.ClientIDFor("n1", "dev"), "n1")
		c, m, err := dialTLS(t, e.addr, p.holders["n1"].ClientConfig("srv"), h)
		if err != nil {
			t.Fatal(err)
		}
		mustType[*wire.HelloOK](t, m)
		if r := c.call(&wire.UploadDone{}); r.Type() != wire.TypeOK {
			t.Fatalf("UPLOAD_DONE answered %#v", r)
		}
		mustType[*wire.SnapshotList](t, c.call(&wire.ListSnapshots{Max: 16}))
		if cl := e.srv.Clients(); len(cl) != 1 || cl[0].Node != "n1" {
			t.Fatalf("clients %+v", cl)
		}
	})
	t.Run("client expecting another server node", func(t *testing.T) {
		var deposed atomic.Int32
		e := startTLS(t, p, Config{Membership: members}, &deposed)
		_, m, err := dialTLS(t, e.addr, p.holders["n1"].ClientConfig("n2"), hello(wire.ClientIDFor("n1", "dev"), "n1"))
		if err == nil {
			t.Fatalf("client talked to node srv as n2: %#v", m)
		}
		t.Logf("as expected: %v", err)
		untouched(t, e, &deposed)
	})
}

// A HELLO with the client id of another node's client is refused, also
// without TLS, and the victim's connection is kept.
func TestStolenClientID(t *testing.T) {
	e := start(t, Config{})
	victim := connect(t, e.addr, cid(1), "n1")
	_, m := dial(t, e.addr, hello(cid(1), "n2"))
	if r := mustType[*wire.HelloReject](t, m); r.Reason != wire.RejectIdentity {
		t.Fatalf("rejected with %v", r.Reason)
	}
	// The victim is still connected and served.
	mustType[*wire.SnapshotList](t, victim.call(&wire.ListSnapshots{Max: 16}))
	if cl := e.srv.Clients(); len(cl) != 1 || cl[0].Node != "n1" || !cl[0].Connected {
		t.Fatalf("clients %+v", cl)
	}
	// Its own node may reconnect with it.
	connect(t, e.addr, cid(1), "n1")
}

func TestLogLimiter(t *testing.T) {
	var l logLimiter
	t0 := time.Now()
	if !l.allow("a", t0) || l.allow("a", t0.Add(time.Second)) || !l.allow("b", t0.Add(time.Second)) ||
		!l.allow("a", t0.Add(tlsLogEvery)) {
		t.Fatal("one per source per interval")
	}
	var nl *logLimiter
	if !nl.allow("a", t0) || !nl.allow("a", t0.Add(time.Second)) {
		t.Fatal("nil limiter limits")
	}
}
