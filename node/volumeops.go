package node

import (
	"context"
	"fmt"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/snapstore/client"
)

// volumeOps are the snapshot operations on one volume through this node's
// snapshot client (the server answers; the node's targets follow), shared
// by -dev and cluster mode.
type volumeOps struct {
	name string
	exp  *export
	cl   *client.Client
}

// live lists the snapshots not being deleted.
func (o volumeOps) live(ctx context.Context) ([]client.SnapshotInfo, error) {
	all, err := o.cl.Snapshots(ctx)
	if err != nil {
		return nil, apiError(err)
	}
	var out []client.SnapshotInfo
	for _, s := range all {
		if !s.Deleting {
			out = append(out, s)
		}
	}
	return out, nil
}

func (o volumeOps) toAPI(s client.SnapshotInfo) api.Snapshot {
	return api.Snapshot{
		Name: s.Name, ID: uint64(s.ID), Created: s.Created.UTC(), Priority: int(s.Priority),
		Writable: s.Writable, Dropped: s.Dropped,
		UniqueBytes: int64(s.UniqueBytes), SharedBytes: int64(s.SharedBytes),
		Target: snapshotIQN(o.name, s.Name),
	}
}

func (o volumeOps) snapshots(ctx context.Context) ([]api.Snapshot, error) {
	snaps, err := o.live(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Snapshot, 0, len(snaps))
	for _, s := range snaps {
		out = append(out, o.toAPI(s))
	}
	return out, nil
}

// createSnapshot takes the snapshot (the server's barrier makes it
// point-in-time across clients) and exports its target here before
// returning; other nodes export it when their client acknowledges the
// barrier.
func (o volumeOps) createSnapshot(ctx context.Context, r api.CreateSnapshot) (api.Snapshot, error) {
	if r.Priority < -128 || r.Priority > 127 {
		return api.Snapshot{}, fmt.Errorf("%w: priority %d is outside -128..127", api.ErrBadRequest, r.Priority)
	}
	s, err := o.cl.CreateSnapshot(ctx, r.Name, int32(r.Priority), r.Writable)
	if err != nil {
		return api.Snapshot{}, apiError(err)
	}
	if err := o.exp.refresh(ctx); err != nil {
		return api.Snapshot{}, fmt.Errorf("snapshot %s created, but exporting its target failed: %w", r.Name, err)
	}
	return o.toAPI(s), nil
}

// deleteSnapshot closes the snapshot's sessions on this node first, then
// deletes it; the store reclaims its space in the background. Other nodes
// remove their targets when they next list the snapshots (every second);
// until then their initiators get errors from it, never data.
func (o volumeOps) deleteSnapshot(ctx context.Context, name string) error {
	snaps, err := o.live(ctx)
	if err != nil {
		return err
	}
	found := false
	for _, s := range snaps {
		found = found || s.Name == name
	}
	if !found {
		return fmt.Errorf("snapshot %s of %s: %w", name, o.name, api.ErrNotFound)
	}
	o.exp.unexport(name)
	if err := o.cl.DeleteSnapshot(ctx, name); err != nil {
		o.exp.refresh(ctx) // put the target back if the delete did not happen
		return apiError(err)
	}
	return nil
}

// clients returns the server's registry, asked over the protocol.
func (o volumeOps) clients(ctx context.Context) ([]api.ClientEntry, error) {
	st, err := o.cl.Status(ctx)
	if err != nil {
		return nil, apiError(err)
	}
	out := []api.ClientEntry{}
	for _, c := range st.Clients {
		state := "awaited"
		if c.Connected {
			state = "connected"
		}
		out = append(out, api.ClientEntry{ID: c.ID.String(), Node: c.Node, State: state, Locks: int(c.Locks)})
	}
	return out, nil
}

// recover asks the server to recover its failed store engine in place,
// then clears this node's latched IO error (client.ClearIOErrors).
func (o volumeOps) recover(ctx context.Context) (api.RecoverReport, error) {
	if err := o.cl.RecoverEngine(ctx); err != nil {
		return api.RecoverReport{}, apiError(err)
	}
	r := api.RecoverReport{Volume: o.name, Engine: "ok"}
	if err := o.cl.IOError(); err != nil {
		r.ClearedIOError = err.Error()
		o.cl.ClearIOErrors()
	}
	return r, nil
}

// check runs the store's consistency check on the server.
func (o volumeOps) check(ctx context.Context) (api.CheckReport, error) {
	r, err := o.cl.Check(ctx)
	if err != nil {
		return api.CheckReport{}, apiError(err)
	}
	return api.CheckReport{Volume: o.name, Clean: r.Clean(), Problems: r.Problems}, nil
}

// locationCache reports this node's snapshot location cache.
func (o volumeOps) locationCache() *api.LocationCache {
	st := o.cl.LocationCacheStats()
	return &api.LocationCache{Hits: st.Hits, Misses: st.Misses, Entries: st.Entries, Bytes: st.Bytes}
}
