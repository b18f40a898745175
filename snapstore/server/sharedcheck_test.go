package server

import (
	"bytes"
	"context"
	"testing"

	"github.com/csnap/csnap/snapstore/wire"
	"github.com/csnap/csnap/target/scsi"
)

// luValidator is what csnapd wires: the value must be an LU state.
func luValidator(_ string, v []byte) error {
	if len(v) == 0 {
		return nil
	}
	_, err := scsi.UnmarshalLUState(v)
	return err
}

func luState(t *testing.T, gen uint32) []byte {
	t.Helper()
	b, err := (&scsi.LUState{Generation: gen, Capacity: 1 << 20}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sharedOf(e *env, key string) (uint64, []byte, bool) {
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	se := e.srv.shared[key]
	if se == nil {
		return 0, nil, false
	}
	return se.version, se.value, true
}

// sharedStates returns the SHARED_STATE values c was pushed for key.
func sharedStates(c *client, key string) []wire.SharedValue {
	var out []wire.SharedValue
	for _, m := range c.takeNotices() {
		if st, ok := m.(*wire.SharedState); ok && st.Key == key {
			out = append(out, st.SharedValue)
		}
	}
	return out
}

const luKey = "naa.6001405aabbccdd0"

// One SHARED_UPDATE of junk bytes must not reach the shared state: it is
// refused, nothing is pushed, and a valid update still commits.
func TestSharedUpdateJunkRefused(t *testing.T) {
	e := start(t, Config{ValidateShared: luValidator})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	m := a.call(&wire.SharedUpdate{SharedValue: wire.SharedValue{Key: luKey, Value: []byte("junk junk junk")}})
	wantErr(t, m, wire.CodeBadRequest)
	if v, _, ok := sharedOf(e, luKey); ok {
		t.Fatalf("junk committed at version %d", v)
	}
	good := luState(t, 1)
	r := mustType[*wire.SharedResult](t, a.call(&wire.SharedUpdate{SharedValue: wire.SharedValue{Key: luKey, Value: good}}))
	if !r.Committed {
		t.Fatalf("valid update not committed: %+v", r)
	}
	eventually(t, "b gets the valid state", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.notices) > 0
	})
	for _, sv := range sharedStates(b, luKey) {
		if !bytes.Equal(sv.Value, good) {
			t.Fatalf("b was pushed %q", sv.Value)
		}
	}
}

// A client's upload (after a failover) of a junk value, or of a version of
// a term that has not been, is not adopted.
func TestUploadSharedJunkRefused(t *testing.T) {
	e := start(t, Config{Term: 3, ValidateShared: luValidator})
	b := connect(t, e.addr, cid(2), "n2")
	a, m := dial(t, e.addr, hello(cid(1), "n1"))
	mustType[*wire.HelloOK](t, m)
	a.notice(&wire.UploadShared{SharedValue: wire.SharedValue{Key: luKey, Version: 3<<32 | 7, Value: []byte("junk")}})
	a.notice(&wire.UploadShared{SharedValue: wire.SharedValue{Key: "naa.future", Version: 9 << 32, Value: luState(t, 2)}})
	mustType[*wire.OK](t, a.call(&wire.UploadDone{}))
	for _, k := range []string{luKey, "naa.future"} {
		if v, val, ok := sharedOf(e, k); ok {
			t.Fatalf("%s adopted: version %#x value %q", k, v, val)
		}
	}
	if n := b.takeNotices(); len(n) != 0 {
		t.Fatalf("b was pushed %v", n)
	}
	// The entry can still be written normally.
	r := mustType[*wire.SharedResult](t, a.call(&wire.SharedUpdate{SharedValue: wire.SharedValue{Key: luKey, Value: luState(t, 1)}}))
	if !r.Committed || r.Version != 3<<32|1 {
		t.Fatalf("update after a refused upload: %+v", r)
	}
	// A reset goes above the refused upload's version.
	v, err := e.srv.ResetShared(context.Background(), luKey)
	if err != nil || v != 3<<32|8 {
		t.Fatalf("reset: version %#x, %v; want %#x", v, err, uint64(3<<32|8))
	}
	// A valid upload of a past term is adopted as before.
	c, m := dial(t, e.addr, hello(cid(3), "n3"))
	mustType[*wire.HelloOK](t, m)
	c.notice(&wire.UploadShared{SharedValue: wire.SharedValue{Key: "naa.past", Version: 2<<32 | 5, Value: luState(t, 3)}})
	mustType[*wire.OK](t, c.call(&wire.UploadDone{}))
	if v, _, ok := sharedOf(e, "naa.past"); !ok || v != 2<<32|5 {
		t.Fatalf("valid upload: version %#x, adopted %v", v, ok)
	}
}

// ResetShared puts an entry back to the never-written state under a new
// version, pushed to every client.
func TestResetShared(t *testing.T) {
	e := start(t, Config{Term: 2, ValidateShared: luValidator})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	r := mustType[*wire.SharedResult](t, a.call(&wire.SharedUpdate{SharedValue: wire.SharedValue{Key: luKey, Value: luState(t, 1)}}))
	if !r.Committed {
		t.Fatal(r)
	}
	b.takeNotices()
	v, err := e.srv.ResetShared(context.Background(), luKey)
	if err != nil {
		t.Fatal(err)
	}
	if v <= r.Version {
		t.Fatalf("reset version %#x not above %#x", v, r.Version)
	}
	if cur, val, _ := sharedOf(e, luKey); cur != v || val != nil {
		t.Fatalf("after reset: version %#x value %q", cur, val)
	}
	for _, c := range []*client{a, b} {
		eventually(t, "the reset is pushed", func() bool {
			for _, sv := range sharedStates(c, luKey) {
				if sv.Version == v && len(sv.Value) == 0 {
					return true
				}
			}
			return false
		})
	}
}

// TestRewriteShared: a rewrite commits, under a new version pushed to every
// client, the entries its function changes and leaves the others alone.
func TestRewriteShared(t *testing.T) {
	e := start(t, Config{Term: 2, ValidateShared: luValidator})
	a := connect(t, e.addr, cid(1), "n1")
	b := connect(t, e.addr, cid(2), "n2")
	const other = "naa.6001405aabbccdd1"
	var before [2]uint64
	for i, key := range []string{luKey, other} {
		r := mustType[*wire.SharedResult](t, a.call(&wire.SharedUpdate{SharedValue: wire.SharedValue{Key: key, Value: luState(t, 1)}}))
		if !r.Committed {
			t.Fatal(r)
		}
		before[i] = r.Version
	}
	b.takeNotices()
	n, err := e.srv.RewriteShared(context.Background(), func(key string, v []byte) ([]byte, bool) {
		if key != luKey {
			return nil, false
		}
		return luState(t, 7), true
	})
	if err != nil || n != 1 {
		t.Fatalf("RewriteShared: %d changed, %v", n, err)
	}
	v, val, _ := sharedOf(e, luKey)
	if v <= before[0] || string(val) != string(luState(t, 7)) {
		t.Fatalf("rewritten entry: version %#x (was %#x), value changed %v", v, before[0], string(val) == string(luState(t, 7)))
	}
	if ov, _, _ := sharedOf(e, other); ov != before[1] {
		t.Fatalf("untouched entry's version moved: %#x, was %#x", ov, before[1])
	}
	eventually(t, "the rewrite is pushed", func() bool {
		for _, sv := range sharedStates(b, luKey) {
			if sv.Version == v {
				return true
			}
		}
		return false
	})
	// A rewrite to an invalid value is refused.
	if _, err := e.srv.RewriteShared(context.Background(), func(string, []byte) ([]byte, bool) { return []byte("junk"), true }); err == nil {
		t.Fatal("rewrite to junk accepted")
	}
}
