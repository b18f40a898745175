package scsi

import (
	"bytes"
	"testing"
)

// writeCache reports the LU's current WCE as its shared state holds it.
func (lu *LU) writeCache() bool {
	st, err := lu.store.Get(lu.id)
	if err != nil {
		panic(err)
	}
	return !st.Mode.WriteCacheDisabled
}

// node is one node's target exporting the volume be (shared, as every
// node of a cluster shares the SAN) over the cluster-wide store.
func node(t *testing.T, be *MemBackend, store ReservationStore) *fixture {
	t.Helper()
	lu := NewLU(be)
	tgt, err := NewTarget(map[uint64]*LU{0: lu}, store)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, tgt: tgt, be: be, lu: lu}
}

// wceOf returns WCE from a MODE SENSE(6) of the Caching page through f.
func wceOf(t *testing.T, f *fixture, n Nexus) bool {
	t.Helper()
	r := f.run(n, modeSense6(true, pcCurrent, pageCaching, 0, 255), nil)
	wantGood(t, r)
	return pagesOf(t, r.Data, false)[pageCaching][2]&0x04 != 0
}

// selectWCE sets WCE through f with MODE SELECT(6).
func selectWCE(t *testing.T, f *fixture, n Nexus, wce bool) {
	t.Helper()
	p := f.run(n, modeSense6(true, pcCurrent, pageCaching, 0, 255), nil).Data
	p[0], p[2] = 0, 0
	p[4+2] &^= 0x04
	if wce {
		p[4+2] |= 0x04
	}
	wantGood(t, f.run(n, []byte{opModeSelect6, 0x10, 0, 0, byte(len(p)), 0}, p))
}

// TestModeSharedAcrossNodes: a MODE SELECT through one node is in force
// through every node (the mode parameters live in the LU's shared state),
// and on nodes started afterwards over the same shared state.
func TestModeSharedAcrossNodes(t *testing.T) {
	be := NewMemBackend(1000*BlockSize, testIdentity())
	store := NewMemStore()
	a, b := node(t, be, store), node(t, be, store)
	a.ready(nexA)
	b.ready(nexC)
	if !wceOf(t, b, nexC) {
		t.Fatal("WCE clear by default")
	}
	selectWCE(t, a, nexA, false)
	// Node B's initiator is told, and sees the change.
	wantSense(t, b.run(nexC, tur(), nil), SenseUnitAttention, 0x2a, 0x01)
	if wceOf(t, b, nexC) {
		t.Fatal("MODE SELECT WCE=0 through node A: node B still reports WCE=1")
	}
	// And honours it: writes through B are write-through.
	_, fua0 := be.Stats()
	wantGood(t, b.run(nexC, rw10(opWrite10, 0, 1, 0), make([]byte, BlockSize)))
	if _, fua := be.Stats(); fua != fua0+1 {
		t.Fatal("a write through node B with WCE=0 was not FUA")
	}
	// Nodes started anew over the same shared state keep it.
	c := node(t, be, store)
	c.ready(nexA)
	if wceOf(t, c, nexA) {
		t.Fatal("a restarted node reports WCE=1 after MODE SELECT WCE=0")
	}
	// Setting it back through B holds on A; a LUN reset through A
	// restores the default everywhere.
	selectWCE(t, b, nexC, true)
	a.ready(nexA)
	if !wceOf(t, a, nexA) {
		t.Fatal("WCE=1 through node B not seen through node A")
	}
	selectWCE(t, b, nexC, false)
	a.tgt.TaskManagement(TMFLogicalUnitReset, 0, nexA)
	b.ready(nexC)
	if !wceOf(t, b, nexC) {
		t.Fatal("a LUN reset through node A did not restore WCE on node B")
	}
}

// TestStateCodecMode: the mode parameters are encoded after the nexuses,
// only when not the defaults, so a state with default mode parameters
// keeps its format-1 encoding byte for byte.
func TestStateCodecMode(t *testing.T) {
	s := richState()
	base := mustMarshal(t, s)
	s.Mode.WriteCacheDisabled = true
	b := mustMarshal(t, s)
	if !bytes.Equal(b[:len(base)], base) || !bytes.Equal(b[len(base):], []byte{codecSectionMode, modeFlagWCD}) {
		t.Fatalf("mode section: % x after the format-1 encoding", b[len(base)-2:])
	}
	got, err := UnmarshalLUState(b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Mode.WriteCacheDisabled {
		t.Fatal("WriteCacheDisabled lost in a round trip")
	}
	if c := got.Clone(); !c.Mode.WriteCacheDisabled {
		t.Fatal("Clone drops the mode parameters")
	}
	for name, tail := range map[string][]byte{
		"unknown section":      {0x7f, modeFlagWCD},
		"default mode encoded": {codecSectionMode, 0},
		"unknown mode bit":     {codecSectionMode, 0x80 | modeFlagWCD},
		"truncated":            {codecSectionMode},
		"twice":                {codecSectionMode, modeFlagWCD, codecSectionMode, modeFlagWCD},
	} {
		if _, err := UnmarshalLUState(append(bytes.Clone(base), tail...)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestUnmapFlushesWithoutWriteCache: with WCE=0 every write is durable
// when it completes; a deallocation is a write (the blocks read zeros
// afterwards), so UNMAP and WRITE SAME with UNMAP flush the backend
// before GOOD. With WCE=1 they do not.
func TestUnmapFlushesWithoutWriteCache(t *testing.T) {
	f := newFixture(t, 256)
	f.ready(nexA)
	p := unmapParams([2]uint64{10, 5})
	unmapCmds := map[string]func() Result{
		"UNMAP":                func() Result { return f.run(nexA, unmapCDB(len(p)), p) },
		"WRITE SAME(10) unmap": func() Result { return f.run(nexA, rw10(opWriteSame10, 20, 8, 0x08), make([]byte, BlockSize)) },
		"WRITE SAME(16) unmap": func() Result { return f.run(nexA, rw16(opWriteSame16, 30, 8, 0x08), make([]byte, BlockSize)) },
		"WRITE SAME(16) NDOB":  func() Result { return f.run(nexA, rw16(opWriteSame16, 40, 8, 0x09), nil) },
	}
	for _, wce := range []bool{true, false} {
		selectWCE(t, f, nexA, wce)
		for name, cmd := range unmapCmds {
			before, _ := f.be.Stats()
			wantGood(t, cmd())
			flushes, _ := f.be.Stats()
			switch {
			case !wce && flushes == before:
				t.Errorf("%s with WCE=0: no flush before GOOD", name)
			case wce && flushes != before:
				t.Errorf("%s with WCE=1: %d flushes", name, flushes-before)
			}
		}
	}
}
