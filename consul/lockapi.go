package consul

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// SessionConfig says how the election's sessions are made.
type SessionConfig struct {
	// Node is this node's name in Consul.
	Node string
	// Name tags the sessions ("csnap/volumes/V/server"), so stale ones of
	// this node can be found and destroyed at start.
	Name string
	// ServiceCheckID is csnapd's own health check: binding the session to
	// it makes a crashed csnapd lose the lock even while its Consul agent
	// lives. Empty: bound to serfHealth only.
	ServiceCheckID string
	// LockDelay after the session is invalidated before another session
	// may take the lock. Must be positive: the Go API turns 0 into 15 s.
	LockDelay time.Duration
}

// APILock is a LockAPI over Consul's HTTP API.
type APILock struct {
	c   *api.Client
	cfg SessionConfig
}

// NewAPILock returns a LockAPI using client (api.NewClient honours
// CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN and the TLS variables).
func NewAPILock(client *api.Client, cfg SessionConfig) (*APILock, error) {
	if cfg.Node == "" || cfg.Name == "" {
		return nil, errors.New("consul: session config needs Node and Name")
	}
	if cfg.LockDelay <= 0 {
		return nil, errors.New("consul: LockDelay must be positive (0 would mean 15 s to the Go API)")
	}
	return &APILock{c: client, cfg: cfg}, nil
}

func wopts(ctx context.Context) *api.WriteOptions { return (&api.WriteOptions{}).WithContext(ctx) }
func qopts(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
}

// CreateSession creates a session bound to serfHealth and, if configured,
// csnapd's own check (naming checks replaces the default binding, so
// serfHealth is listed explicitly), releasing its locks when invalidated.
func (l *APILock) CreateSession(ctx context.Context) (string, error) {
	se := &api.SessionEntry{
		Name:       l.cfg.Name,
		Node:       l.cfg.Node,
		NodeChecks: []string{"serfHealth"},
		LockDelay:  l.cfg.LockDelay,
		Behavior:   api.SessionBehaviorRelease,
	}
	if l.cfg.ServiceCheckID != "" {
		se.ServiceChecks = []api.ServiceCheck{{ID: l.cfg.ServiceCheckID}}
	}
	id, _, err := l.c.Session().Create(se, wopts(ctx))
	if err != nil {
		return "", fmt.Errorf("consul: creating session %s: %w", l.cfg.Name, err)
	}
	return id, nil
}

// DestroyStaleSessions destroys this node's sessions of the same name: a
// csnapd restarted within a fraction of a second otherwise leaves its old
// session holding the lock (its check passes again before Consul notices).
func (l *APILock) DestroyStaleSessions(ctx context.Context) (int, error) {
	list, _, err := l.c.Session().Node(l.cfg.Node, qopts(ctx))
	if err != nil {
		return 0, fmt.Errorf("consul: listing sessions of node %s: %w", l.cfg.Node, err)
	}
	n := 0
	for _, s := range list {
		if s.Name != l.cfg.Name {
			continue
		}
		if _, err := l.c.Session().Destroy(s.ID, wopts(ctx)); err != nil {
			return n, fmt.Errorf("consul: destroying stale session %s: %w", s.ID, err)
		}
		n++
	}
	return n, nil
}

func (l *APILock) DestroySession(ctx context.Context, session string) error {
	if _, err := l.c.Session().Destroy(session, wopts(ctx)); err != nil {
		return fmt.Errorf("consul: destroying session %s: %w", session, err)
	}
	return nil
}

// Acquire takes key for session, then reads the key back consistently for
// its LockIndex (the acquire answer does not carry it).
func (l *APILock) Acquire(ctx context.Context, key, session string, value []byte) (bool, uint64, error) {
	ok, _, err := l.c.KV().Acquire(&api.KVPair{Key: key, Value: value, Session: session}, wopts(ctx))
	if err != nil {
		// A session invalidated meanwhile is an error to retry with a
		// new one, not a lost race.
		if strings.Contains(err.Error(), "invalid session") {
			return false, 0, fmt.Errorf("consul: session %s is no longer valid: %w", session, err)
		}
		return false, 0, fmt.Errorf("consul: acquiring %s: %w", key, err)
	}
	holder, idx, err := l.Holder(ctx, key)
	if err != nil {
		return false, 0, err
	}
	return ok && holder == session, idx, nil
}

// Holder reads key consistently: the holding session and its LockIndex.
func (l *APILock) Holder(ctx context.Context, key string) (string, uint64, error) {
	kv, _, err := l.c.KV().Get(key, qopts(ctx))
	if err != nil {
		return "", 0, fmt.Errorf("consul: reading %s: %w", key, err)
	}
	if kv == nil {
		return "", 0, nil
	}
	return kv.Session, kv.LockIndex, nil
}

func (l *APILock) Release(ctx context.Context, key, session string) error {
	if _, _, err := l.c.KV().Release(&api.KVPair{Key: key, Session: session}, wopts(ctx)); err != nil {
		return fmt.Errorf("consul: releasing %s: %w", key, err)
	}
	return nil
}
