package node

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/target/scsi"
)

// sharedStore keeps the SCSI target's reservation and unit-attention
// state (scsi.ReservationStore) in the snapshot client's shared state, so
// every node exporting a volume enforces the same reservations and a
// unit attention raised on one node (a LUN reset, a PREEMPT) reaches the
// initiators of the others. Reads decode the client's local replica (once
// per version); updates are compare-and-set rounds through the volume's
// server, in force on every connected node when they return. While the
// server cannot be reached, updates fail (the SCSI target then refuses
// reservation changes and defers unit attentions): the first failure and
// the recovery are logged.
type sharedStore struct {
	cl      *client.Client
	log     *logrus.Entry
	failing atomic.Bool

	mu      sync.Mutex
	decoded map[string]decodedState
}

type decodedState struct {
	version uint64
	state   *scsi.LUState
}

func newSharedStore(cl *client.Client, log *logrus.Entry) *sharedStore {
	return &sharedStore{cl: cl, log: log, decoded: map[string]decodedState{}}
}

// Get implements scsi.ReservationStore.
func (s *sharedStore) Get(lu string) (*scsi.LUState, error) {
	version, value := s.cl.Shared(lu)
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.decoded[lu]; ok && d.version == version {
		return d.state, nil
	}
	st, err := decodeLUState(value)
	if err != nil {
		return nil, fmt.Errorf("shared state of %s, version %d: %w", lu, version, err)
	}
	s.decoded[lu] = decodedState{version: version, state: st}
	return st, nil
}

// Update implements scsi.ReservationStore: fn may run more than once.
func (s *sharedStore) Update(lu string, fn func(*scsi.LUState) error) error {
	var fnErr error
	err := s.cl.UpdateShared(context.Background(), lu, func(cur []byte) ([]byte, error) {
		st, err := decodeLUState(cur)
		if err != nil {
			return nil, fmt.Errorf("shared state of %s: %w", lu, err)
		}
		if fnErr = fn(st); fnErr != nil {
			return nil, fnErr
		}
		return st.MarshalBinary()
	})
	switch {
	case err == nil:
		if s.failing.CompareAndSwap(true, false) {
			s.log.WithField("lu", lu).Info("SCSI shared state can be updated again")
		}
	case fnErr == nil && s.failing.CompareAndSwap(false, true):
		s.log.WithFields(logrus.Fields{"lu": lu, "error": err}).
			Warn("cannot update the SCSI shared state: reservation changes fail and unit attentions wait until the snapshot server is back")
	}
	return err
}

// decodeLUState decodes a replica value; nil is the state of a logical
// unit never written.
func decodeLUState(b []byte) (*scsi.LUState, error) {
	if b == nil {
		return &scsi.LUState{}, nil
	}
	return scsi.UnmarshalLUState(b)
}

// persistedSCSIState is the snapshot server's Config.PersistShared for the
// SCSI shared state: of a logical unit's state only the mode parameters
// outlive a restart of every node, and only when they are not the
// defaults. Reservations (csnap has no APTPL) and unit attentions do not.
func persistedSCSIState(key string, value []byte) []byte {
	st, err := decodeLUState(value)
	if err != nil || st.Mode == (scsi.ModeParameters{}) {
		return nil
	}
	b, err := (&scsi.LUState{Mode: st.Mode}).MarshalBinary()
	if err != nil {
		return nil
	}
	return b
}
