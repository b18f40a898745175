package consul

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// TestResign: a holder told to resign its term deposes at once, releases
// the lock (so another node is elected) and destroys its session; a stale
// term is ignored.
func TestResign(t *testing.T) {
	f := newFakeConsul(time.Hour, time.Hour) // only a release frees the lock
	tl := &timeline{}
	resign := make(chan uint64, 1)
	l := logrus.New()
	l.SetOutput(io.Discard)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		RunElection(ctx, fakeAPI{f, "n1"}, ElectionConfig{
			Key: "k", Value: []byte("n1"),
			Lease: 300 * time.Millisecond, Check: 50 * time.Millisecond,
			Retry: 200 * time.Millisecond, RequestTimeout: 100 * time.Millisecond,
			OnElected: func(term uint64, _ string) error { tl.add("n1", true, term); return nil },
			OnDeposed: func(term uint64, _ bool) { tl.add("n1", false, term) },
			Log:       logrus.NewEntry(l), Resign: resign,
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "n1 elected", func() bool { return tl.serving() == "n1" })
	startNode(t, context.Background(), f, "n2", tl)
	resign <- 99 // not its term
	time.Sleep(150 * time.Millisecond)
	if tl.serving() != "n1" {
		t.Fatal("a stale term's resignation deposed the holder")
	}
	resign <- 1
	waitFor(t, "n2 elected", func() bool { return tl.serving() == "n2" })
	if err := tl.overlaps(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sessions["s1"] != "" {
		t.Fatal("the resigned term's session was not destroyed")
	}
}
