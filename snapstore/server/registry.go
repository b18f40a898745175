package server

import (
	"bytes"
	"context"
	"slices"
	"sync"

	"github.com/csnap/csnap/snapstore/wire"
)

// Entry is one client in the replicated client registry.
type Entry struct {
	ID   wire.ClientID
	Node string
	// HoldsLocks: the client may hold read locks. A newly elected server
	// approves no origin write before every such client has reconnected
	// and re-declared its locks, or its node has left the cluster. The
	// server sets it (durably, before the client can read under the lock)
	// when a client is granted its first lock, and clears it only when the
	// client disconnects (the entry is deleted then).
	HoldsLocks bool
}

// Registry is the replicated client registry of one volume (Consul KV in
// cluster mode, NewMemRegistry in -dev and tests). Implementations must be
// safe for concurrent use; the server serializes its own writes.
type Registry interface {
	Put(ctx context.Context, e Entry) error
	Delete(ctx context.Context, id wire.ClientID) error
	List(ctx context.Context) ([]Entry, error)
}

// MemRegistry is an in-memory Registry. It survives a Server (tests build
// a second server on the same registry to simulate a failover), not a
// process.
type MemRegistry struct {
	mu      sync.Mutex
	entries map[wire.ClientID]Entry
}

// NewMemRegistry returns an empty in-memory registry.
func NewMemRegistry() *MemRegistry { return &MemRegistry{entries: map[wire.ClientID]Entry{}} }

// Put adds or replaces e.
func (r *MemRegistry) Put(ctx context.Context, e Entry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries[e.ID] = e
	return nil
}

// Delete removes a client; deleting an unknown one is not an error.
func (r *MemRegistry) Delete(ctx context.Context, id wire.ClientID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.entries, id)
	return nil
}

// List returns every entry, by client id.
func (r *MemRegistry) List(ctx context.Context) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Entry, 0, len(r.entries))
	for _, e := range r.entries {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return out, nil
}

// Membership tells the server which nodes are cluster members. The cluster
// layer also calls Server.NodeLeft when a node leaves.
type Membership interface {
	IsMember(node string) bool
}

// AllowAll is the Membership of a single-node (-dev) setup: every node is
// a member.
type AllowAll struct{}

// IsMember always reports true.
func (AllowAll) IsMember(string) bool { return true }

// MembershipFunc adapts a function to Membership.
type MembershipFunc func(node string) bool

// IsMember calls f.
func (f MembershipFunc) IsMember(node string) bool { return f(node) }
