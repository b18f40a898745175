package locks

import (
	"math/rand"
	"slices"
	"testing"
)

// blockOracle is the brute-force specification of Blocks over a tiny
// address space: the requests in arrival order, each granted or not; a
// waiting request is granted as soon as no byte of it is held by a granted
// lock or wanted by an earlier waiting request.
type blockOracle struct {
	reqs []oBlock
}

type oBlock struct {
	key      Key
	snapshot uint32
	bytes    map[uint64]bool
	granted  bool
}

func (o *blockOracle) conflict(i int) bool {
	r := o.reqs[i]
	for j, q := range o.reqs {
		if j == i || q.snapshot != r.snapshot || !(q.granted || j < i) {
			continue
		}
		for b := range r.bytes {
			if q.bytes[b] {
				return true
			}
		}
	}
	return false
}

// settle grants, in arrival order, every waiting request now free, and
// returns their keys.
func (o *blockOracle) settle() []Key {
	var out []Key
	for i := range o.reqs {
		if !o.reqs[i].granted && !o.conflict(i) {
			o.reqs[i].granted = true
			out = append(out, o.reqs[i].key)
		}
	}
	return out
}

func (o *blockOracle) remove(match func(Key) bool) []Key {
	o.reqs = slices.DeleteFunc(o.reqs, func(r oBlock) bool { return match(r.key) })
	return o.settle()
}

func sortKeys(ks []Key) []Key {
	slices.SortFunc(ks, func(a, b Key) int {
		if a.Client != b.Client {
			return int(a.Client[0]) - int(b.Client[0])
		}
		return int(a.ID) - int(b.ID)
	})
	return ks
}

// TestBlocksModel drives Blocks and the oracle with random lock, unlock
// and drop operations and compares every answer, and checks after every
// step that no two granted locks overlap.
func TestBlocksModel(t *testing.T) {
	for seed := int64(1); seed <= 200; seed++ {
		r := rand.New(rand.NewSource(seed))
		b := NewBlocks(4)
		o := &blockOracle{}
		next := uint64(0)
		for step := 0; step < 300; step++ {
			c := ClientID{byte(1 + r.Intn(3))}
			switch op := r.Intn(10); {
			case op < 5: // lock
				next++
				k := Key{Client: c, ID: next}
				snap := uint32(r.Intn(2))
				off, n := uint64(r.Intn(32)), uint64(1+r.Intn(8))
				got, err := b.Lock(k, snap, off, n)
				held := 0
				for _, q := range o.reqs {
					if q.key.Client == c {
						held++
					}
				}
				if held >= 4 {
					if err == nil {
						t.Fatalf("seed %d step %d: client over its limit got %v", seed, step, got)
					}
					continue
				}
				if err != nil {
					t.Fatalf("seed %d step %d: lock: %v", seed, step, err)
				}
				q := oBlock{key: k, snapshot: snap, bytes: map[uint64]bool{}}
				for i := off; i < off+n; i++ {
					q.bytes[i] = true
				}
				o.reqs = append(o.reqs, q)
				want := !o.conflict(len(o.reqs) - 1)
				o.reqs[len(o.reqs)-1].granted = want
				if got != want {
					t.Fatalf("seed %d step %d: lock [%d,+%d) of %d granted %v, oracle %v", seed, step, off, n, snap, got, want)
				}
			case op < 9: // unlock a random request (granted or waiting)
				if len(o.reqs) == 0 {
					continue
				}
				k := o.reqs[r.Intn(len(o.reqs))].key
				got := b.Unlock(k)
				want := o.remove(func(x Key) bool { return x == k })
				if !slices.Equal(sortKeys(got), sortKeys(want)) {
					t.Fatalf("seed %d step %d: unlock %v granted %v, oracle %v", seed, step, k, got, want)
				}
			default: // drop a client
				got := b.Drop(c)
				want := o.remove(func(x Key) bool { return x.Client == c })
				if !slices.Equal(sortKeys(got), sortKeys(want)) {
					t.Fatalf("seed %d step %d: drop %v granted %v, oracle %v", seed, step, c, got, want)
				}
			}
			g, w := b.Len()
			og := 0
			for _, q := range o.reqs {
				if q.granted {
					og++
				}
				if b.Granted(q.key) != q.granted {
					t.Fatalf("seed %d step %d: %v granted %v, oracle %v", seed, step, q.key, b.Granted(q.key), q.granted)
				}
			}
			if g != og || g+w != len(o.reqs) {
				t.Fatalf("seed %d step %d: %d granted %d waiting, oracle %d of %d", seed, step, g, w, og, len(o.reqs))
			}
			for i := range b.granted {
				for j := range i {
					if b.granted[i].overlaps(b.granted[j]) {
						t.Fatalf("seed %d step %d: granted locks %v and %v overlap", seed, step, b.granted[i], b.granted[j])
					}
				}
			}
		}
	}
}

func TestBlocksErrors(t *testing.T) {
	b := NewBlocks(1)
	k := Key{Client: ClientID{1}, ID: 1}
	if _, err := b.Lock(k, 0, 0, 0); err == nil {
		t.Fatal("empty range accepted")
	}
	if _, err := b.Lock(k, 0, ^uint64(0), 2); err == nil {
		t.Fatal("overflowing range accepted")
	}
	if ok, err := b.Lock(k, 0, 0, 512); !ok || err != nil {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	if _, err := b.Lock(k, 0, 1024, 512); err == nil {
		t.Fatal("a key locked twice")
	}
	if _, err := b.Lock(Key{Client: ClientID{1}, ID: 2}, 0, 1024, 512); err != ErrTooManyBlockLocks {
		t.Fatalf("over the limit: %v", err)
	}
	if ok, _ := b.Lock(Key{Client: ClientID{2}, ID: 1}, 1, 0, 512); !ok {
		t.Fatal("the same bytes of another snapshot wait")
	}
}
