package snapstore

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
)

// Long soaks: go test ./snapstore -run Model -soak=200000 (or CSNAP_SOAK=...).
var soak = flag.Int("soak", 0, "operations for the randomized model test (0: default short run)")

func soakOps(def int) int {
	if *soak > 0 {
		return *soak
	}
	if v, err := strconv.Atoi(os.Getenv("CSNAP_SOAK")); err == nil && v > 0 {
		return v
	}
	return def
}

type msnap struct {
	name     string
	data     []byte
	writable bool
	prio     int32
	dropped  bool
	// ver: per chunk, the write that produced its content (diff oracle)
	ver []uint64
}

// model drives an engine and an in-memory oracle of the expected bytes of
// the origin and of every snapshot.
type model struct {
	t       testing.TB
	rng     *rand.Rand
	e       *Engine
	od, sd  Device
	opts    Options
	cs      int
	origin  []byte
	snaps   map[SnapID]*msnap
	nameSeq int
	ctx     context.Context
	mu      sync.Mutex
	drops   int // drops seen by the model
	dropEvs int // EventDropped received
	// ver: per origin chunk, the write that produced its content (0: the
	// initial content); verSeq numbers writes. Two snapshots differ at a
	// chunk exactly when their versions there differ (the diff oracle).
	ver    []uint64
	verSeq uint64
}

func newModel(t testing.TB, seed int64, chunk, originChunks int, storeBytes int64, fo FormatOptions, o Options) *model {
	m := &model{t: t, rng: rand.New(rand.NewSource(seed)), cs: chunk, snaps: map[SnapID]*msnap{}, ctx: context.Background()}
	m.od = NewMemDevice(int64(chunk*originChunks) - int64(chunk/2)) // partial last chunk
	m.sd = NewMemDevice(storeBytes)
	m.origin = make([]byte, chunk*originChunks-chunk/2)
	m.ver = make([]uint64, originChunks)
	m.rng.Read(m.origin)
	if _, err := m.od.WriteAt(m.origin, 0); err != nil {
		t.Fatal(err)
	}
	fo.ChunkSize = chunk
	if err := Format(m.od, m.sd, fo); err != nil {
		t.Fatal(err)
	}
	o.OnEvent = func(ev Event) {
		if ev.Kind == EventDropped {
			m.mu.Lock()
			m.dropEvs++
			m.mu.Unlock()
		}
	}
	m.opts = o
	m.open()
	return m
}

func (m *model) open() {
	e, err := Open(m.od, m.sd, m.opts)
	if err != nil {
		m.t.Fatalf("open: %v", err)
	}
	m.e = e
}

func (m *model) reopen() {
	if err := m.e.Close(); err != nil {
		m.t.Fatalf("close: %v", err)
	}
	m.open()
}

func (m *model) liveIDs() []SnapID {
	var ids []SnapID
	for id, s := range m.snaps {
		if !s.dropped {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// victims returns live snapshots in drop order.
func (m *model) victims() []SnapID {
	ids := m.liveIDs()
	sort.SliceStable(ids, func(i, j int) bool { return m.snaps[ids[i]].prio < m.snaps[ids[j]].prio })
	return ids
}

// syncDrops marks snapshots the engine dropped and checks the choice: the
// snapshots dropped by one operation are the first ones of the drop order
// (lowest priority, oldest among equals) at its start.
func (m *model) syncDrops(order []SnapID) {
	dropped := map[SnapID]bool{}
	for _, si := range m.e.Snapshots() {
		if si.State == StateDropped {
			dropped[si.ID] = true
		}
	}
	n := 0
	for id, s := range m.snaps {
		if dropped[id] && !s.dropped {
			s.dropped = true
			n++
		}
	}
	for i := 0; i < n; i++ {
		if !dropped[order[i]] {
			m.t.Fatalf("%d snapshots dropped, but %d (position %d in drop order %v) was not", n, order[i], i, order)
		}
	}
	m.mu.Lock()
	m.drops += n
	m.mu.Unlock()
}

func (m *model) originWrite() {
	n := len(m.origin)
	off := m.rng.Intn(n)
	ln := 1 + m.rng.Intn(min(3*m.cs, n-off))
	first, last := off/m.cs, (off+ln-1)/m.cs
	order := m.victims()
	if _, err := m.e.PrepareOriginWrite(m.ctx, uint64(first), uint64(last-first+1)); err != nil {
		m.t.Fatalf("prepare origin write [%d,%d]: %v", first, last, err)
	}
	m.syncDrops(order)
	buf := make([]byte, ln)
	m.rng.Read(buf)
	if _, err := m.od.WriteAt(buf, int64(off)); err != nil {
		m.t.Fatal(err)
	}
	copy(m.origin[off:], buf)
	m.verSeq++
	for c := first; c <= last; c++ {
		m.ver[c] = m.verSeq
	}
}

func (m *model) create() {
	m.nameSeq++
	name := fmt.Sprintf("s%d", m.nameSeq)
	w := m.rng.Intn(2) == 0
	prio := int32(m.rng.Intn(3))
	si, err := m.e.CreateSnapshot(m.ctx, name, CreateOptions{Priority: prio, Writable: w})
	if errors.Is(err, ErrTableFull) {
		return
	}
	if err != nil {
		m.t.Fatalf("create: %v", err)
	}
	m.snaps[si.ID] = &msnap{name: name, data: append([]byte(nil), m.origin...), writable: w, prio: prio,
		ver: append([]uint64(nil), m.ver...)}
}

func (m *model) pick() (SnapID, *msnap) {
	if len(m.snaps) == 0 {
		return 0, nil
	}
	ids := make([]SnapID, 0, len(m.snaps))
	for id := range m.snaps {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	id := ids[m.rng.Intn(len(ids))]
	return id, m.snaps[id]
}

func (m *model) delete() {
	id, s := m.pick()
	if s == nil {
		return
	}
	if err := m.e.DeleteSnapshot(m.ctx, id); err != nil {
		m.t.Fatalf("delete %d: %v", id, err)
	}
	delete(m.snaps, id)
}

func (m *model) snapWrite() {
	var cands []SnapID
	for _, id := range m.liveIDs() {
		if m.snaps[id].writable {
			cands = append(cands, id)
		}
	}
	if len(cands) == 0 {
		return
	}
	id := cands[m.rng.Intn(len(cands))]
	s := m.snaps[id]
	n := len(m.origin)
	off := m.rng.Intn(n)
	ln := 1 + m.rng.Intn(min(2*m.cs, n-off))
	first, last := off/m.cs, (off+ln-1)/m.cs
	order := m.victims()
	locs, err := m.e.PrepareSnapshotWrite(m.ctx, id, uint64(first), uint64(last-first+1))
	m.syncDrops(order)
	if errors.Is(err, ErrSnapshotDropped) {
		if !s.dropped {
			m.t.Fatalf("snapshot write: %v but snapshot %d not reported dropped", err, id)
		}
		return
	}
	if err != nil {
		m.t.Fatalf("prepare snapshot write %d [%d,%d]: %v", id, first, last, err)
	}
	buf := make([]byte, ln)
	m.rng.Read(buf)
	for c := first; c <= last; c++ {
		lo, hi := max(off, c*m.cs), min(off+ln, (c+1)*m.cs)
		if _, err := m.sd.WriteAt(buf[lo-off:hi-off], locs[c-first]+int64(lo-c*m.cs)); err != nil {
			m.t.Fatal(err)
		}
	}
	copy(s.data[off:], buf)
	m.verSeq++
	for c := first; c <= last; c++ {
		s.ver[c] = m.verSeq
	}
}

func (m *model) setPrio() {
	id, s := m.pick()
	if s == nil || s.dropped {
		return
	}
	p := int32(m.rng.Intn(3))
	if err := m.e.SetPriority(m.ctx, id, p); err != nil {
		m.t.Fatalf("set priority: %v", err)
	}
	s.prio = p
}

// readSnap reads chunks of snapshot id through the engine's mapping.
func (m *model) readSnap(id SnapID, first, n int) ([]byte, error) {
	locs, err := m.e.MapSnapshotReadHold(m.ctx, id, uint64(first), uint64(n))
	if err != nil {
		return nil, err
	}
	out := make([]byte, n*m.cs)
	var held []uint64
	for i, l := range locs {
		p := out[i*m.cs : (i+1)*m.cs]
		if l.Origin {
			held = append(held, uint64(first+i))
			end := min(int64(len(m.origin)), l.Offset+int64(m.cs))
			if _, err := m.od.ReadAt(p[:end-l.Offset], l.Offset); err != nil {
				return nil, err
			}
		} else if _, err := m.sd.ReadAt(p, l.Offset); err != nil {
			return nil, err
		}
	}
	m.e.ReleaseOriginRead(held...)
	return out, nil
}

func (m *model) verifySnap(id SnapID, first, n int) {
	s := m.snaps[id]
	got, err := m.readSnap(id, first, n)
	if s.dropped {
		if !errors.Is(err, ErrSnapshotDropped) {
			m.t.Fatalf("read of dropped snapshot %d: err %v, want ErrSnapshotDropped", id, err)
		}
		return
	}
	if err != nil {
		m.t.Fatalf("read snapshot %d: %v", id, err)
	}
	lo := first * m.cs
	hi := min(len(s.data), (first+n)*m.cs)
	if !bytes.Equal(got[:hi-lo], s.data[lo:hi]) {
		for i := lo; i < hi; i++ {
			if got[i-lo] != s.data[i] {
				m.t.Fatalf("snapshot %d (%s) differs from the oracle at byte %d (chunk %d)", id, s.name, i, i/m.cs)
			}
		}
	}
}

func (m *model) verifyRandom() {
	id, s := m.pick()
	if s == nil {
		return
	}
	nc := int(m.e.OriginChunks())
	first := m.rng.Intn(nc)
	m.verifySnap(id, first, 1+m.rng.Intn(min(4, nc-first)))
}

func (m *model) verifyAll() {
	nc := int(m.e.OriginChunks())
	for id := range m.snaps {
		m.verifySnap(id, 0, nc)
	}
	got := make([]byte, len(m.origin))
	if _, err := m.od.ReadAt(got, 0); err != nil {
		m.t.Fatal(err)
	}
	if !bytes.Equal(got, m.origin) {
		m.t.Fatalf("origin differs from the oracle")
	}
	m.verifyDiffs()
}

func (m *model) check() {
	r, err := m.e.Check(m.ctx, nil)
	if err != nil {
		m.t.Fatalf("check: %v", err)
	}
	if !r.Clean() {
		for _, p := range r.Problems {
			m.t.Errorf("check: %s", p)
		}
		m.t.FailNow()
	}
}

// verifyAccounting compares per-snapshot unique/shared bytes with what the
// mapping shows (after reclamation, so no deleted snapshot counts).
func (m *model) verifyAccounting() {
	if err := m.e.Reclaim(m.ctx); err != nil {
		m.t.Fatal(err)
	}
	users := map[int64][]SnapID{}
	nc := uint64(m.e.OriginChunks())
	for _, id := range m.liveIDs() {
		locs, err := m.e.MapSnapshotReadHold(m.ctx, id, 0, nc)
		if err != nil {
			m.t.Fatal(err)
		}
		for i, l := range locs {
			if l.Origin {
				m.e.ReleaseOriginRead(uint64(i))
			} else {
				users[l.Offset] = append(users[l.Offset], id)
			}
		}
	}
	uniq, shared := map[SnapID]int64{}, map[SnapID]int64{}
	for _, us := range users {
		for _, id := range us {
			if len(us) == 1 {
				uniq[id] += int64(m.cs)
			} else {
				shared[id] += int64(m.cs)
			}
		}
	}
	for _, si := range m.e.Snapshots() {
		if si.State != StateLive {
			continue
		}
		if si.UniqueBytes != uniq[si.ID] || si.SharedBytes != shared[si.ID] {
			m.t.Fatalf("snapshot %d: unique/shared %d/%d reported, mapping shows %d/%d",
				si.ID, si.UniqueBytes, si.SharedBytes, uniq[si.ID], shared[si.ID])
		}
	}
}

func (m *model) step() {
	switch r := m.rng.Intn(100); {
	case r < 35:
		m.originWrite()
	case r < 45:
		m.create()
	case r < 51:
		m.delete()
	case r < 68:
		m.snapWrite()
	case r < 70:
		m.setPrio()
	case r < 72:
		m.reopen()
	case r < 74:
		if err := m.e.Reclaim(m.ctx); err != nil {
			m.t.Fatal(err)
		}
	default:
		m.verifyRandom()
	}
}

func runModel(t *testing.T, seed int64, ops int, chunk, originChunks int, storeBytes int64, fo FormatOptions, o Options) *model {
	m := newModel(t, seed, chunk, originChunks, storeBytes, fo, o)
	const batch = 100
	for i := 0; i < ops; i++ {
		m.step()
		if i%batch == batch-1 {
			m.verifyAll()
			m.check()
			if i%(5*batch) == 5*batch-1 {
				m.verifyAccounting()
				m.check()
			}
		}
	}
	m.verifyAll()
	m.check()
	m.verifyAccounting()
	if err := m.e.Close(); err != nil {
		t.Fatal(err)
	}
	if m.drops != m.dropEvs {
		t.Fatalf("%d snapshots dropped but %d drop events", m.drops, m.dropEvs)
	}
	return m
}

func TestModel(t *testing.T) {
	def := 3000
	if raceEnabled {
		def = 1000
	}
	ops := soakOps(def)
	cases := []struct {
		name         string
		chunk        int
		originChunks int
		store        int64
		nodeCap      int
		meta         uint64
	}{
		// roomy store, deep tree (tiny nodes)
		{"deep-tree", 4096, 48, 16 << 20, 4, 2048},
		// small store: drops happen
		{"store-full", 4096, 32, 3<<20 + 512<<10, 6, 512},
		// default node size, bigger chunks
		{"big-chunks", 16384, 24, 16 << 20, 0, 0},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fo := FormatOptions{TableCapacity: 64, JournalBlocks: 256, metaBlocks: c.meta}
			o := Options{nodeCap: c.nodeCap, CacheBlocks: 256}
			seed := int64(1000 + i)
			if v, err := strconv.Atoi(os.Getenv("CSNAP_SEED")); err == nil {
				seed += int64(v) * 100
			}
			m := runModel(t, seed, ops, c.chunk, c.originChunks, c.store, fo, o)
			t.Logf("%s: %+v", c.name, m.e.Stats())
		})
	}
}
