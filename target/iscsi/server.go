package iscsi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/accept"
	"github.com/csnap/csnap/target/scsi"
)

// TargetConfig describes one iSCSI target (one IQN) and the SCSI target
// behind it.
type TargetConfig struct {
	Name  string // the IQN
	Alias string // TargetAlias, optional
	Exec  scsi.Executor
	// CHAP, when set, requires initiators to authenticate.
	CHAP *CHAP
	// Initiators, when not empty, is the allow-list of initiator names
	// (compared exactly) that may log in to this target; any other name
	// gets "authorization failure". Empty allows every initiator.
	Initiators []string
}

// Config configures a Server.
type Config struct {
	Log *logrus.Entry
	// PortalGroupTag is this node's target portal group tag; it is also
	// the relative target port id and target port group id presented to
	// SCSI, so every node should have its own.
	PortalGroupTag uint16
	Offer          Offer
	// DiscoveryCHAP, when set, requires discovery sessions to authenticate.
	DiscoveryCHAP *CHAP
	// QueueDepth is the CmdSN window: commands in flight per session.
	QueueDepth uint32
	// PingInterval is how long a connection may be idle before the target
	// sends a NOP-In ping; PingTimeout how long it then waits for the
	// answer before dropping the connection. Zero means the defaults.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// LoginTimeout bounds the login phase of a connection.
	LoginTimeout time.Duration
	// MaxTransferLength bounds the data of one command (bytes).
	MaxTransferLength uint32
	// PollBudget is how long an idle connection's reader polls the socket
	// for the next PDU before parking on the netpoller, when the last PDU
	// came within that time and none of its commands is executing: at
	// queue depth 1 this saves the sleep and wake-up of a thread per
	// command (tests/bench/RESULTS.md). Zero means 50µs; negative never
	// polls. At most half the Go scheduler's processors (at least one)
	// poll at a time, so polling never takes every CPU from execution.
	PollBudget time.Duration

	// Limits that keep one initiator (or many) from exhausting the node.
	// Zero means the default in parentheses.
	//
	// MaxConnections bounds open connections in total (1024), and
	// MaxConnectionsPerSource those from one IP address (64).
	// MaxPendingLogins bounds connections still in their login phase
	// (64), MaxPendingLoginsPerSource those from one address (8). A
	// connection beyond a limit is closed at once.
	MaxConnections            int
	MaxConnectionsPerSource   int
	MaxPendingLogins          int
	MaxPendingLoginsPerSource int
	// MaxAuthFailures failed logins (wrong CHAP, not allowed) from one
	// address within AuthFailureWindow (10 in 1 minute) make the target
	// refuse that address's logins until the window has passed.
	MaxAuthFailures   int
	AuthFailureWindow time.Duration
	// CHAPAlgorithms lists the CHAP hash algorithms initiators may use,
	// in order of preference (default SHA-256, SHA-1, MD5). Leaving MD5
	// out refuses initiators that offer nothing else.
	CHAPAlgorithms []CHAPAlgorithm
	// DataBufferBytes bounds the write data buffered at once on the node
	// (256 MiB), SessionDataBufferBytes in one session (64 MiB, at
	// least MaxTransferLength). A write beyond either ends at once with
	// TASK SET FULL (the initiator retries it later) and its data is
	// discarded. DataOutTimeout (30 s) fails a write whose initiator
	// sends none of the data it owes for that long, and frees its buffer.
	DataBufferBytes        int64
	SessionDataBufferBytes int64
	DataOutTimeout         time.Duration

	// Observer, if set, is told of logins, sessions and refused
	// connections (for metrics).
	Observer Observer
}

func (c *Config) setDefaults() {
	if c.Log == nil {
		l := logrus.New()
		c.Log = logrus.NewEntry(l)
	}
	if c.PortalGroupTag == 0 {
		c.PortalGroupTag = 1
	}
	if c.Offer == (Offer{}) {
		c.Offer = DefaultOffer()
	}
	if c.QueueDepth == 0 {
		c.QueueDepth = 256
	}
	if c.PingInterval == 0 {
		c.PingInterval = 5 * time.Second
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = 15 * time.Second
	}
	if c.LoginTimeout == 0 {
		c.LoginTimeout = 15 * time.Second
	}
	if c.MaxTransferLength == 0 {
		c.MaxTransferLength = 32 << 20
	}
	if c.PollBudget == 0 {
		c.PollBudget = 50 * time.Microsecond
	}
	setInt := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	setInt(&c.MaxConnections, 1024)
	setInt(&c.MaxConnectionsPerSource, 64)
	setInt(&c.MaxPendingLogins, 64)
	setInt(&c.MaxPendingLoginsPerSource, 8)
	setInt(&c.MaxAuthFailures, 10)
	if c.AuthFailureWindow <= 0 {
		c.AuthFailureWindow = time.Minute
	}
	if c.DataBufferBytes <= 0 {
		c.DataBufferBytes = 256 << 20
	}
	if c.SessionDataBufferBytes <= 0 {
		c.SessionDataBufferBytes = 64 << 20
	}
	c.SessionDataBufferBytes = max(c.SessionDataBufferBytes, int64(c.MaxTransferLength))
	c.DataBufferBytes = max(c.DataBufferBytes, c.SessionDataBufferBytes)
	if c.DataOutTimeout <= 0 {
		c.DataOutTimeout = 30 * time.Second
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if len(c.CHAPAlgorithms) == 0 {
		c.CHAPAlgorithms = []CHAPAlgorithm{CHAPSHA256, CHAPSHA1, CHAPMD5}
	}
}

// Server is an iSCSI target server: it accepts connections on any number of
// portals and serves the registered targets.
type Server struct {
	cfg Config
	log *logrus.Entry

	mu        sync.Mutex
	targets   map[string]*target
	sessions  map[sessionKey]*session
	conns     map[*conn]struct{}
	listeners map[net.Listener]struct{}
	nextTSIH  uint16
	closed    bool
	wg        sync.WaitGroup
	bufs      bufPool
	pollers   pollSlots
	// Connections open and still logging in, per source address.
	perSource map[string]*sourceCount
	pending   int
	authFails failureLimiter
	dataBuf   byteBudget // write data buffered on the node
	now       func() time.Time
	// inlineRuns counts commands a reader ran itself (see conn.start).
	inlineRuns atomic.Uint64
}

type target struct {
	cfg  TargetConfig
	port scsi.Port
}

// allows reports whether the initiator may log in to the target.
func (t *target) allows(initiator string) bool {
	if len(t.cfg.Initiators) == 0 {
		return true
	}
	for _, n := range t.cfg.Initiators {
		if n == initiator {
			return true
		}
	}
	return false
}

type sessionKey struct {
	initiator string
	isid      [6]byte
	target    string // "" for discovery
}

// NewServer returns a server with no targets and no portals.
func NewServer(cfg Config) *Server {
	cfg.setDefaults()
	return &Server{
		pollers:   newPollSlots(runtime.GOMAXPROCS(0)),
		cfg:       cfg,
		log:       cfg.Log,
		targets:   map[string]*target{},
		sessions:  map[sessionKey]*session{},
		conns:     map[*conn]struct{}{},
		listeners: map[net.Listener]struct{}{},
		perSource: map[string]*sourceCount{},
		authFails: failureLimiter{max: cfg.MaxAuthFailures, window: cfg.AuthFailureWindow, bySource: map[string]*failures{}},
		dataBuf:   byteBudget{max: cfg.DataBufferBytes},
		now:       time.Now,
	}
}

// sourceCount is what one source address has open.
type sourceCount struct{ conns, pending int }

// admitConnLocked counts a new connection from src in its login phase, or
// says which limit refuses it. Called with s.mu held.
func (s *Server) admitConnLocked(src string) *refusal {
	sc := s.perSource[src]
	if sc == nil {
		sc = &sourceCount{}
	}
	switch {
	case len(s.conns) >= s.cfg.MaxConnections:
		return &refusal{RefusedConnections, fmt.Sprintf("%d connections open (limit %d)", len(s.conns), s.cfg.MaxConnections)}
	case sc.conns >= s.cfg.MaxConnectionsPerSource:
		return &refusal{RefusedConnections, fmt.Sprintf("%d connections open from %s (limit %d)", sc.conns, src, s.cfg.MaxConnectionsPerSource)}
	case s.pending >= s.cfg.MaxPendingLogins:
		return &refusal{RefusedLogins, fmt.Sprintf("%d logins pending (limit %d)", s.pending, s.cfg.MaxPendingLogins)}
	case sc.pending >= s.cfg.MaxPendingLoginsPerSource:
		return &refusal{RefusedLogins, fmt.Sprintf("%d logins pending from %s (limit %d)", sc.pending, src, s.cfg.MaxPendingLoginsPerSource)}
	}
	sc.conns++
	sc.pending++
	s.pending++
	s.perSource[src] = sc
	return nil
}

// refusal is why a connection was refused at accept.
type refusal struct {
	reason RefusalReason
	msg    string
}

func (r *refusal) Error() string { return r.msg }

// loginEnded is called once per connection when its login phase ends,
// successfully or not.
func (s *Server) loginEnded(src string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sc := s.perSource[src]; sc != nil && sc.pending > 0 {
		sc.pending--
		s.pending--
	}
}

// connEnded is called once per admitted connection when it closes.
func (s *Server) connEnded(src string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sc := s.perSource[src]; sc != nil {
		sc.conns--
		if sc.conns <= 0 {
			delete(s.perSource, src)
		}
	}
}

// AddTarget registers a target; it is visible to discovery and logins at
// once. Adding a name that exists replaces its configuration for new
// sessions, and closes the sessions of initiators its new allow-list
// leaves out.
func (s *Server) AddTarget(tc TargetConfig) error {
	if tc.Name == "" || tc.Exec == nil {
		return errors.New("iscsi: target needs a name and an executor")
	}
	if !validIQN(tc.Name) {
		return fmt.Errorf("iscsi: %q is not a valid iSCSI name", tc.Name)
	}
	s.mu.Lock()
	tpgt := s.cfg.PortalGroupTag
	t := &target{cfg: tc, port: scsi.Port{
		Name:       fmt.Sprintf("%s,t,0x%04x", tc.Name, tpgt),
		TargetName: tc.Name,
		RelativeID: tpgt,
		GroupID:    tpgt,
	}}
	s.targets[tc.Name] = t
	var banned []*session
	for k, sess := range s.sessions {
		if k.target == tc.Name && !t.allows(k.initiator) {
			banned = append(banned, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range banned {
		s.log.WithFields(logrus.Fields{"target": tc.Name, "initiator": sess.key.initiator}).Warn("initiator no longer on the target's allow-list; closing its session")
		sess.close(errors.New("initiator removed from the allow-list"))
	}
	return nil
}

// RemoveTarget unregisters a target and closes every session logged in to
// it (after their in-flight commands finish).
func (s *Server) RemoveTarget(name string) {
	s.mu.Lock()
	delete(s.targets, name)
	var victims []*session
	for k, sess := range s.sessions {
		if k.target == name {
			victims = append(victims, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range victims {
		sess.close(errors.New("target removed"))
	}
}

// TargetNames lists the registered targets, sorted.
func (s *Server) TargetNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.targets))
	for n := range s.targets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (s *Server) lookupTarget(name string) *target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets[name]
}

// Serve accepts connections on l until ctx ends or the server closes. It
// returns nil on an orderly stop.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("iscsi: server closed")
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var refusedLog rateLog
	// Out of descriptors (EMFILE, ENFILE), a connection aborted before it
	// was accepted: none of them may stop the node (the Acceptor logs,
	// waits, tries again).
	acc := accept.Acceptor{LogErr: func(err error) {
		s.log.WithError(err).WithField("portal", l.Addr().String()).Warn("iSCSI accept failed; retrying")
	}}
	for {
		nc, err := acc.Accept(ctx, l)
		if err != nil {
			return nil // the listener was closed or ctx ended
		}
		src := accept.Source(nc.RemoteAddr())
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		if err := s.admitConnLocked(src); err != nil {
			s.mu.Unlock()
			nc.Close()
			s.cfg.Observer.ConnectionRefused(err.reason)
			if refusedLog.allow(s.now()) {
				s.log.WithField("remote", nc.RemoteAddr().String()).WithError(err).Warn("iSCSI connection refused (limit)")
			}
			continue
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			tc.SetKeepAlive(true)
		}
		c := newConn(s, nc)
		c.source = src
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve(ctx)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			s.connEnded(src)
		}()
	}
}

// rateLog lets a repeated log line through at most once a second.
type rateLog struct{ last time.Time }

func (r *rateLog) allow(now time.Time) bool {
	if now.Sub(r.last) < time.Second {
		return false
	}
	r.last = now
	return true
}

// Close stops accepting, closes every connection and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.shutdown(errors.New("server closing"))
	}
	s.wg.Wait()
	return nil
}

// maxNameLen is the longest iSCSI name (RFC 7143 section 4.2.7.1).
const maxNameLen = 223

// validInitiatorName checks an InitiatorName against the iSCSI name forms
// of RFC 7143 section 4.2.7 (and RFC 3722's character set): "iqn." with a
// date and naming authority, "eui." with 16 hex digits, "naa." with 16 or
// 32 hex digits; at most 223 bytes.
func validInitiatorName(n string) error {
	if len(n) > maxNameLen {
		return fmt.Errorf("InitiatorName of %d bytes (at most %d)", len(n), maxNameLen)
	}
	hexDigits := func(s string, counts ...int) bool {
		for _, c := range s {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
		for _, k := range counts {
			if len(s) == k {
				return true
			}
		}
		return false
	}
	switch {
	case strings.HasPrefix(n, "eui."):
		if hexDigits(n[4:], 16) {
			return nil
		}
	case strings.HasPrefix(n, "naa."):
		if hexDigits(n[4:], 16, 32) {
			return nil
		}
	case strings.HasPrefix(n, "iqn."):
		// iqn.yyyy-mm.reversed.domain[:anything]
		if len(n) >= 12 && isDate(n[4:11]) && n[11] == '.' && validIQN(n) {
			return nil
		}
	}
	return fmt.Errorf("InitiatorName %q is not an iSCSI name (iqn.yyyy-mm.domain..., eui. or naa.)", truncate([]byte(n)))
}

// isDate checks "yyyy-mm".
func isDate(s string) bool {
	if len(s) != 7 || s[4] != '-' {
		return false
	}
	for i, c := range s {
		if i != 4 && (c < '0' || c > '9') {
			return false
		}
	}
	return s[5:] >= "01" && s[5:] <= "12"
}

// validIQN accepts iqn., eui. and naa. names with the characters RFC 3722
// stringprep leaves: lower-case letters, digits, '-', '.', ':'.
func validIQN(n string) bool {
	if len(n) < 5 || len(n) > 223 {
		return false
	}
	switch {
	case len(n) > 4 && n[:4] == "iqn.", len(n) > 4 && n[:4] == "eui.", len(n) > 4 && n[:4] == "naa.":
	default:
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == ':' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
