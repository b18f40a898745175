package node

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/snapstore/wire"
	"github.com/csnap/csnap/target/scsi"
)

// TestSharedStoreAcrossNodes: two nodes' SCSI targets export the same
// logical unit, each through its own snapshot client of one real server.
// A persistent reservation taken through node 1 is enforced on node 2, a
// LUN reset on node 1 is reported to node 2's initiator, and a release on
// node 2 frees node 1's initiator.
// memServer runs volume "v"'s snapshot server over in-memory devices on
// a loopback port until the test ends.
func memServer(t *testing.T, log *logrus.Logger) (ctx context.Context, ln net.Listener, origin, store *snapstore.MemDevice) {
	t.Helper()
	origin, store = snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(8<<20)
	if err := snapstore.Format(origin, store, snapstore.FormatOptions{ChunkSize: 8192, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	eng, err := snapstore.Open(origin, store, snapstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Engine: eng, Volume: "v", Term: 1, Node: "n1",
		Log: logrus.NewEntry(log), BarrierTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var cancel context.CancelFunc
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		<-done
		eng.Close()
	})
	return ctx, ln, origin, store
}

func TestSharedStoreAcrossNodes(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	ctx, ln, origin, store := memServer(t, log)

	identity := scsi.Identity{Serial: "v", Product: "csnap volume"}
	identity.NAA[0] = 0x60
	node := func(i byte) (*scsi.Target, scsi.Nexus) {
		cl, err := client.New(ctx, client.Config{Volume: "v", Node: "n" + string('0'+i), ID: wire.ClientID{i},
			Locator: client.StaticLocator(ln.Addr().String()), Origin: origin, Store: store,
			Log: logrus.NewEntry(log), IOTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		lu := scsi.NewLU(scsi.NewMemBackend(1<<20, identity))
		tgt, err := scsi.NewTarget(map[uint64]*scsi.LU{0: lu}, newSharedStore(cl, logrus.NewEntry(log)))
		if err != nil {
			t.Fatal(err)
		}
		port := scsi.Port{Name: "iqn.2026-11.io.csnap:v,t,0x000" + string('0'+i), TargetName: "iqn.2026-11.io.csnap:v",
			RelativeID: uint16(i), GroupID: uint16(i)}
		return tgt, scsi.Nexus{InitiatorPort: "iqn.1993-08.org.debian:h,i,0x23d00000000" + string('0'+i), Port: port}
	}
	t1, n1 := node(1)
	t2, n2 := node(2)
	run := func(tgt *scsi.Target, n scsi.Nexus, cdb, data []byte) scsi.Result {
		return tgt.Execute(ctx, &scsi.Command{CDB: cdb, Nexus: n, Attr: scsi.TaskSimple, DataOut: data, ExpectedLen: uint32(len(data))})
	}
	tur := []byte{0x00, 0, 0, 0, 0, 0}
	ready := func(tgt *scsi.Target, n scsi.Nexus) {
		t.Helper()
		for range 10 {
			if run(tgt, n, tur, nil).Status == scsi.StatusGood {
				return
			}
		}
		t.Fatalf("unit attentions of %v do not clear", n)
	}
	sense := func(r scsi.Result) (key, asc byte) {
		if len(r.Sense) < 14 {
			return 0xff, 0xff
		}
		return r.Sense[2] & 0x0f, r.Sense[12]
	}
	prOut := func(sa, typ byte, key, sark uint64) ([]byte, []byte) {
		cdb := []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}
		p := make([]byte, 24)
		binary.BigEndian.PutUint64(p[0:], key)
		binary.BigEndian.PutUint64(p[8:], sark)
		return cdb, p
	}
	write10 := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	block := make([]byte, scsi.BlockSize)

	ready(t1, n1)
	ready(t2, n2)
	for _, step := range []struct {
		sa      byte
		key, sk uint64
	}{{0x00, 0, 0xa}, {0x01, 0xa, 0}} { // REGISTER 0xa, RESERVE write exclusive
		cdb, p := prOut(step.sa, 0x1, step.key, step.sk)
		if r := run(t1, n1, cdb, p); r.Status != scsi.StatusGood {
			t.Fatalf("PERSISTENT RESERVE OUT %#x through node 1: status %#x %v", step.sa, r.Status, r.Err)
		}
	}
	if r := run(t2, n2, write10, block); r.Status != scsi.StatusReservationConflict {
		t.Fatalf("write through node 2 under node 1's reservation: status %#x, want RESERVATION CONFLICT", r.Status)
	}
	if r := run(t1, n1, write10, block); r.Status != scsi.StatusGood {
		t.Fatalf("write through node 1 by the holder: status %#x %v", r.Status, r.Err)
	}

	if resp := t1.TaskManagement(scsi.TMFLogicalUnitReset, 0, n1); resp != scsi.TMFComplete {
		t.Fatalf("LUN RESET through node 1: %v", resp)
	}
	if k, asc := sense(run(t2, n2, tur, nil)); k != scsi.SenseUnitAttention || asc != 0x29 {
		t.Fatalf("node 2 after node 1's LUN RESET: sense %x/%02x, want UNIT ATTENTION 29h", k, asc)
	}
	ready(t1, n1)
	ready(t2, n2)

	// Registered through node 2 too, CLEAR there drops node 1's reservation.
	cdb, p := prOut(0x00, 0, 0, 0xb)
	if r := run(t2, n2, cdb, p); r.Status != scsi.StatusGood {
		t.Fatalf("REGISTER through node 2: status %#x %v", r.Status, r.Err)
	}
	cdb, p = prOut(0x03, 0, 0xb, 0)
	if r := run(t2, n2, cdb, p); r.Status != scsi.StatusGood {
		t.Fatalf("CLEAR through node 2: status %#x %v", r.Status, r.Err)
	}
	if k, asc := sense(run(t1, n1, tur, nil)); k != scsi.SenseUnitAttention || asc != 0x2a {
		t.Fatalf("node 1 after node 2's CLEAR: sense %x/%02x, want UNIT ATTENTION 2Ah (RESERVATIONS PREEMPTED)", k, asc)
	}
	ready(t2, n2)
	if r := run(t2, n2, write10, block); r.Status != scsi.StatusGood {
		t.Fatalf("write through node 2 after CLEAR: status %#x %v", r.Status, r.Err)
	}
}
