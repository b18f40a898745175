package scsi

import (
	"context"
	"testing"
)

// FuzzExecute feeds arbitrary CDBs and parameter data to a target and
// checks that nothing panics and every result is well formed.
func FuzzExecute(f *testing.F) {
	seeds := [][]byte{
		tur(), inquiry(true, 0x83, 255), rw10(opRead10, 0, 1, 0), rw10(opWrite10, 3, 2, 0x08),
		rw16(opWriteSame16, 0, 4, 0x08), unmapCDB(24), cawCDB(1, 1, 0), modeSense6(false, 0, 0x3f, 0xff, 255),
		{opModeSelect6, 0x10, 0, 0, 24, 0}, rsoc(true, 0, 0, 0, 4096), prIn(prinReadFullStatus),
		{opPROut, proutRegisterIgnore, 0, 0, 0, 0, 0, 0, 24, 0}, {opPROut, proutReserve, 1, 0, 0, 0, 0, 0, 24, 0},
		{opReserve6, 0, 0, 0, 0, 0}, getLBAStatus(0, 64), reportLUNs(64),
	}
	for i, s := range seeds {
		f.Add(s, unmapParams([2]uint64{1, 2}), uint8(i%3), uint8(0))
	}
	f.Fuzz(func(t *testing.T, cdb, data []byte, nexus, lun uint8) {
		fx := newFixture(t, 64)
		fx.be.SetReadOnly(lun&0x80 != 0)
		n := []Nexus{nexA, nexB, nexC}[int(nexus)%3]
		for i := range 2 { // twice: the first may be the unit attention
			r := fx.tgt.Execute(context.Background(), &Command{CDB: cdb, LUN: uint64(lun & 1), Nexus: n,
				DataOut: data, ExpectedLen: uint32(len(data))})
			switch r.Status {
			case StatusGood, StatusConditionMet:
				if len(r.Sense) != 0 {
					t.Fatalf("GOOD with sense data")
				}
			case StatusCheckCondition:
				if len(r.Sense) != 18 || r.Sense[0]&0x7f != 0x70 {
					t.Fatalf("bad sense % x", r.Sense)
				}
			case StatusReservationConflict:
			default:
				t.Fatalf("status %#x (run %d)", r.Status, i)
			}
			if r.DataOutLen < 0 {
				t.Fatal("negative DataOutLen")
			}
		}
	})
}
