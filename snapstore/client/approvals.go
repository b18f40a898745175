package client

import "github.com/csnap/csnap/snapstore/wire"

// approvals is the client's origin-write approval bookkeeping, the
// client's half of the snapshot barrier: the current generation, the
// unique-chunk cache (chunks approved under it), ORIGIN_UNIQUE (the
// volume has no snapshot at it), and the origin writes in flight counted
// under the generation they were approved under. It is a pure ledger (no
// goroutines, clock or I/O; the Client holds it under its mutex, asks the
// server, and waits on a condition variable for oldWriters to drop);
// TestApprovalsModel checks it against a brute-force oracle.
type approvals struct {
	gen   uint64
	cache *chunkCache
	// unique: the server said (ORIGIN_UNIQUE) that at generation gen the
	// volume has no live snapshot, so every origin chunk is in the cache
	// in effect. Cleared with the cache.
	unique  bool
	writers map[uint64]int // origin writes in flight, by the generation they were approved under
}

func newApprovals(cacheBytes int) *approvals {
	return &approvals{cache: newChunkCache(cacheBytes), writers: make(map[uint64]int)}
}

// setGeneration adopts the generation a server announced (HELLO_OK).
// Writes approved before (still in flight) keep counting under their
// older generation, so the next INVALIDATE waits for them.
func (a *approvals) setGeneration(g uint64) {
	if g != a.gen {
		a.gen = g
		a.forget()
	}
}

// invalidate handles INVALIDATE{g}: g becomes current if it is newer, and
// approvals under older generations become stale. The INVALIDATE_ACK may
// go once oldWriters(g) is 0.
func (a *approvals) invalidate(g uint64) {
	if g > a.gen {
		a.gen = g
		a.forget()
	}
}

// forget drops every approval cached for the generation that stops being
// current: the unique-chunk cache and ORIGIN_UNIQUE.
func (a *approvals) forget() {
	a.cache.clear()
	a.unique = false
}

// originUnique handles ORIGIN_UNIQUE{g}: while g is current, every origin
// write is approved without asking. It reports whether that is new.
func (a *approvals) originUnique(g uint64) bool {
	if g != a.gen || a.unique {
		return false
	}
	a.unique = true
	return true
}

// local tries to approve an origin write of chunks [first, last] without
// asking the server; the cache and ORIGIN_UNIQUE count only while
// connected (approvals from before a disconnect are re-validated by the
// generation of the next HELLO_OK). If it can, the write is counted in
// flight under gen and need is empty. Otherwise need lists the chunks to
// ask for (ORIGIN_WRITE), and gen and hits (some chunks were cache hits)
// go to settle with the answer.
func (a *approvals) local(first, last uint64, connected bool) (gen uint64, need []wire.Range, hits bool) {
	gen = a.gen
	if connected && a.unique {
		a.writers[gen]++
		return gen, nil, false
	}
	for ch := first; ch <= last; ch++ {
		if connected && a.cache.has(ch) {
			hits = true
			continue
		}
		if k := len(need) - 1; k >= 0 && need[k].Start+uint64(need[k].Count) == ch {
			need[k].Count++
		} else {
			need = append(need, wire.Range{Start: ch, Count: 1})
		}
	}
	if len(need) == 0 {
		a.writers[gen]++
	}
	return gen, need, hits
}

// settle takes the server's approval of need (the lowest generation its
// answers carried) for a write whose local try was at generation g0 with
// hits. An approval older than the current generation is stale (an
// INVALIDATE came in meanwhile), and so are cache hits of an older
// generation: ok false, ask again. Otherwise the write is counted in
// flight under the current generation, returned, and an approval under
// it is cached.
func (a *approvals) settle(approved, g0 uint64, hits bool, need []wire.Range) (gen uint64, ok bool) {
	if approved < a.gen || (hits && g0 != a.gen) {
		return 0, false
	}
	if approved == a.gen {
		for _, r := range need {
			a.cache.add(r.Start, r.Count)
		}
	}
	a.writers[a.gen]++
	return a.gen, true
}

// done uncounts a write in flight under gen (it is on the origin, or
// failed).
func (a *approvals) done(gen uint64) {
	if a.writers[gen]--; a.writers[gen] <= 0 {
		delete(a.writers, gen)
	}
}

// oldWriters counts origin writes in flight approved under a generation
// below g.
func (a *approvals) oldWriters(g uint64) int {
	n := 0
	for w, k := range a.writers {
		if w < g {
			n += k
		}
	}
	return n
}
