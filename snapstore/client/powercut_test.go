package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/faultdev"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/snapstore/wire"
)

// TestPowerCutServerClient cuts the power to origin and store under a
// running snapshot server and client pair, at every device operation of a
// workload driven through the client (origin writes with and without FUA,
// flushes, snapshot creates and deletes, writable-snapshot writes, reads),
// then "kills" both (closes them without a clean shutdown of the engine),
// restores the power, starts a new engine, server (next term) and client
// on the same devices and checks: a clean store, and every write
// acknowledged as durable (FUA, or followed by a good flush) still there,
// through the client. CSNAP_CRASH_STRIDE=n tests every n-th point
// (make crash: all); by default every 7th.

const pcChunk = 8192
const pcOrigin = 32 * pcChunk

// pcImage: per 512-byte sector, what reads return now and what may
// survive a power cut (see snapstore's crash_fault_test.go, same model).
type pcImage struct {
	vis   []byte
	poss  []map[string]bool
	p0    map[int]map[string]bool
	dirty map[int][]pcWrite
}

type pcWrite struct {
	off  int
	data []byte
}

const pcSec = faultdev.SectorSize

func newPCImage(b []byte) *pcImage {
	im := &pcImage{vis: append([]byte(nil), b...), p0: map[int]map[string]bool{}, dirty: map[int][]pcWrite{}}
	im.poss = make([]map[string]bool, (len(b)+pcSec-1)/pcSec)
	for s := range im.poss {
		im.poss[s] = map[string]bool{string(im.vis[s*pcSec : min((s+1)*pcSec, len(b))]): true}
	}
	return im
}

func (im *pcImage) clone() *pcImage {
	c := newPCImage(im.vis)
	for s, set := range im.poss {
		c.poss[s] = map[string]bool{}
		for k := range set {
			c.poss[s][k] = true
		}
	}
	return c
}

func pcOverlay(x string, s int, w pcWrite) string {
	b := []byte(x)
	lo, hi := max(s*pcSec, w.off), min(s*pcSec+len(b), w.off+len(w.data))
	if lo < hi {
		copy(b[lo-s*pcSec:hi-s*pcSec], w.data[lo-w.off:hi-w.off])
	}
	return string(b)
}

func (im *pcImage) issue(w pcWrite) {
	for s := w.off / pcSec; s <= (w.off+len(w.data)-1)/pcSec; s++ {
		if _, ok := im.dirty[s]; !ok {
			im.p0[s] = im.poss[s]
		}
		im.dirty[s] = append(im.dirty[s], w)
		next := map[string]bool{}
		for x := range im.poss[s] {
			next[x] = true
			next[pcOverlay(x, s, w)] = true
		}
		im.poss[s] = next
	}
}

// done: the write was acknowledged (applied); a failed write stays only as
// a possibility (it may have reached the device in part).
func (im *pcImage) done(w pcWrite, ok bool) {
	if ok {
		copy(im.vis[w.off:], w.data)
	}
}

func (im *pcImage) flushed(ok bool) {
	for s, ws := range im.dirty {
		if ok {
			next := map[string]bool{}
			for x := range im.p0[s] {
				for _, w := range ws {
					x = pcOverlay(x, s, w)
				}
				next[x] = true
			}
			im.poss[s] = next
		}
		delete(im.dirty, s)
		delete(im.p0, s)
	}
}

func (im *pcImage) durable(got []byte) (int, bool) {
	for s := range im.poss {
		if !im.poss[s][string(got[s*pcSec:min((s+1)*pcSec, len(got))])] {
			return s, false
		}
	}
	return 0, true
}

type pcSnap struct {
	id       uint32
	img      *pcImage
	writable bool
}

// pcNode is one incarnation of the server and client processes.
type pcNode struct {
	eng    *snapstore.Engine
	srv    *server.Server
	cl     *Client
	cancel context.CancelFunc
	done   chan error
}

func startPCNode(t *testing.T, od, sd *faultdev.Device, term uint64, id byte) (*pcNode, error) {
	eng, err := snapstore.Open(od, sd, snapstore.Options{ManualReclaim: true, RecoverBackoff: -1})
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{Engine: eng, Volume: "vol", Term: term, Node: "n1", Log: testLog(),
		BarrierTimeout: 5 * time.Second, Membership: server.AllowAll{}})
	if err != nil {
		eng.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &pcNode{eng: eng, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- srv.Serve(ctx, ln) }()
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	cl, err := New(cctx, Config{Volume: "vol", Node: "n1", ID: wire.ClientID{id}, Locator: StaticLocator(ln.Addr().String()),
		Origin: od, Store: sd, Log: testLog(), IOTimeout: 2 * time.Second,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		n.kill()
		return nil, err
	}
	n.cl = cl
	return n, nil
}

// kill stops the client and the server as a crash would leave the store:
// the engine is closed without writing (the power is cut, or it is simply
// dropped).
func (n *pcNode) kill() {
	if n.cl != nil {
		n.cl.Close()
	}
	n.cancel()
	n.srv.Close()
	<-n.done
	n.eng.Close()
}

type pcRun struct {
	t      *testing.T
	p      *faultdev.Power
	od, sd *faultdev.Device
	n      *pcNode
	origin *pcImage
	snaps  map[string]*pcSnap
	rng    *rand.Rand
	names  int
	fl     string // in flight: "create NAME", "delete NAME", or ""
	flImg  *pcImage
	term   uint64
}

func newPCRun(t *testing.T, seed int64) *pcRun {
	r := &pcRun{t: t, p: faultdev.NewPower(seed), rng: rand.New(rand.NewSource(seed)), snaps: map[string]*pcSnap{}, term: 1}
	r.od, r.sd = r.p.NewDevice(pcOrigin), r.p.NewDevice(4<<20)
	data := make([]byte, pcOrigin)
	rand.New(rand.NewSource(5)).Read(data)
	r.od.Load(data, 0)
	r.origin = newPCImage(data)
	if err := snapstore.Format(r.od, r.sd, snapstore.FormatOptions{ChunkSize: pcChunk, JournalBlocks: 256, TableCapacity: 64}); err != nil {
		t.Fatal(err)
	}
	n, err := startPCNode(t, r.od, r.sd, r.term, 1)
	if err != nil {
		t.Fatal(err)
	}
	r.n = n
	return r
}

func (r *pcRun) randWrite(maxLen int) pcWrite {
	off := r.rng.Intn(pcOrigin)
	ln := 1 + r.rng.Intn(min(maxLen, pcOrigin-off))
	b := make([]byte, ln)
	r.rng.Read(b)
	return pcWrite{off: off, data: b}
}

func (r *pcRun) liveNames() []string {
	var ns []string
	for i := 1; i <= r.names; i++ {
		if _, ok := r.snaps[fmt.Sprintf("p%d", i)]; ok {
			ns = append(ns, fmt.Sprintf("p%d", i))
		}
	}
	return ns
}

func (r *pcRun) step() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.fl = ""
	v := r.n.cl.Origin()
	switch x := r.rng.Intn(100); {
	case x < 40:
		fua := x < 8
		w := r.randWrite(3 * pcChunk)
		r.origin.issue(w)
		err := v.WriteAt(w.data, int64(w.off), fua)
		r.origin.done(w, err == nil)
		if fua {
			// A FUA write flushes the device: a success makes every
			// write before it durable too.
			r.origin.flushed(err == nil)
		}
		return err
	case x < 50:
		err := v.Flush()
		r.origin.flushed(err == nil)
		return err
	case x < 60:
		r.names++
		name := fmt.Sprintf("p%d", r.names)
		w := r.rng.Intn(2) == 0
		r.fl, r.flImg = "create "+name, r.origin.clone()
		si, err := r.n.cl.CreateSnapshot(ctx, name, 0, w)
		if err != nil {
			return err
		}
		r.snaps[name] = &pcSnap{id: si.ID, img: r.flImg, writable: w}
	case x < 66:
		ns := r.liveNames()
		if len(ns) == 0 {
			return nil
		}
		name := ns[r.rng.Intn(len(ns))]
		r.fl = "delete " + name
		if err := r.n.cl.DeleteSnapshot(ctx, name); err != nil {
			return err
		}
		delete(r.snaps, name)
	case x < 82:
		var ws []string
		for _, n := range r.liveNames() {
			if r.snaps[n].writable {
				ws = append(ws, n)
			}
		}
		if len(ws) == 0 {
			return nil
		}
		s := r.snaps[ws[r.rng.Intn(len(ws))]]
		w := r.randWrite(2 * pcChunk)
		s.img.issue(w)
		err := r.n.cl.Snapshot(s.id, true).WriteAt(w.data, int64(w.off), true)
		s.img.done(w, err == nil)
		s.img.flushed(err == nil)
		return err
	default:
		ns := r.liveNames()
		if len(ns) == 0 {
			return nil
		}
		s := r.snaps[ns[r.rng.Intn(len(ns))]]
		got := make([]byte, pcOrigin)
		if err := r.n.cl.Snapshot(s.id, s.writable).ReadAt(got, 0); err != nil {
			return err
		}
		if !bytes.Equal(got, s.img.vis) {
			return fmt.Errorf("snapshot %d reads other data than written (no power cut yet)", s.id)
		}
	}
	return nil
}

// recoverAndVerify restarts server and client on the restored devices and
// checks every acknowledged write.
func (r *pcRun) recoverAndVerify(point int64) {
	t := r.t
	fail := func(f string, a ...any) {
		t.Fatalf("point %d (in flight: %q): %s", point, r.fl, fmt.Sprintf(f, a...))
	}
	r.n.kill()
	r.p.Restore()
	r.term++
	n, err := startPCNode(t, r.od, r.sd, r.term, byte(r.term))
	if err != nil {
		fail("restart: %v", err)
	}
	r.n = n
	defer n.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if res, err := n.eng.Check(ctx, nil); err != nil || !res.Clean() {
		fail("check: %v %v", err, res.Problems)
	}
	got := make([]byte, pcOrigin)
	if err := n.cl.Origin().ReadAt(got, 0); err != nil {
		fail("origin read: %v", err)
	}
	if s, ok := r.origin.durable(got); !ok {
		fail("origin sector %d: an acknowledged write was lost", s)
	}
	infos, err := n.cl.Snapshots(ctx)
	if err != nil {
		fail("list snapshots: %v", err)
	}
	byName := map[string]SnapshotInfo{}
	for _, si := range infos {
		if !si.Deleting {
			byName[si.Name] = si
		}
	}
	verify := func(name string, s *pcSnap) {
		got := make([]byte, pcOrigin)
		err := n.cl.Snapshot(s.id, s.writable).ReadAt(got, 0)
		if byName[name].Dropped {
			if !errors.Is(err, ErrSnapshotGone) {
				fail("dropped snapshot %s read: %v", name, err)
			}
			return
		}
		if err != nil {
			fail("snapshot %s read: %v", name, err)
		}
		if sct, ok := s.img.durable(got); !ok {
			fail("snapshot %s sector %d holds data it never held", name, sct)
		}
	}
	for name, s := range r.snaps {
		if _, ok := byName[name]; !ok {
			if r.fl == "delete "+name {
				continue
			}
			fail("snapshot %s lost", name)
		}
		verify(name, s)
		delete(byName, name)
	}
	for name, si := range byName {
		if r.fl != "create "+name {
			fail("unexpected snapshot %s", name)
		}
		verify(name, &pcSnap{id: si.ID, img: r.flImg, writable: si.Writable})
	}
}

func TestPowerCutServerClient(t *testing.T) {
	stride := int64(7)
	if v, err := strconv.Atoi(os.Getenv("CSNAP_CRASH_STRIDE")); err == nil && v > 0 {
		stride = int64(v)
	}
	const ops = 40
	total := 0
	for _, seed := range []int64{1, 2, 3} {
		points := 0
		r := newPCRun(t, seed)
		start := r.p.Ops()
		for i := 0; i < ops; i++ {
			if err := r.step(); err != nil {
				t.Fatalf("seed %d op %d without a power cut: %v", seed, i, err)
			}
		}
		nops := r.p.Ops() - start
		r.p.Cut()
		r.recoverAndVerify(0)
		for point := int64(1); point <= nops; point += stride {
			r := newPCRun(t, seed)
			r.p.CrashAfter(point)
			for i := 0; i < ops; i++ {
				if err := r.step(); err != nil {
					if !r.p.IsCut() {
						t.Fatalf("seed %d point %d op %d failed without a power cut: %v", seed, point, i, err)
					}
					break
				}
			}
			if !r.p.IsCut() {
				r.fl = ""
				r.p.Cut()
			}
			r.recoverAndVerify(point)
			points++
		}
		t.Logf("seed %d: %d points over %d device operations", seed, points, nops)
		total += points
	}
	t.Logf("%d power-cut points in total", total)
}
