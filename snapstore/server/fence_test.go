package server

import (
	"context"
	"errors"
	"math"
	"sync/atomic"
	"testing"

	"github.com/csnap/csnap/snapstore/wire"
)

// fakeLock is a LockCheck whose answer the test sets.
type fakeLock struct {
	calls atomic.Int32
	held  atomic.Bool
	fail  atomic.Bool
}

func (f *fakeLock) HoldsLock(context.Context) (bool, error) {
	f.calls.Add(1)
	if f.fail.Load() {
		return false, errors.New("consul unreachable")
	}
	return f.held.Load(), nil
}

// claimEnv is a server whose lock check is lk and whose OnDeposed calls
// are counted.
func claimEnv(t *testing.T, lk *fakeLock) (*env, *atomic.Int32) {
	var deposed atomic.Int32
	e := start(t, Config{Term: 3, LockCheck: lk,
		Membership: MembershipFunc(func(n string) bool { return n != "stranger" }),
		OnDeposed:  func(uint64) { deposed.Add(1) }})
	return e, &deposed
}

// stillServes checks that the server answers a member's origin write and
// snapshot create, and has not fenced its store (the engine still writes).
func stillServes(t *testing.T, e *env, id byte) {
	t.Helper()
	c := connect(t, e.addr, cid(id), "member")
	mustType[*wire.OriginWriteOK](t, c.call(&wire.OriginWrite{Ranges: rng(0, 1)}))
	createSnap(t, c, "after-claim")
	if e.srv.Term() != 3 {
		t.Fatalf("term %d, want 3", e.srv.Term())
	}
}

func claimHello(id byte, node string, term uint64) wire.Hello {
	h := hello(cid(id), node)
	h.Term = term
	return h
}

// A non-member's HELLO with a huge term is refused as a non-member: the
// term is not even looked at (no lock check, no deposition).
func TestClaimedTermNonMember(t *testing.T) {
	lk := &fakeLock{}
	lk.held.Store(true)
	e, deposed := claimEnv(t, lk)
	c, m := dial(t, e.addr, claimHello(1, "stranger", math.MaxUint64))
	r := mustType[*wire.HelloReject](t, m)
	if r.Reason != wire.RejectNotMember {
		t.Fatalf("rejected for %v, want not member", r.Reason)
	}
	c.closedByServer()
	if n := deposed.Load(); n != 0 {
		t.Fatalf("OnDeposed called %d times for a non-member's claim", n)
	}
	if n := lk.calls.Load(); n != 0 {
		t.Fatalf("lock checked %d times for a non-member's claim", n)
	}
	stillServes(t, e, 2)
}

// A member's HELLO with a huge term changes nothing while the lock check
// says the lock is ours (or cannot tell): the claim is refused.
func TestClaimedTermMemberLockStillOurs(t *testing.T) {
	lk := &fakeLock{}
	lk.held.Store(true)
	e, deposed := claimEnv(t, lk)
	for i := range 3 {
		c, m := dial(t, e.addr, claimHello(byte(10+i), "member", math.MaxUint64))
		if r := mustType[*wire.HelloReject](t, m); r.Reason != wire.RejectStaleTerm || r.Term != 3 {
			t.Fatalf("got %+v, want stale-term reject naming term 3", r)
		}
		c.closedByServer()
	}
	if lk.calls.Load() == 0 {
		t.Fatal("the claim was not checked against the lock")
	}
	lk.fail.Store(true)
	e.srv.lockCheck.mu.Lock()
	e.srv.lockCheck.at = e.srv.lockCheck.at.Add(-2 * lockCheckReuse) // force a new check
	e.srv.lockCheck.mu.Unlock()
	c, m := dial(t, e.addr, claimHello(20, "member", 4))
	mustType[*wire.HelloReject](t, m)
	c.closedByServer()
	if n := deposed.Load(); n != 0 {
		t.Fatalf("OnDeposed called %d times while the lock is ours or unknown", n)
	}
	stillServes(t, e, 2)
}

// A claim the lock check confirms (the lock is no longer ours) deposes.
func TestClaimedTermConfirmed(t *testing.T) {
	lk := &fakeLock{} // held false: lost
	e, deposed := claimEnv(t, lk)
	c, m := dial(t, e.addr, claimHello(1, "member", 4))
	if r := mustType[*wire.HelloReject](t, m); r.Reason != wire.RejectStaleTerm {
		t.Fatalf("rejected for %v, want stale term", r.Reason)
	}
	c.closedByServer()
	if n := deposed.Load(); n != 1 {
		t.Fatalf("OnDeposed called %d times, want 1", n)
	}
	// Later claims do not call it again.
	c, _ = dial(t, e.addr, claimHello(2, "member", 5))
	c.closedByServer()
	if n := deposed.Load(); n != 1 {
		t.Fatalf("OnDeposed called %d times, want 1", n)
	}
}
