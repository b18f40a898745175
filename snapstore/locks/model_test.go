package locks

import (
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"reflect"
	"slices"
	"sort"
	"testing"
)

// The oracle is the brute-force specification: every origin chunk has a
// list of the locks holding it, each lock has a grant sequence number, and
// a parked write waits for exactly the holders of its chunks granted
// before it arrived. A lock first declared by Upload counts as granted
// before everything (seq -1). Nothing is incremental: blockers are
// recomputed from scratch every time.

type oLock struct {
	key    Key
	ranges []Range
	seq    int64
}

type oWrite struct {
	key    Key
	ranges []Range
	seq    int64
}

type oracle struct {
	lim     Limits
	seq     int64
	locks   map[Key]*oLock
	writes  map[Key]*oWrite
	holders map[uint64][]*oLock
}

func newOracle(lim Limits) *oracle {
	return &oracle{lim: lim.withDefaults(), locks: map[Key]*oLock{}, writes: map[Key]*oWrite{}, holders: map[uint64][]*oLock{}}
}

func covers(rs []Range, c uint64) bool {
	for _, r := range rs {
		if c >= r.Start && c-r.Start < uint64(r.Count) {
			return true
		}
	}
	return false
}

func (o *oracle) blockers(w *oWrite) []Key {
	set := map[Key]bool{}
	for c, hs := range o.holders {
		if !covers(w.ranges, c) {
			continue
		}
		for _, l := range hs {
			if l.seq < w.seq {
				set[l.key] = true
			}
		}
	}
	var out []Key
	for k := range set {
		out = append(out, k)
	}
	slices.SortFunc(out, compareKeys)
	return out
}

// settle removes and returns, in arrival order, the writes with no blockers.
func (o *oracle) settle() []Key {
	var ready []*oWrite
	for _, w := range o.writes {
		if len(o.blockers(w)) == 0 {
			ready = append(ready, w)
		}
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].seq < ready[j].seq })
	var out []Key
	for _, w := range ready {
		delete(o.writes, w.key)
		out = append(out, w.key)
	}
	return out
}

func (o *oracle) add(k Key, rs []Range, seq int64) {
	l := &oLock{key: k, ranges: slices.Clone(rs), seq: seq}
	o.locks[k] = l
	for _, r := range rs {
		for i := uint64(0); i < uint64(r.Count); i++ {
			o.holders[r.Start+i] = append(o.holders[r.Start+i], l)
		}
	}
}

func (o *oracle) drop(k Key) {
	l := o.locks[k]
	delete(o.locks, k)
	for c, hs := range o.holders {
		hs = slices.DeleteFunc(hs, func(x *oLock) bool { return x == l })
		if len(hs) == 0 {
			delete(o.holders, c)
		} else {
			o.holders[c] = hs
		}
	}
}

func (o *oracle) usage(c ClientID) Usage {
	var u Usage
	for k, l := range o.locks {
		if k.Client == c {
			u.Locks++
			for _, r := range l.ranges {
				u.Chunks += int(r.Count)
			}
		}
	}
	for k := range o.writes {
		if k.Client == c {
			u.Writes++
		}
	}
	return u
}

// validRanges mirrors the table's rules, returning the error class.
func (o *oracle) validRanges(rs []Range) (int, error) {
	if len(rs) == 0 {
		return 0, ErrBadRange
	}
	if len(rs) > o.lim.MaxRanges {
		return 0, ErrLimit
	}
	n := 0
	for i, r := range rs {
		if r.Count == 0 || r.Start+uint64(r.Count) < r.Start || i > 0 && r.Start < rs[i-1].Start+uint64(rs[i-1].Count) {
			return 0, ErrBadRange
		}
		n += int(r.Count)
	}
	return n, nil
}

func (o *oracle) acquire(k Key, rs []Range) error {
	n, err := o.validRanges(rs)
	if err != nil {
		return err
	}
	if o.locks[k] != nil {
		return ErrExists
	}
	u := o.usage(k.Client)
	if u.Locks+1 > o.lim.MaxLocks || u.Chunks+n > o.lim.MaxChunks {
		return ErrLimit
	}
	o.seq++
	o.add(k, rs, o.seq)
	return nil
}

func (o *oracle) release(k Key) ([]Key, error) {
	if o.locks[k] == nil {
		return nil, ErrNotFound
	}
	o.drop(k)
	return o.settle(), nil
}

func (o *oracle) waitFor(k Key, rs []Range) (bool, error) {
	if _, err := o.validRanges(rs); err != nil {
		return false, err
	}
	if o.writes[k] != nil {
		return false, ErrExists
	}
	if o.usage(k.Client).Writes >= o.lim.MaxWrites {
		return false, ErrLimit
	}
	o.seq++
	w := &oWrite{key: k, ranges: slices.Clone(rs), seq: o.seq}
	if len(o.blockers(w)) == 0 {
		return true, nil
	}
	o.writes[k] = w
	return false, nil
}

func (o *oracle) cancel(k Key) bool {
	if o.writes[k] == nil {
		return false
	}
	delete(o.writes, k)
	return true
}

func (o *oracle) dropClient(c ClientID) []Key {
	for k := range o.writes {
		if k.Client == c {
			delete(o.writes, k)
		}
	}
	for k := range o.locks {
		if k.Client == c {
			o.drop(k)
		}
	}
	return o.settle()
}

func (o *oracle) upload(c ClientID, ls []Lock) ([]Key, error) {
	if len(ls) > o.lim.MaxLocks {
		return nil, ErrLimit
	}
	seen := map[uint64]bool{}
	total := 0
	for _, l := range ls {
		if seen[l.ID] {
			return nil, ErrExists
		}
		seen[l.ID] = true
		n, err := o.validRanges(l.Ranges)
		if err != nil {
			return nil, err
		}
		total += n
	}
	if total > o.lim.MaxChunks {
		return nil, ErrLimit
	}
	declared := map[uint64][]Range{}
	for _, l := range ls {
		declared[l.ID] = l.Ranges
	}
	for k, l := range o.locks {
		if k.Client != c {
			continue
		}
		if rs, ok := declared[k.ID]; ok && slices.Equal(rs, l.ranges) {
			delete(declared, k.ID) // kept, with its original grant seq
			continue
		}
		o.drop(k)
	}
	for _, l := range ls {
		if rs, ok := declared[l.ID]; ok {
			o.add(Key{Client: c, ID: l.ID}, rs, -1) // granted "before everything"
		}
	}
	return o.settle(), nil
}

// ---------------------------------------------------------------------------

// checkInvariants verifies the table's internal structure.
func checkInvariants(t *testing.T, tb *Table) {
	t.Helper()
	index := map[*lock]int{}
	for c, hs := range tb.holders {
		if len(hs) == 0 {
			t.Fatalf("chunk %d: empty holder list kept", c)
		}
		for _, l := range hs {
			if !covers(l.ranges, c) {
				t.Fatalf("chunk %d indexed under lock %v that does not cover it", c, l.key)
			}
			index[l]++
		}
	}
	nlocks, nwrites := 0, 0
	for id, cl := range tb.clients {
		if len(cl.locks) == 0 && len(cl.writes) == 0 {
			t.Fatalf("client %x kept with nothing", id[:])
		}
		chunks := 0
		for _, l := range cl.locks {
			nlocks++
			chunks += l.chunks
			if index[l] != l.chunks {
				t.Fatalf("lock %v: indexed %d times, covers %d chunks", l.key, index[l], l.chunks)
			}
			delete(index, l)
			for w := range l.waiters {
				if _, ok := w.blockers[l]; !ok {
					t.Fatalf("lock %v lists waiter %v that does not wait for it", l.key, w.key)
				}
			}
		}
		if chunks != cl.chunks {
			t.Fatalf("client %x: chunk count %d, locks cover %d", id[:], cl.chunks, chunks)
		}
		for _, w := range cl.writes {
			nwrites++
			if len(w.blockers) == 0 {
				t.Fatalf("write %v parked with no blockers", w.key)
			}
			for l := range w.blockers {
				if _, ok := l.waiters[w]; !ok || tb.clients[l.key.Client] == nil || tb.clients[l.key.Client].locks[l.key.ID] != l {
					t.Fatalf("write %v waits for a lock %v that is gone or does not know it", w.key, l.key)
				}
			}
		}
	}
	if len(index) != 0 {
		t.Fatalf("%d released locks still indexed", len(index))
	}
	if nwrites != tb.nwrites {
		t.Fatalf("write count %d, counted %d", tb.nwrites, nwrites)
	}
}

// compare checks every observable of the table against the oracle.
func compare(t *testing.T, tb *Table, o *oracle, clients []ClientID) {
	t.Helper()
	checkInvariants(t, tb)
	var want []ClientID
	for _, c := range clients {
		u := o.usage(c)
		if got := tb.Usage(c); got != u {
			t.Fatalf("client %x: usage %+v, oracle %+v", c[:1], got, u)
		}
		if u != (Usage{}) {
			want = append(want, c)
		}
		var held []Lock
		for k, l := range o.locks {
			if k.Client == c {
				held = append(held, Lock{ID: k.ID, Ranges: l.ranges})
			}
		}
		slices.SortFunc(held, func(a, b Lock) int { return compareKeys(Key{ID: a.ID}, Key{ID: b.ID}) })
		if got := tb.Held(c); !(len(got) == 0 && len(held) == 0) && !reflect.DeepEqual(got, held) {
			t.Fatalf("client %x: held %v, oracle %v", c[:1], got, held)
		}
		var parked []Key
		for k := range o.writes {
			if k.Client == c {
				parked = append(parked, k)
			}
		}
		slices.SortFunc(parked, compareKeys)
		if got := tb.Parked(c); !(len(got) == 0 && len(parked) == 0) && !reflect.DeepEqual(got, parked) {
			t.Fatalf("client %x: parked %v, oracle %v", c[:1], got, parked)
		}
	}
	if got := tb.Clients(); !(len(got) == 0 && len(want) == 0) && !reflect.DeepEqual(got, want) {
		t.Fatalf("clients %x, oracle %x", got, want)
	}
	for k, w := range o.writes {
		if got, want := tb.Blockers(k), o.blockers(w); !reflect.DeepEqual(got, want) {
			t.Fatalf("write %v waits for %v, oracle %v", k, got, want)
		}
	}
	if l, w := tb.Len(); l != len(o.locks) || w != len(o.writes) {
		t.Fatalf("Len %d,%d, oracle %d,%d", l, w, len(o.locks), len(o.writes))
	}
}

func sameErr(got, want error) bool {
	if want == nil {
		return got == nil
	}
	return errors.Is(got, want)
}

func keysEqual(a, b []Key) bool { return len(a) == 0 && len(b) == 0 || reflect.DeepEqual(a, b) }

// randRanges returns 1..5 ranges over chunks [0, 48); mostly valid,
// occasionally malformed or huge (a write over the whole volume).
func randRanges(r *rand.Rand) []Range {
	switch r.Intn(50) {
	case 0:
		return nil
	case 1:
		return []Range{{Start: 5, Count: 0}}
	case 2:
		return []Range{{Start: 10, Count: 3}, {Start: 11, Count: 1}}
	case 3:
		return []Range{{Start: 0, Count: 1 << 31}}
	case 4:
		return []Range{{Start: ^uint64(0), Count: 2}}
	}
	n := 1 + r.Intn(3)
	if r.Intn(30) == 0 {
		n = 5
	}
	var rs []Range
	next := uint64(r.Intn(24))
	for i := 0; i < n; i++ {
		c := 1 + uint32(r.Intn(4))
		rs = append(rs, Range{Start: next, Count: c})
		next += uint64(c) + uint64(r.Intn(8))
	}
	return rs
}

func runModel(t *testing.T, seed int64, ops int) {
	r := rand.New(rand.NewSource(seed))
	lim := Limits{MaxLocks: 6, MaxChunks: 30, MaxWrites: 4, MaxRanges: 4}
	tb, o := New(lim), newOracle(lim)
	clients := make([]ClientID, 5)
	for i := range clients {
		clients[i][0] = byte(i + 1)
	}
	nextID := uint64(1)
	pickLock := func() (Key, bool) {
		if len(o.locks) == 0 || r.Intn(20) == 0 {
			return Key{Client: clients[r.Intn(len(clients))], ID: nextID + 1000}, false
		}
		keys := make([]Key, 0, len(o.locks))
		for k := range o.locks {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareKeys)
		return keys[r.Intn(len(keys))], true
	}
	pickWrite := func() Key {
		keys := make([]Key, 0, len(o.writes))
		for k := range o.writes {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareKeys)
		if len(keys) == 0 || r.Intn(10) == 0 {
			return Key{Client: clients[r.Intn(len(clients))], ID: 999999}
		}
		return keys[r.Intn(len(keys))]
	}
	counts := map[string]int{}
	for i := 0; i < ops; i++ {
		c := clients[r.Intn(len(clients))]
		op := r.Intn(100)
		var desc string
		switch {
		case op < 35:
			k := Key{Client: c, ID: nextID}
			nextID++
			if r.Intn(20) == 0 {
				k, _ = pickLock() // reuse an id: ErrExists
			}
			rs := randRanges(r)
			desc = fmt.Sprintf("acquire %v %v", k, rs)
			err, want := tb.Acquire(k, rs), o.acquire(k, rs)
			if !sameErr(err, want) {
				t.Fatalf("seed %d op %d %s: err %v, oracle %v", seed, i, desc, err, want)
			}
			if err != nil {
				counts["acquire error"]++
			}
		case op < 60:
			k, _ := pickLock()
			desc = fmt.Sprintf("release %v", k)
			got, err := tb.Release(k)
			want, werr := o.release(k)
			if !sameErr(err, werr) || !keysEqual(got, want) {
				t.Fatalf("seed %d op %d %s: ready %v err %v, oracle %v %v", seed, i, desc, got, err, want, werr)
			}
			counts["ready on release"] += len(got)
		case op < 85:
			k := Key{Client: c, ID: nextID}
			nextID++
			if r.Intn(20) == 0 {
				k = pickWrite()
			}
			rs := randRanges(r)
			desc = fmt.Sprintf("waitfor %v %v", k, rs)
			ready, err := tb.WaitFor(k, rs)
			wready, werr := o.waitFor(k, rs)
			if !sameErr(err, werr) || ready != wready {
				t.Fatalf("seed %d op %d %s: ready %v err %v, oracle %v %v", seed, i, desc, ready, err, wready, werr)
			}
			if err == nil && !ready {
				counts["parked"]++
			}
		case op < 88:
			k := pickWrite()
			desc = fmt.Sprintf("cancel %v", k)
			if got, want := tb.CancelWrite(k), o.cancel(k); got != want {
				t.Fatalf("seed %d op %d %s: %v, oracle %v", seed, i, desc, got, want)
			}
		case op < 92:
			desc = fmt.Sprintf("drop %x", c[:1])
			got, want := tb.DropClient(c), o.dropClient(c)
			if !keysEqual(got, want) {
				t.Fatalf("seed %d op %d %s: ready %v, oracle %v", seed, i, desc, got, want)
			}
			if u := tb.Usage(c); u != (Usage{}) || tb.Held(c) != nil || tb.Parked(c) != nil {
				t.Fatalf("seed %d op %d: dropped client left %+v", seed, i, u)
			}
			counts["ready on drop"] += len(got)
		default:
			// Re-declare: keep some locks as they are, change, drop or
			// add others; sometimes declare an id twice.
			var ls []Lock
			for _, l := range tb.Held(c) {
				switch r.Intn(4) {
				case 0: // finished while disconnected
				case 1:
					ls = append(ls, Lock{ID: l.ID, Ranges: randRanges(r)})
				default:
					ls = append(ls, l)
				}
			}
			for j := r.Intn(3); j > 0; j-- {
				ls = append(ls, Lock{ID: nextID, Ranges: randRanges(r)})
				nextID++
			}
			if len(ls) > 0 && r.Intn(15) == 0 {
				ls = append(ls, ls[0])
			}
			desc = fmt.Sprintf("upload %x %v", c[:1], ls)
			got, err := tb.Upload(c, ls)
			want, werr := o.upload(c, ls)
			if !sameErr(err, werr) || !keysEqual(got, want) {
				t.Fatalf("seed %d op %d %s: ready %v err %v, oracle %v %v", seed, i, desc, got, err, want, werr)
			}
			if err != nil {
				counts["upload error"]++
			} else {
				counts["upload"]++
			}
		}
		// Results of every op are checked above; the full state (the
		// expensive part) every few ops.
		if i%8 == 0 {
			compare(t, tb, o, clients)
		}
	}
	compare(t, tb, o, clients)
	// Drain: dropping every client must leave the table empty.
	for _, c := range clients {
		if got, want := tb.DropClient(c), o.dropClient(c); !keysEqual(got, want) {
			t.Fatalf("seed %d drain %x: ready %v, oracle %v", seed, c[:1], got, want)
		}
	}
	if l, w := tb.Len(); l != 0 || w != 0 || len(tb.holders) != 0 || len(tb.clients) != 0 {
		t.Fatalf("seed %d: table not empty after dropping everyone: %d locks %d writes %d chunks", seed, l, w, len(tb.holders))
	}
	t.Logf("seed %d: %v", seed, counts)
}

// TestModel runs random operation sequences against the oracle. Seeds are
// fixed, so a failure names the seed and operation that reproduce it.
// Longer runs: go test ./snapstore/locks -run TestModel -locks.seeds 200 -locks.ops 20000
func TestModel(t *testing.T) {
	ops := *modelOps
	if testing.Short() || raceEnabled {
		ops /= 5 // the race detector adds nothing to a single-goroutine test but time
	}
	for seed := int64(1); seed <= int64(*modelSeeds); seed++ {
		runModel(t, seed, ops)
	}
}

var (
	modelSeeds = flag.Int("locks.seeds", 4, "TestModel: number of seeds")
	modelOps   = flag.Int("locks.ops", 5000, "TestModel: operations per seed")
)
