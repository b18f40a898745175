package client

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/csnap/csnap/snapstore/wire"
)

// A change made through one client is in force on the others when
// UpdateShared returns (the server pushes it before it answers), and
// concurrent read-modify-write updates from several clients lose nothing.
func TestE2ESharedState(t *testing.T) {
	e := newE2E(t)
	ctx := ctx5(t)
	c2 := e.client(t, wire.ClientID{2}, "node-2")
	c3 := e.client(t, wire.ClientID{3}, "node-3")
	if v, val := c2.Shared("k"); v != 0 || val != nil {
		t.Fatalf("unwritten entry: version %d value %q", v, val)
	}
	if err := e.c.UpdateShared(ctx, "k", func(cur []byte) ([]byte, error) { return []byte("a"), nil }); err != nil {
		t.Fatal(err)
	}
	for i, c := range []*Client{e.c, c2, c3} {
		if v, val := c.Shared("k"); v == 0 || string(val) != "a" {
			t.Fatalf("client %d right after the update: version %d value %q", i+1, v, val)
		}
	}
	const n = 50
	var wg sync.WaitGroup
	for _, c := range []*Client{e.c, c2, c3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				err := c.UpdateShared(ctx, "counter", func(cur []byte) ([]byte, error) {
					x, _ := strconv.Atoi(string(cur))
					return []byte(strconv.Itoa(x + 1)), nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, c := range []*Client{e.c, c2, c3} {
		if _, val := c.Shared("counter"); string(val) != strconv.Itoa(3*n) {
			t.Errorf("client %d: counter %q, want %d", i+1, val, 3*n)
		}
	}
	// fn's error is returned and nothing changes.
	v0, _ := c2.Shared("k")
	err := c2.UpdateShared(ctx, "k", func([]byte) ([]byte, error) { return nil, context.Canceled })
	if err != context.Canceled {
		t.Fatalf("fn error: got %v", err)
	}
	if v, _ := e.c.Shared("k"); v != v0 {
		t.Fatalf("version moved from %d to %d after a failed fn", v0, v)
	}
}
