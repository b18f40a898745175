package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/csnap/csnap/target/scsi"
)

// execLU runs cdb with data-out data on LUN 0 of target t.
func execLU(t *scsi.Target, n scsi.Nexus, cdb, data []byte) scsi.Result {
	return t.Execute(context.Background(), &scsi.Command{CDB: cdb, Nexus: n, Attr: scsi.TaskSimple,
		DataOut: data, ExpectedLen: uint32(len(data))})
}

// readyLU clears n's unit attentions on t.
func readyLU(tb testing.TB, t *scsi.Target, n scsi.Nexus) {
	tb.Helper()
	for range 10 {
		if execLU(t, n, make([]byte, 6), nil).Status == scsi.StatusGood {
			return
		}
	}
	tb.Fatal("unit attentions do not clear")
}

// xcopyB2B is an EXTENDED COPY(LID1) CDB and parameter list copying
// blocks from the LU named src to the LU named dst.
func xcopyB2B(src, dst [16]byte, blocks uint16, srcLBA, dstLBA uint64) (cdb, p []byte) {
	p = make([]byte, 16+2*32+28)
	p[1] = 2 << 3 // LIST ID USAGE 10b: no status held
	binary.BigEndian.PutUint16(p[2:4], 64)
	binary.BigEndian.PutUint32(p[8:12], 28)
	for i, naa := range [][16]byte{src, dst} {
		d := p[16+32*i:]
		d[0], d[4], d[5], d[7] = 0xe4, 0x01, 0x03, 16
		copy(d[8:24], naa[:])
		d[30] = 2 // disk block length 512
	}
	s := p[16+64:]
	s[0] = 0x02
	binary.BigEndian.PutUint16(s[2:4], 24)
	binary.BigEndian.PutUint16(s[6:8], 1)
	binary.BigEndian.PutUint16(s[10:12], blocks)
	binary.BigEndian.PutUint64(s[12:20], srcLBA)
	binary.BigEndian.PutUint64(s[20:28], dstLBA)
	cdb = make([]byte, 16)
	cdb[0] = 0x83
	binary.BigEndian.PutUint32(cdb[10:14], uint32(len(p)))
	return cdb, p
}

// TestExportCopyDomain: a volume's origin and snapshot targets form one
// copy domain: EXTENDED COPY sent to the origin copies a writable
// snapshot's blocks onto it (and the origin's onto the snapshot) through
// the snapshot client, and the read-only snapshot keeps what it had (the
// origin's overwrite copied out). SANITIZE is refused on the origin while
// snapshots exist and on a snapshot LU.
func TestExportCopyDomain(t *testing.T) {
	_, o, _ := resetEnv(t, true)
	ctx := context.Background()
	exp := o.exp
	if err := exp.start(ctx); err != nil {
		t.Fatal(err)
	}
	n := scsi.Nexus{InitiatorPort: "iqn.1993-08.org.debian:x,i,0x1", Port: scsi.Port{Name: "p,t,0x1", RelativeID: 1}}
	origin := exp.targets[originIQN("v1")].Exec.(*scsi.Target)
	readyLU(t, origin, n)
	old := bytes.Repeat([]byte("old!"), 128*16)
	w := make([]byte, 10)
	w[0] = 0x2a
	binary.BigEndian.PutUint32(w[2:6], 100)
	binary.BigEndian.PutUint16(w[7:9], 16)
	if r := execLU(origin, n, w, old); r.Status != scsi.StatusGood {
		t.Fatalf("write: %+v", r)
	}
	if _, err := o.cl.CreateSnapshot(ctx, "ro", 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := o.cl.CreateSnapshot(ctx, "rw", 0, true); err != nil {
		t.Fatal(err)
	}
	if err := exp.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	ro := exp.targets[snapshotIQN("v1", "ro")].Exec.(*scsi.Target)
	rw := exp.targets[snapshotIQN("v1", "rw")].Exec.(*scsi.Target)
	readyLU(t, ro, n)
	readyLU(t, rw, n)
	naa := func(t *scsi.Target) [16]byte { return t.LU(0).Backend().Identity().NAA }

	// Origin blocks 100..115 -> writable snapshot blocks 500..515,
	// sent to the origin.
	cdb, p := xcopyB2B(naa(origin), naa(rw), 16, 100, 500)
	if r := execLU(origin, n, cdb, p); r.Status != scsi.StatusGood {
		t.Fatalf("EXTENDED COPY origin -> snapshot: status %#x sense % x", r.Status, r.Sense)
	}
	got := make([]byte, len(old))
	if err := rw.LU(0).Backend().ReadAt(got, 500*512); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("writable snapshot after the copy: %v", err)
	}
	// Change it there, and copy it back over the origin (a restore).
	neu := bytes.Repeat([]byte("new!"), 128*16)
	if err := rw.LU(0).Backend().WriteAt(neu, 500*512, false); err != nil {
		t.Fatal(err)
	}
	cdb, p = xcopyB2B(naa(rw), naa(origin), 16, 500, 100)
	if r := execLU(origin, n, cdb, p); r.Status != scsi.StatusGood {
		t.Fatalf("EXTENDED COPY snapshot -> origin: status %#x sense % x", r.Status, r.Sense)
	}
	if err := origin.LU(0).Backend().ReadAt(got, 100*512); err != nil || !bytes.Equal(got, neu) {
		t.Fatalf("origin after the copy back: %v", err)
	}
	if err := ro.LU(0).Backend().ReadAt(got, 100*512); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("read-only snapshot lost its data to the copy: %v", err)
	}
	// The read-only snapshot cannot be a destination.
	cdb, p = xcopyB2B(naa(origin), naa(ro), 1, 0, 0)
	if r := execLU(origin, n, cdb, p); r.Status != scsi.StatusCheckCondition || r.Sense[2]&0x0f != scsi.SenseDataProtect {
		t.Fatalf("copy onto a read-only snapshot: status %#x sense % x", r.Status, r.Sense)
	}

	// SANITIZE OVERWRITE: refused on the origin (snapshots share its
	// data) and on a snapshot LU.
	san := []byte{0x48, 0x01, 0, 0, 0, 0, 0, 0, 5, 0}
	for name, tgt := range map[string]*scsi.Target{"origin": origin, "writable snapshot": rw} {
		r := execLU(tgt, n, san, []byte{1, 0, 0, 1, 0xaa})
		if r.Status != scsi.StatusCheckCondition || r.Sense[2]&0x0f != scsi.SenseIllegalRequest || r.Sense[12] != 0x2c {
			t.Errorf("SANITIZE on the %s: status %#x sense % x, want ILLEGAL REQUEST 2C/00", name, r.Status, r.Sense)
		}
	}
}
