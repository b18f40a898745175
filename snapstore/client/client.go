package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/clock"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/wire"
)

// Device is an origin or store device the client reads and writes
// directly: snapstore.Device, so a *snapstore.FileDevice or
// *snapstore.MemDevice fits. Implementations must be safe for concurrent
// use. A Device that also implements PunchHoler gets unmapped origin chunks
// punched instead of zero-filled.
type Device = snapstore.Device

// PunchHoler is implemented by devices that can deallocate a byte range so
// that it reads back as zeros (fallocate PUNCH_HOLE, BLKDISCARD with
// zeroing). An error makes the client fall back to writing zeros.
type PunchHoler interface {
	PunchHole(off, n int64) error
}

// Locator says where a volume's snapshot server is now. The client asks it
// before every connection attempt, so a Locator that follows the cluster's
// election (Consul) makes the client follow failovers.
type Locator interface {
	Server(ctx context.Context) (addr string, err error)
}

// StaticLocator is a Locator that always names the same address.
type StaticLocator string

// Server returns the address.
func (s StaticLocator) Server(context.Context) (string, error) { return string(s), nil }

// NodeLocator is a Locator that also names the node that serves the
// volume (the holder of the volume's server lock in Consul). A client with
// TLS needs one: it accepts only a server whose certificate names that
// node.
type NodeLocator interface {
	Locator
	ServerNode(ctx context.Context) (addr, node string, err error)
}

// StaticServer is a NodeLocator that always names the same server.
type StaticServer struct{ Addr, Node string }

// Server returns the address.
func (s StaticServer) Server(context.Context) (string, error) { return s.Addr, nil }

// ServerNode returns the address and the node.
func (s StaticServer) ServerNode(context.Context) (string, string, error) { return s.Addr, s.Node, nil }

// Errors. Every error the client returns wraps one of these or an error
// of a device; errors from the server also wrap the *wire.Error they came
// from (errors.As).
var (
	// ErrSnapshotGone: the snapshot was deleted or dropped to free store
	// space. Its LUN must report an error; its data is not available.
	ErrSnapshotGone = errors.New("snapshot gone")
	// ErrTimeout: no answer from the snapshot server within IOTimeout
	// (it is unreachable, or stuck).
	ErrTimeout = errors.New("snapshot server unreachable")
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("client closed")
	// ErrReadOnly: a write or unmap to a read-only snapshot.
	ErrReadOnly = errors.New("read-only snapshot")
	// ErrOutOfRange: the request reaches beyond the end of the volume.
	ErrOutOfRange = errors.New("beyond the end of the volume")
	// ErrExists: CreateSnapshot of a name already taken.
	ErrExists = errors.New("snapshot name already exists")
	// ErrProtocol: the server sent something the protocol does not allow
	// (a reply of the wrong type, extents that do not tile the request).
	ErrProtocol = errors.New("snapshot server protocol violation")
	// ErrRejected: the server refused the connection (HELLO_REJECT).
	ErrRejected = errors.New("connection rejected")
)

// Config configures a Client. Volume, Node, ID, Locator, Origin and Store
// are required.
type Config struct {
	Volume  string        // volume name
	Node    string        // this node's name (as known to Consul)
	ID      wire.ClientID // stable per node and volume, across restarts
	Locator Locator       // where the volume's server is
	Origin  Device        // the shared origin device
	Store   Device        // the shared snapshot-store device
	Log     *logrus.Entry // nil: logrus.StandardLogger()

	// IOTimeout bounds how long an IO waits for the server (default 25 s,
	// below the Linux SCSI command timeout of 30 s). While the server is
	// unreachable IO waits and the client reconnects; once it has been
	// unreachable for IOTimeout, waiting IO and admin calls fail with
	// ErrTimeout, and so does new IO that needs the server, until a
	// connection is made again.
	IOTimeout time.Duration

	// OnChange is the subscription to the snapshot list: it is called,
	// from a goroutine of its own and never concurrently, after the
	// client acknowledged an INVALIDATE (a snapshot was created, or one
	// was deleted: the server announces both) and after every
	// reconnection (snapshots may have come and gone meanwhile), with
	// the generation then current.
	// Not called for the connection New makes. Calls are coalesced: a
	// slow OnChange sees only the latest generation.
	OnChange func(generation uint64)

	// TLS, if set, makes every connection mutual TLS: it returns the
	// configuration of a connection to the server of node (named by the
	// Locator, which must be a NodeLocator), and that configuration must
	// accept only a certificate of that node (pki.Holder.ClientConfig).
	TLS func(node string) *tls.Config

	// Optional tuning; zero values pick the defaults.
	Dial         func(ctx context.Context, addr string) (net.Conn, error) // default: TCP
	DialTimeout  time.Duration                                            // per attempt, default 3 s
	PingInterval time.Duration                                            // liveness probe, default 2 s; dead after 3 silent intervals
	MinBackoff   time.Duration                                            // reconnect backoff start, default 50 ms
	MaxBackoff   time.Duration                                            // backoff cap, default 1 s
	CacheBytes   int                                                      // unique-chunk cache bound, default 8 MiB

	// LocationCacheBytes bounds the cache of read-only snapshots' store
	// locations (default 8 MiB, about a million chunks; negative: no
	// cache). Used only with servers of protocol version 4 or later.
	LocationCacheBytes int
	// LocationReadahead is how far beyond a snapshot read the client asks
	// for locations ahead of need, in bytes (default 16 MiB; capped at
	// wire.MaxChunks chunks and the volume end; negative: none).
	LocationReadahead int64

	// Now is the client's clock (default time.Now). Every time the
	// client reads (trust times, deadlines, outage lengths) comes from
	// it; timers and socket deadlines still run on the system clock.
	Now func() time.Time

	maxVersion uint16 // test knob: offer at most this protocol version
}

// callKind classifies a request for flow control and reconnect handling.
type callKind uint8

const (
	kindIO        callKind = iota // ORIGIN_WRITE, SNAPSHOT_WRITE: re-sent after a reconnect, old id
	kindSnapRead                  // SNAPSHOT_READ: re-sent with a new id (the id is the lock handle)
	kindAdmin                     // admin requests: re-sent, old id
	kindInternal                  // HELLO-time UPLOAD_DONE, PING: bound to one connection
	kindBlockLock                 // BLOCK_LOCK: re-sent with a new id (the id is the lock handle)
)

type result struct {
	msg wire.Message
	err error
}

// call is one request of the client's, from issue to answer.
type call struct {
	id       uint64
	seq      uint64 // issue order, for fair resend
	kind     callKind
	msg      wire.Message
	on       uint64 // the connection (callBook number) it is outstanding on; 0: none
	sent     bool   // sent at least once (so a resend is a resend)
	resent   bool
	sentAt   time.Time    // when it was last put on a connection
	done     chan result  // buffered; nil for internal calls
	cb       func(result) // internal calls: called without c.mu
	abandon  bool         // the caller gave up; drop the answer
	snapshot uint32       // SNAPSHOT_READ: for the lock record; both: for storeReading
	// answeredOn: the connection a SNAPSHOT_WRITE_OK came on (the client
	// writes the store only while it is the current one).
	answeredOn *conn
}

// Client is one node's client of one volume's snapshot server. It is safe
// for concurrent use.
type Client struct {
	cfg Config
	log *logrus.Entry
	// originLatch and storeLatch are cfg.Origin and cfg.Store: they
	// remember failed writes and flushes (latch.go).
	originLatch, storeLatch *latchDev
	ctx                     context.Context
	cancel                  context.CancelFunc
	wg                      sync.WaitGroup
	origin                  *Volume

	// Fixed by the first HELLO_OK; a server announcing other values is
	// refused.
	chunkSize  int64
	chunkShift uint
	volSize    int64

	mu       sync.Mutex
	writersC *sync.Cond // signalled when an origin write completes
	closed   bool
	term     uint64 // newest server term seen
	// appr: the generation, the unique-chunk cache and the origin writes
	// in flight (approvals.go), a pure ledger.
	appr    *approvals
	cn      *conn  // nil while disconnected
	conns   uint64 // connections made (cn.num of the newest)
	server  string
	lastErr error     // why the last connection attempt failed
	down    time.Time // when the last connection was lost (or the client started); zero while connected
	unreach bool      // disconnected for IOTimeout or longer: fail fast
	// calls: every request from issue to answer (calls.go); held: the
	// read and block locks held (held.go). Both are pure ledgers.
	calls       *callBook
	held        *heldLocks
	noBlocksLog sync.Once
	proto       uint16 // protocol version of the last HELLO_OK; 0 before the first
	shared      map[string]sharedEntry

	// The location cache of read-only snapshots (nil: none) and what keeps
	// it right (volume.go): locEpoch changes whenever locations may have
	// been dropped (RECLAIM, connection lost or made), and an answer is
	// cached only if the epoch has not changed since its request; storeReading
	// counts, per snapshot, reads that may be reading store locations (a
	// cache hit, or an answer received) and writes of writable snapshots
	// that may be writing them (SNAPSHOT_WRITE_OK received), which RECLAIM
	// waits for; readsC is signalled when one ends; raWin are read-aheads
	// in flight, by snapshot.
	loc          *locCache
	locEpoch     uint64
	storeReading map[uint32]int
	readsC       *sync.Cond
	raWin        map[uint32][]wire.Range

	changeMu  sync.Mutex
	changeGen uint64
	changeSig chan struct{}
}

// New connects to the volume's server and returns the Client. It waits
// for the first HELLO_OK (bounded by ctx and IOTimeout), because IO needs
// the chunk and volume size; after that the client reconnects on its own.
func New(ctx context.Context, cfg Config) (*Client, error) {
	switch {
	case cfg.Volume == "", cfg.Node == "":
		return nil, errors.New("client: volume and node names are required")
	case cfg.ID == wire.ClientID{}:
		return nil, errors.New("client: client id is zero")
	case cfg.Locator == nil:
		return nil, errors.New("client: no locator")
	case cfg.Origin == nil || cfg.Store == nil:
		return nil, errors.New("client: origin and store devices are required")
	}
	if cfg.IOTimeout <= 0 {
		cfg.IOTimeout = 25 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 3 * time.Second
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 2 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 50 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(time.Second, cfg.MinBackoff)
	}
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	originLatch := &latchDev{Device: cfg.Origin, name: "origin"}
	storeLatch := &latchDev{Device: cfg.Store, name: "snapshot store"}
	originLatch.clear()
	storeLatch.clear()
	cfg.Origin, cfg.Store = originLatch, storeLatch
	log := cfg.Log
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	log = log.WithFields(logrus.Fields{"component": "snapclient", "volume": cfg.Volume})
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Client{
		cfg:         cfg,
		log:         log,
		originLatch: originLatch,
		storeLatch:  storeLatch,
		appr:        newApprovals(cfg.CacheBytes),
		calls:       newCallBook(),
		held:        newHeldLocks(),
		shared:      make(map[string]sharedEntry),
		loc:         newLocCache(cfg.LocationCacheBytes),
		down:        cfg.Now(),

		storeReading: make(map[uint32]int),
		raWin:        make(map[uint32][]wire.Range),
		changeSig:    make(chan struct{}, 1),
	}
	c.writersC = sync.NewCond(&c.mu)
	c.readsC = sync.NewCond(&c.mu)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.origin = &Volume{c: c}

	ready := make(chan error, 1)
	c.wg.Add(2)
	go c.run(ready)
	go c.notifier()

	t := time.NewTimer(cfg.IOTimeout)
	defer t.Stop()
	var err error
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = fmt.Errorf("client: volume %s: connecting: %w", cfg.Volume, ctx.Err())
	case <-t.C:
		err = fmt.Errorf("client: volume %s: no server answered within %v: %w", cfg.Volume, cfg.IOTimeout, ErrTimeout)
	}
	if err != nil {
		c.mu.Lock()
		if c.lastErr != nil {
			err = fmt.Errorf("%w (last attempt: %v)", err, c.lastErr)
		}
		c.mu.Unlock()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close disconnects and fails every waiting call with ErrClosed. Read
// locks still held are released by the server with the connection.
func (c *Client) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	cn := c.cn
	for _, cl := range c.calls.takeAll() {
		c.complete(cl, result{err: fmt.Errorf("client: %w", ErrClosed)})
	}
	c.writersC.Broadcast()
	c.readsC.Broadcast()
	c.mu.Unlock()
	c.cancel()
	if cn != nil {
		cn.close()
	}
	c.wg.Wait()
}

// Origin returns the volume's origin.
func (c *Client) Origin() *Volume { return c.origin }

// Snapshot returns snapshot id of the volume; writable says whether the
// snapshot was created writable (it decides ReadOnly and whether writes
// are tried at all). The handle is cheap; IO to a deleted or dropped
// snapshot fails with ErrSnapshotGone.
func (c *Client) Snapshot(id uint32, writable bool) *Volume {
	return &Volume{c: c, snap: id, writable: writable}
}

// ChunkSize returns the volume's chunk size in bytes.
func (c *Client) ChunkSize() int64 { return c.chunkSize }

// Size returns the volume size in bytes.
func (c *Client) Size() int64 { return c.volSize }

// Generation returns the snapshot generation the client currently knows.
func (c *Client) Generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.appr.gen
}

// Term returns the newest server term the client has seen.
func (c *Client) Term() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.term
}

// Connected reports whether the client has a connection to a server, and
// its address.
func (c *Client) Connected() (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cn != nil, c.server
}

// ---------------------------------------------------------------------------
// Calls

// start issues a request: it registers it and sends it if the connection
// and flow control allow, else queues it for the next chance (a reply
// freeing a slot, or a reconnection).
func (c *Client) start(kind callKind, msg wire.Message) (*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.startLocked(kind, msg)
}

func (c *Client) startLocked(kind callKind, msg wire.Message) (*call, error) {
	if c.closed {
		return nil, ErrClosed
	}
	if c.unreach && kind != kindInternal {
		return nil, fmt.Errorf("no server for %v: %w", c.cfg.Now().Sub(c.down).Round(time.Millisecond), ErrTimeout)
	}
	cl := c.calls.issue(kind, msg)
	cl.done = make(chan result, 1)
	c.pumpLocked()
	return cl, nil
}

// wait waits for the answer to cl until ctx ends or the deadline passes
// (zero: no deadline).
func (c *Client) wait(ctx context.Context, cl *call, deadline time.Time) (wire.Message, error) {
	var tc <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(deadline.Sub(c.cfg.Now()))
		defer t.Stop()
		tc = t.C
	}
	var err error
	select {
	case r := <-cl.done:
		return r.msg, r.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-c.ctx.Done():
		err = ErrClosed
	case <-tc:
		err = fmt.Errorf("no answer to %v within %v: %w", cl.msg.Type(), c.cfg.IOTimeout, ErrTimeout)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case r := <-cl.done: // answered meanwhile: use it
		return r.msg, r.err
	default:
	}
	c.calls.abandon(cl)
	return nil, err
}

// do issues msg and waits for its answer.
func (c *Client) do(ctx context.Context, kind callKind, msg wire.Message, deadline time.Time) (wire.Message, error) {
	cl, err := c.start(kind, msg)
	if err != nil {
		return nil, err
	}
	return c.wait(ctx, cl, deadline)
}

// finishLocked completes cl with r and unregisters it.
func (c *Client) finishLocked(cl *call, r result) {
	c.calls.finish(cl)
	c.complete(cl, r)
}

// complete hands r to the caller of cl (already unregistered): its
// channel, or its callback, run in a goroutine of its own.
func (c *Client) complete(cl *call, r result) {
	if cl.done != nil {
		select {
		case cl.done <- r:
		default:
		}
	}
	if cl.cb != nil {
		cb := cl.cb
		cl.cb = nil
		go cb(r)
	}
}

// pumpLocked sends the waiting calls that flow control admits, in order.
// Sending only queues the frame on the connection (its writer goroutine
// does the network I/O); it is done under c.mu so that the order on the
// wire is the order the client decided things in.
func (c *Client) pumpLocked() {
	for _, cl := range c.calls.pump(c.held.readCount(), c.cfg.Now()) {
		c.sendLocked(cl)
	}
}

// sendLocked puts cl, which the call book has just marked outstanding, on
// the current connection.
func (c *Client) sendLocked(cl *call) {
	if cl.kind == kindBlockLock && c.proto < wire.VersionBlockLock {
		c.finishLocked(cl, result{err: errNoBlockLocks})
		return
	}
	if err := c.cn.send(cl.id, cl.msg); err != nil {
		// Only an invalid message fails here (the connection's own
		// failures surface in its writer): a bug of ours.
		c.finishLocked(cl, result{err: fmt.Errorf("%v: %w", cl.msg.Type(), err)})
	}
}

// deliver hands an answer from cn to the call it answers.
func (c *Client) deliver(cn *conn, id uint64, m wire.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.calls.outstanding(id, cn.num)
	if cl == nil {
		// A call abandoned and then lost with an old connection, or a
		// server bug. A read lock granted to nobody is released at once.
		if ok, is := m.(*wire.SnapshotReadOK); is && ok.HoldsLock() {
			_ = cn.send(0, &wire.FinishSnapshotRead{Handle: id})
		}
		if _, is := m.(*wire.BlockLockOK); is {
			_ = cn.send(0, &wire.BlockUnlock{Handle: id})
		}
		c.log.WithFields(logrus.Fields{"id": id, "type": m.Type()}).Debug("answer to no outstanding request")
		return
	}
	if e, ok := m.(*wire.Error); ok && e.Code == wire.CodeLimit && cl.kind != kindInternal && !cl.abandon {
		// Busy (a server may free a slot only after its reply is on the
		// way): ask again shortly, within the caller's deadline.
		c.calls.park(cl)
		c.log.WithFields(logrus.Fields{"id": id, "type": cl.msg.Type(), "reason": e.Message}).Debug("server busy; retrying")
		time.AfterFunc(busyRetry, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if !c.closed && c.calls.requeue(cl) {
				c.pumpLocked()
			}
		})
		c.pumpLocked()
		return
	}
	if e, ok := m.(*wire.Error); ok && (e.Code == wire.CodeNotServer || e.Code == wire.CodeShuttingDown) {
		// The server lost its role: leave the call pending, drop the
		// connection; the call is re-sent to whoever serves next.
		c.log.WithFields(logrus.Fields{"server": c.server, "reason": e.Error()}).Warn("server gave up its role; reconnecting")
		cn.close()
		return
	}
	c.calls.land(cl)
	r := result{msg: m}
	if !isReplyTo(cl.msg.Type(), m.Type()) {
		r = result{err: fmt.Errorf("%v answered with %v: %w", cl.msg.Type(), m.Type(), ErrProtocol)}
	} else if ok, is := m.(*wire.BlockLockOK); is {
		c.held.grantBlock(id, cl.sentAt.Add(ok.Waited+wire.LockTrust))
		if cl.abandon {
			c.unlockBlockLocked(id)
		}
	} else if ok, is := m.(*wire.SnapshotReadOK); is {
		if ok.HoldsLock() {
			// Record the lock before anyone can see the answer, so that a
			// reconnection from now on re-declares it.
			c.held.grantRead(wire.HeldLock{Handle: id, Snapshot: cl.snapshot, Ranges: lockRanges(ok.Extents)},
				cl.sentAt.Add(wire.LockTrust))
			if cl.abandon {
				c.releaseLockLocked(id)
			}
		}
		if !cl.abandon {
			// The reader may read these store locations from now on: a
			// RECLAIM behind this answer waits for it (storeReadDone).
			c.storeReading[cl.snapshot]++
		}
	} else if _, is := m.(*wire.SnapshotWriteOK); is && !cl.abandon {
		// The writer writes these store locations from now on: a RECLAIM
		// behind this answer waits for it (storeReadDone), as for a read.
		c.storeReading[cl.snapshot]++
		cl.answeredOn = cn
	}
	c.finishLocked(cl, r)
	c.pumpLocked()
}

// busyRetry is how long a request refused with ERROR limit waits before
// it is sent again.
const busyRetry = 5 * time.Millisecond

func isReplyTo(req, rep wire.MsgType) bool {
	for _, t := range req.Replies() {
		if t == rep {
			return true
		}
	}
	return false
}

// lockRanges returns the origin chunks of xs as ranges, merged if need be
// to fit an UPLOAD_LOCKS entry: declaring a superset of the chunks read is
// safe, it only holds back writes to them a little longer.
func lockRanges(xs []wire.Extent) []wire.Range {
	var rs []wire.Range
	for _, x := range xs {
		if !x.Origin {
			continue
		}
		if n := len(rs); n > 0 && rs[n-1].Start+uint64(rs[n-1].Count) == x.Start && uint64(rs[n-1].Count)+uint64(x.Count) <= wire.MaxChunks {
			rs[n-1].Count += x.Count
			continue
		}
		rs = append(rs, wire.Range{Start: x.Start, Count: x.Count})
	}
	if len(rs) <= wire.MaxRanges {
		return rs
	}
	per := (len(rs) + wire.MaxRanges - 1) / wire.MaxRanges
	var out []wire.Range
	for i := 0; i < len(rs); i += per {
		j := min(i+per, len(rs)) - 1
		out = append(out, wire.Range{Start: rs[i].Start, Count: uint32(rs[j].Start + uint64(rs[j].Count) - rs[i].Start)})
	}
	return out
}

// releaseLockLocked releases the read lock with handle h: forgets it and
// tells the current connection (if any; with none, the next upload leaves
// it out, which releases it too). It returns why what was read under the
// lock cannot be trusted, if it cannot (heldLocks.releaseRead).
func (c *Client) releaseLockLocked(h uint64) error {
	held, err := c.held.releaseRead(h, c.cfg.Now())
	if !held {
		return nil
	}
	if c.cn != nil {
		if err := c.cn.send(0, &wire.FinishSnapshotRead{Handle: h}); err != nil {
			c.log.WithError(err).WithField("handle", h).Error("sending FINISH_SNAPSHOT_READ")
		}
	}
	c.pumpLocked()
	return err
}

func (c *Client) releaseLock(h uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.releaseLockLocked(h)
}

// ---------------------------------------------------------------------------
// Connection life

// run connects, serves the connection until it dies, and reconnects with
// backoff, for the life of the client.
func (c *Client) run(ready chan<- error) {
	defer c.wg.Done()
	backoff := c.cfg.MinBackoff
	first := true
	attempts := 0
	for c.ctx.Err() == nil {
		cn, hello, err := c.connect()
		if err == nil {
			err = c.install(cn, hello, first)
			if err != nil {
				cn.close()
				<-cn.dead
			}
		}
		if err != nil {
			c.mu.Lock()
			c.lastErr = err
			c.mu.Unlock()
			attempts++
			l := c.log.WithError(err).WithFields(logrus.Fields{"attempt": attempts, "backoff": backoff})
			if attempts == 1 || attempts%20 == 0 {
				l.Warn("cannot reach the snapshot server; retrying")
			} else {
				l.Debug("cannot reach the snapshot server; retrying")
			}
			c.checkOutage()
			if !clock.Sleep(c.ctx, backoff) {
				return
			}
			backoff = min(2*backoff, c.cfg.MaxBackoff)
			continue
		}
		if first {
			ready <- nil
			first = false
		} else {
			c.notifyChange()
		}
		attempts = 0
		backoff = c.cfg.MinBackoff
		select {
		case <-cn.dead:
		case <-c.ctx.Done():
			cn.close()
			<-cn.dead
		}
		c.uninstall(cn)
	}
}

// checkOutage fails everything waiting once the client has been without
// a server for IOTimeout, and makes new calls fail fast until it has one.
func (c *Client) checkOutage() {
	c.mu.Lock()
	now := c.cfg.Now()
	if c.cn != nil || c.down.IsZero() || c.unreach || now.Sub(c.down) < c.cfg.IOTimeout {
		c.mu.Unlock()
		return
	}
	c.unreach = true
	downFor := now.Sub(c.down).Round(time.Millisecond)
	err := fmt.Errorf("no server for %v: %w", downFor, ErrTimeout)
	for _, cl := range c.calls.takeWaiting() {
		c.complete(cl, result{err: err})
	}
	c.mu.Unlock()
	c.log.WithField("down_for", downFor).Error("snapshot server unreachable; failing IO until it is back")
}

// connect finds the server, dials it and does the HELLO exchange.
func (c *Client) connect() (*conn, *wire.HelloOK, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout)
	defer cancel()
	addr, node, err := c.locate(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("locating the server: %w", err)
	}
	nc, err := c.cfg.Dial(ctx, addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if c.cfg.TLS != nil {
		tc := tls.Client(nc, c.cfg.TLS(node))
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("server %s (node %s): TLS: %w", addr, node, err)
		}
		nc = tc
	}
	c.mu.Lock()
	id := c.calls.newID()
	maxV := wire.MaxVersion
	if c.cfg.maxVersion != 0 {
		maxV = c.cfg.maxVersion
	}
	hello := &wire.Hello{MinVersion: wire.MinVersion, MaxVersion: maxV,
		Client: c.cfg.ID, Term: c.term, Node: c.cfg.Node, Volume: c.cfg.Volume}
	c.mu.Unlock()
	cn := newConn(c, nc, addr)
	ok, err := cn.handshake(id, hello, c.cfg.DialTimeout)
	if err != nil {
		nc.Close()
		var rej *rejectError
		if errors.As(err, &rej) {
			c.mu.Lock()
			if rej.r.Reason != wire.RejectStaleTerm && rej.r.Term > c.term {
				c.term = rej.r.Term
			}
			c.mu.Unlock()
		}
		return nil, nil, fmt.Errorf("server %s: %w", addr, err)
	}
	return cn, ok, nil
}

// locate asks the Locator where the server is, and with TLS, which node
// it is.
func (c *Client) locate(ctx context.Context) (addr, node string, err error) {
	if c.cfg.TLS == nil {
		addr, err = c.cfg.Locator.Server(ctx)
		return addr, "", err
	}
	nl, ok := c.cfg.Locator.(NodeLocator)
	if !ok {
		return "", "", fmt.Errorf("TLS needs a locator that names the server's node, %T does not", c.cfg.Locator)
	}
	return nl.ServerNode(ctx)
}

// install makes cn the client's connection: it adopts the server's term
// and generation, re-declares the read locks still held, and (re-)sends
// every unanswered request, all before any other frame can go out on cn.
func (c *Client) install(cn *conn, h *wire.HelloOK, first bool) error {
	var originSize int64
	if first {
		// Device I/O, before taking c.mu.
		sz, err := c.cfg.Origin.Size()
		if err != nil {
			return fmt.Errorf("origin device size: %w", err)
		}
		originSize = sz
	}
	c.mu.Lock()
	info, err := c.installLocked(cn, h, first, originSize)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	cn.start()
	c.log.WithFields(logrus.Fields{"server": cn.addr, "server_node": h.Node, "term": h.Term,
		"generation": h.Generation, "chunk_size": h.ChunkSize, "locks_uploaded": info.locks,
		"resent": info.resend, "waiting": info.waiting}).Info("connected to the snapshot server")
	return nil
}

type installInfo struct{ locks, resend, waiting int }

func (c *Client) installLocked(cn *conn, h *wire.HelloOK, first bool, originSize int64) (installInfo, error) {
	if c.closed {
		return installInfo{}, ErrClosed
	}
	cs := int64(h.ChunkSize)
	if first {
		if originSize < int64(h.VolumeSize) {
			return installInfo{}, fmt.Errorf("origin device holds %d bytes, the volume is %d", originSize, h.VolumeSize)
		}
		c.chunkSize, c.volSize = cs, int64(h.VolumeSize)
		for c.chunkShift = 0; int64(1)<<c.chunkShift < cs; c.chunkShift++ {
		}
	} else if cs != c.chunkSize || int64(h.VolumeSize) != c.volSize {
		return installInfo{}, fmt.Errorf("server %s announces chunk size %d and volume size %d, the volume has %d and %d",
			cn.addr, cs, h.VolumeSize, c.chunkSize, c.volSize)
	}
	if h.Term > c.term {
		c.term = h.Term
	}
	// Writes approved before (still in flight) keep counting under their
	// older generation, so the next INVALIDATE waits for them.
	c.appr.setGeneration(h.Generation)
	// Locations are trusted on the connection that taught them only: a
	// new server (or term) may have reclaimed space meanwhile.
	c.dropLocationsLocked()
	c.proto = h.Version

	// Re-declare the locks still held, then the shared state this client
	// knows (a new server rebuilds its copy from these).
	frames, nlocks := c.held.upload()
	for _, f := range frames {
		if err := cn.send(0, &wire.UploadLocks{Locks: f}); err != nil {
			return installInfo{}, err
		}
	}
	if h.Version >= wire.VersionShared {
		for k, e := range c.shared {
			if err := cn.send(0, &wire.UploadShared{SharedValue: wire.SharedValue{Key: k, Version: e.version, Value: e.value}}); err != nil {
				return installInfo{}, err
			}
		}
	}
	c.conns++
	cn.num = c.conns
	c.cn, c.server = cn, cn.addr
	c.down, c.unreach = time.Time{}, false
	resend := c.calls.connect(cn.num, h.MaxInFlight, h.MaxLocks)
	done := c.calls.issueNow(&wire.UploadDone{Locks: uint32(nlocks)}, c.cfg.Now())
	done.cb = func(r result) {
		if r.err == nil {
			if e, ok := r.msg.(*wire.Error); ok {
				r.err = e
			}
		}
		if r.err != nil && !errors.Is(r.err, errConnLost) && !errors.Is(r.err, ErrClosed) {
			c.log.WithError(r.err).WithField("server", cn.addr).Error("server refused the lock upload; reconnecting")
			cn.close()
		}
	}
	c.sendLocked(done)
	// Re-send everything unanswered (the call book gave snapshot reads
	// and block locks new ids).
	c.pumpLocked()
	return installInfo{locks: nlocks, resend: resend, waiting: len(c.calls.waiting)}, nil
}

// errConnLost completes internal calls of a connection that died.
var errConnLost = errors.New("connection lost")

// uninstall forgets a dead connection: its unanswered calls go back to
// the waiting queue, to be re-sent on the next connection.
func (c *Client) uninstall(cn *conn) {
	c.mu.Lock()
	if c.cn != cn {
		c.mu.Unlock()
		return
	}
	c.cn = nil
	c.down = c.cfg.Now()
	c.writersC.Broadcast() // barriers of cn stop waiting
	c.readsC.Broadcast()   // RECLAIMs of cn stop waiting
	c.dropLocationsLocked()
	c.held.connLost()
	for _, cl := range c.calls.disconnect(cn.num) {
		c.complete(cl, result{err: errConnLost})
	}
	closed, unanswered, locks := c.closed, len(c.calls.waiting), c.held.readCount()
	c.mu.Unlock()
	if !closed {
		c.log.WithFields(logrus.Fields{"server": cn.addr, "unanswered": unanswered, "locks_held": locks}).
			Warn("lost the connection to the snapshot server; reconnecting")
	}
}

// ---------------------------------------------------------------------------
// The generation barrier

// invalidate handles INVALIDATE{gen} from cn (request id id): from now on
// approvals under older generations are stale and the cache is empty;
// once every origin write approved under an older generation is written,
// it answers INVALIDATE_ACK.
func (c *Client) invalidate(cn *conn, id, gen uint64) {
	c.mu.Lock()
	c.appr.invalidate(gen)
	c.mu.Unlock()
	c.answerWhenDrained(cn, id, &wire.InvalidateAck{Generation: gen}, c.writersC,
		func() bool { return c.appr.oldWriters(gen) > 0 },
		func(waited time.Duration) {
			c.log.WithFields(logrus.Fields{"generation": gen, "waited": waited}).Debug("invalidate acknowledged")
			c.notifyChange()
		})
}

// answerWhenDrained answers the server's request id on cn with reply, in
// the background, once busy (called with c.mu held, re-checked whenever
// cond is signalled) reports nothing left to wait for, or the client is
// closed or cn is dead; then done gets the time waited.
func (c *Client) answerWhenDrained(cn *conn, id uint64, reply wire.Message, cond *sync.Cond, busy func() bool, done func(waited time.Duration)) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		start := c.cfg.Now()
		c.mu.Lock()
		for busy() && !c.closed && !cn.isDead() {
			cond.Wait()
		}
		c.mu.Unlock()
		if err := cn.send(id, reply); err != nil {
			c.log.WithError(err).WithField("reply", reply.Type()).Error("answering the server")
		}
		done(c.cfg.Now().Sub(start).Round(time.Microsecond))
	}()
}

// originUnique handles ORIGIN_UNIQUE{gen}: while gen is current, every
// origin write is approved without asking (see package wire, "A volume
// without snapshots"). The reader calls it before it delivers the
// ORIGIN_WRITE_OK that follows.
func (c *Client) originUnique(gen uint64) {
	c.mu.Lock()
	isNew := c.appr.originUnique(gen)
	c.mu.Unlock()
	if isNew {
		c.log.WithField("generation", gen).Debug("no snapshot: origin writes approved locally")
	}
}

func (c *Client) notifyChange() {
	if c.cfg.OnChange == nil {
		return
	}
	c.changeMu.Lock()
	c.changeGen = c.Generation()
	c.changeMu.Unlock()
	select {
	case c.changeSig <- struct{}{}:
	default:
	}
}

func (c *Client) notifier() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.changeSig:
		}
		c.changeMu.Lock()
		g := c.changeGen
		c.changeMu.Unlock()
		c.cfg.OnChange(g)
	}
}
