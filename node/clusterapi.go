package node

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/consul"
	"github.com/csnap/csnap/snapstore"
)

// clusterService answers the HTTP API in cluster mode. Volumes come from
// Consul KV; snapshot operations go through this node's snapshot client to
// the volume's server, wherever it runs.
type clusterService struct{ n *clusterNode }

func (s *clusterService) Health(context.Context) (api.Health, error) {
	h := api.Health{Status: "ok", Node: s.n.node, Targets: s.n.isrv.TargetNames()}
	if err := s.n.healthErr(); err != nil { // a fenced or failed engine (hardening.go)
		h.Status = "failed"
		return h, err
	}
	return h, nil
}

func (s *clusterService) Recover(ctx context.Context, volume string) (api.RecoverReport, error) {
	o, err := s.ops(volume)
	if err != nil {
		return api.RecoverReport{}, err
	}
	return o.recover(ctx)
}

func (s *clusterService) consulErr(err error) error {
	return fmt.Errorf("%w: %v", api.ErrUnavailable, err)
}

func (s *clusterService) Volumes(ctx context.Context) ([]api.Volume, error) {
	defs, servers, err := s.n.consul.ListVolumes(ctx)
	if err != nil {
		return nil, s.consulErr(err)
	}
	out := make([]api.Volume, 0, len(defs))
	for _, d := range defs {
		out = append(out, s.describe(ctx, d, servers[d.Name]))
	}
	return out, nil
}

// describe fills an api.Volume; the snapshot count needs this node's
// client to be connected (0 otherwise).
func (s *clusterService) describe(ctx context.Context, d consul.VolumeDef, si consul.ServerInfo) api.Volume {
	v := api.Volume{Name: d.Name, Origin: d.Origin, Store: d.Store, Size: d.Size, ChunkSize: d.ChunkSize, Server: si.Node,
		Initiators: d.Initiators, Refused: s.n.refusal(d.Name)}
	if ops, err := s.ops(d.Name); err == nil {
		if snaps, err := ops.live(ctx); err == nil {
			v.Snapshots = len(snaps)
		}
		v.LocationCache = ops.locationCache()
		if err := ops.cl.IOError(); err != nil {
			v.IOError = err.Error()
		}
	}
	if eng := s.n.servedEngines()[d.Name]; eng != nil {
		engineStatus(&v, eng)
	}
	return v
}

func (s *clusterService) Volume(ctx context.Context, name string) (api.Volume, error) {
	defs, servers, err := s.n.consul.ListVolumes(ctx)
	if err != nil {
		return api.Volume{}, s.consulErr(err)
	}
	for _, d := range defs {
		if d.Name == name {
			return s.describe(ctx, d, servers[name]), nil
		}
	}
	return api.Volume{}, fmt.Errorf("volume %s: %w", name, api.ErrNotFound)
}

// CreateVolume formats the snapshot store and publishes the volume; every
// node (this one included) picks it up from Consul and exports it. The
// origin and store paths must name the same shared storage on every node.
// A missing origin file is created (sparse) with the given size, a missing
// store file with the origin's size. Both must lie under this node's
// volume_paths (and every other node checks them against its own). A
// store that already holds a csnap store is never formatted over; one
// that holds any other data (a non-zero byte in its first or last MiB)
// only with r.Force; a csnap store is never taken as an origin.
func (s *clusterService) CreateVolume(ctx context.Context, r api.CreateVolume) (api.Volume, error) {
	if err := api.ValidName("volume", r.Name); err != nil {
		return api.Volume{}, err
	}
	if err := api.ValidInitiators(r.Initiators); err != nil {
		return api.Volume{}, err
	}
	if !filepath.IsAbs(r.Origin) || !filepath.IsAbs(r.Store) {
		return api.Volume{}, fmt.Errorf("%w: origin and store must be absolute paths (every node opens them)", api.ErrBadRequest)
	}
	if err := checkVolumePaths(s.n.o.VolumePaths, r.Origin, r.Store); err != nil {
		if errors.Is(err, errPathNotAllowed) {
			return api.Volume{}, fmt.Errorf("%w: %v", api.ErrForbidden, err)
		}
		return api.Volume{}, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
	}
	if r.ChunkSize == 0 {
		r.ChunkSize = devChunkSize
	}
	if old, err := s.n.consul.GetVolume(ctx, r.Name); err != nil {
		return api.Volume{}, s.consulErr(err)
	} else if old != nil {
		return api.Volume{}, fmt.Errorf("%w: volume %s already exists", api.ErrConflict, r.Name)
	}
	osize, info, err := prepareVolume(r, s.n.o.DirectIO, s.n.log)
	if err != nil {
		return api.Volume{}, err
	}
	def := consul.VolumeDef{Name: r.Name, Origin: r.Origin, Store: r.Store, Size: osize,
		ChunkSize: r.ChunkSize, UUID: hex.EncodeToString(info.UUID[:]), Created: time.Now().UTC(), Initiators: r.Initiators}
	if err := s.n.consul.PublishVolume(ctx, def); err != nil {
		if errors.Is(err, consul.ErrVolumeExists) {
			return api.Volume{}, fmt.Errorf("%w: %v (created concurrently; the store %s was formatted for nothing)", api.ErrConflict, err, r.Store)
		}
		return api.Volume{}, s.consulErr(err)
	}
	s.n.log.WithFields(map[string]any{"volume": r.Name, "origin": r.Origin, "store": r.Store, "size": osize}).Info("volume created and published")
	s.awaitUsable(ctx, r.Name)
	return api.Volume{Name: def.Name, Origin: def.Origin, Store: def.Store, Size: def.Size, ChunkSize: def.ChunkSize, Initiators: def.Initiators}, nil
}

// SetVolume changes a volume's definition in Consul; every node applies
// it when its watch sees the change (the initiator allow-list: at once,
// to new logins on every target of the volume).
func (s *clusterService) SetVolume(ctx context.Context, name string, r api.SetVolume) (api.Volume, error) {
	d, err := s.n.consul.UpdateVolume(ctx, name, func(d *consul.VolumeDef) error {
		if r.Initiators != nil {
			d.Initiators = slices.Clone(*r.Initiators)
			if len(d.Initiators) == 0 {
				d.Initiators = nil
			}
		}
		return nil
	})
	if errors.Is(err, consul.ErrNoVolume) {
		return api.Volume{}, fmt.Errorf("volume %s: %w", name, api.ErrNotFound)
	}
	if err != nil {
		return api.Volume{}, s.consulErr(err)
	}
	s.n.log.WithFields(map[string]any{"volume": name, "initiators": d.Initiators}).Info("volume settings changed")
	if v := s.n.volume(name); v != nil {
		v.update(d) // this node at once; the others through their watch
	}
	return s.Volume(ctx, name)
}

// volumeUsableWait bounds how long volume create waits for this node to
// pick up the new volume and connect to its server.
const volumeUsableWait = 30 * time.Second

// awaitUsable waits (volumeUsableWait at most) until this node serves
// snapshot commands for volume name, so that commands run right after
// volume create returns (as the usage texts suggest) find it ready. The
// volume exists either way; a slow election only shows up as a later
// "not connected yet".
func (s *clusterService) awaitUsable(ctx context.Context, name string) {
	ctx, cancel := context.WithTimeout(ctx, volumeUsableWait)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := s.ops(name); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			s.n.log.WithField("volume", name).Warn("volume created, but this node is not connected to its snapshot server yet")
			return
		case <-tick.C:
		}
	}
}

// ops returns the volume's operations through this node's client.
func (s *clusterService) ops(name string) (volumeOps, error) {
	v := s.n.volume(name)
	if v == nil {
		return volumeOps{}, fmt.Errorf("volume %s: %w (or not picked up by node %s yet)", name, api.ErrNotFound, s.n.node)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cl == nil {
		return volumeOps{}, fmt.Errorf("%w: node %s is not connected to the snapshot server of %s yet", api.ErrUnavailable, s.n.node, name)
	}
	return volumeOps{name: name, exp: v.exp, cl: v.cl}, nil
}

func (s *clusterService) Snapshots(ctx context.Context, volume string) ([]api.Snapshot, error) {
	o, err := s.ops(volume)
	if err != nil {
		return nil, err
	}
	return o.snapshots(ctx)
}

func (s *clusterService) CreateSnapshot(ctx context.Context, volume string, r api.CreateSnapshot) (api.Snapshot, error) {
	o, err := s.ops(volume)
	if err != nil {
		return api.Snapshot{}, err
	}
	return o.createSnapshot(ctx, r)
}

func (s *clusterService) DeleteSnapshot(ctx context.Context, volume, snap string) error {
	o, err := s.ops(volume)
	if err != nil {
		return err
	}
	return o.deleteSnapshot(ctx, snap)
}

func (s *clusterService) Server(ctx context.Context, volume string) (api.Server, error) {
	v := s.n.volume(volume)
	if v == nil {
		return api.Server{}, fmt.Errorf("volume %s: %w", volume, api.ErrNotFound)
	}
	si, ok := v.watch.Current()
	if !ok {
		return api.Server{}, fmt.Errorf("%w: no server elected for volume %s right now", api.ErrUnavailable, volume)
	}
	return api.Server{Node: si.Node, Address: si.Addr, Term: si.Term, Since: si.Since}, nil
}

func (s *clusterService) Clients(ctx context.Context, volume string) ([]api.ClientEntry, error) {
	o, err := s.ops(volume)
	if err != nil {
		return nil, err
	}
	return o.clients(ctx)
}

func (s *clusterService) Check(ctx context.Context, volume string) (api.CheckReport, error) {
	o, err := s.ops(volume)
	if err != nil {
		return api.CheckReport{}, err
	}
	return o.check(ctx)
}

// prepareVolume makes a new volume's devices ready: a missing origin is
// created (sparse, r.Size), a missing store too (the origin's size); the
// store is formatted unless it holds a csnap store (never) or other data
// (only with r.Force); a csnap store is refused as an origin. It returns
// the origin's size and the new store's identity.
func prepareVolume(r api.CreateVolume, direct bool, log *logrus.Entry) (int64, snapstore.StoreInfo, error) {
	var none snapstore.StoreInfo
	if _, err := os.Stat(r.Origin); errors.Is(err, os.ErrNotExist) {
		if r.Size <= 0 {
			return 0, none, fmt.Errorf("%w: origin %s does not exist: give --size to create it", api.ErrBadRequest, r.Origin)
		}
		if _, err := createSparse(r.Origin, r.Size); err != nil {
			return 0, none, fmt.Errorf("creating origin %s: %w", r.Origin, err)
		}
	}
	origin, err := openFileDev(r.Origin, direct)
	if err != nil {
		return 0, none, fmt.Errorf("%w: origin %s: %v", api.ErrBadRequest, r.Origin, err)
	}
	defer origin.Close()
	if looksLikeStore(origin) {
		return 0, none, fmt.Errorf("%w: origin %s holds a csnap snapshot store: refusing to use it as an origin", api.ErrConflict, r.Origin)
	}
	osize, err := origin.Size()
	if err != nil {
		return 0, none, fmt.Errorf("origin %s: %w", r.Origin, err)
	}
	if r.Size > 0 && r.Size != osize {
		return 0, none, fmt.Errorf("%w: origin %s has %d bytes, not the %d asked for", api.ErrBadRequest, r.Origin, osize, r.Size)
	}
	fresh, err := createStoreFile(r.Store, osize)
	if err != nil {
		return 0, none, fmt.Errorf("creating store %s: %w", r.Store, err)
	}
	store, err := openFileDev(r.Store, direct)
	if err != nil {
		return 0, none, fmt.Errorf("%w: store %s: %v", api.ErrBadRequest, r.Store, err)
	}
	defer store.Close()
	if info, err := snapstore.Inspect(store); err == nil {
		return 0, none, fmt.Errorf("%w: %s already holds a csnap snapshot store (uuid %x); refusing to format over it", api.ErrConflict, r.Store, info.UUID)
	}
	if looksLikeStore(store) {
		return 0, none, fmt.Errorf("%w: %s holds a damaged csnap snapshot store; refusing to format over it (wipe its first MiB by hand if it is really to go)", api.ErrConflict, r.Store)
	}
	if !fresh {
		ssize, err := store.Size()
		if err != nil {
			return 0, none, fmt.Errorf("store %s: %w", r.Store, err)
		}
		used, err := usedData(store, ssize)
		if err != nil {
			return 0, none, fmt.Errorf("store %s: %w", r.Store, err)
		}
		if used != "" && !r.Force {
			return 0, none, fmt.Errorf("%w: store %s holds data that is not a csnap store (%s); refusing to format it without --force", api.ErrConflict, r.Store, used)
		}
		if used != "" {
			log.WithFields(map[string]any{"volume": r.Name, "store": r.Store, "found": used}).Warn("formatting over existing data (--force)")
		}
	}
	if err := snapstore.Format(origin, store, snapstore.FormatOptions{ChunkSize: int(r.ChunkSize)}); err != nil {
		if errors.Is(err, snapstore.ErrChunkSize) {
			return 0, none, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
		}
		return 0, none, fmt.Errorf("formatting the snapshot store %s: %w", r.Store, err)
	}
	info, err := snapstore.Inspect(store)
	if err != nil {
		return 0, none, fmt.Errorf("reading back the formatted store %s: %w", r.Store, err)
	}
	return osize, info, nil
}
