package snapstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/csnap/csnap/snapstore/faultdev"
)

// The fault sweep extends the crash test (crash_test.go) in two ways:
//
//   - a workload of origin writes without FUA, made durable only by later
//     flushes (and FUA ones), with writable-snapshot writes, creates,
//     deletes, reclamation, reopen and epoch updates;
//   - error injection: at every device operation in turn, one fault (a
//     failed write with EIO or ENOSPC, or a failed flush that, as on
//     Linux, forgets the writes it should have made durable). After the
//     fault the operation either succeeded or reported the error; a failed
//     engine must recover in place (Recover) and match the visible state
//     exactly, check clean; the workload then goes on, and at its end the
//     power is cut: recovery must keep every acknowledged write.
//
// The oracle keeps, per 512-byte sector of the origin and of every
// snapshot, what reads return now (vis) and the set of contents the sector
// may hold after a power cut (poss): a write not yet flushed may be lost,
// kept or torn per sector; a successful flush makes the writes since the
// last flush attempt certain; a failed flush leaves them uncertain for
// ever (a later good flush does not write them).
//
// CSNAP_CRASH_STRIDE=n tests every n-th point (make crash: 1); by default
// (make test) a deterministic sample, every faultStride-th.

const faultStride = 11

// image is the oracle of one device-like byte range (origin or snapshot).
type oimage struct {
	vis   []byte
	poss  []map[string]bool // per sector
	p0    map[int]map[string]bool
	dirty map[int][]iwrite
}

type iwrite struct {
	off  int
	data []byte
}

const sec = faultdev.SectorSize

func newImage(data []byte) *oimage {
	im := &oimage{vis: append([]byte(nil), data...), p0: map[int]map[string]bool{}, dirty: map[int][]iwrite{}}
	n := (len(data) + sec - 1) / sec
	im.poss = make([]map[string]bool, n)
	for s := range im.poss {
		im.poss[s] = map[string]bool{string(im.sector(im.vis, s)): true}
	}
	return im
}

func (im *oimage) sector(b []byte, s int) []byte { return b[s*sec : min((s+1)*sec, len(b))] }

func (im *oimage) clone() *oimage {
	c := &oimage{vis: append([]byte(nil), im.vis...), p0: map[int]map[string]bool{}, dirty: map[int][]iwrite{},
		poss: make([]map[string]bool, len(im.poss))}
	for s, set := range im.poss {
		c.poss[s] = map[string]bool{}
		for k := range set {
			c.poss[s][k] = true
		}
	}
	return c
}

// overlay returns sector s's content x with w applied.
func overlay(x string, s int, w iwrite) string {
	b := []byte(x)
	lo, hi := max(s*sec, w.off), min(s*sec+len(b), w.off+len(w.data))
	if lo < hi {
		copy(b[lo-s*sec:hi-s*sec], w.data[lo-w.off:hi-w.off])
	}
	return string(b)
}

func (im *oimage) sectors(w iwrite) (int, int) {
	return w.off / sec, (w.off + len(w.data) - 1) / sec
}

// issue records a write about to be issued: after a power cut each of its
// sectors may or may not hold it.
func (im *oimage) issue(w iwrite) {
	a, b := im.sectors(w)
	for s := a; s <= b; s++ {
		if _, ok := im.dirty[s]; !ok {
			im.p0[s] = im.poss[s]
		}
		im.dirty[s] = append(im.dirty[s], w)
		next := map[string]bool{}
		for x := range im.poss[s] {
			next[x] = true
			next[overlay(x, s, w)] = true
		}
		im.poss[s] = next
	}
}

// done records the outcome of an issued write: applied (reads return it)
// or failed (nothing changed; it stays only as a harmless possibility).
func (im *oimage) done(w iwrite, ok bool) {
	if ok {
		copy(im.vis[w.off:], w.data)
		return
	}
	a, b := im.sectors(w)
	for s := a; s <= b; s++ {
		ws := im.dirty[s]
		for i := len(ws) - 1; i >= 0; i-- {
			if ws[i].off == w.off && &ws[i].data[0] == &w.data[0] {
				im.dirty[s] = append(ws[:i:i], ws[i+1:]...)
				break
			}
		}
	}
}

// flushed records a flush: a good one makes the writes since the last
// attempt durable; a failed one leaves them uncertain.
func (im *oimage) flushed(ok bool) {
	for s, ws := range im.dirty {
		if ok {
			next := map[string]bool{}
			for x := range im.p0[s] {
				for _, w := range ws {
					x = overlay(x, s, w)
				}
				next[x] = true
			}
			im.poss[s] = next
		}
		delete(im.dirty, s)
		delete(im.p0, s)
	}
}

// durableMatch reports the first sector of got outside its possible set.
func (im *oimage) durableMatch(got []byte) (int, bool) {
	for s := range im.poss {
		if !im.poss[s][string(im.sector(got, s))] {
			return s, false
		}
	}
	return 0, true
}

// reset makes got the certain content (after a verified recovery).
func (im *oimage) reset(got []byte) {
	*im = *newImage(got)
}

type fsnap struct {
	id       SnapID
	img      *oimage
	writable bool
	dropped  bool
}

type faultFlight struct {
	kind int
	name string
	img  *oimage // create: the snapshot's image
}

type faultRun struct {
	t       *testing.T
	p       *faultdev.Power
	od, sd  *faultdev.Device
	e       *Engine
	origin  *oimage
	snaps   map[string]*fsnap
	epoch   uint64
	fl      *faultFlight
	rng     *rand.Rand
	nameN   int
	ctx     context.Context
	faulted bool // the injected fault fired and was handled
}

func newFaultRun(t *testing.T, g crashGeom, seed int64) *faultRun {
	r := &faultRun{t: t, p: faultdev.NewPower(seed), ctx: context.Background(), rng: rand.New(rand.NewSource(seed)),
		snaps: map[string]*fsnap{}}
	r.od = r.p.NewDevice(crashOriginSize)
	r.sd = r.p.NewDevice(g.storeSize)
	data := make([]byte, crashOriginSize)
	rand.New(rand.NewSource(99)).Read(data)
	r.od.Load(data, 0)
	r.origin = newImage(data)
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

func (r *faultRun) names() []string {
	var ns []string
	for i := 1; i <= r.nameN; i++ {
		n := fmt.Sprintf("c%d", i)
		if _, ok := r.snaps[n]; ok {
			ns = append(ns, n)
		}
	}
	return ns
}

func (r *faultRun) randWrite(maxLen int) iwrite {
	off := r.rng.Intn(crashOriginSize)
	ln := 1 + r.rng.Intn(min(maxLen, crashOriginSize-off))
	data := make([]byte, ln)
	r.rng.Read(data)
	return iwrite{off: off, data: data}
}

// originWrite approves and writes w; with fua it also flushes the origin.
func (r *faultRun) originWrite(w iwrite, fua bool) error {
	first, last := w.off/crashChunk, (w.off+len(w.data)-1)/crashChunk
	if _, err := r.e.PrepareOriginWrite(r.ctx, uint64(first), uint64(last-first+1)); err != nil {
		return err
	}
	r.origin.issue(w)
	_, err := r.od.WriteAt(w.data, int64(w.off))
	r.origin.done(w, err == nil)
	if err != nil || !fua {
		return err
	}
	err = r.od.Flush()
	r.origin.flushed(err == nil)
	return err
}

func (r *faultRun) step() error {
	ctx := r.ctx
	r.fl = &faultFlight{kind: flOther}
	switch x := r.rng.Intn(100); {
	case x < 32:
		r.fl.kind = flOriginWrite
		if err := r.originWrite(r.randWrite(3*crashChunk), false); err != nil {
			return err
		}
	case x < 38:
		r.fl.kind = flOriginWrite
		if err := r.originWrite(r.randWrite(2*crashChunk), true); err != nil {
			return err
		}
	case x < 46:
		err := r.od.Flush()
		r.origin.flushed(err == nil)
		if err != nil {
			return err
		}
	case x < 56:
		r.nameN++
		name := fmt.Sprintf("c%d", r.nameN)
		w := r.rng.Intn(2) == 0
		r.fl = &faultFlight{kind: flCreate, name: name, img: r.origin.clone()}
		si, err := r.e.CreateSnapshot(ctx, name, CreateOptions{Writable: w, Priority: int32(r.rng.Intn(2))})
		if err != nil {
			return err
		}
		r.snaps[name] = &fsnap{id: si.ID, img: r.fl.img, writable: w}
	case x < 62:
		ns := r.names()
		if len(ns) == 0 {
			return nil
		}
		name := ns[r.rng.Intn(len(ns))]
		r.fl = &faultFlight{kind: flDelete, name: name}
		if err := r.e.DeleteSnapshot(ctx, r.snaps[name].id); err != nil {
			return err
		}
		delete(r.snaps, name)
	case x < 80:
		var ws []string
		for _, n := range r.names() {
			if s := r.snaps[n]; s.writable && !s.dropped {
				ws = append(ws, n)
			}
		}
		if len(ws) == 0 {
			return nil
		}
		name := ws[r.rng.Intn(len(ws))]
		s := r.snaps[name]
		w := r.randWrite(2 * crashChunk)
		r.fl = &faultFlight{kind: flSnapWrite, name: name}
		first, last := w.off/crashChunk, (w.off+len(w.data)-1)/crashChunk
		locs, err := r.e.PrepareSnapshotWrite(ctx, s.id, uint64(first), uint64(last-first+1))
		if errors.Is(err, ErrSnapshotDropped) {
			return r.syncDrops()
		}
		if err != nil {
			return err
		}
		for c := first; c <= last; c++ {
			lo, hi := max(w.off, c*crashChunk), min(w.off+len(w.data), (c+1)*crashChunk)
			piece := iwrite{off: lo, data: w.data[lo-w.off : hi-w.off]}
			s.img.issue(piece)
			_, err := r.sd.WriteAt(piece.data, locs[c-first]+int64(lo-c*crashChunk))
			s.img.done(piece, err == nil)
			if err != nil {
				return err
			}
		}
		err = r.sd.Flush()
		s.img.flushed(err == nil)
		if err != nil {
			return err
		}
	case x < 86:
		if err := r.e.Reclaim(ctx); err != nil {
			return err
		}
	case x < 91:
		cerr := r.e.Close()
		e, err := Open(r.od, r.sd, crashOpts())
		if err != nil {
			return err
		}
		r.e = e
		if cerr != nil {
			return cerr
		}
	case x < 94:
		ep := r.epoch + 1
		if err := r.e.SetEpoch(ctx, ep); err != nil {
			return err
		}
		r.epoch = ep
	default:
		ns := r.names()
		if len(ns) == 0 {
			return nil
		}
		if err := r.verifyVisible(ns[r.rng.Intn(len(ns))]); err != nil {
			return err
		}
	}
	return r.syncDrops()
}

func (r *faultRun) syncDrops() error {
	for _, si := range r.e.Snapshots() {
		if si.State == StateDropped {
			if s := r.snaps[si.Name]; s != nil && s.id == si.ID {
				s.dropped = true
			}
		}
	}
	return nil
}

func (r *faultRun) readSnap(id SnapID) ([]byte, error) {
	n := r.e.OriginChunks()
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

// verifyVisible compares one snapshot with what reads must return now.
func (r *faultRun) verifyVisible(name string) error {
	s := r.snaps[name]
	got, err := r.readSnap(s.id)
	if s.dropped {
		if !errors.Is(err, ErrSnapshotDropped) {
			return fmt.Errorf("dropped snapshot %s read: %v", name, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(got, s.img.vis) {
		return fmt.Errorf("snapshot %s (id %d) does not read what was written", name, s.id)
	}
	return nil
}

// afterFault handles an operation that failed on the injected fault: the
// engine recovers in place and everything reads exactly as expected,
// allowing for the failed operation to have happened or not.
func (r *faultRun) afterFault(point int64, opErr error) {
	t := r.t
	fail := func(f string, a ...any) {
		t.Fatalf("fault point %d (op kind %d failed with %v): %s", point, r.fl.kind, opErr, fmt.Sprintf(f, a...))
	}
	if st, _ := r.e.State(); st == EngineFailed {
		if err := r.e.Recover(r.ctx); err != nil {
			fail("recover in place: %v", err)
		}
	} else if st == EngineClosed {
		// The fault hit a reopen: open again, as a restart would.
		e, err := Open(r.od, r.sd, crashOpts())
		if err != nil {
			fail("open after a failed reopen: %v", err)
		}
		r.e = e
	}
	res, err := r.e.Check(r.ctx, nil)
	if err != nil || !res.Clean() {
		fail("check after recovery: %v %v", err, res.Problems)
	}
	got := make([]byte, crashOriginSize)
	if _, err := r.od.ReadAt(got, 0); err != nil {
		fail("%v", err)
	}
	if !bytes.Equal(got, r.origin.vis) {
		fail("origin does not read what was written")
	}
	r.reconcile(fail, false)
}

// reconcile compares the engine's snapshots with the oracle: the
// operation in flight may or may not have happened. durable: compare with
// what may have survived a power cut, else with what reads return.
func (r *faultRun) reconcile(fail func(string, ...any), durable bool) {
	fl := r.fl
	byName := map[string]SnapshotInfo{}
	for _, si := range r.e.Snapshots() {
		if si.State != StateDeleting {
			byName[si.Name] = si
		}
	}
	check := func(name string, s *fsnap) {
		got, err := r.readSnap(s.id)
		if s.dropped {
			if !errors.Is(err, ErrSnapshotDropped) {
				fail("dropped snapshot %s read: %v", name, err)
			}
			return
		}
		if err != nil {
			fail("snapshot %s: %v", name, err)
		}
		if durable {
			if sct, ok := s.img.durableMatch(got); !ok {
				fail("snapshot %s (id %d): sector %d holds data no acknowledged write left there", name, s.id, sct)
			}
			s.img.reset(got)
		} else if !bytes.Equal(got, s.img.vis) {
			fail("snapshot %s (id %d) does not read what was written", name, s.id)
		}
	}
	for name, s := range r.snaps {
		si, ok := byName[name]
		if !ok {
			if fl != nil && fl.kind == flDelete && fl.name == name {
				delete(r.snaps, name)
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
		if si.State != StateDropped && s.dropped {
			fail("snapshot %s was dropped and is live again", name)
		}
		check(name, s)
		delete(byName, name)
	}
	for name, si := range byName {
		if fl == nil || fl.kind != flCreate || fl.name != name {
			fail("unexpected snapshot %s (id %d)", name, si.ID)
		}
		s := &fsnap{id: si.ID, img: fl.img, writable: si.Writable, dropped: si.State == StateDropped}
		r.snaps[name] = s
		check(name, s)
	}
}

// powerCut cuts the power (if not cut already), restores it and verifies
// that recovery kept every acknowledged write.
func (r *faultRun) powerCut(point int64) {
	t := r.t
	r.p.Cut()
	r.p.Heal()
	r.p.Restore()
	e, err := Open(r.od, r.sd, crashOpts())
	if err != nil {
		t.Fatalf("point %d: reopen after power cut: %v", point, err)
	}
	r.e = e
	fail := func(f string, a ...any) {
		kind := 0
		if r.fl != nil {
			kind = r.fl.kind
		}
		t.Fatalf("point %d, after the power cut (in-flight op kind %d, fault handled %v): %s", point, kind, r.faulted, fmt.Sprintf(f, a...))
	}
	res, err := e.Check(r.ctx, nil)
	if err != nil || !res.Clean() {
		fail("check: %v %v", err, res.Problems)
	}
	got := make([]byte, crashOriginSize)
	if _, err := r.od.ReadAt(got, 0); err != nil {
		fail("%v", err)
	}
	if s, ok := r.origin.durableMatch(got); !ok {
		fail("origin sector %d holds data no acknowledged write left there (lost write)", s)
	}
	r.origin.reset(got)
	r.reconcile(fail, true)
	if ep := e.Epoch(); ep != r.epoch && ep != r.epoch+1 {
		fail("epoch %d, want %d", ep, r.epoch)
	}
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

const faultWorkloadOps = 50

// faultKinds are the injected faults, tried in turn over the points.
var faultKinds = []faultdev.Fault{
	{Err: syscall.EIO},
	{Err: syscall.EIO, FlushOnly: true},
	{Err: syscall.ENOSPC},
}

// faultSweep runs the workload once per point: mode "cut" cuts the power
// at the point; mode "fault" injects a fault there, recovers, finishes
// the workload and then cuts the power. It returns the points tested.
func faultSweep(t *testing.T, g crashGeom, seed, stride int64, mode string) int {
	newRun := func() *faultRun {
		r := newFaultRun(t, g, seed)
		if mode == "thin" {
			// A thin store device with room for 20 more chunks than
			// format wrote: copy-outs meet ENOSPC and drop snapshots.
			r.sd.SetThin(20 * crashChunk / faultdev.ThinPage)
		}
		return r
	}
	r := newRun()
	start := r.p.Ops()
	for i := 0; i < faultWorkloadOps; i++ {
		if err := r.step(); err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	total := r.p.Ops() - start
	drops := r.e.Stats().Drops
	if mode == "thin" && drops == 0 {
		t.Fatalf("seed %d: the thin store never ran out of space", seed)
	}
	r.fl = nil
	r.powerCut(0) // the workload's own non-FUA writes, cut at the end
	points := 0
	kinds := len(faultKinds)
	if mode != "fault" {
		kinds = 1
	}
	for i := int64(0); i < total*int64(kinds); i += stride {
		point := 1 + i/int64(kinds)
		kind := faultKinds[i%int64(kinds)]
		r := newRun()
		if mode != "fault" {
			r.p.CrashAfter(point)
		} else {
			r.p.FailAt(point, kind)
		}
		for i := 0; i < faultWorkloadOps; i++ {
			err := r.step()
			if err == nil {
				continue
			}
			if mode != "fault" {
				if !r.p.IsCut() {
					t.Fatalf("cut point %d: op %d failed without a power cut: %v", point, i, err)
				}
				break
			}
			if r.faulted || r.p.Failures() == 0 {
				t.Fatalf("fault point %d: op %d failed without an injected fault: %v", point, i, err)
			}
			r.faulted = true
			r.afterFault(point, err)
		}
		if mode == "fault" && r.p.Failures() > 0 && !r.faulted {
			r.faulted = true // the fault was absorbed (an ENOSPC copy-out drops a snapshot)
		}
		if mode != "fault" && !r.p.IsCut() {
			r.fl = nil
		}
		if mode == "fault" {
			r.fl = nil
		}
		r.powerCut(point)
		points++
	}
	t.Logf("seed %d, %s: %d points over %d device operations (%d fault kinds; %d snapshots dropped in the run without faults)", seed, mode, points, total, kinds, drops)
	return points
}

// TestFaults sweeps power cuts over the non-FUA workload and injected
// faults over it (every point with CSNAP_CRASH_STRIDE=1, as make crash
// does; a deterministic sample by default).
func TestFaults(t *testing.T) {
	stride := int64(faultStride)
	if v, err := strconv.Atoi(os.Getenv("CSNAP_CRASH_STRIDE")); err == nil && v > 0 {
		stride = int64(v)
	}
	runs := []struct {
		g    crashGeom
		seed int64
		mode string
	}{
		{roomyStore, 21, "cut"}, {tinyStore, 22, "cut"}, {roomyStore, 26, "thin"},
		{roomyStore, 23, "fault"}, {roomyStore, 24, "fault"}, {tinyStore, 25, "fault"},
	}
	counts := make([]int, len(runs))
	t.Run("runs", func(t *testing.T) {
		for i, r := range runs {
			t.Run(fmt.Sprintf("%s-%d", r.mode, r.seed), func(t *testing.T) {
				t.Parallel()
				counts[i] = faultSweep(t, r.g, r.seed, stride, r.mode)
			})
		}
	})
	points := 0
	for _, n := range counts {
		points += n
	}
	t.Logf("%d cut and fault points in total", points)
	if stride == 1 && !t.Failed() && points < 1000 {
		t.Errorf("only %d points; the workloads should reach at least 1000", points)
	}
}
