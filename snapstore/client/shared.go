package client

import (
	"context"
	"fmt"
	"slices"

	"github.com/csnap/csnap/snapstore/wire"
)

// Shared state: small entries replicated on every client of the volume
// (wire protocol version 2; see the wire package's "Shared state"). The
// SCSI target keeps each logical unit's reservations and unit attentions
// there, so an event on one node is in force on every node.

// sharedEntry is the client's replica of one entry.
type sharedEntry struct {
	version uint64
	value   []byte
}

// maxSharedRetries bounds the compare-and-set attempts of one UpdateShared.
const maxSharedRetries = 1000

// Shared returns the client's replica of entry key: its version (0: never
// written) and its value, which the caller must not modify. It needs no
// server: reads of the shared state cost nothing.
func (c *Client) Shared(key string) (version uint64, value []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.shared[key]
	return e.version, e.value
}

// UpdateShared changes entry key: fn gets the current value (nil if the
// entry was never written; fn must not modify it) and returns the new one.
// fn may run more than once, when another node changed the entry
// meanwhile, so it must have no other effect. UpdateShared returns once
// the change is in force on every node connected to the server, or with
// fn's error, or the client's (no server within IOTimeout).
func (c *Client) UpdateShared(ctx context.Context, key string, fn func(cur []byte) ([]byte, error)) error {
	if len(key) == 0 || len(key) > wire.MaxSharedKey {
		return fmt.Errorf("shared state: key of %d bytes (1-%d)", len(key), wire.MaxSharedKey)
	}
	deadline := c.cfg.Now().Add(c.cfg.IOTimeout)
	for range maxSharedRetries {
		c.mu.Lock()
		e, proto := c.shared[key], c.proto
		c.mu.Unlock()
		if proto != 0 && proto < wire.VersionShared {
			return fmt.Errorf("shared state: the server speaks protocol version %d, shared state needs %d", proto, wire.VersionShared)
		}
		nv, err := fn(e.value)
		if err != nil {
			return err
		}
		if len(nv) > wire.MaxSharedValue {
			return fmt.Errorf("shared state %q: value of %d bytes exceeds %d", key, len(nv), wire.MaxSharedValue)
		}
		m, err := c.do(ctx, kindAdmin, &wire.SharedUpdate{SharedValue: wire.SharedValue{Key: key, Version: e.version, Value: nv}}, deadline)
		if err != nil {
			return fmt.Errorf("shared state %q: %w", key, err)
		}
		switch r := m.(type) {
		case *wire.SharedResult:
			if r.Committed {
				c.installShared(wire.SharedValue{Key: key, Version: r.Version, Value: nv})
				return nil
			}
			c.installShared(r.SharedValue) // someone else's change: retry from it
		case *wire.Error:
			return fmt.Errorf("shared state %q: %w", key, r)
		default:
			return fmt.Errorf("shared state %q: SHARED_UPDATE answered with %v: %w", key, m.Type(), ErrProtocol)
		}
	}
	return fmt.Errorf("shared state %q: %d attempts lost to concurrent changes", key, maxSharedRetries)
}

// installShared takes v if it is newer than the replica.
func (c *Client) installShared(v wire.SharedValue) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.shared[v.Key]; v.Version > e.version {
		c.shared[v.Key] = sharedEntry{version: v.Version, value: slices.Clone(v.Value)}
	}
}
