package scsi

import (
	"errors"
	"sync/atomic"
	"testing"
)

// cutStore is a MemStore whose updates fail while cut, as a cluster store
// does while its node cannot reach the volume's server.
type cutStore struct {
	*MemStore
	cut atomic.Bool
}

var errCut = errors.New("store cut off")

func (s *cutStore) Update(lu string, fn func(*LUState) error) error {
	if s.cut.Load() {
		return errCut
	}
	return s.MemStore.Update(lu, fn)
}

// TestStoreCutOff: while the store cannot be written, commands still run
// against the reservations it last knew (a new nexus reads, and is
// refused writes a reservation forbids); reservation changes fail with
// NOT READY; unit attentions wait, and are reported once the store is
// back.
func TestStoreCutOff(t *testing.T) {
	be := NewMemBackend(64*BlockSize, testIdentity())
	lu := NewLU(be)
	store := &cutStore{MemStore: NewMemStore()}
	tgt, err := NewTarget(map[uint64]*LU{0: lu}, store)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tgt, be: be, lu: lu}
	f.ready(nexA)
	wantGood(t, f.prOut(nexA, proutRegister, 0, 0, 0xa))
	wantGood(t, f.prOut(nexA, proutReserve, prTypeWE, 0xa, 0))

	store.cut.Store(true)
	// nexB was never seen: it cannot be admitted, yet it reads.
	wantGood(t, f.run(nexB, rw10(opRead10, 0, 1, 0), nil))
	// The reservation, known from before the cut, still holds.
	wantConflict(t, f.run(nexB, rw10(opWrite10, 0, 1, 0), pattern(1, 1)))
	wantGood(t, f.run(nexA, rw10(opWrite10, 0, 1, 0), pattern(1, 2)))
	// Changing the reservation needs the store.
	r := f.prOut(nexA, proutRelease, prTypeWE, 0xa, 0)
	wantSense(t, r, SenseNotReady, 0x04, 0x00)
	if !errors.Is(r.Err, errCut) {
		t.Fatalf("NOT READY without the store's error: %v", r.Err)
	}

	store.cut.Store(false)
	// Admitted now: its POWER ON, RESET is reported first.
	wantSense(t, f.run(nexB, rw10(opRead10, 0, 1, 0), nil), SenseUnitAttention, 0x29, 0x00)
	wantGood(t, f.run(nexB, rw10(opRead10, 0, 1, 0), nil))
	wantGood(t, f.prOut(nexA, proutRelease, prTypeWE, 0xa, 0))
	wantGood(t, f.run(nexB, rw10(opWrite10, 0, 1, 0), pattern(1, 3)))
}
