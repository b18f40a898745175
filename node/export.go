package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/snapstore/wire"
	"github.com/csnap/csnap/target/iscsi"
	"github.com/csnap/csnap/target/scsi"
)

// export publishes one volume on this node's iSCSI server: the origin as
// target iqn...:V and every snapshot S as iqn...:V:S, each LUN 0, all backed
// by the node's snapshot client. refresh brings the snapshot targets in line
// with the server's list (called after a snapshot is created or deleted, and
// whenever the client reports a change).
type export struct {
	volume string
	uuid   [16]byte
	cl     *client.Client
	srv    *iscsi.Server
	log    *logrus.Entry
	chap   *iscsi.CHAP // required of initiators, if set
	// store holds every LUN's reservations and unit attentions in the
	// volume's shared state (the same on every node).
	store *sharedStore

	mu    sync.Mutex
	snaps map[string]uint32 // exported snapshot name -> id
	// initiators is the volume's initiator allow-list (empty: any), set
	// on every target; targets holds each exported target's
	// configuration, to re-register it when the list changes.
	initiators []string
	targets    map[string]iscsi.TargetConfig
	// copies holds the volume's targets: EXTENDED COPY between its LUs
	// runs inside the node.
	copies *scsi.CopyDomain
}

func newExport(volume string, uuid [16]byte, cl *client.Client, srv *iscsi.Server, chap *iscsi.CHAP, initiators []string, log *logrus.Entry) *export {
	return &export{volume: volume, uuid: uuid, cl: cl, srv: srv, chap: chap, log: log, snaps: map[string]uint32{},
		store: newSharedStore(cl, log), initiators: slices.Clone(initiators), targets: map[string]iscsi.TargetConfig{},
		copies: scsi.NewCopyDomain()}
}

// setInitiators replaces the initiator allow-list of every target of the
// volume (the origin's and each snapshot's): new logins are checked
// against it at once.
func (e *export) setInitiators(names []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if slices.Equal(e.initiators, names) {
		return
	}
	e.initiators = slices.Clone(names)
	for name, tc := range e.targets {
		tc.Initiators = slices.Clone(names)
		if err := e.srv.AddTarget(tc); err != nil {
			e.log.WithError(err).WithField("target", name).Error("updating the target's initiator allow-list")
			continue
		}
		e.targets[name] = tc
	}
	e.log.WithField("initiators", names).Info("initiator allow-list updated")
}

// initiatorList returns the initiator allow-list.
func (e *export) initiatorList() []string {
	if e == nil {
		return nil // not exported (yet)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.initiators)
}

// targetConfig returns the configuration exported for target iqn.
func (e *export) targetConfig(iqn string) (iscsi.TargetConfig, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	tc, ok := e.targets[iqn]
	return tc, ok
}

func originIQN(volume string) string         { return iqnPrefix + volume }
func snapshotIQN(volume, snap string) string { return iqnPrefix + volume + ":" + snap }

// addTarget exports one client volume as LUN 0 of target iqn. e.mu is held.
func (e *export) addTarget(iqn, alias string, v *client.Volume, snap uint64, product string) error {
	be := &volumeBackend{v: v, id: lunIdentity(e.uuid, snap, product)}
	t, err := scsi.NewTarget(map[uint64]*scsi.LU{0: scsi.NewLU(be)}, e.store)
	if err != nil {
		return err
	}
	t.SetPreemptAbortHandler(e.srv.PreemptAbort)
	e.copies.Add(t)
	tc := iscsi.TargetConfig{Name: iqn, Alias: alias, Exec: t, CHAP: e.chap, Initiators: slices.Clone(e.initiators)}
	if err := e.srv.AddTarget(tc); err != nil {
		return err
	}
	e.targets[iqn] = tc
	return nil
}

// removeTarget ends target iqn's sessions and unexports it. e.mu is held.
func (e *export) removeTarget(iqn string) {
	e.srv.RemoveTarget(iqn)
	if t, ok := e.targets[iqn].Exec.(*scsi.Target); ok {
		e.copies.Remove(t)
	}
	delete(e.targets, iqn)
}

// start exports the origin and the current snapshots.
func (e *export) start(ctx context.Context) error {
	e.mu.Lock()
	err := e.addTarget(originIQN(e.volume), "csnap "+e.volume+" origin", e.cl.Origin(), 0, "csnap origin")
	e.mu.Unlock()
	if err != nil {
		return err
	}
	return e.refresh(ctx)
}

// refresh adds targets for snapshots that appeared and removes those of
// snapshots that were deleted. Dropped snapshots stay exported: their LUNs
// answer every read with an error, which tells initiators what happened.
func (e *export) refresh(ctx context.Context) error {
	list, err := e.cl.Snapshots(ctx)
	if err != nil {
		return fmt.Errorf("listing snapshots of %s: %w", e.volume, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	live := map[string]client.SnapshotInfo{}
	for _, s := range list {
		if !s.Deleting {
			live[s.Name] = s
		}
	}
	for name, id := range e.snaps {
		if s, ok := live[name]; !ok || s.ID != id {
			e.removeTarget(snapshotIQN(e.volume, name))
			delete(e.snaps, name)
			e.log.WithFields(logrus.Fields{"snapshot": name, "id": id}).Info("snapshot target removed")
		}
	}
	names := make([]string, 0, len(live))
	for n := range live {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, name := range names {
		s := live[name]
		if _, ok := e.snaps[name]; ok {
			continue
		}
		iqn := snapshotIQN(e.volume, name)
		if err := e.addTarget(iqn, "csnap "+e.volume+" snapshot "+name, e.cl.Snapshot(s.ID, s.Writable), uint64(s.ID), "csnap snapshot"); err != nil {
			errs = append(errs, fmt.Errorf("exporting snapshot %s: %w", name, err))
			continue
		}
		e.snaps[name] = s.ID
		e.log.WithFields(logrus.Fields{"snapshot": name, "id": s.ID, "target": iqn, "writable": s.Writable}).Info("snapshot target added")
	}
	return errors.Join(errs...)
}

// unexport removes a snapshot's target first (closing its sessions), so a
// delete never pulls data from under a logged-in initiator.
func (e *export) unexport(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.snaps[name]; ok {
		e.removeTarget(snapshotIQN(e.volume, name))
		delete(e.snaps, name)
	}
}

// clientID is the stable client id of a node for a volume.
func clientID(node, volume string) wire.ClientID { return wire.ClientIDFor(node, volume) }
