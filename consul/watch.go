package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"sync"

	"github.com/hashicorp/consul/api"
	"github.com/sirupsen/logrus"
)

// ServerWatch follows a volume's server lock with blocking queries. It is
// the snapshot client's Locator in cluster mode: Server answers with the
// address of the holder once it has announced its term, so a client
// follows the volume's server across failovers.
type ServerWatch struct {
	volume string
	// read reads the lock key afresh (nil: a watch fed through Set).
	read func(ctx context.Context) (si ServerInfo, held bool, err error)

	mu      sync.Mutex
	cur     ServerInfo
	held    bool
	changed chan struct{} // closed and replaced on every change
}

// WatchServer starts following the lock key of volume until ctx ends.
func WatchServer(ctx context.Context, c *api.Client, k Keys, volume string, log *logrus.Entry) *ServerWatch {
	key := k.ServerLock(volume)
	w := NewServerWatch(volume)
	w.read = func(ctx context.Context) (ServerInfo, bool, error) {
		p, _, err := c.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return ServerInfo{}, false, err
		}
		var si ServerInfo
		held := p != nil && p.Session != "" && json.Unmarshal(p.Value, &si) == nil
		return si, held, nil
	}
	go blockingLoop(ctx, log.WithField("watch", key), func(q *api.QueryOptions) (uint64, error) {
		p, meta, err := c.KV().Get(key, q)
		if err != nil {
			return 0, fmt.Errorf("consul: reading %s: %w", key, err)
		}
		var si ServerInfo
		held := p != nil && p.Session != "" && json.Unmarshal(p.Value, &si) == nil
		w.set(si, held)
		return meta.LastIndex, nil
	})
	return w
}

// NewServerWatch returns a watch of volume's server that its owner feeds
// through Set (a Cluster other than Agent; WatchServer feeds its own).
func NewServerWatch(volume string) *ServerWatch {
	return &ServerWatch{volume: volume, changed: make(chan struct{})}
}

// Set records the lock key's holder as seen now (held: a session holds it).
func (w *ServerWatch) Set(si ServerInfo, held bool) { w.set(si, held) }

func (w *ServerWatch) set(si ServerInfo, held bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if si == w.cur && held == w.held {
		return
	}
	w.cur, w.held = si, held
	close(w.changed)
	w.changed = make(chan struct{})
}

// Current returns the server as last seen, and whether one holds the lock
// and has announced its term.
func (w *ServerWatch) Current() (ServerInfo, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cur, w.ready()
}

func (w *ServerWatch) ready() bool { return w.held && w.cur.Term != 0 && w.cur.Addr != "" }

// Server waits (until ctx ends) for a server that holds the lock and has
// announced its term, and returns its address. A client calls it before
// every connection attempt, typically because its server went away: so it
// first reads the key afresh (bounded by ctx). The blocking query alone
// can be stuck for its whole wait on an agent whose Raft leader just died.
func (w *ServerWatch) Server(ctx context.Context) (string, error) {
	addr, _, err := w.ServerNode(ctx)
	return addr, err
}

// ServerNode is Server that also returns the node holding the lock: with
// TLS, the client accepts only a server whose certificate names it.
func (w *ServerWatch) ServerNode(ctx context.Context) (addr, node string, err error) {
	if w.read != nil {
		if si, held, err := w.read(ctx); err == nil {
			w.set(si, held)
		}
	}
	for {
		w.mu.Lock()
		if w.ready() {
			addr, node := w.cur.Addr, w.cur.Node
			w.mu.Unlock()
			return addr, node, nil
		}
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return "", "", fmt.Errorf("no snapshot server elected for volume %s: %w", w.volume, ctx.Err())
		case <-ch:
		}
	}
}

// Members follows the health of a service (csnap-iscsi) with blocking
// queries: a node is a live member while it has the service registered
// and every check of it passing, its serfHealth included. A node that
// was live and is no longer (a check critical, or the service
// deregistered: both mean the same to csnap) is reported to OnLeft.
type Members struct {
	mu    sync.Mutex
	live  map[string]bool
	known bool
	ready chan struct{}
	// meta is each node's last-known service metadata, kept after it
	// leaves (its departure's handling needs it).
	meta map[string]map[string]string
}

// WatchMembers starts following service until ctx ends; onLeft (may be
// nil) is called, from the watch goroutine, for every departure.
func WatchMembers(ctx context.Context, c *api.Client, service string, log *logrus.Entry, onLeft func(node string)) *Members {
	m := NewMembers()
	log = log.WithField("watch", "service "+service)
	go blockingLoop(ctx, log, func(q *api.QueryOptions) (uint64, error) {
		entries, meta, err := c.Health().Service(service, "", false, q)
		if err != nil {
			return 0, fmt.Errorf("consul: health of %s: %w", service, err)
		}
		live := map[string]bool{}
		for _, e := range entries {
			if e.Checks.AggregatedStatus() == api.HealthPassing {
				live[e.Node.Node] = true
			}
			if e.Service != nil {
				m.SetMeta(e.Node.Node, e.Service.Meta)
			}
		}
		for _, n := range m.update(live) {
			log.WithField("node", n).Warn("node left the cluster")
			if onLeft != nil {
				onLeft(n)
			}
		}
		return meta.LastIndex, nil
	})
	return m
}

// NewMembers returns a member set that its owner feeds through Update (a
// Cluster other than Agent; WatchMembers feeds its own).
func NewMembers() *Members { return &Members{live: map[string]bool{}, ready: make(chan struct{})} }

// Update installs the live set and returns the nodes that left, sorted.
func (m *Members) Update(live map[string]bool) []string { return m.update(live) }

// update installs the live set and returns the nodes that left.
func (m *Members) update(live map[string]bool) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var left []string
	for n := range m.live {
		if !live[n] {
			left = append(left, n)
		}
	}
	sort.Strings(left)
	m.live = live
	if !m.known {
		m.known = true
		close(m.ready)
	}
	return left
}

// Wait returns once the first answer is in (or ctx ends).
func (m *Members) Wait(ctx context.Context) error {
	select {
	case <-m.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetMeta records node's service metadata (WatchMembers does; a Cluster
// other than Agent may).
func (m *Members) SetMeta(node string, meta map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.meta == nil {
		m.meta = map[string]map[string]string{}
	}
	if len(m.meta) >= maxMemberMeta {
		if _, ok := m.meta[node]; !ok {
			return
		}
	}
	m.meta[node] = maps.Clone(meta)
}

// maxMemberMeta bounds the nodes whose metadata Members remembers.
const maxMemberMeta = 4096

// Meta returns node's last-known service metadata value for key ("" if
// unknown), also after the node left.
func (m *Members) Meta(node, key string) string {
	if m == nil {
		return ""
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.meta[node][key]
}

// IsMember reports whether node is a live member now.
func (m *Members) IsMember(node string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.live[node]
}

// Live returns the live members, sorted.
func (m *Members) Live() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.live))
	for n := range m.live {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
