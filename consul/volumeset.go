package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// ErrNoVolume is returned by UpdateVolume for a volume that does not exist.
var ErrNoVolume = errors.New("no such volume")

// UpdateVolume changes volume name's definition with change, atomically:
// a check-and-set on the key's ModifyIndex, retried when another writer
// came first. Every node's WatchVolumes sees the new definition.
func UpdateVolume(ctx context.Context, c *api.Client, k Keys, name string, change func(*VolumeDef) error) (VolumeDef, error) {
	for attempt := 0; ; attempt++ {
		p, _, err := c.KV().Get(k.Volume(name), qopts(ctx))
		if err != nil {
			return VolumeDef{}, fmt.Errorf("consul: reading volume %s: %w", name, err)
		}
		if p == nil {
			return VolumeDef{}, fmt.Errorf("volume %s: %w", name, ErrNoVolume)
		}
		var d VolumeDef
		if err := json.Unmarshal(p.Value, &d); err != nil {
			return VolumeDef{}, fmt.Errorf("consul: volume %s: bad definition: %w", name, err)
		}
		if err := change(&d); err != nil {
			return VolumeDef{}, err
		}
		b, err := json.Marshal(d)
		if err != nil {
			return VolumeDef{}, err
		}
		ok, _, err := c.KV().CAS(&api.KVPair{Key: p.Key, Value: b, ModifyIndex: p.ModifyIndex}, wopts(ctx))
		if err != nil {
			return VolumeDef{}, fmt.Errorf("consul: updating volume %s: %w", name, err)
		}
		if ok {
			return d, nil
		}
		if attempt >= 10 || ctx.Err() != nil {
			return VolumeDef{}, fmt.Errorf("consul: updating volume %s: the definition kept changing", name)
		}
	}
}
