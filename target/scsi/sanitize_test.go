package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"
)

func sanitizeCDB(sa byte, immed bool, n int) []byte {
	c := make([]byte, 10)
	c[0], c[1] = opSanitize, sa
	if immed {
		c[1] |= 0x80
	}
	binary.BigEndian.PutUint16(c[7:9], uint16(n))
	return c
}

func overwriteParams(count byte, pattern []byte) []byte {
	p := []byte{count, 0, 0, 0}
	binary.BigEndian.PutUint16(p[2:4], uint16(len(pattern)))
	return append(p, pattern...)
}

// waitSanitized polls TEST UNIT READY until the sanitize is over and
// returns how many NOT READY, SANITIZE IN PROGRESS it saw before.
func waitSanitized(t *testing.T, f *fixture, n Nexus) (busy int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r := f.run(n, tur(), nil)
		if k, a, q := senseOf(r); r.Status == StatusGood || k != SenseNotReady || a != 0x04 || q != 0x1b {
			return busy // over (a unit attention left pending comes now)
		}
		busy++
		time.Sleep(time.Millisecond)
	}
	t.Fatal("sanitize does not end")
	return busy
}

// TestSanitizeOverwrite: OVERWRITE writes the pattern over every block;
// with IMMED it runs in the background, during which commands get NOT
// READY, SANITIZE IN PROGRESS, REQUEST SENSE reports its progress,
// INQUIRY works, and a LUN reset does not stop it.
func TestSanitizeOverwrite(t *testing.T) {
	f := newFixture(t, 8192)
	f.ready(nexA)
	f.ready(nexB)
	f.writeBlocks(100, pattern(10, 3))

	p := overwriteParams(1, []byte{0xaa, 0x55, 0x0f})
	wantGood(t, f.run(nexA, sanitizeCDB(saSanitizeOverwrite, false, len(p)), p))
	want := make([]byte, BlockSize)
	for i := range want {
		want[i] = []byte{0xaa, 0x55, 0x0f}[i%3]
	}
	for _, lba := range []uint64{0, 100, 8191} {
		if got := f.readBlocks(lba, 1); !bytes.Equal(got, want) {
			t.Fatalf("block %d not overwritten: % x", lba, got[:8])
		}
	}

	// Two passes with INVERT end with the inverted pattern; slowed down
	// so that the background operation can be watched.
	f.lu.SetSanitizeRate(8192 * BlockSize) // one pass a second
	p = overwriteParams(0x80|2, []byte{0x0f})
	wantGood(t, f.run(nexA, sanitizeCDB(saSanitizeOverwrite, true, len(p)), p))
	r := f.run(nexB, rw10(opRead10, 0, 1, 0), nil)
	wantSense(t, r, SenseNotReady, 0x04, 0x1b)
	if r.Sense[15]&0x80 == 0 {
		t.Fatal("no progress indication")
	}
	r = f.run(nexB, []byte{opRequestSense, 0, 0, 0, 252, 0}, nil)
	wantGood(t, r)
	if r.Data[2]&0x0f != SenseNotReady || r.Data[12] != 0x04 || r.Data[13] != 0x1b || r.Data[15]&0x80 == 0 {
		t.Fatalf("REQUEST SENSE during sanitize % x", r.Data)
	}
	wantGood(t, f.run(nexB, inquiry(false, 0, 96), nil))
	if resp := f.tgt.TaskManagement(TMFLogicalUnitReset, 0, nexA); resp != TMFComplete {
		t.Fatal(resp)
	}
	wantSense(t, f.run(nexB, tur(), nil), SenseNotReady, 0x04, 0x1b) // ahead of the reset's unit attention
	if busy := waitSanitized(t, f, nexB); busy == 0 {
		t.Fatal("never saw the sanitize in progress")
	}
	f.ready(nexB)
	if got := f.readBlocks(4000, 1); !bytes.Equal(got, bytes.Repeat([]byte{0xf0}, BlockSize)) {
		t.Fatalf("after two inverted passes % x", got[:8])
	}
}

// TestSanitizeChecks: parameter and CDB checks, write protection,
// CRYPTO ERASE unsupported, BLOCK ERASE on a backend that reports
// deallocation, a guard that refuses.
func TestSanitizeChecks(t *testing.T) {
	f := newFixture(t, 1024)
	f.ready(nexA)
	run := func(cdb, p []byte) Result { return f.run(nexA, cdb, p) }
	p := overwriteParams(1, []byte{1, 2, 3, 4})
	for name, c := range map[string]struct {
		cdb  []byte
		data []byte
		asc  byte
	}{
		"param length 4":     {sanitizeCDB(saSanitizeOverwrite, false, 4), p[:4], 0x24},
		"param length 517":   {sanitizeCDB(saSanitizeOverwrite, false, 517), make([]byte, 517), 0x24},
		"overwrite count 0":  {sanitizeCDB(saSanitizeOverwrite, false, len(p)), overwriteParams(0, []byte{1}), 0x26},
		"pattern length 0":   {sanitizeCDB(saSanitizeOverwrite, false, 5), []byte{1, 0, 0, 0, 9}, 0x26},
		"reserved CDB byte":  {append(sanitizeCDB(saSanitizeOverwrite, false, len(p))[:3:3], 1, 0, 0, 0, byte(len(p)), 0), p, 0x24},
		"crypto erase":       {sanitizeCDB(saSanitizeCrypto, false, 0), nil, 0x24},
		"block erase params": {sanitizeCDB(saSanitizeBlockErase, false, 8), make([]byte, 8), 0x24},
		"exit failure param": {sanitizeCDB(saSanitizeExitFail, false, 8), make([]byte, 8), 0x24},
	} {
		if c.asc == 0x26 {
			c.cdb = sanitizeCDB(saSanitizeOverwrite, false, len(c.data))
		}
		r := run(c.cdb, c.data)
		if k, a, _ := senseOf(r); k != SenseIllegalRequest || a != c.asc {
			t.Errorf("%s: sense %x/%02x, want 5/%02x", name, k, a, c.asc)
		}
	}
	// BLOCK ERASE: MemBackend reports deallocation, so it is offered.
	f.writeBlocks(10, pattern(4, 9))
	wantGood(t, run(sanitizeCDB(saSanitizeBlockErase, false, 0), nil))
	if got := f.readBlocks(10, 4); !isZero(got) {
		t.Fatal("block erase left data")
	}
	if m, n, _ := f.be.LBAStatus(0); m || n != 1024*BlockSize {
		t.Fatalf("after block erase: mapped %v, %d bytes", m, n)
	}
	wantGood(t, run(sanitizeCDB(saSanitizeExitFail, false, 0), nil))

	// Write protected: read-only backend, SWP.
	f.be.SetReadOnly(true)
	wantSense(t, run(sanitizeCDB(saSanitizeOverwrite, false, len(p)), p), SenseDataProtect, 0x27, 0)
	f.be.SetReadOnly(false)

	// A guard that refuses; a failing backend leaves failure mode until
	// EXIT FAILURE MODE.
	g := &guardBackend{MemBackend: NewMemBackend(64*BlockSize, testIdentity()), refuse: errors.New("snapshots share the data")}
	gf := newFixtureOver(t, g)
	gf.ready(nexA)
	wantSense(t, gf.run(nexA, sanitizeCDB(saSanitizeOverwrite, false, len(p)), p), SenseIllegalRequest, 0x2c, 0)
	g.refuse = &SenseError{Key: SenseDataProtect, ASC: 0x27, ASCQ: 0x00}
	wantSense(t, gf.run(nexA, sanitizeCDB(saSanitizeOverwrite, false, len(p)), p), SenseDataProtect, 0x27, 0)
}

// guardBackend is a MemBackend with a SanitizeGuard.
type guardBackend struct {
	*MemBackend
	refuse error
}

func (g *guardBackend) SanitizeAllowed(context.Context) error { return g.refuse }

func newFixtureOver(t *testing.T, be Backend) *fixture {
	t.Helper()
	lu := NewLU(be)
	tgt, err := NewTarget(map[uint64]*LU{0: lu}, NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, tgt: tgt, lu: lu}
}

// TestSanitizeBlockEraseOffered: BLOCK ERASE (and WABEREQ) only on a
// backend that reports deallocation.
func TestSanitizeBlockEraseOffered(t *testing.T) {
	// Embedding the interface hides MemBackend's LBAStatus.
	f := newFixtureOver(t, struct{ Backend }{NewMemBackend(64*BlockSize, testIdentity())})
	f.ready(nexA)
	r := f.run(nexA, []byte{opMaintenanceIn, saReportOpcodes, 2, opSanitize, 0, saSanitizeBlockErase, 0, 0, 1, 0, 0, 0}, nil)
	wantGood(t, r)
	if r.Data[1]&0x07 != 0x01 {
		t.Fatalf("BLOCK ERASE reported as supported (% x) by a backend without LBA status", r.Data[:4])
	}
	wantSense(t, f.run(nexA, sanitizeCDB(saSanitizeBlockErase, false, 0), nil), SenseIllegalRequest, 0x24, 0)
	r = f.run(nexA, inquiry(true, vpdBlockDevChars, 64), nil)
	if r.Data[7]&0xc0 != 0 {
		t.Fatal("WABEREQ set without BLOCK ERASE")
	}
}

// TestSanitizeAbortedWaiter: a SANITIZE without IMMED whose context ends
// (the transport aborted the task) returns at once; the sanitize goes on.
func TestSanitizeAbortedWaiter(t *testing.T) {
	f := newFixture(t, 8192)
	f.ready(nexA)
	f.lu.SetSanitizeRate(8192 * BlockSize) // a second
	p := overwriteParams(1, []byte{0x33})
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan Result, 1)
	go func() {
		got <- f.tgt.Execute(ctx, &Command{CDB: sanitizeCDB(saSanitizeOverwrite, false, len(p)), Nexus: nexA,
			Attr: TaskSimple, DataOut: p, ExpectedLen: uint32(len(p))})
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case r := <-got:
		wantSense(t, r, SenseAbortedCommand, 0, 0)
	case <-time.After(500 * time.Millisecond):
		t.Fatal("SANITIZE did not return when its task was aborted")
	}
	if busy := waitSanitized(t, f, nexA); busy == 0 {
		t.Fatal("the sanitize stopped with its task")
	}
	if got := f.readBlocks(8191, 1); !bytes.Equal(got, bytes.Repeat([]byte{0x33}, BlockSize)) {
		t.Fatal("sanitize did not complete")
	}
}
