package server

import (
	"testing"
	"time"

	"github.com/csnap/csnap/snapstore/wire"
)

// A delete is announced to every connected client with INVALIDATE of the
// current generation, so every node's snapshot targets follow it at once
// (issue 17: a delete through another node was seen only by a 1 s poll).
func TestDeleteAnnouncedToClients(t *testing.T) {
	e := start(t, Config{})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	s1 := createSnap(t, b, "s1")
	s2 := createSnap(t, b, "s2")
	a.mu.Lock()
	a.autoAck = false
	a.mu.Unlock()
	mustType[*wire.OK](t, b.call(&wire.DeleteSnapshot{Snapshot: wire.SnapshotRef{ID: s1.ID}}))
	select {
	case inv := <-a.inval:
		if g := inv.m.(*wire.Invalidate).Generation; g != uint64(s2.ID) {
			t.Fatalf("INVALIDATE after the delete: generation %d, want the current %d", g, s2.ID)
		}
		// The ack is a valid one: the connection goes on.
		if err := a.w.Write(inv.id, &wire.InvalidateAck{Generation: uint64(s2.ID)}); err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLong):
		t.Fatal("the delete was not announced to the other client")
	}
	list := mustType[*wire.SnapshotList](t, a.call(&wire.ListSnapshots{Max: 100}))
	for _, s := range list.Entries {
		if s.ID == s1.ID && !s.Deleting {
			t.Fatalf("s1 still listed live: %+v", s)
		}
	}
}
