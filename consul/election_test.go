package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// fakeConsul models what the election relies on: sessions that Consul
// invalidates once their node has been out of contact for failureDetection,
// a lock released with its session and then blocked for lockDelay, and a
// LockIndex that grows on every acquisition. Nodes can be partitioned: their
// calls hang until the caller's deadline.
type fakeConsul struct {
	mu               sync.Mutex
	failureDetection time.Duration
	lockDelay        time.Duration
	nextSession      int
	sessions         map[string]string    // session -> node ("" once invalidated)
	lastContact      map[string]time.Time // node -> last successful call
	partitioned      map[string]bool
	noLeader         bool // every call fails at once, as while Consul elects a leader
	holder           string
	lockIndex        uint64
	delayUntil       time.Time
}

func newFakeConsul(fd, delay time.Duration) *fakeConsul {
	return &fakeConsul{failureDetection: fd, lockDelay: delay, sessions: map[string]string{},
		lastContact: map[string]time.Time{}, partitioned: map[string]bool{}}
}

func (f *fakeConsul) partition(node string, on bool) {
	f.mu.Lock()
	f.partitioned[node] = on
	f.mu.Unlock()
}

// expire invalidates sessions of nodes silent for too long. Called with
// f.mu held.
func (f *fakeConsul) expire(now time.Time) {
	for s, node := range f.sessions {
		if node != "" && now.Sub(f.lastContact[node]) > f.failureDetection {
			f.sessions[s] = ""
			if f.holder == s {
				f.holder = ""
				f.delayUntil = now.Add(f.lockDelay)
			}
		}
	}
}

type fakeAPI struct {
	f    *fakeConsul
	node string
}

var (
	errPartition = errors.New("fake: partitioned")
	errNoLeader  = errors.New("fake: Unexpected response code: 500 (No cluster leader)")
)

// leaderless makes every call fail at once, as Consul's servers answer
// while they elect a leader. Gossip goes on meanwhile: no session is
// invalidated for it.
func (f *fakeConsul) leaderless(on bool) {
	f.mu.Lock()
	f.noLeader = on
	f.mu.Unlock()
}

// enter checks the partition and records contact; a partitioned node's
// call hangs until its deadline.
func (a fakeAPI) enter(ctx context.Context) error {
	a.f.mu.Lock()
	if a.f.noLeader {
		a.f.mu.Unlock()
		return errNoLeader
	}
	if a.f.partitioned[a.node] {
		a.f.mu.Unlock()
		<-ctx.Done()
		return fmt.Errorf("%w: %v", errPartition, ctx.Err())
	}
	now := time.Now()
	a.f.lastContact[a.node] = now
	a.f.expire(now)
	return nil
}

func (a fakeAPI) CreateSession(ctx context.Context) (string, error) {
	if err := a.enter(ctx); err != nil {
		return "", err
	}
	defer a.f.mu.Unlock()
	a.f.nextSession++
	s := fmt.Sprintf("s%d", a.f.nextSession)
	a.f.sessions[s] = a.node
	return s, nil
}

func (a fakeAPI) DestroySession(ctx context.Context, s string) error {
	if err := a.enter(ctx); err != nil {
		return err
	}
	defer a.f.mu.Unlock()
	a.f.sessions[s] = ""
	if a.f.holder == s {
		a.f.holder = ""
		a.f.delayUntil = time.Now().Add(a.f.lockDelay)
	}
	return nil
}

func (a fakeAPI) Acquire(ctx context.Context, key, s string, value []byte) (bool, uint64, error) {
	if err := a.enter(ctx); err != nil {
		return false, 0, err
	}
	defer a.f.mu.Unlock()
	if a.f.sessions[s] == "" {
		return false, 0, errors.New("fake: invalid session")
	}
	if a.f.holder == s {
		return true, a.f.lockIndex, nil
	}
	if a.f.holder != "" || time.Now().Before(a.f.delayUntil) {
		return false, a.f.lockIndex, nil
	}
	a.f.holder = s
	a.f.lockIndex++
	return true, a.f.lockIndex, nil
}

func (a fakeAPI) Holder(ctx context.Context, key string) (string, uint64, error) {
	if err := a.enter(ctx); err != nil {
		return "", 0, err
	}
	defer a.f.mu.Unlock()
	return a.f.holder, a.f.lockIndex, nil
}

func (a fakeAPI) Release(ctx context.Context, key, s string) error {
	if err := a.enter(ctx); err != nil {
		return err
	}
	defer a.f.mu.Unlock()
	if a.f.holder == s {
		a.f.holder = ""
		// A voluntary release is not delayed by Consul's lock-delay.
	}
	return nil
}

// syncBuf is a goroutine-safe output buffer for child processes.
type syncBuf struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

// timeline records when each node served.
type timeline struct {
	mu     sync.Mutex
	events []event
}

type event struct {
	node    string
	elected bool
	term    uint64
	at      time.Time
}

func (tl *timeline) add(node string, elected bool, term uint64) {
	tl.mu.Lock()
	tl.events = append(tl.events, event{node, elected, term, time.Now()})
	tl.mu.Unlock()
}

// serving returns the node serving now ("" if none).
func (tl *timeline) serving() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	cur := ""
	for _, e := range tl.events {
		if e.elected {
			cur = e.node
		} else if cur == e.node {
			cur = ""
		}
	}
	return cur
}

// overlaps checks that no two nodes ever served at once.
func (tl *timeline) overlaps() error {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	serving := map[string]bool{}
	for _, e := range tl.events {
		if e.elected {
			for n, on := range serving {
				if on && n != e.node {
					return fmt.Errorf("%s elected at %s while %s still served", e.node, e.at.Format("15:04:05.000"), n)
				}
			}
			serving[e.node] = true
		} else {
			serving[e.node] = false
		}
	}
	return nil
}

func startNode(t *testing.T, ctx context.Context, f *fakeConsul, node string, tl *timeline) (stop func()) {
	t.Helper()
	l := logrus.New()
	l.SetOutput(io.Discard)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunElection(cctx, fakeAPI{f, node}, ElectionConfig{
			Key: "csnap/volumes/v/server", Value: []byte(node),
			Lease: 300 * time.Millisecond, Check: 50 * time.Millisecond,
			Retry: 30 * time.Millisecond, RequestTimeout: 100 * time.Millisecond,
			OnElected: func(term uint64, _ string) error { tl.add(node, true, term); return nil },
			OnDeposed: func(term uint64, _ bool) { tl.add(node, false, term) },
			Log:       logrus.NewEntry(l),
		})
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Errorf("election of %s did not stop", node)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestPartitionedHolderStopsFirst: the holder is cut off from Consul; it
// stops serving on its own lease before Consul lets the other node take the
// lock (failure detection 400 ms + lock-delay 150 ms > lease 300 ms), so
// there is never a moment with two servers. The timestamps show it.
func TestPartitionedHolderStopsFirst(t *testing.T) {
	f := newFakeConsul(400*time.Millisecond, 150*time.Millisecond)
	tl := &timeline{}
	ctx := context.Background()
	startNode(t, ctx, f, "n1", tl)
	waitFor(t, "n1 elected", func() bool { return tl.serving() == "n1" })
	startNode(t, ctx, f, "n2", tl)
	time.Sleep(200 * time.Millisecond)
	if s := tl.serving(); s != "n1" {
		t.Fatalf("serving %q, want n1 to keep the lock", s)
	}
	cut := time.Now()
	f.partition("n1", true)
	waitFor(t, "n2 elected", func() bool { return tl.serving() == "n2" })
	if err := tl.overlaps(); err != nil {
		t.Fatal(err)
	}
	var stopped, elected time.Time
	var terms []uint64
	for _, e := range tl.events {
		if e.node == "n1" && !e.elected {
			stopped = e.at
		}
		if e.node == "n2" && e.elected {
			elected = e.at
		}
		if e.elected {
			terms = append(terms, e.term)
		}
	}
	t.Logf("partition at +0; n1 stopped serving at +%v; n2 serving at +%v (gap %v); terms %v",
		stopped.Sub(cut).Round(time.Millisecond), elected.Sub(cut).Round(time.Millisecond), elected.Sub(stopped).Round(time.Millisecond), terms)
	if !stopped.Before(elected) || len(terms) != 2 || terms[1] <= terms[0] {
		t.Fatalf("n1 stopped %v, n2 elected %v, terms %v: want a clean handover to a newer term", stopped, elected, terms)
	}
	// Healed, n1 does not take the lock back while n2 holds it.
	f.partition("n1", false)
	time.Sleep(300 * time.Millisecond)
	if s := tl.serving(); s != "n2" {
		t.Fatalf("after healing, serving %q, want n2", s)
	}
	if err := tl.overlaps(); err != nil {
		t.Fatal(err)
	}
}

// TestGracefulHandover: a holder that stops releases the lock at once; the
// other node serves within a retry interval or two, and never overlaps.
func TestGracefulHandover(t *testing.T) {
	f := newFakeConsul(400*time.Millisecond, 150*time.Millisecond)
	tl := &timeline{}
	stop1 := startNode(t, context.Background(), f, "n1", tl)
	waitFor(t, "n1 elected", func() bool { return tl.serving() == "n1" })
	startNode(t, context.Background(), f, "n2", tl)
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	stop1()
	waitFor(t, "n2 elected", func() bool { return tl.serving() == "n2" })
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("handover took %v after a graceful stop", d)
	}
	if err := tl.overlaps(); err != nil {
		t.Fatal(err)
	}
}

// TestLeaderlessConsul: Consul has no leader for longer than the lease
// (its leader died), so the holder stops serving and cannot release the
// lock or destroy its session either. Its session stays valid (gossip
// goes on), still holding the lock: once Consul is back, the holder must
// destroy it before competing again, or no node ever serves.
func TestLeaderlessConsul(t *testing.T) {
	f := newFakeConsul(time.Hour, 150*time.Millisecond)
	tl := &timeline{}
	startNode(t, context.Background(), f, "n1", tl)
	waitFor(t, "n1 elected", func() bool { return tl.serving() == "n1" })
	startNode(t, context.Background(), f, "n2", tl)
	f.leaderless(true)
	waitFor(t, "n1 deposed", func() bool { return tl.serving() == "" })
	time.Sleep(200 * time.Millisecond) // stop's release and destroy fail too
	f.leaderless(false)
	waitFor(t, "a server again", func() bool { return tl.serving() != "" })
	if err := tl.overlaps(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	live := 0
	for _, node := range f.sessions {
		if node != "" {
			live++
		}
	}
	if live != 2 || f.lockIndex != 2 {
		t.Fatalf("%d live sessions and LockIndex %d; want one per node and a second term", live, f.lockIndex)
	}
}

func TestElectionConfigChecks(t *testing.T) {
	err := RunElection(context.Background(), fakeAPI{newFakeConsul(time.Second, time.Second), "n"}, ElectionConfig{
		Lease: time.Second, Check: 2 * time.Second, Retry: time.Second, RequestTimeout: time.Second})
	if err == nil {
		t.Fatal("a check interval longer than the lease was accepted")
	}
}

// TestElectionStartAndAnnounce: a failed start (OnElected returns an
// error) ends the term with OnDeposed (lease still valid) and the lock
// released; the next term announces itself in the key's value without
// changing LockIndex; a graceful stop reports the lease as still valid.
func TestElectionStartAndAnnounce(t *testing.T) {
	f := newFakeConsul(time.Hour, 0)
	var mu sync.Mutex
	var events []string
	failFirst := true
	var announced []uint64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunElection(ctx, fakeAPI{f, "n1"}, ElectionConfig{
			Key: "k", Value: []byte("n1"),
			Lease: 300 * time.Millisecond, Check: 50 * time.Millisecond,
			Retry: 20 * time.Millisecond, RequestTimeout: 100 * time.Millisecond,
			OnElected: func(term uint64, session string) error {
				mu.Lock()
				defer mu.Unlock()
				events = append(events, fmt.Sprintf("elected %d", term))
				if session == "" {
					t.Error("OnElected without a session")
				}
				if failFirst {
					failFirst = false
					return errors.New("engine would not open")
				}
				return nil
			},
			OnDeposed: func(term uint64, valid bool) {
				mu.Lock()
				defer mu.Unlock()
				events = append(events, fmt.Sprintf("deposed %d valid=%v", term, valid))
			},
			Announce: func(term uint64) []byte {
				mu.Lock()
				defer mu.Unlock()
				announced = append(announced, term)
				return []byte(fmt.Sprint("n1 term ", term))
			},
			Log: quietLog(t),
		})
	}()
	waitFor(t, "the second term announced", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(announced) == 1
	})
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	want := []string{"elected 1", "deposed 1 valid=true", "elected 2", "deposed 2 valid=true"}
	if fmt.Sprint(events) != fmt.Sprint(want) || announced[0] != 2 {
		t.Fatalf("events %v, announced %v; want %v and [2]", events, announced, want)
	}
	if f.lockIndex != 2 {
		t.Fatalf("LockIndex %d after two terms, want 2 (the announcement must not count)", f.lockIndex)
	}
}
