package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/accept"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/locks"
	"github.com/csnap/csnap/snapstore/wire"
)

// Defaults of the Config durations and limits.
const (
	DefaultBarrierTimeout   = 10 * time.Second
	DefaultAwaitTimeout     = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultWriteTimeout     = 30 * time.Second
	DefaultMaxInFlight      = 256
	DefaultDetachGrace      = 10 * time.Second
	defaultMaxLocks         = 4096 // locks.Limits' default MaxLocks
	registryTimeout         = 10 * time.Second
	maxBadFrames            = 16
)

// ErrServerClosed is returned by Serve after Close, and by operations on a
// closed server.
var ErrServerClosed = errors.New("snapshot server closed")

// ErrStaleTerm is wrapped by New when the store records a newer term than
// the one the server was started with.
var ErrStaleTerm = errors.New("store has a newer server term")

// Config configures a Server. Engine, Volume, Term and Node are required.
type Config struct {
	Engine *snapstore.Engine
	Volume string // the volume's name (HELLOs for another volume are rejected)
	Term   uint64 // this server's term (epoch), >= 1; recorded in the store
	Node   string // this server's node name
	// Registry is the replicated client registry. Default: a fresh
	// NewMemRegistry (fine for -dev: nothing to fail over from).
	Registry Registry
	// Membership says which nodes may connect. Default: AllowAll.
	Membership Membership
	// PeerNode, if set, says which node a connection's peer proved to be
	// (TLSPeerNode: its verified TLS client certificate). A HELLO is then
	// accepted only if it claims that node and that node's client id
	// (wire.ClientIDFor). Nil: the HELLO's node is taken on its word
	// (tests, and csnapd -insecure-no-tls).
	PeerNode func(net.Conn) (string, error)
	// Log is the base logger; default logrus.StandardLogger(). The server
	// adds fields volume, term (and client, node, remote per connection).
	Log    *logrus.Entry
	Limits locks.Limits // per-client lock table limits
	// BarrierTimeout bounds how long CreateSnapshot waits for a client's
	// INVALIDATE_ACK before disconnecting it. Default 10s.
	BarrierTimeout time.Duration
	// AwaitTimeout bounds how long origin writes wait, after start, for the
	// lock-holding clients of the registry to reconnect. Default 30s.
	AwaitTimeout time.Duration
	// HandshakeTimeout bounds HELLO and the lock upload. Default 10s.
	HandshakeTimeout time.Duration
	// WriteTimeout bounds writing one frame to a client; a client that
	// does not read is disconnected. Default 30s.
	WriteTimeout time.Duration
	// DetachGrace is how long the read locks of a client whose connection
	// was lost are kept for it to reconnect and re-declare them (it may
	// still be reading under them). Writes to those chunks wait meanwhile.
	// Default 10s; negative: release them at once.
	DetachGrace time.Duration
	// MaxInFlight is the number of requests one connection may have
	// outstanding (HELLO_OK tells the client). Default 256.
	MaxInFlight int
	// OnDeposed, if set, is called (once, from a connection goroutine)
	// when a client says it knows a newer term than ours and LockCheck
	// confirms that the lock is no longer ours: this server has been
	// replaced and the cluster layer should fence and stop it.
	OnDeposed func(newerTerm uint64)
	// ValidateShared, if set, checks a shared-state value (shared.go)
	// before the server commits it (SHARED_UPDATE) or adopts it (a
	// client's UPLOAD_SHARED); csnapd checks that it decodes as the SCSI
	// state of a logical unit. An empty value, the state of an entry never
	// written, is always valid and is not passed to it. Default: every
	// value is valid.
	ValidateShared func(key string, value []byte) error
	// LockBound is how long the server honours a client's read lock or
	// block lock (lockbound.go); at least wire.LockLease. Default
	// DefaultLockBound.
	LockBound time.Duration
	// LockCheck confirms a claimed newer term with the lock service (see
	// lockcheck.go). Default StillOurs (a claim never deposes).
	LockCheck LockCheck
	// Now returns the current time (default time.Now). Every time the
	// server reads (lock leases, grant and away times, durations) comes
	// from it; timers and socket deadlines run on the system clock.
	Now func() time.Time
	// PersistShared, if set, says what of a shared-state entry outlives a
	// restart of every node: given an entry's key and value, the value to
	// keep in the store (nil: nothing). It must be a pure function. See
	// the package doc, "Persisted shared state".
	PersistShared func(key string, value []byte) []byte
}

// Server is the snapshot server of one volume.
type Server struct {
	cfg   Config
	eng   *snapstore.Engine
	reg   Registry
	mem   Membership
	log   *logrus.Entry
	since time.Time

	// lockCheck shares the checks of claimed terms; deposedOnce calls
	// OnDeposed once.
	lockCheck   *lockChecker
	deposedOnce sync.Once
	tlsLog      logLimiter // failed TLS handshakes (auth.go)

	// create serializes snapshot creations (one barrier at a time).
	create chan struct{}

	// regMu serializes registry writes, so a disconnect's Delete never
	// overtakes the Put of the client's next connection.
	regMu sync.Mutex

	mu       sync.Mutex
	tab      *locks.Table
	sessions map[wire.ClientID]*session  // accepted HELLOs, by client
	conns    map[*session]struct{}       // every open connection
	awaited  map[wire.ClientID]Entry     // registry clients not back yet
	detached map[wire.ClientID]*detached // lost connections whose locks are kept
	// granted is when each client was last granted a read lock, and
	// started when this server started: no lock is released against its
	// client's will before it is wire.LockLease old (lockLeaseLeftLocked).
	granted map[wire.ClientID]time.Time
	started time.Time
	// Block locks (blocks.go): the table, when each granted one was
	// granted, and the requests waiting, woken by closing their channel.
	blocks *locks.Blocks
	// lockAt is when each read lock was granted (or uploaded), revoked
	// the read locks revoked past LockBound (lockbound.go).
	lockAt    map[locks.Key]time.Time
	revoked   map[locks.Key]time.Time
	blockAt   map[locks.Key]time.Time
	blockWait map[locks.Key]chan struct{}
	unsettled map[wire.ClientID]unsettled // clients that may still write under an old approval
	// persisted: what of the shared state the store keeps (persist.go).
	persisted map[string][]byte

	// shared is the shared state (shared.go); uploadAwait the registry
	// clients whose upload a newly elected server waits for before it
	// commits a shared-state update.
	shared map[string]*sharedEntry
	// refusedShared: the newest version of each entry whose upload was
	// refused as invalid (ResetShared goes above it).
	refusedShared map[string]uint64
	uploadAwait   map[wire.ClientID]string
	parked        map[locks.Key]chan struct{}
	barrier       *barrier
	preparing     int // origin-write copy-outs in progress
	// Reclamation (reclaim.go): the pass in progress, clients that lost
	// their connection while they may have been reading the store, and
	// SNAPSHOT_READs in progress by era (a pass waits for the older ones).
	reclaim    *reclaimPass
	reclaimSem chan struct{}
	away       map[wire.ClientID]awayReader
	readEra    uint64
	readsByEra map[uint64]int
	readDrain  int           // passes waiting for readsByEra
	changed    chan struct{} // closed and replaced on every state change
	listeners  map[net.Listener]struct{}
	closed     bool
	timer      *time.Timer
	closeCh    chan struct{}

	wg sync.WaitGroup
}

// barrier is a snapshot creation in progress.
type barrier struct {
	gen     uint64 // 0 while draining copy-outs, then the new generation
	pending map[*session]struct{}
	// clients are the clients that were unsettled when the snapshot was
	// recorded: the barrier also waits until none of them is unsettled
	// any more, connected or not.
	clients []wire.ClientID
}

// unsettled records a client that was approved an origin write (or, with
// it, a cache entry) under generation gen and has not yet acknowledged an
// INVALIDATE of a newer generation: it may still write the origin under
// that approval, whether or not it is connected now. A client settles when
// it acknowledges a newer INVALIDATE (on any connection), when its node
// leaves, or when a barrier gives up on it.
type unsettled struct {
	node string
	gen  uint64
}

// withDefaults checks cfg's required fields and fills in the defaults.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Engine == nil {
		return cfg, errors.New("snapshot server: no engine")
	}
	if !wire.ValidName(cfg.Volume) {
		return cfg, fmt.Errorf("snapshot server: invalid volume name %q", cfg.Volume)
	}
	if !wire.ValidNodeName(cfg.Node) {
		return cfg, fmt.Errorf("snapshot server: invalid node name %q", cfg.Node)
	}
	if cfg.Term == 0 {
		return cfg, errors.New("snapshot server: term must be at least 1")
	}
	if cfg.Registry == nil {
		cfg.Registry = NewMemRegistry()
	}
	if cfg.Membership == nil {
		cfg.Membership = AllowAll{}
	}
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	if cfg.BarrierTimeout <= 0 {
		cfg.BarrierTimeout = DefaultBarrierTimeout
	}
	if cfg.AwaitTimeout <= 0 {
		cfg.AwaitTimeout = DefaultAwaitTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.DetachGrace == 0 {
		cfg.DetachGrace = DefaultDetachGrace
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LockCheck == nil {
		cfg.LockCheck = StillOurs{}
	}
	if cfg.LockBound <= 0 {
		cfg.LockBound = DefaultLockBound
	}
	cfg.LockBound = max(cfg.LockBound, wire.LockLease)
	if cfg.Limits.MaxChunks <= 0 {
		cfg.Limits.MaxChunks = DefaultMaxLockedChunks
	}
	if cfg.Limits.MaxRanges <= 0 || cfg.Limits.MaxRanges > wire.MaxRanges {
		cfg.Limits.MaxRanges = wire.MaxRanges
	}
	return cfg, nil
}

// New builds the server of one volume. It records cfg.Term in the store
// (if newer than the recorded one) and refuses to start if the store
// records a newer term: a newer server has existed. It lists the registry:
// clients that held locks under the previous server are awaited (origin
// writes wait until each has reconnected and re-declared its locks, its
// node has left, or AwaitTimeout passes).
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	eng := cfg.Engine
	log := cfg.Log.WithFields(logrus.Fields{"volume": cfg.Volume, "term": cfg.Term})

	switch old := eng.Epoch(); {
	case old > cfg.Term:
		return nil, fmt.Errorf("snapshot server for volume %q: our term %d is older than term %d recorded in the store: %w",
			cfg.Volume, cfg.Term, old, ErrStaleTerm)
	case old < cfg.Term:
		ctx, cancel := context.WithTimeout(context.Background(), registryTimeout)
		err := eng.SetEpoch(ctx, cfg.Term)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("snapshot server for volume %q: record term %d: %w", cfg.Volume, cfg.Term, err)
		}
	}

	s := &Server{
		cfg: cfg, eng: eng, reg: cfg.Registry, mem: cfg.Membership, log: log, since: cfg.Now(),
		lockCheck: &lockChecker{lc: cfg.LockCheck, now: cfg.Now},
		create:    make(chan struct{}, 1),
		tab:       locks.New(cfg.Limits),
		sessions:  map[wire.ClientID]*session{},
		conns:     map[*session]struct{}{},
		awaited:   map[wire.ClientID]Entry{},
		detached:  map[wire.ClientID]*detached{},
		granted:   map[wire.ClientID]time.Time{},
		started:   cfg.Now(),
		blocks:    locks.NewBlocks(0),
		lockAt:    map[locks.Key]time.Time{},
		revoked:   map[locks.Key]time.Time{},
		blockAt:   map[locks.Key]time.Time{},
		blockWait: map[locks.Key]chan struct{}{},
		unsettled: map[wire.ClientID]unsettled{},
		shared:    map[string]*sharedEntry{},

		refusedShared: map[string]uint64{},

		uploadAwait: map[wire.ClientID]string{},
		parked:      map[locks.Key]chan struct{}{},
		changed:     make(chan struct{}),
		listeners:   map[net.Listener]struct{}{},
		closeCh:     make(chan struct{}),
		reclaimSem:  make(chan struct{}, 1),
		away:        map[wire.ClientID]awayReader{},
		readsByEra:  map[uint64]int{},
	}

	if cfg.PersistShared != nil {
		s.loadPersisted()
	}
	if err := s.awaitRegistered(); err != nil {
		return nil, err
	}
	eng.SetBeforeReclaim(s.beforeReclaim)
	s.wg.Add(1)
	go s.sweepLocks()
	log.WithFields(logrus.Fields{"node": cfg.Node, "generation": eng.Generation()}).Info("snapshot server ready")
	return s, nil
}

// awaitRegistered reads the client registry a previous server of the
// volume left: the clients the next snapshot waits for (their approved
// writes may be in flight), the shared-state replicas to await, and the
// lock holders whose reconnection origin writes wait for (AwaitTimeout).
func (s *Server) awaitRegistered() error {
	ctx, cancel := context.WithTimeout(context.Background(), registryTimeout)
	defer cancel()
	entries, err := s.reg.List(ctx)
	if err != nil {
		return fmt.Errorf("snapshot server for volume %q: list client registry: %w", s.cfg.Volume, err)
	}
	gen := s.eng.Generation()
	for _, e := range entries {
		if !s.mem.IsMember(e.Node) {
			s.log.WithFields(logrus.Fields{"client": e.ID.String(), "node": e.Node}).
				Warn("registry client's node is not a cluster member: not awaiting it")
			_ = s.reg.Delete(ctx, e.ID)
			continue
		}
		// The old server may have approved it origin writes still in
		// flight: the next snapshot waits for it (barrier).
		s.unsettled[e.ID] = unsettled{node: e.Node, gen: gen}
		// It holds a replica of the shared state, maybe newer than any
		// other client's.
		s.uploadAwait[e.ID] = e.Node
		if e.HoldsLocks {
			s.awaited[e.ID] = e
		}
	}
	if len(s.awaited) > 0 {
		s.log.WithFields(logrus.Fields{"awaited": s.awaitedListLocked(), "timeout": s.cfg.AwaitTimeout.String()}).
			Warn("origin writes wait until these lock-holding clients reconnect (or their nodes leave)")
	}
	if len(s.awaited) > 0 || len(s.uploadAwait) > 0 {
		d := s.cfg.AwaitTimeout
		if len(s.awaited) > 0 {
			d = max(d, wire.LockLease) // the awaited clients' lock leases
		}
		s.wg.Add(1) // done when the timer has run or was stopped
		s.timer = time.AfterFunc(d, s.awaitExpired)
	}
	return nil
}

func (s *Server) awaitedListLocked() []string {
	var out []string
	for _, e := range s.awaited {
		out = append(out, e.ID.String()+"@"+e.Node)
	}
	slices.Sort(out)
	return out
}

// awaitExpired gives up on the clients still awaited.
func (s *Server) awaitExpired() {
	defer s.wg.Done()
	s.mu.Lock()
	var gone []Entry
	for id, e := range s.awaited {
		gone = append(gone, e)
		delete(s.awaited, id)
		delete(s.unsettled, id) // struck off: the barrier does not wait for it either
		s.wakeLocked(s.tab.DropClient(locks.ClientID(id)))
	}
	if len(s.uploadAwait) > 0 {
		s.log.WithField("clients", len(s.uploadAwait)).
			Warn("registry clients did not upload their shared state in time; committing shared-state updates without them")
		clear(s.uploadAwait)
	}
	if len(gone) > 0 {
		s.log.WithFields(logrus.Fields{"clients": len(gone), "timeout": s.cfg.AwaitTimeout.String()}).
			Warn("awaited clients did not reconnect in time; approving origin writes without them")
	}
	s.notifyLocked()
	s.mu.Unlock()
	for _, e := range gone {
		s.log.WithFields(logrus.Fields{"client": e.ID.String(), "node": e.Node}).Warn("awaited client struck off")
		s.regDelete(e.ID)
	}
}

// notifyLocked wakes every goroutine waiting for a state change.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitLocked waits, with s.mu held (released while waiting), until cond
// holds, ctx ends or the server closes.
func (s *Server) waitLocked(ctx context.Context, cond func() bool) error {
	for !cond() {
		if s.closed {
			return ErrServerClosed
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			s.mu.Lock()
			return ctx.Err()
		case <-s.closeCh:
		}
		s.mu.Lock()
	}
	return nil
}

// wakeLocked answers the parked writes the lock table reports ready.
func (s *Server) wakeLocked(ready []locks.Key) {
	for _, k := range ready {
		if ch, ok := s.parked[k]; ok {
			close(ch)
			delete(s.parked, k)
		}
	}
}

// Serve accepts client connections on ln until ctx ends, Close is called,
// or ln fails. Connections accepted here are closed when ctx ends. Serve
// may be called for several listeners.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer func() {
		stop()
		ln.Close()
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	err := acceptLoop(ln, func(conn net.Conn) bool {
		if !s.startSession(ctx, conn) {
			conn.Close()
			return false
		}
		return true
	}, func(err error) { s.log.WithError(err).Warn("snapshot-server accept failed; retrying") })
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	switch {
	case err == nil || closed:
		return ErrServerClosed
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return err
}

// acceptLoop hands every connection accepted on ln to handle, until handle
// returns false (acceptLoop returns nil) or ln is closed (its error). Every
// other failure (out of file descriptors, a connection aborted before it
// was accepted) is passed to logErr, at most once a second, and retried
// with a backoff of up to a second: it never stops the listener, so it
// never stops the node.
func acceptLoop(ln net.Listener, handle func(net.Conn) bool, logErr func(error)) error {
	acc := accept.Acceptor{LogErr: logErr}
	for {
		conn, err := acc.Accept(context.Background(), ln)
		if err != nil {
			return err
		}
		if !handle(conn) {
			return nil
		}
	}
}

// ServeConn serves one client connection (a Mux hands connections over
// this way). It returns ErrServerClosed, without taking conn, if the
// server is closed; otherwise conn is the server's, closed when ctx ends.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	if !s.startSession(ctx, conn) {
		return ErrServerClosed
	}
	return nil
}

// Close stops the server: listeners and connections are closed, waiting
// operations end, and Close returns when every goroutine has. The engine
// stays open (it is the caller's).
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closeCh)
		for ln := range s.listeners {
			ln.Close()
		}
		for ss := range s.conns {
			ss.kill()
		}
		if s.timer != nil && s.timer.Stop() {
			s.wg.Done()
		}
		for _, d := range s.detached {
			s.stopDetachLocked(d)
		}
		s.notifyLocked()
	}
	s.mu.Unlock()
	s.eng.SetBeforeReclaim(nil)
	s.wg.Wait()
	return nil
}

// NodeLeft is called by the cluster layer when a node leaves the cluster:
// that node's clients are struck off the registry, their locks released
// (waking the writes parked behind them), their connections closed, and
// none of them is awaited any more.
//
// Read locks younger than wire.LockLease are kept until they reach that
// age (the client may still be reading under them, trusting them for
// that long): the sessions' as for a lost connection, the awaited
// clients' by looking at the node again then.
func (s *Server) NodeLeft(node string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	var kill []*session
	var ids []wire.ClientID
	for id, ss := range s.sessions {
		if ss.node == node {
			kill = append(kill, ss)
			ids = append(ids, id)
		}
	}
	for _, ss := range kill {
		s.dropSessionLocked(ss)
	}
	for id, d := range s.detached {
		if d.node != node || slices.Contains(ids, id) { // (kept just now, above)
			continue
		}
		ids = append(ids, id)
		if left := s.lockLeaseLeftLocked(id); left > 0 {
			s.detachLocked(id, node, left, "client struck off within its read-lock lease; keeping its locks until the lease ends")
			continue
		}
		s.stopDetachLocked(d)
		delete(s.detached, id)
		s.wakeLocked(s.tab.DropClient(locks.ClientID(id)))
	}
	var later time.Duration
	ids, later = s.strikeAwaitedLocked(node, ids)
	for id, u := range s.unsettled {
		if u.node == node {
			delete(s.unsettled, id)
			ids = append(ids, id)
		}
	}
	for id, n := range s.uploadAwait {
		if n == node {
			delete(s.uploadAwait, id)
		}
	}
	for id, a := range s.away {
		if a.node == node {
			delete(s.away, id)
			if s.reclaim != nil {
				delete(s.reclaim.pending, id)
			}
		}
	}
	slices.SortFunc(ids, func(a, b wire.ClientID) int { return bytes.Compare(a[:], b[:]) })
	ids = slices.Compact(ids)
	s.notifyLocked()
	s.mu.Unlock()
	for _, ss := range kill {
		ss.kill()
	}
	s.struckOff(node, ids, later, "node left: its clients struck off")
}

// struckOff finishes striking off clients ids of node, outside the
// mutex: their registry entries go, and if some awaited ones were kept for
// their lock lease, awaitedLeft looks at them again later.
func (s *Server) struckOff(node string, ids []wire.ClientID, later time.Duration, msg string) {
	for _, id := range ids {
		s.regDelete(id)
	}
	if len(ids) > 0 {
		s.log.WithFields(logrus.Fields{"node": node, "clients": len(ids)}).Warn(msg)
	}
	if later > 0 {
		time.AfterFunc(later, func() { s.awaitedLeft(node) })
	}
}

// strikeAwaitedLocked stops awaiting the clients of node, appending their
// ids to ids, except those whose lock lease has time left: it reports the
// longest such time, after which awaitedLeft should look again.
func (s *Server) strikeAwaitedLocked(node string, ids []wire.ClientID) ([]wire.ClientID, time.Duration) {
	var later time.Duration
	for id, e := range s.awaited {
		if e.Node != node {
			continue
		}
		if left := s.lockLeaseLeftLocked(id); left > 0 {
			later = max(later, left)
			continue
		}
		delete(s.awaited, id)
		s.wakeLocked(s.tab.DropClient(locks.ClientID(id)))
		ids = append(ids, id)
	}
	return ids, later
}

// awaitedLeft strikes off the clients of a departed node that were still
// awaited, their lock leases over, unless they reconnected meanwhile.
func (s *Server) awaitedLeft(node string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	ids, later := s.strikeAwaitedLocked(node, nil)
	s.notifyLocked()
	s.mu.Unlock()
	s.struckOff(node, ids, later, "node left: its awaited clients struck off, their lock leases over")
}

// lockLeaseLeftLocked is how long client id's read locks must still be
// kept against its will (0: none): wire.LockLease after the latest one
// this server granted it, or, for a client awaited from the registry
// (holding locks the previous server granted), after this server started.
func (s *Server) lockLeaseLeftLocked(id wire.ClientID) time.Duration {
	from, ok := s.granted[id]
	if _, awaited := s.awaited[id]; awaited && s.started.After(from) {
		from, ok = s.started, true
	}
	if !ok {
		return 0
	}
	left := time.Until(from.Add(wire.LockLease))
	if left <= 0 {
		delete(s.granted, id)
		return 0
	}
	return left
}

// Ways a session ends, for endSessionLocked.
const (
	endDrop    = iota // release its locks now (node left, barrier timeout)
	endDetach         // keep its locks for DetachGrace (connection lost)
	endReplace        // keep its locks: the client's new connection re-declares them
)

// dropSessionLocked forgets ss and releases its locks.
func (s *Server) dropSessionLocked(ss *session) bool { return s.endSessionLocked(ss, endDrop) }

// endSessionLocked forgets ss: it leaves any barrier, its parked writes are
// cancelled and, depending on how, its locks are released (waking writes)
// or kept. It reports whether ss was the client's current session.
func (s *Server) endSessionLocked(ss *session, how int) bool {
	if !ss.closed {
		s.noteSessionEndLocked(ss)
	}
	ss.closed = true
	if b := s.barrier; b != nil {
		if _, ok := b.pending[ss]; ok {
			delete(b.pending, ss)
			s.notifyLocked()
		}
	}
	s.endBlocksLocked(ss)
	if s.sessions[ss.id] != ss {
		return false
	}
	delete(s.sessions, ss.id)
	c := locks.ClientID(ss.id)
	grace, why := s.cfg.DetachGrace, "client connection lost while holding read locks; keeping them until it reconnects"
	if how == endDetach && (s.closed || s.cfg.DetachGrace <= 0 || s.tab.Usage(c).Locks == 0) {
		// (A closed server keeps nothing for a reconnect, and its Close
		// must not wait for a grace timer started after it.)
		how = endDrop
	}
	if how == endDrop && !s.closed && s.tab.Usage(c).Locks > 0 {
		if left := s.lockLeaseLeftLocked(ss.id); left > 0 {
			how, grace, why = endDetach, left, "client struck off within its read-lock lease; keeping its locks until the lease ends"
		}
	}
	switch how {
	case endDrop:
		s.wakeLocked(s.tab.DropClient(c))
	default:
		for _, k := range s.tab.Parked(c) {
			s.tab.CancelWrite(k) // its goroutine ends with the session
		}
	}
	if how == endDetach {
		s.detachLocked(ss.id, ss.node, grace, why)
	} else {
		delete(s.granted, ss.id)
	}
	s.notifyLocked()
	return true
}

// detachLocked keeps client id's read locks for grace (replacing a
// detached entry it may have): until it reconnects and re-declares them,
// or the grace ends and they are released (detachExpired).
func (s *Server) detachLocked(id wire.ClientID, node string, grace time.Duration, why string) {
	if old := s.detached[id]; old != nil {
		s.stopDetachLocked(old)
	}
	d := &detached{node: node}
	s.wg.Add(1) // done when the timer has run or was stopped
	d.timer = time.AfterFunc(grace, func() { s.detachExpired(id, d) })
	s.detached[id] = d
	s.log.WithFields(logrus.Fields{"client": id.String(), "node": node, "locks": s.tab.Usage(locks.ClientID(id)).Locks,
		"grace": grace.Round(time.Millisecond).String()}).Warn(why)
}

// detached is a client whose connection was lost while it held read locks.
type detached struct {
	node  string
	timer *time.Timer
}

// stopDetachLocked stops d's timer.
func (s *Server) stopDetachLocked(d *detached) {
	if d.timer.Stop() {
		s.wg.Done()
	}
}

// detachExpired releases the locks of a client that did not reconnect.
func (s *Server) detachExpired(id wire.ClientID, d *detached) {
	defer s.wg.Done()
	s.mu.Lock()
	if s.detached[id] != d {
		s.mu.Unlock()
		return
	}
	if left := s.lockLeaseLeftLocked(id); left > 0 && !s.closed {
		s.detachLocked(id, d.node, left, "keeping a disconnected client's read locks until their lease ends")
		s.mu.Unlock()
		return
	}
	delete(s.detached, id)
	n := s.tab.Usage(locks.ClientID(id)).Locks
	s.wakeLocked(s.tab.DropClient(locks.ClientID(id)))
	s.notifyLocked()
	s.mu.Unlock()
	s.log.WithFields(logrus.Fields{"client": id.String(), "node": d.node, "locks": n}).
		Warn("client did not reconnect in time; its read locks are released")
	s.regDelete(id)
}

// regDelete removes a client from the registry unless a newer connection
// of it exists.
func (s *Server) regDelete(id wire.ClientID) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.mu.Lock()
	_, current := s.sessions[id]
	s.mu.Unlock()
	if current {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), registryTimeout)
	defer cancel()
	if err := s.reg.Delete(ctx, id); err != nil {
		s.log.WithError(err).WithField("client", id.String()).Error("registry: delete client")
	}
}

// regPut records a client in the registry, if ss is still its current
// connection.
func (s *Server) regPut(ctx context.Context, ss *session, holds bool) error {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.mu.Lock()
	current := s.sessions[ss.id] == ss && !ss.closed
	s.mu.Unlock()
	if !current {
		return errSessionClosed
	}
	if ss.regDone && (ss.regHolds || !holds) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	if err := s.reg.Put(ctx, Entry{ID: ss.id, Node: ss.node, HoldsLocks: holds}); err != nil {
		return fmt.Errorf("registry: record client %v: %w", ss.id, err)
	}
	ss.regDone, ss.regHolds = true, holds
	return nil
}

// ClientInfo describes one client of the registry (the API's "clients").
type ClientInfo struct {
	ID   wire.ClientID
	Node string
	// Connected is false for a client that is awaited: in the registry and
	// not reconnected yet, or disconnected while it may still be writing
	// under an approval (the next snapshot waits for it).
	Connected bool
	Locks     int // read locks held
	Writes    int // origin writes parked behind read locks
}

// State is "connected" or "awaited".
func (c ClientInfo) State() string {
	if c.Connected {
		return "connected"
	}
	return "awaited"
}

// Clients lists connected and awaited clients, by id.
func (s *Server) Clients() []ClientInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ClientInfo
	for id, ss := range s.sessions {
		u := s.tab.Usage(locks.ClientID(id))
		out = append(out, ClientInfo{ID: id, Node: ss.node, Connected: true, Locks: u.Locks, Writes: u.Writes})
	}
	for id, e := range s.awaited {
		if _, ok := s.sessions[id]; !ok {
			out = append(out, ClientInfo{ID: id, Node: e.Node})
		}
	}
	for id, d := range s.detached {
		if _, ok := s.awaited[id]; !ok {
			out = append(out, ClientInfo{ID: id, Node: d.node, Locks: s.tab.Usage(locks.ClientID(id)).Locks})
		}
	}
	for id, u := range s.unsettled {
		_, c := s.sessions[id]
		_, a := s.awaited[id]
		_, d := s.detached[id]
		if !c && !a && !d {
			out = append(out, ClientInfo{ID: id, Node: u.node})
		}
	}
	slices.SortFunc(out, func(a, b ClientInfo) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return out
}

// Status is the server's state (admin "server" and "clients").
type Status struct {
	Volume     string
	Node       string
	Term       uint64
	Since      time.Time
	Generation uint64
	Clients    []ClientInfo
}

// Status returns the server's state.
func (s *Server) Status() Status {
	return Status{Volume: s.cfg.Volume, Node: s.cfg.Node, Term: s.cfg.Term, Since: s.since,
		Generation: s.eng.Generation(), Clients: s.Clients()}
}

// Term returns the server's term.
func (s *Server) Term() uint64 { return s.cfg.Term }
