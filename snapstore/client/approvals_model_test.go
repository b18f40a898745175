package client

import (
	"slices"
	"testing"

	"github.com/csnap/csnap/snapstore/wire"
)

// The approvals oracle states the barrier's rules from scratch: every
// change of the current generation starts a new epoch; a chunk is approved
// locally only if an approval under the current generation was cached in
// the current epoch (or ORIGIN_UNIQUE came in it), and only while
// connected; a write counts under the generation it was approved under
// until it is done; an INVALIDATE of g waits for the writes under older
// generations.
type approvalsOracle struct {
	gen, epoch uint64
	uniqueIn   uint64            // epoch of ORIGIN_UNIQUE + 1 (0: none)
	cached     map[uint64]uint64 // chunk -> epoch it was cached in + 1
	writes     []uint64          // generations of the writes in flight
}

func (o *approvalsOracle) setGen(g uint64) {
	if g != o.gen {
		o.gen = g
		o.epoch++
	}
}

func (o *approvalsOracle) approvedLocally(ch uint64) bool {
	return o.cached[ch] == o.epoch+1
}

func TestApprovalsModel(t *testing.T) {
	r := modelRand(t)
	for it := 0; it < 300; it++ {
		a := newApprovals(0)
		o := &approvalsOracle{cached: map[uint64]uint64{}}
		type try struct {
			g0   uint64
			need []wire.Range
			hits bool
		}
		var tries []try // local tries waiting for the server's answer
		for step := 0; step < 200; step++ {
			switch op := r.Intn(9); op {
			case 0, 1: // a write tries locally
				first := uint64(r.Intn(40))
				last := first + uint64(r.Intn(6))
				connected := r.Intn(5) > 0
				g0, need, hits := a.local(first, last, connected)
				var want []wire.Range
				wantHits := false
				unique := connected && o.uniqueIn == o.epoch+1
				for ch := first; ch <= last && !unique; ch++ {
					if connected && o.approvedLocally(ch) {
						wantHits = true
						continue
					}
					if k := len(want) - 1; k >= 0 && want[k].Start+uint64(want[k].Count) == ch {
						want[k].Count++
					} else {
						want = append(want, wire.Range{Start: ch, Count: 1})
					}
				}
				if g0 != o.gen || !slices.Equal(need, want) || (!unique && hits != wantHits) {
					t.Fatalf("step %d: local(%d, %d, %v) = %d %v %v, oracle %d %v %v", step, first, last, connected, g0, need, hits, o.gen, want, wantHits)
				}
				if len(want) == 0 {
					o.writes = append(o.writes, o.gen)
				} else {
					tries = append(tries, try{g0, need, hits})
				}
			case 2: // the server answers a try
				if len(tries) == 0 {
					continue
				}
				i := r.Intn(len(tries))
				tr := tries[i]
				tries = slices.Delete(tries, i, i+1)
				approved := tr.g0 + uint64(r.Intn(3))
				if approved > 0 && r.Intn(4) == 0 {
					approved--
				}
				g, ok := a.settle(approved, tr.g0, tr.hits, tr.need)
				wantOK := approved >= o.gen && (!tr.hits || tr.g0 == o.gen)
				if ok != wantOK || (ok && g != o.gen) {
					t.Fatalf("step %d: settle(%d, %d, %v) = %d %v, oracle %d %v", step, approved, tr.g0, tr.hits, g, ok, o.gen, wantOK)
				}
				if ok {
					o.writes = append(o.writes, o.gen)
					if approved == o.gen {
						for _, rg := range tr.need {
							for ch := rg.Start; ch < rg.Start+uint64(rg.Count); ch++ {
								o.cached[ch] = o.epoch + 1
							}
						}
					}
				}
			case 3, 4: // a write is on the origin
				if len(o.writes) == 0 {
					continue
				}
				i := r.Intn(len(o.writes))
				a.done(o.writes[i])
				o.writes = slices.Delete(o.writes, i, i+1)
			case 5: // INVALIDATE
				g := o.gen + uint64(r.Intn(3))
				if g > 0 && r.Intn(4) == 0 {
					g--
				}
				a.invalidate(g)
				if g > o.gen {
					o.setGen(g)
				}
			case 6: // HELLO_OK of a new connection
				g := o.gen
				if r.Intn(2) == 0 {
					g = uint64(r.Intn(int(o.gen) + 3))
				}
				a.setGeneration(g)
				o.setGen(g)
			case 7: // ORIGIN_UNIQUE
				g := o.gen
				if r.Intn(3) == 0 {
					g++
				}
				isNew := a.originUnique(g)
				wantNew := g == o.gen && o.uniqueIn != o.epoch+1
				if isNew != wantNew {
					t.Fatalf("step %d: originUnique(%d) = %v, oracle %v", step, g, isNew, wantNew)
				}
				if wantNew {
					o.uniqueIn = o.epoch + 1
				}
			case 8: // the barrier's question
				g := uint64(r.Intn(int(o.gen) + 3))
				want := 0
				for _, w := range o.writes {
					if w < g {
						want++
					}
				}
				if got := a.oldWriters(g); got != want {
					t.Fatalf("step %d: oldWriters(%d) = %d, oracle %d (writes %v)", step, g, got, want, o.writes)
				}
			}
			if a.gen != o.gen {
				t.Fatalf("step %d: generation %d, oracle %d", step, a.gen, o.gen)
			}
		}
	}
}
