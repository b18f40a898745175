package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/clock"
)

// Keys is csnap's layout in Consul KV under a prefix (default "csnap/"):
//
//	PREFIX/volumes/V               the volume's definition (VolumeDef, JSON)
//	PREFIX/volumes/V/server        the server lock; value ServerInfo (JSON)
//	PREFIX/volumes/V/clients/ID    the client registry (ClientRecord, JSON)
type Keys struct{ Prefix string }

// Volumes is the prefix of every volume key.
func (k Keys) Volumes() string { return k.Prefix + "volumes/" }

// Volume is the key of volume v's definition.
func (k Keys) Volume(v string) string { return k.Volumes() + v }

// ServerLock is the key of volume v's server lock.
func (k Keys) ServerLock(v string) string { return k.Volume(v) + "/server" }

// Clients is the prefix of volume v's client registry.
func (k Keys) Clients(v string) string { return k.Volume(v) + "/clients/" }

// VolumeDef is a volume as published by `csnap-admin volume create`: the
// shared devices every node opens, and the store's UUID, from which every
// node derives the same SCSI identity for the volume's LUs.
type VolumeDef struct {
	Name      string    `json:"name"`
	Origin    string    `json:"origin"`
	Store     string    `json:"store"`
	Size      int64     `json:"size"`
	ChunkSize int64     `json:"chunk_size"`
	UUID      string    `json:"uuid"` // hex
	Created   time.Time `json:"created"`
	// Initiators, when not empty, is the allow-list of initiator names
	// of the volume's targets (every node's, origin and snapshots).
	Initiators []string `json:"initiators,omitempty"`
}

// ServerInfo is the value of a volume's server lock: who serves it, where,
// under which term (0 until the holder has announced it), since when.
type ServerInfo struct {
	Node  string    `json:"node"`
	Addr  string    `json:"addr"`
	Term  uint64    `json:"term"`
	Since time.Time `json:"since"`
}

// Encode returns the JSON value of the lock key.
func (s ServerInfo) Encode() []byte {
	b, _ := json.Marshal(s) // cannot fail: plain fields
	return b
}

// ErrVolumeExists is returned by PublishVolume for a name already taken.
var ErrVolumeExists = errors.New("volume already exists")

// PublishVolume writes def's key if it does not exist yet (check-and-set
// on index 0), so two concurrent creates cannot both win.
func PublishVolume(ctx context.Context, c *api.Client, k Keys, def VolumeDef) error {
	b, err := json.Marshal(def)
	if err != nil {
		return err
	}
	ok, _, err := c.KV().CAS(&api.KVPair{Key: k.Volume(def.Name), Value: b, ModifyIndex: 0}, wopts(ctx))
	if err != nil {
		return fmt.Errorf("consul: publishing volume %s: %w", def.Name, err)
	}
	if !ok {
		return fmt.Errorf("volume %s: %w", def.Name, ErrVolumeExists)
	}
	return nil
}

// GetVolume reads one volume's definition (nil, nil if there is none).
func GetVolume(ctx context.Context, c *api.Client, k Keys, name string) (*VolumeDef, error) {
	p, _, err := c.KV().Get(k.Volume(name), qopts(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul: reading volume %s: %w", name, err)
	}
	if p == nil {
		return nil, nil
	}
	var d VolumeDef
	if err := json.Unmarshal(p.Value, &d); err != nil {
		return nil, fmt.Errorf("consul: volume %s: bad definition: %w", name, err)
	}
	return &d, nil
}

// listVolumes returns the definitions under k.Volumes() and the servers
// named by their lock keys, with the query's index. Keys deeper than
// volumes/V (locks, registry) are not definitions.
func listVolumes(c *api.Client, k Keys, q *api.QueryOptions) ([]VolumeDef, map[string]ServerInfo, uint64, error) {
	pairs, meta, err := c.KV().List(k.Volumes(), q)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("consul: listing %s: %w", k.Volumes(), err)
	}
	var defs []VolumeDef
	servers := map[string]ServerInfo{}
	for _, p := range pairs {
		rest := strings.TrimPrefix(p.Key, k.Volumes())
		name, sub, deeper := strings.Cut(rest, "/")
		switch {
		case !deeper:
			var d VolumeDef
			if err := json.Unmarshal(p.Value, &d); err != nil || d.Name != name {
				// One bad key must not hide every other volume.
				continue
			}
			defs = append(defs, d)
		case sub == "server" && p.Session != "":
			var si ServerInfo
			if json.Unmarshal(p.Value, &si) == nil {
				servers[name] = si
			}
		}
	}
	sort.Slice(defs, func(i, j int) bool { return defs[i].Name < defs[j].Name })
	return defs, servers, meta.LastIndex, nil
}

// ListVolumes returns every published volume and the current server of
// each (absent when none holds the lock).
func ListVolumes(ctx context.Context, c *api.Client, k Keys) ([]VolumeDef, map[string]ServerInfo, error) {
	defs, servers, _, err := listVolumes(c, k, qopts(ctx))
	return defs, servers, err
}

// WatchVolumes calls fn with the published volumes now and after every
// change, until ctx ends. Blocking queries carry a client-side deadline.
func WatchVolumes(ctx context.Context, c *api.Client, k Keys, log *logrus.Entry, fn func([]VolumeDef)) {
	blockingLoop(ctx, log.WithField("watch", k.Volumes()), func(q *api.QueryOptions) (uint64, error) {
		defs, _, idx, err := listVolumes(c, k, q)
		if err == nil {
			fn(defs)
		}
		return idx, err
	})
}

// Blocking-query timings: the server holds a query up to blockWait; the
// client gives up blockSlack later (a partitioned agent never answers).
const (
	blockWait    = 10 * time.Second
	blockSlack   = 5 * time.Second
	blockBackoff = 500 * time.Millisecond
)

// blockingLoop runs fetch as a blocking query until ctx ends: each call
// waits for a change after the previous index, under a client-side
// deadline; errors are logged and retried after a pause.
func blockingLoop(ctx context.Context, log *logrus.Entry, fetch func(q *api.QueryOptions) (uint64, error)) {
	var index uint64
	failures := 0
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, blockWait+blockSlack)
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: blockWait}).WithContext(qctx)
		idx, err := fetch(q)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			if failures == 1 || failures%20 == 0 {
				log.WithError(err).WithField("failures", failures).Warn("Consul query failed; retrying")
			}
			index = 0
			clock.Sleep(ctx, blockBackoff)
			continue
		}
		failures = 0
		// Consul's rules: an index that goes backwards resets the watch;
		// never block on index 0 (it would not block).
		switch {
		case idx < index:
			index = 0
		case idx == 0:
			index = 1
		default:
			index = idx
		}
	}
}
