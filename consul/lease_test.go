package consul

import (
	"math/rand"
	"testing"
	"time"
)

func TestLeaseRules(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := NewLease(2 * time.Second)
	if ok, _ := l.Serving(t0); ok {
		t.Fatal("serving before acquiring")
	}
	l.Acquired(t0, 7)
	if ok, term := l.Serving(t0.Add(1999 * time.Millisecond)); !ok || term != 7 {
		t.Fatalf("not serving inside the lease: %v %d", ok, term)
	}
	if ok, _ := l.Serving(t0.Add(2 * time.Second)); ok {
		t.Fatal("serving at the lease's end")
	}
	// A confirmation sent at t0+1.5s extends to t0+3.5s, whenever it
	// arrives.
	if err := l.Confirmed(t0.Add(1500*time.Millisecond), 7); err != nil {
		t.Fatal(err)
	}
	if ok, _ := l.Serving(t0.Add(3400 * time.Millisecond)); !ok {
		t.Fatal("confirmation did not extend the lease")
	}
	// A late answer to an older request does not move it back.
	if err := l.Confirmed(t0.Add(500*time.Millisecond), 7); err != nil {
		t.Fatal(err)
	}
	if d := l.Deadline(); !d.Equal(t0.Add(3500 * time.Millisecond)) {
		t.Fatalf("deadline %v moved back", d)
	}
	// A different term: lost.
	if err := l.Confirmed(t0.Add(3*time.Second), 8); err == nil {
		t.Fatal("term change accepted")
	}
	if ok, _ := l.Serving(t0.Add(3 * time.Second)); ok {
		t.Fatal("serving after a term change")
	}
	if err := l.Confirmed(t0.Add(3*time.Second), 8); err == nil {
		t.Fatal("confirmation accepted while not held")
	}
	l.Acquired(t0.Add(10*time.Second), 9)
	l.Lost()
	if ok, _ := l.Serving(t0.Add(10 * time.Second)); ok || !l.Deadline().IsZero() {
		t.Fatal("serving after Lost")
	}
}

// TestLeaseModel drives a lease with random events against an oracle that
// remembers every successful request's send time, and checks the safety
// property the lease exists for: the holder never serves at an instant
// more than Duration after the send time of its latest successful
// confirmation or acquisition, nor under a term it has not confirmed.
func TestLeaseModel(t *testing.T) {
	const d = 2 * time.Second
	for seed := int64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewSource(seed))
		l := NewLease(d)
		now := time.Unix(0, 0)
		var (
			held     bool
			term     uint64
			lastSent time.Time // oracle: latest send time that proved the lock
		)
		for i := 0; i < 5000; i++ {
			now = now.Add(time.Duration(rng.Intn(400)) * time.Millisecond)
			// A request's answer arrives now; it was sent up to 1.5 s ago.
			sent := now.Add(-time.Duration(rng.Intn(1500)) * time.Millisecond)
			switch rng.Intn(10) {
			case 0:
				term = uint64(rng.Intn(5) + 1)
				l.Acquired(sent, term)
				held, lastSent = true, sent
			case 1:
				l.Lost()
				held = false
			case 2, 3, 4, 5, 6:
				tm := term
				if rng.Intn(8) == 0 {
					tm = term + 1 // someone re-took the lock meanwhile
				}
				err := l.Confirmed(sent, tm)
				switch {
				case !held && err == nil:
					t.Fatalf("seed %d step %d: confirmation accepted while not held", seed, i)
				case held && tm != term:
					if err == nil {
						t.Fatalf("seed %d step %d: term change accepted", seed, i)
					}
					held = false
				case held:
					if err != nil {
						t.Fatalf("seed %d step %d: %v", seed, i, err)
					}
					if sent.After(lastSent) {
						lastSent = sent
					}
				}
			}
			ok, got := l.Serving(now)
			want := held && now.Before(lastSent.Add(d))
			if ok != want {
				t.Fatalf("seed %d step %d: Serving=%v, oracle says %v (now %v, last confirmation sent %v)", seed, i, ok, want, now, lastSent)
			}
			if ok && got != term {
				t.Fatalf("seed %d step %d: serving term %d, oracle %d", seed, i, got, term)
			}
		}
	}
}

func TestCheckTimings(t *testing.T) {
	if err := CheckTimings(2*time.Second, 3*time.Second, time.Second); err != nil {
		t.Fatalf("safe timings refused: %v", err)
	}
	if err := CheckTimings(3*time.Second, 2*time.Second, time.Second); err == nil {
		t.Fatal("overlapping timings accepted")
	}
}
