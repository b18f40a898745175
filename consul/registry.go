package consul

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ClientRecord is one entry of a volume's client registry (SPEC.md:
// csnap/volumes/V/clients/ID).
type ClientRecord struct {
	ID         [16]byte `json:"-"`
	Node       string   `json:"node"`
	HoldsLocks bool     `json:"holds_locks"`
}

// ErrNotHolder is returned by registry writes when the writer's session no
// longer holds the volume's lock: a deposed server cannot change the
// registry its successor relies on.
var ErrNotHolder = errors.New("consul: this session does not hold the volume's lock")

// KVRegistry is the client registry of one volume in Consul KV. Writes are
// transactions that first check that the lock key is held by the writer's
// session; reads are consistent, so a newly elected server sees every entry
// its predecessor wrote.
type KVRegistry struct {
	c       *api.Client
	prefix  string // e.g. csnap/volumes/V/clients/
	lockKey string // e.g. csnap/volumes/V/server
	// Session returns the session that holds the lock now ("" when none):
	// the election's current session.
	Session func() string
}

// NewKVRegistry returns the registry under prefix (ending in "/"), written
// only while lockKey is held by session().
func NewKVRegistry(c *api.Client, prefix, lockKey string, session func() string) (*KVRegistry, error) {
	if !strings.HasSuffix(prefix, "/") || lockKey == "" || session == nil {
		return nil, errors.New("consul: registry needs a prefix ending in /, a lock key and a session source")
	}
	return &KVRegistry{c: c, prefix: prefix, lockKey: lockKey, Session: session}, nil
}

func (r *KVRegistry) key(id [16]byte) string { return r.prefix + hex.EncodeToString(id[:]) }

// txn runs op after the session check, atomically.
func (r *KVRegistry) txn(ctx context.Context, op *api.KVTxnOp) error {
	s := r.Session()
	if s == "" {
		return ErrNotHolder
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: r.lockKey, Session: s}},
		{KV: op},
	}
	ok, resp, _, err := r.c.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul: registry transaction on %s: %w", op.Key, err)
	}
	if !ok {
		for _, e := range resp.Errors {
			if e.OpIndex == 0 {
				return fmt.Errorf("%w (%s)", ErrNotHolder, e.What)
			}
		}
		return fmt.Errorf("consul: registry transaction on %s rolled back: %v", op.Key, resp.Errors)
	}
	return nil
}

// Put adds or replaces a client's entry.
func (r *KVRegistry) Put(ctx context.Context, rec ClientRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return r.txn(ctx, &api.KVTxnOp{Verb: api.KVSet, Key: r.key(rec.ID), Value: v})
}

// Delete removes a client's entry; an unknown one is not an error.
func (r *KVRegistry) Delete(ctx context.Context, id [16]byte) error {
	return r.txn(ctx, &api.KVTxnOp{Verb: api.KVDelete, Key: r.key(id)})
}

// List returns every entry, by client id, read consistently.
func (r *KVRegistry) List(ctx context.Context) ([]ClientRecord, error) {
	pairs, _, err := r.c.KV().List(r.prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul: listing %s: %w", r.prefix, err)
	}
	out := make([]ClientRecord, 0, len(pairs))
	for _, p := range pairs {
		id, err := hex.DecodeString(strings.TrimPrefix(p.Key, r.prefix))
		if err != nil || len(id) != 16 {
			return nil, fmt.Errorf("consul: registry key %s is not a client id", p.Key)
		}
		var rec ClientRecord
		if err := json.Unmarshal(p.Value, &rec); err != nil {
			return nil, fmt.Errorf("consul: registry entry %s: %w", p.Key, err)
		}
		copy(rec.ID[:], id)
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return hex.EncodeToString(out[i].ID[:]) < hex.EncodeToString(out[j].ID[:]) })
	return out, nil
}
