package client

import (
	"context"
	"fmt"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

// SnapshotInfo describes one snapshot.
type SnapshotInfo struct {
	ID          uint32
	Name        string
	Created     time.Time
	Priority    int32 // higher survives longer when the store fills
	Writable    bool
	Dropped     bool // dropped to free store space: reads fail
	Deleting    bool // deleted, space not yet reclaimed
	UniqueBytes uint64
	SharedBytes uint64
}

func snapshotInfo(e wire.SnapshotEntry) SnapshotInfo {
	return SnapshotInfo{ID: e.ID, Name: e.Name, Created: time.Unix(0, e.Created), Priority: e.Priority,
		Writable: e.Writable, Dropped: e.Dropped, Deleting: e.Deleting,
		UniqueBytes: e.UniqueBytes, SharedBytes: e.SharedBytes}
}

// ClientInfo is one entry of the server's client registry.
type ClientInfo struct {
	ID        wire.ClientID
	Node      string
	Connected bool // false: awaited after a failover
	Locks     uint32
}

// ServerStatus describes the volume's server.
type ServerStatus struct {
	Term       uint64
	Since      time.Time // when this server took the term
	Node       string
	Volume     string
	Generation uint64
	Clients    []ClientInfo
}

// CheckResult is the outcome of a store consistency check.
type CheckResult struct {
	Problems []string
	Omitted  uint32 // problems found beyond those listed
}

// Clean reports whether the check found no problem.
func (r CheckResult) Clean() bool { return len(r.Problems) == 0 && r.Omitted == 0 }

// admin sends an admin request and returns its reply, failing on ERROR.
// Admin calls wait for the server as long as ctx allows, except that they
// fail with ErrTimeout once the server has been unreachable for IOTimeout.
// A call interrupted by a reconnection is sent again, so a create or
// delete whose first attempt took effect may report ErrExists or
// ErrSnapshotGone; the error says so.
func (c *Client) admin(ctx context.Context, op string, m wire.Message) (wire.Message, error) {
	cl, err := c.start(kindAdmin, m)
	if err != nil {
		return nil, fmt.Errorf("snapclient: %s: %w", op, err)
	}
	r, err := c.wait(ctx, cl, time.Time{})
	if err == nil {
		if e, ok := r.(*wire.Error); ok {
			err = serverError(e)
			c.mu.Lock()
			resent := cl.resent
			c.mu.Unlock()
			if resent {
				err = fmt.Errorf("%w (the request was sent again after a reconnection; the first attempt may have taken effect)", err)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("snapclient: %s: %w", op, err)
	}
	return r, nil
}

// CreateSnapshot takes a snapshot of the origin. When it returns, every
// origin write acknowledged anywhere before the call is in the snapshot.
func (c *Client) CreateSnapshot(ctx context.Context, name string, priority int32, writable bool) (SnapshotInfo, error) {
	r, err := c.admin(ctx, "create snapshot "+name, &wire.CreateSnapshot{Name: name, Priority: priority, Writable: writable})
	if err != nil {
		return SnapshotInfo{}, err
	}
	return snapshotInfo(r.(*wire.CreateSnapshotOK).Snapshot), nil
}

// DeleteSnapshot deletes a snapshot by name.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	_, err := c.admin(ctx, "delete snapshot "+name, &wire.DeleteSnapshot{Snapshot: wire.SnapshotRef{Name: name}})
	c.forgetDeleted()
	return err
}

// DeleteSnapshotID deletes a snapshot by id.
func (c *Client) DeleteSnapshotID(ctx context.Context, id uint32) error {
	_, err := c.admin(ctx, fmt.Sprintf("delete snapshot %d", id), &wire.DeleteSnapshot{Snapshot: wire.SnapshotRef{ID: id}})
	c.forgetDeleted()
	return err
}

// forgetDeleted drops the location cache after a delete through this
// client (whatever its outcome; deletes are rare), so that this client
// reads a snapshot it deleted as gone at once rather than after the
// RECLAIM. Other clients learn it from the RECLAIM.
func (c *Client) forgetDeleted() {
	c.mu.Lock()
	c.dropLocationsLocked()
	c.mu.Unlock()
}

// SetPriority changes a snapshot's priority.
func (c *Client) SetPriority(ctx context.Context, name string, priority int32) error {
	_, err := c.admin(ctx, "set priority of "+name, &wire.SetPriority{Snapshot: wire.SnapshotRef{Name: name}, Priority: priority})
	return err
}

// Snapshots lists every snapshot (all pages), ascending by id.
func (c *Client) Snapshots(ctx context.Context) ([]SnapshotInfo, error) {
	var out []SnapshotInfo
	after := uint32(0)
	for {
		r, err := c.admin(ctx, "list snapshots", &wire.ListSnapshots{After: after, Max: wire.MaxListEntries})
		if err != nil {
			return nil, err
		}
		l := r.(*wire.SnapshotList)
		for _, e := range l.Entries {
			out = append(out, snapshotInfo(e))
		}
		if !l.More || len(l.Entries) == 0 {
			return out, nil
		}
		after = l.Entries[len(l.Entries)-1].ID
	}
}

// Status returns the server's state and client registry.
func (c *Client) Status(ctx context.Context) (ServerStatus, error) {
	r, err := c.admin(ctx, "status", &wire.Status{})
	if err != nil {
		return ServerStatus{}, err
	}
	s := r.(*wire.StatusOK)
	st := ServerStatus{Term: s.Term, Since: time.Unix(0, s.Since), Node: s.Node, Volume: s.Volume, Generation: s.Generation}
	for _, cs := range s.Clients {
		st.Clients = append(st.Clients, ClientInfo{ID: cs.Client, Node: cs.Node, Connected: cs.Connected, Locks: cs.Locks})
	}
	return st, nil
}

// RecoverEngine asks the server to recover its failed store engine in
// place now (it also retries by itself, with backoff).
func (c *Client) RecoverEngine(ctx context.Context) error {
	_, err := c.admin(ctx, "recover", &wire.Recover{})
	return err
}

// Check runs a full consistency check of the store on the server.
func (c *Client) Check(ctx context.Context) (CheckResult, error) {
	r, err := c.admin(ctx, "check", &wire.Check{})
	if err != nil {
		return CheckResult{}, err
	}
	k := r.(*wire.CheckOK)
	return CheckResult{Problems: k.Problems, Omitted: k.Omitted}, nil
}
