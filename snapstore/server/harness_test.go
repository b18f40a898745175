package server

import (
	"bufio"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/wire"
)

const (
	chunkSize = 8192
	waitLong  = 5 * time.Second        // bound on anything that must happen
	waitShort = 150 * time.Millisecond // "does not happen (yet)"
)

type env struct {
	t      *testing.T
	eng    *snapstore.Engine
	origin *snapstore.MemDevice
	store  *snapstore.MemDevice
	reg    *MemRegistry
	srv    *Server
	addr   string
	cancel context.CancelFunc
}

func newEngine(t *testing.T) (*snapstore.Engine, *snapstore.MemDevice, *snapstore.MemDevice) {
	t.Helper()
	od, sd := snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(8<<20)
	if err := snapstore.Format(od, sd, snapstore.FormatOptions{ChunkSize: chunkSize, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	eng, err := snapstore.Open(od, sd, snapstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng, od, sd
}

func testLog(t *testing.T) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(testWriter{t})
	l.SetLevel(logrus.DebugLevel)
	return logrus.NewEntry(l)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// start builds a server (cfg's zero fields filled in) and serves it on a
// loopback listener.
func start(t *testing.T, cfg Config) *env {
	t.Helper()
	e := &env{t: t}
	if cfg.Engine == nil {
		e.eng, e.origin, e.store = newEngine(t)
		cfg.Engine = e.eng
	} else {
		e.eng = cfg.Engine
	}
	if cfg.Volume == "" {
		cfg.Volume = "dev"
	}
	if cfg.Term == 0 {
		cfg.Term = 1
	}
	if cfg.Node == "" {
		cfg.Node = "srv"
	}
	if cfg.Registry == nil {
		e.reg = NewMemRegistry()
		cfg.Registry = e.reg
	} else if r, ok := cfg.Registry.(*MemRegistry); ok {
		e.reg = r
	}
	if cfg.Log == nil {
		cfg.Log = testLog(t)
	}
	if cfg.BarrierTimeout == 0 {
		cfg.BarrierTimeout = waitLong
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	e.addr, e.cancel = testutil.Serve(t, srv, nil)
	return e
}

// ---------------------------------------------------------------------------
// A tiny client speaking wire directly.

type frame struct {
	id uint64
	m  wire.Message
}

type client struct {
	t       *testing.T
	conn    net.Conn
	w       *wire.Writer
	id      wire.ClientID
	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan wire.Message
	order   []uint64       // reply ids in arrival order
	notices []wire.Message // notices from the server, in arrival order
	inval   chan frame     // INVALIDATEs, when not auto-acked
	autoAck bool           // answer INVALIDATE at once
	done    chan struct{}  // reader ended
	reclaim chan frame     // RECLAIMs (answered by the test)
}

func cid(b byte) wire.ClientID {
	var id wire.ClientID
	id[0], id[15] = b, 0xAA
	return id
}

// dial sends h and returns the client and the server's answer.
func dial(t *testing.T, addr string, h wire.Hello) (*client, wire.Message) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, conn: conn, w: wire.NewWriter(conn), id: h.Client, next: 100,
		waiting: map[uint64]chan wire.Message{}, inval: make(chan frame, 16), autoAck: true, done: make(chan struct{}),
		reclaim: make(chan frame, 16)}
	t.Cleanup(func() { conn.Close() })
	if err := c.w.Write(1, &h); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(waitLong))
	r := wire.NewReader(bufio.NewReader(conn))
	_, m, err := r.Read()
	if err != nil {
		t.Fatalf("reading HELLO answer: %v", err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go c.read(r)
	return c, m
}

func hello(id wire.ClientID, node string) wire.Hello {
	return wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Client: id, Node: node, Volume: "dev"}
}

// connect opens an accepted connection and uploads locks (may be nil).
func connect(t *testing.T, addr string, id wire.ClientID, node string, held ...wire.HeldLock) *client {
	t.Helper()
	c, m := dial(t, addr, hello(id, node))
	if _, ok := m.(*wire.HelloOK); !ok {
		t.Fatalf("HELLO answered %#v", m)
	}
	if len(held) > 0 {
		if err := c.w.Write(0, &wire.UploadLocks{Locks: held}); err != nil {
			t.Fatal(err)
		}
	}
	if r := c.call(&wire.UploadDone{Locks: uint32(len(held))}); r.Type() != wire.TypeOK {
		t.Fatalf("UPLOAD_DONE answered %#v", r)
	}
	return c
}

func (c *client) read(r *wire.Reader) {
	defer close(c.done)
	for {
		id, m, err := r.Read()
		if err != nil {
			return
		}
		if _, ok := m.(*wire.Reclaim); ok {
			c.reclaim <- frame{id, m}
			continue
		}
		if inv, ok := m.(*wire.Invalidate); ok {
			c.mu.Lock()
			auto := c.autoAck
			c.mu.Unlock()
			if auto {
				_ = c.w.Write(id, &wire.InvalidateAck{Generation: inv.Generation})
			} else {
				c.inval <- frame{id, m}
			}
			continue
		}
		if _, ok := m.(*wire.SharedState); ok {
			// Kept with the notices, and acknowledged.
			c.mu.Lock()
			c.notices = append(c.notices, m)
			c.mu.Unlock()
			_ = c.w.Write(id, &wire.OK{})
			continue
		}
		if m.Type().Kind() == wire.KindNotice {
			c.mu.Lock()
			c.notices = append(c.notices, m)
			c.mu.Unlock()
			continue
		}
		c.mu.Lock()
		ch := c.waiting[id]
		delete(c.waiting, id)
		c.order = append(c.order, id)
		c.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
}

// send sends a request and returns its id and the channel its reply comes on.
func (c *client) send(m wire.Message) (uint64, chan wire.Message) {
	c.t.Helper()
	ch := make(chan wire.Message, 1)
	c.mu.Lock()
	c.next++
	id := c.next
	c.waiting[id] = ch
	c.mu.Unlock()
	if err := c.w.Write(id, m); err != nil {
		c.t.Fatal(err)
	}
	return id, ch
}

func (c *client) call(m wire.Message) wire.Message {
	c.t.Helper()
	_, ch := c.send(m)
	return c.wait(ch)
}

func (c *client) wait(ch chan wire.Message) wire.Message {
	c.t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(waitLong):
		c.t.Fatal("no reply in time")
	}
	return nil
}

// pending asserts that no reply arrives on ch for a short while.
func (c *client) pending(ch chan wire.Message, what string) {
	c.t.Helper()
	select {
	case m := <-ch:
		c.t.Fatalf("%s: answered %#v, want it held back", what, m)
	case <-time.After(waitShort):
	}
}

func (c *client) notice(m wire.Message) {
	c.t.Helper()
	if err := c.w.Write(0, m); err != nil {
		c.t.Fatal(err)
	}
}

// closedByServer waits for the server to close the connection.
func (c *client) closedByServer() {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(waitLong):
		c.t.Fatal("server did not close the connection")
	}
}

// takeNotices returns the notices received so far and forgets them.
func (c *client) takeNotices() []wire.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.notices
	c.notices = nil
	return n
}

func rng(start uint64, n uint32) []wire.Range { return []wire.Range{{Start: start, Count: n}} }

func mustType[T wire.Message](t *testing.T, m wire.Message) T {
	t.Helper()
	v, ok := m.(T)
	if !ok {
		t.Fatalf("got %#v, want %T", m, v)
	}
	return v
}

func wantErr(t *testing.T, m wire.Message, code wire.ErrorCode) {
	t.Helper()
	e, ok := m.(*wire.Error)
	if !ok || e.Code != code {
		t.Fatalf("got %#v, want ERROR %v", m, code)
	}
	t.Logf("as expected: %v", e)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, waitLong, what, cond)
}
