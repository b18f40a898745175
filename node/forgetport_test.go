package node

import (
	"testing"

	"github.com/csnap/csnap/target/scsi"
)

// TestForgetPortGroup: the rewrite used when a node leaves forgets the
// nexuses of that node's target ports (its portal group tag) and keeps
// everything else, reservations included.
func TestForgetPortGroup(t *testing.T) {
	gone := scsi.NexusID{InitiatorPort: "iqn.2026-11.io.example:h1,i,0x230000000001", TargetPort: "iqn.2026-11.io.csnap:v1,t,0x0003"}
	kept := scsi.NexusID{InitiatorPort: "iqn.2026-11.io.example:h1,i,0x230000000002", TargetPort: "iqn.2026-11.io.csnap:v1,t,0x0001"}
	st := &scsi.LUState{Nexuses: map[scsi.NexusID][]scsi.UnitAttention{gone: nil, kept: nil},
		Reservation: &scsi.PersistentReservation{Holder: gone, Type: 1}, Capacity: 1 << 20}
	v, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	f := forgetPortGroup(3)
	nv, ok := f("k", v)
	if !ok {
		t.Fatal("nothing changed")
	}
	got, err := scsi.UnmarshalLUState(nv)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got.Nexuses[gone]; ok {
		t.Error("the departed node's nexus is still there")
	}
	if _, ok := got.Nexuses[kept]; !ok {
		t.Error("another node's nexus was forgotten")
	}
	if got.Reservation == nil || got.Reservation.Holder != gone {
		t.Error("the reservation did not survive the nexus loss")
	}
	if _, ok := forgetPortGroup(9)("k", v); ok {
		t.Error("a port group with no nexus changed the state")
	}
	if _, ok := forgetPortGroup(3)("k", []byte("junk")); ok {
		t.Error("an undecodable value was rewritten")
	}
}
