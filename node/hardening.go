package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/target/scsi"
)

// Server-side protocol hardening (issue 15): what the snapshot server is
// given to check its peers' claims, what the node does when its server
// can no longer serve, and the operator's repair of a logical unit's
// shared state.

// validateLUState is the snapshot server's Config.ValidateShared: every
// shared-state entry is the SCSI state of a logical unit (sharedstore.go),
// so a value that does not decode is refused before it reaches any node.
func validateLUState(_ string, v []byte) error {
	_, err := scsi.UnmarshalLUState(v)
	return err
}

// forgetPortGroup is a shared-state rewrite (server.RewriteShared) that
// forgets, in every logical unit's state, the nexuses of the iSCSI target
// ports of portal group tpgt: a departed node's (iSCSI names a target port
// "IQN,t,0xTPGT", as target/iscsi builds scsi.Port.Name).
// Values that do not decode are left alone.
func forgetPortGroup(tpgt uint16) func(key string, v []byte) ([]byte, bool) {
	suffix := fmt.Sprintf(",t,0x%04x", tpgt)
	return func(_ string, v []byte) ([]byte, bool) {
		if len(v) == 0 {
			return nil, false
		}
		st, err := scsi.UnmarshalLUState(v)
		if err != nil || st.ForgetTargetPorts(func(p string) bool { return strings.HasSuffix(p, suffix) }) == 0 {
			return nil, false
		}
		nv, err := st.MarshalBinary()
		if err != nil {
			return nil, false
		}
		return nv, true
	}
}

// consulLockCheck is the snapshot server's LockCheck in cluster mode: a
// consistent read of the volume's lock key, which must still be held by
// the session that won it, at the LockIndex that is the server's term.
type consulLockCheck struct {
	holder  func(ctx context.Context, key string) (session string, lockIndex uint64, err error)
	key     string
	session string
	term    uint64
}

func (c consulLockCheck) HoldsLock(ctx context.Context) (bool, error) {
	s, idx, err := c.holder(ctx, c.key)
	if err != nil {
		return false, err
	}
	return s == c.session && idx == c.term, nil
}

// engineWatchInterval is how often a serving node looks at its engine.
const engineWatchInterval = time.Second

// watchEngine fences the devices and resigns term as soon as eng fails
// (an IO error it cannot recover from), so that another node, or this one
// after reopening the store, serves the volume. It returns when ctx ends.
func (v *clusterVolume) watchEngine(ctx context.Context, eng *snapstore.Engine, term uint64) {
	t := time.NewTicker(engineWatchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := eng.Err(); err != nil {
			v.log.WithError(err).WithField("term", term).Error("snapshot store engine failed: fencing and giving the volume's lock up")
			v.fenceTerm(term)
			return
		}
	}
}

// fenceTerm fences the devices of term (if still served) and asks the
// election to give the lock up.
func (v *clusterVolume) fenceTerm(term uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.term != term || v.srv == nil {
		return
	}
	for _, f := range v.fences {
		f.fence()
	}
	select {
	case v.resign <- term:
	default: // a resignation is pending already
	}
}

// servingProblem says why this node cannot serve the volume it is the
// server of (devices fenced, engine failed); nil when it serves fine or
// is not the server.
func (v *clusterVolume) servingProblem() error {
	v.mu.Lock()
	eng, fences, term := v.eng, v.fences, v.term
	v.mu.Unlock()
	if eng == nil {
		return nil
	}
	if slices.ContainsFunc(fences, (*fencedDev).isFenced) {
		return fmt.Errorf("volume %s: this node's snapshot server (term %d) is fenced", v.def.Name, term)
	}
	if err := eng.Err(); err != nil {
		return fmt.Errorf("volume %s: this node's snapshot store engine (term %d) failed: %w", v.def.Name, term, err)
	}
	return nil
}

// healthErr is the error of /v1/health in cluster mode: every volume this
// node serves with a fenced or failed engine, as api.ErrUnavailable (503),
// so the node's Consul check fails too.
func (n *clusterNode) healthErr() error {
	n.mu.Lock()
	vols := make([]*clusterVolume, 0, len(n.vols))
	for _, v := range n.vols {
		vols = append(vols, v)
	}
	n.mu.Unlock()
	var probs []string
	for _, v := range vols {
		if err := v.servingProblem(); err != nil {
			probs = append(probs, err.Error())
		}
	}
	if len(probs) == 0 {
		return nil
	}
	slices.Sort(probs)
	return fmt.Errorf("%w: %s", api.ErrUnavailable, strings.Join(probs, "; "))
}

// devHealthErr is the error of /v1/health in -dev mode: the engine failed.
func devHealthErr(eng *snapstore.Engine) error {
	if eng == nil {
		return nil
	}
	if err := eng.Err(); err != nil {
		return fmt.Errorf("%w: volume %s: snapshot store engine failed: %v", api.ErrUnavailable, devVolume, err)
	}
	return nil
}

// stateKey is the shared-state key of a volume's logical unit: the origin
// (snap 0) or snapshot snap (export.addTarget builds the same LU).
func stateKey(uuid [16]byte, snap uint64) string {
	return scsi.NewLU(&volumeBackend{id: lunIdentity(uuid, snap, "")}).StateKey()
}

// resetState puts the shared state (reservations, registrations, unit
// attentions) of the volume's origin LU, or of snapshot snap's, back to
// that of a logical unit never used, on every node. srv, if this node is
// the volume's server, does it directly (ResetShared); otherwise this
// node's client writes the empty state without decoding the current one.
func (o volumeOps) resetState(ctx context.Context, srv *server.Server, snap string) (api.StateReset, error) {
	if o.exp == nil {
		return api.StateReset{}, fmt.Errorf("%w: volume %s is not exported on this node yet", api.ErrUnavailable, o.name)
	}
	var id uint64
	if snap != "" {
		all, err := o.cl.Snapshots(ctx)
		if err != nil {
			return api.StateReset{}, apiError(err)
		}
		i := slices.IndexFunc(all, func(s client.SnapshotInfo) bool { return s.Name == snap })
		if i < 0 {
			return api.StateReset{}, fmt.Errorf("snapshot %s of %s: %w", snap, o.name, api.ErrNotFound)
		}
		id = uint64(all[i].ID)
	}
	r := api.StateReset{Volume: o.name, Snapshot: snap, Key: stateKey(o.exp.uuid, id)}
	err := server.ErrServerClosed
	if srv != nil {
		r.Version, err = srv.ResetShared(ctx, r.Key)
	}
	if errors.Is(err, server.ErrServerClosed) { // not (or no longer) the server
		err = o.cl.UpdateShared(ctx, r.Key, func([]byte) ([]byte, error) { return nil, nil })
		r.Version, _ = o.cl.Shared(r.Key)
	}
	if err != nil {
		return api.StateReset{}, fmt.Errorf("%w: resetting the shared state of %s: %v", api.ErrUnavailable, r.Key, err)
	}
	o.exp.log.WithFields(logrus.Fields{"snapshot": snap, "key": r.Key, "version": r.Version}).
		Warn("logical unit's shared state reset by the operator")
	return r, nil
}

// ResetState implements api.StateResetter in -dev mode.
func (d *devService) ResetState(ctx context.Context, volume string, r api.ResetState) (api.StateReset, error) {
	if err := d.check(volume); err != nil {
		return api.StateReset{}, err
	}
	return d.ops().resetState(ctx, d.srv, r.Snapshot)
}

// ResetState implements api.StateResetter in cluster mode.
func (s *clusterService) ResetState(ctx context.Context, volume string, r api.ResetState) (api.StateReset, error) {
	o, err := s.ops(volume)
	if err != nil {
		return api.StateReset{}, err
	}
	var srv *server.Server
	if v := s.n.volume(volume); v != nil {
		srv = v.server()
	}
	return o.resetState(ctx, srv, r.Snapshot)
}
