package scsi

import (
	"fmt"
	"strings"
	"testing"
)

// TestNexusesBounded: however many nexuses with the longest initiator names
// use a logical unit, its shared state keeps at most maxNexuses of them and
// encodes within a shared-state value (512 KiB); reservation holders and
// nexuses with pending unit attentions are never the ones forgotten.
func TestNexusesBounded(t *testing.T) {
	s := &LUState{}
	long := "iqn.2026-11.io.csnap:" + strings.Repeat("x", 223-len("iqn.2026-11.io.csnap:"))
	id := func(i int) NexusID {
		return NexusID{InitiatorPort: fmt.Sprintf("%s,i,0x%012x", long, i), TargetPort: "iqn.2026-11.io.csnap:volume-name-of-63-characters-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,t,0x0001"}
	}
	holder := id(0)
	s.admitNexus(holder)
	s.Reservation = &PersistentReservation{Holder: holder}
	for i := 1; i < 5000; i++ {
		s.admitNexus(id(i))
		if i%2 == 0 {
			s.takeUA(id(i)) // half of them ran a command and took their POWER ON
		}
	}
	if len(s.Nexuses) > maxNexuses {
		t.Fatalf("%d nexuses kept, at most %d", len(s.Nexuses), maxNexuses)
	}
	if _, ok := s.Nexuses[holder]; !ok {
		t.Fatal("the reservation holder's nexus was forgotten")
	}
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 512<<10 {
		t.Fatalf("LU state of %d bytes exceeds a shared-state value", len(b))
	}
	t.Logf("%d nexuses, %d bytes encoded", len(s.Nexuses), len(b))
}

// TestStaleNexusesOfARestartedNode: nexuses a node admitted before it
// crashed (NexusLost never ran for them) are forgotten when the node's next
// run admits its first nexus, and an initiator that logs in again with the
// same ISID gets POWER ON again; another node's nexuses are kept.
func TestStaleNexusesOfARestartedNode(t *testing.T) {
	be := NewMemBackend(1000*BlockSize, testIdentity())
	store := NewMemStore()
	first, other := node(t, be, store), node(t, be, store)
	first.ready(nexA)
	other.ready(nexC)
	// The first node crashes; its next run shares the store.
	again := node(t, be, store)
	again.ready(nexB)
	st, err := store.Get(again.lu.id)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Nexuses[nexusID(nexA)]; ok {
		t.Error("nexus of the crashed run still remembered")
	}
	if _, ok := st.Nexuses[nexusID(nexC)]; !ok {
		t.Error("another node's nexus forgotten")
	}
	// nexA logs in again: a new nexus for this run, so POWER ON.
	wantSense(t, again.run(nexA, tur(), nil), SenseUnitAttention, 0x29, 0x00)
}

// TestForgetTargetPorts forgets the nexuses of the ports it matches only.
func TestForgetTargetPorts(t *testing.T) {
	s := &LUState{}
	s.admitNexus(nexusID(nexA))
	s.admitNexus(nexusID(nexB))
	s.admitNexus(nexusID(nexC))
	n := s.ForgetTargetPorts(func(p string) bool { return p == portA.Name })
	if n != 2 || len(s.Nexuses) != 1 {
		t.Fatalf("forgot %d, %d left", n, len(s.Nexuses))
	}
	if _, ok := s.Nexuses[nexusID(nexC)]; !ok {
		t.Fatal("the other port's nexus was forgotten")
	}
}
