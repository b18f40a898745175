package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/csnap/csnap/metrics"
	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/target/scsi"
)

// volumeBackend presents a snapshot client's volume (the origin or one
// snapshot) as a scsi.Backend. It is the only place where snapstore meets
// the SCSI layer: errors become the sense data an initiator should see.
type volumeBackend struct {
	v  *client.Volume
	id scsi.Identity
	// sanitizeShared lets SANITIZE run on the origin while snapshots
	// share its data (they keep it). Not yet settable per volume (see
	// docs/session8/notes-conform.md).
	sanitizeShared bool
	// io counts the LU's IO (nil: not counted).
	io *metrics.IOMetrics
}

func (b *volumeBackend) ReadAt(p []byte, off int64) error {
	start := time.Now()
	err := b.v.ReadAt(p, off)
	b.io.Read(len(p), time.Since(start))
	return senseFor(err)
}

func (b *volumeBackend) WriteAt(p []byte, off int64, fua bool) error {
	start := time.Now()
	err := b.v.WriteAt(p, off, fua)
	b.io.Write(len(p), time.Since(start))
	return senseFor(err)
}

func (b *volumeBackend) Flush() error {
	start := time.Now()
	err := b.v.Flush()
	b.io.Flush(time.Since(start))
	return senseFor(err)
}

func (b *volumeBackend) Unmap(off, length int64) error {
	start := time.Now()
	err := b.v.Unmap(off, length)
	b.io.Unmap(time.Since(start))
	return senseFor(err)
}
func (b *volumeBackend) Size() int64             { return b.v.Size() }
func (b *volumeBackend) ReadOnly() bool          { return b.v.ReadOnly() }
func (b *volumeBackend) Identity() scsi.Identity { return b.id }

// LockBlocks makes COMPARE AND WRITE atomic across the cluster's nodes
// (scsi.BlockLocker; the snapshot server's BLOCK_LOCK).
func (b *volumeBackend) LockBlocks(ctx context.Context, off int64, n int) (func() error, func(), error) {
	check, unlock, err := b.v.LockBlocks(ctx, off, n)
	return check, unlock, senseFor(err)
}

// SanitizeAllowed implements scsi.SanitizeGuard: a snapshot LU is never
// sanitized, and the origin only while no snapshot (live, dropped or being
// deleted) shares its data, unless sanitizeShared: a sanitize overwrites
// the origin through copy-outs, so the snapshots would keep the data it is
// meant to destroy. Refusals are ILLEGAL REQUEST, COMMAND SEQUENCE ERROR.
func (b *volumeBackend) SanitizeAllowed(ctx context.Context) error {
	refuse := func(err error) error {
		return &scsi.SenseError{Key: scsi.SenseIllegalRequest, ASC: 0x2c, ASCQ: 0x00, Err: err}
	}
	if b.v.SnapshotID() != 0 {
		return refuse(fmt.Errorf("sanitize of snapshot %d refused: only the origin can be sanitized", b.v.SnapshotID()))
	}
	if b.sanitizeShared {
		return nil
	}
	snaps, err := b.v.Client().Snapshots(ctx)
	if err != nil {
		return senseFor(fmt.Errorf("sanitize: listing snapshots: %w", err))
	}
	if len(snaps) > 0 {
		return refuse(fmt.Errorf("sanitize refused: %d snapshots share the origin's data", len(snaps)))
	}
	return nil
}

// senseFor maps snapshot-client errors to what the initiator sees:
//   - a deleted or dropped snapshot: NOT READY, LOGICAL UNIT NOT READY,
//     MANUAL INTERVENTION REQUIRED (04/03): an error, never stale data, and
//     not one an initiator retries forever;
//   - the snapshot server unreachable beyond the client's limit: HARDWARE
//     ERROR, INTERNAL TARGET FAILURE (44/00), after the IO waited;
//   - anything else is left to the SCSI layer (MEDIUM ERROR on the medium).
func senseFor(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, client.ErrSnapshotGone):
		return &scsi.SenseError{Key: scsi.SenseNotReady, ASC: 0x04, ASCQ: 0x03, Err: err}
	case errors.Is(err, client.ErrTimeout):
		return &scsi.SenseError{Key: scsi.SenseHardwareError, ASC: 0x44, ASCQ: 0x00, Err: err}
	}
	return err
}

// lunIdentity is the identity of a volume's LU: the origin (snap 0) or a
// snapshot, the same on every node.
func lunIdentity(volumeUUID [16]byte, snap uint64, product string) scsi.Identity {
	return scsi.IdentityFor(fmt.Sprintf("%x/%d", volumeUUID, snap), product)
}
