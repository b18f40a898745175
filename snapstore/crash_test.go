package snapstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"testing"

	"github.com/csnap/csnap/snapstore/faultdev"
)

// The crash test runs one deterministic workload (origin writes, snapshot
// creates and deletes, writable-snapshot writes, reclamation, reopen,
// epoch updates) on fault-injecting devices and cuts the power at every
// device operation in turn. After each cut the surviving image (unflushed
// writes lost, kept or torn per sector) is reopened; the journal recovery
// must yield a store that check() finds clean and whose origin and
// snapshots match the oracle as of the last acknowledged operation (the
// operation in flight may or may not have happened, and its data may be
// torn per sector).

const (
	crashChunk        = 4096
	crashOriginChunks = 24
	crashOriginSize   = crashChunk*crashOriginChunks - 1000
)

// crashGeom is a store geometry for the sweep.
type crashGeom struct {
	storeSize  int64
	metaBlocks uint64
}

var (
	roomyStore = crashGeom{5 << 19, 192}   // 184 data chunks
	tinyStore  = crashGeom{1400 << 10, 64} // 30 data chunks, 64 tree blocks: drops
)

type csnapModel struct {
	id       SnapID
	data     []byte
	writable bool
	dropped  bool
}

type crashOracle struct {
	origin []byte
	snaps  map[string]*csnapModel
	epoch  uint64
}

const (
	flOriginWrite = iota + 1
	flCreate
	flDelete
	flSnapWrite
	flOther
)

type inflight struct {
	kind int
	name string
	off  int
	data []byte
}

type crashRun struct {
	t     *testing.T
	p     *faultdev.Power
	od    *faultdev.Device
	sd    *faultdev.Device
	e     *Engine
	or    crashOracle
	fl    *inflight
	rng   *rand.Rand
	nameN int
	ctx   context.Context
}

func crashOpts() Options {
	return Options{ManualReclaim: true, nodeCap: 6, CacheBlocks: 256, RecoverBackoff: -1}
}

func newCrashRun(t *testing.T, g crashGeom, seed, point int64) *crashRun {
	r := &crashRun{t: t, p: faultdev.NewPower(point), ctx: context.Background(), rng: rand.New(rand.NewSource(seed))}
	r.od = r.p.NewDevice(crashOriginSize)
	r.sd = r.p.NewDevice(g.storeSize)
	r.or.origin = make([]byte, crashOriginSize)
	rand.New(rand.NewSource(99)).Read(r.or.origin)
	r.od.Load(r.or.origin, 0)
	r.or.snaps = map[string]*csnapModel{}
	if err := Format(r.od, r.sd, FormatOptions{ChunkSize: crashChunk, TableCapacity: 64, JournalBlocks: 256, metaBlocks: g.metaBlocks}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(r.od, r.sd, crashOpts())
	if err != nil {
		t.Fatal(err)
	}
	r.e = e
	return r
}

func (r *crashRun) names() []string {
	var ns []string
	for i := 1; i <= r.nameN; i++ {
		n := fmt.Sprintf("c%d", i)
		if _, ok := r.or.snaps[n]; ok {
			ns = append(ns, n)
		}
	}
	return ns
}

// step runs one workload operation; an error means the power was cut.
func (r *crashRun) step() error {
	ctx := r.ctx
	switch x := r.rng.Intn(100); {
	case x < 40:
		off := r.rng.Intn(crashOriginSize)
		ln := 1 + r.rng.Intn(min(3*crashChunk, crashOriginSize-off))
		data := make([]byte, ln)
		r.rng.Read(data)
		r.fl = &inflight{kind: flOriginWrite, off: off, data: data}
		first, last := off/crashChunk, (off+ln-1)/crashChunk
		if _, err := r.e.PrepareOriginWrite(ctx, uint64(first), uint64(last-first+1)); err != nil {
			return err
		}
		if _, err := r.od.WriteAt(data, int64(off)); err != nil {
			return err
		}
		if err := r.od.Flush(); err != nil {
			return err
		}
		copy(r.or.origin[off:], data)
	case x < 52:
		r.nameN++
		name := fmt.Sprintf("c%d", r.nameN)
		w := r.rng.Intn(2) == 0
		r.fl = &inflight{kind: flCreate, name: name, data: append([]byte(nil), r.or.origin...)}
		si, err := r.e.CreateSnapshot(ctx, name, CreateOptions{Writable: w, Priority: int32(r.rng.Intn(2))})
		if err != nil {
			return err
		}
		r.or.snaps[name] = &csnapModel{id: si.ID, data: r.fl.data, writable: w}
	case x < 60:
		ns := r.names()
		if len(ns) == 0 {
			return nil
		}
		name := ns[r.rng.Intn(len(ns))]
		r.fl = &inflight{kind: flDelete, name: name}
		if err := r.e.DeleteSnapshot(ctx, r.or.snaps[name].id); err != nil {
			return err
		}
		delete(r.or.snaps, name)
	case x < 80:
		var ws []string
		for _, n := range r.names() {
			if s := r.or.snaps[n]; s.writable && !s.dropped {
				ws = append(ws, n)
			}
		}
		if len(ws) == 0 {
			return nil
		}
		name := ws[r.rng.Intn(len(ws))]
		s := r.or.snaps[name]
		off := r.rng.Intn(crashOriginSize)
		ln := 1 + r.rng.Intn(min(2*crashChunk, crashOriginSize-off))
		data := make([]byte, ln)
		r.rng.Read(data)
		r.fl = &inflight{kind: flSnapWrite, name: name, off: off, data: data}
		first, last := off/crashChunk, (off+ln-1)/crashChunk
		locs, err := r.e.PrepareSnapshotWrite(ctx, s.id, uint64(first), uint64(last-first+1))
		if errors.Is(err, ErrSnapshotDropped) {
			return r.syncDrops()
		}
		if err != nil {
			return err
		}
		for c := first; c <= last; c++ {
			lo, hi := max(off, c*crashChunk), min(off+ln, (c+1)*crashChunk)
			if _, err := r.sd.WriteAt(data[lo-off:hi-off], locs[c-first]+int64(lo-c*crashChunk)); err != nil {
				return err
			}
		}
		if err := r.sd.Flush(); err != nil {
			return err
		}
		copy(s.data[off:], data)
	case x < 86:
		r.fl = &inflight{kind: flOther}
		if err := r.e.Reclaim(ctx); err != nil {
			return err
		}
	case x < 91:
		r.fl = &inflight{kind: flOther}
		if err := r.e.Close(); err != nil {
			return err
		}
		e, err := Open(r.od, r.sd, crashOpts())
		if err != nil {
			return err
		}
		r.e = e
	case x < 94:
		r.fl = &inflight{kind: flOther}
		ep := r.or.epoch + 1
		if err := r.e.SetEpoch(ctx, ep); err != nil {
			return err
		}
		r.or.epoch = ep
	default:
		r.fl = &inflight{kind: flOther}
		ns := r.names()
		if len(ns) == 0 {
			return nil
		}
		if err := r.verifySnap(ns[r.rng.Intn(len(ns))], nil); err != nil {
			return err
		}
	}
	return r.syncDrops()
}

func (r *crashRun) syncDrops() error {
	for _, si := range r.e.Snapshots() {
		if si.State == StateDropped {
			if s := r.or.snaps[si.Name]; s != nil && s.id == si.ID {
				s.dropped = true
			}
		}
	}
	return nil
}

// readAll reads a whole snapshot through the engine.
func (r *crashRun) readAll(id SnapID) ([]byte, error) {
	n := uint64(r.e.OriginChunks())
	locs, err := r.e.MapSnapshotReadHold(r.ctx, id, 0, n)
	if err != nil {
		return nil, err
	}
	out := make([]byte, int(n)*crashChunk)
	for i, l := range locs {
		p := out[i*crashChunk : (i+1)*crashChunk]
		if l.Origin {
			end := min(int64(crashOriginSize), l.Offset+crashChunk)
			_, err = r.od.ReadAt(p[:end-l.Offset], l.Offset)
			r.e.ReleaseOriginRead(uint64(i))
		} else {
			_, err = r.sd.ReadAt(p, l.Offset)
		}
		if err != nil {
			return nil, err
		}
	}
	return out[:crashOriginSize], nil
}

// matches compares got with want, allowing each sector of [off, off+len(alt))
// to hold alt's bytes instead.
func matches(got, want []byte, off int, alt []byte) bool {
	if alt == nil {
		return bytes.Equal(got, want)
	}
	if !bytes.Equal(got[:off], want[:off]) || !bytes.Equal(got[off+len(alt):], want[off+len(alt):]) {
		return false
	}
	end := off + len(alt)
	for s := off / faultdev.SectorSize * faultdev.SectorSize; s < end; s += faultdev.SectorSize {
		lo, hi := max(s, off), min(s+faultdev.SectorSize, end)
		if !bytes.Equal(got[lo:hi], want[lo:hi]) && !bytes.Equal(got[lo:hi], alt[lo-off:hi-off]) {
			return false
		}
	}
	return true
}

func (r *crashRun) verifySnap(name string, fl *inflight) error {
	s := r.or.snaps[name]
	got, err := r.readAll(s.id)
	if s.dropped {
		if !errors.Is(err, ErrSnapshotDropped) {
			r.t.Fatalf("dropped snapshot %s read: %v", name, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	var alt []byte
	off := 0
	if fl != nil && fl.kind == flSnapWrite && fl.name == name {
		alt, off = fl.data, fl.off
	}
	if !matches(got, s.data, off, alt) {
		return fmt.Errorf("snapshot %s (id %d) does not match the oracle", name, s.id)
	}
	return nil
}

// recoverAndVerify restores power, reopens and checks everything.
func (r *crashRun) recoverAndVerify(point int64) {
	t := r.t
	r.p.Restore()
	e, err := Open(r.od, r.sd, crashOpts())
	if err != nil {
		t.Fatalf("crash point %d: reopen after power cut: %v", point, err)
	}
	r.e = e
	fail := func(f string, a ...any) {
		t.Fatalf("crash point %d (in-flight op %+v): %s", point, r.fl.kind, fmt.Sprintf(f, a...))
	}
	res, err := e.Check(r.ctx, nil)
	if err != nil {
		fail("check: %v", err)
	}
	if !res.Clean() {
		fail("check after recovery: %v", res.Problems)
	}
	fl := r.fl
	// Origin.
	got := make([]byte, crashOriginSize)
	if _, err := r.od.ReadAt(got, 0); err != nil {
		fail("%v", err)
	}
	var alt []byte
	off := 0
	if fl != nil && fl.kind == flOriginWrite {
		alt, off = fl.data, fl.off
	}
	if !matches(got, r.or.origin, off, alt) {
		fail("origin does not match the oracle")
	}
	if alt != nil {
		copy(r.or.origin, got) // whatever survived is the origin now
	}
	// Snapshots.
	byName := map[string]SnapshotInfo{}
	for _, si := range e.Snapshots() {
		if si.State != StateDeleting {
			byName[si.Name] = si
		}
	}
	for name, s := range r.or.snaps {
		si, ok := byName[name]
		if !ok {
			if fl != nil && fl.kind == flDelete && fl.name == name {
				delete(r.or.snaps, name)
				continue
			}
			fail("snapshot %s lost", name)
		}
		if si.ID != s.id {
			fail("snapshot %s has id %d, want %d", name, si.ID, s.id)
		}
		if si.State == StateDropped && !s.dropped {
			if fl == nil || (fl.kind != flOriginWrite && fl.kind != flSnapWrite) {
				fail("snapshot %s dropped without an operation that needed space", name)
			}
			s.dropped = true
		}
		if err := r.verifySnap(name, fl); err != nil {
			fail("%v", err)
		}
		delete(byName, name)
	}
	for name, si := range byName {
		if fl == nil || fl.kind != flCreate || fl.name != name {
			fail("unexpected snapshot %s (id %d)", name, si.ID)
		}
		got, err := r.readAll(si.ID)
		if err != nil || !bytes.Equal(got, fl.data) {
			fail("snapshot %s created in flight does not match the origin at creation (%v)", name, err)
		}
	}
	if ep := e.Epoch(); ep != r.or.epoch && ep != r.or.epoch+1 {
		fail("epoch %d, want %d", ep, r.or.epoch)
	}
	// Resumed reclamation must finish cleanly too.
	if err := e.Reclaim(r.ctx); err != nil {
		fail("reclaim after recovery: %v", err)
	}
	if res, err := e.Check(r.ctx, nil); err != nil || !res.Clean() {
		fail("check after reclaim: %v %v", err, res.Problems)
	}
	if err := e.Close(); err != nil {
		fail("close: %v", err)
	}
}

const crashWorkloadOps = 60

// TestCrash sweeps every crash point of several short workloads (short
// workloads keep the cost of replaying the prefix before each crash point
// low). CSNAP_CRASH_STRIDE=n tests every n-th point; -short uses 5.
func TestCrash(t *testing.T) {
	stride := int64(1)
	if testing.Short() || raceEnabled {
		stride = 5
	}
	if v, err := strconv.Atoi(os.Getenv("CSNAP_CRASH_STRIDE")); err == nil && v > 0 {
		stride = int64(v)
	}
	runs := []struct {
		g    crashGeom
		seed int64
	}{{roomyStore, 7}, {roomyStore, 8}, {roomyStore, 9}, {roomyStore, 10}, {tinyStore, 11}}
	counts := make([]int, len(runs))
	t.Run("seeds", func(t *testing.T) {
		for i, r := range runs {
			t.Run(fmt.Sprint(r.seed), func(t *testing.T) {
				t.Parallel()
				counts[i] = crashSweep(t, r.g, r.seed, stride)
			})
		}
	})
	points, all := 0, true
	for _, n := range counts {
		points += n
		all = all && n > 0
	}
	t.Logf("%d crash points in total", points)
	if stride == 1 && all && !t.Failed() && points < 1000 {
		t.Errorf("only %d crash points; the workloads should reach at least 1000", points)
	}
}

func crashSweep(t *testing.T, g crashGeom, seed, stride int64) int {
	// Measure the workload's device operations without a crash.
	r := newCrashRun(t, g, seed, 0)
	start := r.p.Ops()
	for i := 0; i < crashWorkloadOps; i++ {
		if err := r.step(); err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	total := r.p.Ops() - start
	points := 0
	for point := int64(1); point <= total; point += stride {
		r := newCrashRun(t, g, seed, point)
		r.p.CrashAfter(point)
		crashed := false
		for i := 0; i < crashWorkloadOps; i++ {
			r.fl = nil
			if err := r.step(); err != nil {
				if !r.p.IsCut() {
					t.Fatalf("crash point %d: op %d failed without a power cut: %v", point, i, err)
				}
				crashed = true
				break
			}
		}
		if !crashed {
			if !r.p.IsCut() {
				t.Fatalf("crash point %d of %d: workload finished without reaching it", point, total)
			}
			r.fl = nil
		}
		r.recoverAndVerify(point)
		points++
	}
	drops := 0
	for _, s := range r.or.snaps {
		if s.dropped {
			drops++
		}
	}
	t.Logf("seed %d: %d crash points over %d device operations (%d snapshots dropped in the crash-free run)", seed, points, total, drops)
	return points
}
