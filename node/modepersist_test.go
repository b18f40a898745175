package node

import (
	"context"
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

// modeCluster is one run of a volume's snapshot server (as csnapd
// configures it) over the given devices, and nodes exporting its origin.
type modeCluster struct {
	t             *testing.T
	ctx           context.Context
	origin, store *snapstore.MemDevice
	addr          string
	log           *logrus.Entry
	stop          []func()
}

func startModeCluster(t *testing.T, origin, store *snapstore.MemDevice, term uint64) *modeCluster {
	t.Helper()
	lg := logrus.New()
	lg.SetOutput(io.Discard)
	log := logrus.NewEntry(lg)
	eng, err := snapstore.Open(origin, store, snapstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Engine: eng, Volume: "v", Term: term, Node: "n1", Log: log,
		BarrierTimeout: 5 * time.Second, PersistShared: persistedSCSIState})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	c := &modeCluster{t: t, ctx: ctx, origin: origin, store: store, addr: ln.Addr().String(), log: log}
	c.stop = append(c.stop, func() {
		cancel()
		srv.Close()
		<-done
		if err := eng.Close(); err != nil {
			t.Errorf("closing the engine: %v", err)
		}
	})
	t.Cleanup(c.shutdown)
	return c
}

// shutdown stops the nodes, then the server and engine (every node of
// the cluster restarted); idempotent.
func (c *modeCluster) shutdown() {
	for i := len(c.stop) - 1; i >= 0; i-- {
		c.stop[i]()
	}
	c.stop = nil
}

// node starts node i: a snapshot client and a SCSI target over the shared
// store, exporting the volume's origin; it returns the target and a nexus.
func (c *modeCluster) node(i byte) (*scsi.Target, scsi.Nexus) {
	t := c.t
	t.Helper()
	cl, err := client.New(c.ctx, client.Config{Volume: "v", Node: "n" + string('0'+i), ID: wire.ClientID{i},
		Locator: client.StaticLocator(c.addr), Origin: c.origin, Store: c.store, Log: c.log, IOTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.stop = append(c.stop, cl.Close)
	identity := scsi.Identity{Serial: "v", Product: "csnap volume"}
	identity.NAA[0] = 0x60
	lu := scsi.NewLU(scsi.NewMemBackend(1<<20, identity))
	tgt, err := scsi.NewTarget(map[uint64]*scsi.LU{0: lu}, newSharedStore(cl, c.log))
	if err != nil {
		t.Fatal(err)
	}
	port := scsi.Port{Name: "iqn.2026-11.io.csnap:v,t,0x000" + string('0'+i), TargetName: "iqn.2026-11.io.csnap:v",
		RelativeID: uint16(i), GroupID: uint16(i)}
	n := scsi.Nexus{InitiatorPort: "iqn.1993-08.org.debian:h,i,0x23d00000000" + string('0'+i), Port: port}
	c.ready(tgt, n)
	return tgt, n
}

// ready clears the unit attentions of n (TEST UNIT READY until GOOD).
func (c *modeCluster) ready(tgt *scsi.Target, n scsi.Nexus) {
	c.t.Helper()
	for range 10 {
		if c.run(tgt, n, []byte{0x00, 0, 0, 0, 0, 0}, nil).Status == scsi.StatusGood {
			return
		}
	}
	c.t.Fatalf("unit attentions of %v do not clear", n)
}

func (c *modeCluster) run(tgt *scsi.Target, n scsi.Nexus, cdb, data []byte) scsi.Result {
	return tgt.Execute(c.ctx, &scsi.Command{CDB: cdb, Nexus: n, Attr: scsi.TaskSimple, DataOut: data, ExpectedLen: uint32(len(data))})
}

// cachingPage returns the current Caching mode page (MODE SENSE(6), no
// block descriptors) with its 4-byte header.
func (c *modeCluster) cachingPage(tgt *scsi.Target, n scsi.Nexus) []byte {
	c.t.Helper()
	r := c.run(tgt, n, []byte{0x1a, 0x08, 0x08, 0, 255, 0}, nil)
	if r.Status != scsi.StatusGood || len(r.Data) < 4+20 {
		c.t.Fatalf("MODE SENSE: status %#x, %d bytes, sense % x, %v", r.Status, len(r.Data), r.Sense, r.Err)
	}
	return r.Data[:4+20]
}

func (c *modeCluster) wce(tgt *scsi.Target, n scsi.Nexus) bool {
	c.t.Helper()
	c.ready(tgt, n) // MODE PARAMETERS CHANGED after a change elsewhere
	return c.cachingPage(tgt, n)[4+2]&0x04 != 0
}

func (c *modeCluster) setWCE(tgt *scsi.Target, n scsi.Nexus, on bool) {
	c.t.Helper()
	p := c.cachingPage(tgt, n)
	p[0], p[2] = 0, 0
	p[4+2] &^= 0x04
	if on {
		p[4+2] |= 0x04
	}
	if r := c.run(tgt, n, []byte{0x15, 0x10, 0, 0, byte(len(p)), 0}, p); r.Status != scsi.StatusGood {
		c.t.Fatalf("MODE SELECT: status %#x %v", r.Status, r.Err)
	}
}

// TestModeSelectAcrossNodesAndRestart: a MODE SELECT WCE=0 through node A
// is seen by MODE SENSE through node B, and still after every node, the
// server and the store engine have restarted; WCE=1 set back is kept as
// well.
func TestModeSelectAcrossNodesAndRestart(t *testing.T) {
	origin, store := snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(8<<20)
	if err := snapstore.Format(origin, store, snapstore.FormatOptions{ChunkSize: 8192, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	c := startModeCluster(t, origin, store, 1)
	a, na := c.node(1)
	b, nb := c.node(2)
	if !c.wce(b, nb) {
		t.Fatal("WCE clear on a new volume")
	}
	c.setWCE(a, na, false)
	if c.wce(b, nb) {
		t.Fatal("MODE SELECT WCE=0 through node A: MODE SENSE through node B says WCE=1")
	}
	c.shutdown()

	c = startModeCluster(t, origin, store, 2)
	a, na = c.node(1)
	b, nb = c.node(2)
	if c.wce(a, na) || c.wce(b, nb) {
		t.Fatal("WCE=1 after restarting every node; MODE SELECT set WCE=0")
	}
	// Writes honour it: FUA (a node's backend counts them).
	write10 := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	if r := c.run(b, nb, write10, make([]byte, scsi.BlockSize)); r.Status != scsi.StatusGood {
		t.Fatalf("write: status %#x %v", r.Status, r.Err)
	}
	c.setWCE(b, nb, true)
	c.shutdown()

	c = startModeCluster(t, origin, store, 3)
	a, na = c.node(1)
	if !c.wce(a, na) {
		t.Fatal("WCE=0 after a restart; MODE SELECT set WCE=1 back")
	}
}
