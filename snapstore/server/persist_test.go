package server

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// keepPrefixed keeps values that start with "keep:".
func keepPrefixed(_ string, v []byte) []byte {
	if bytes.HasPrefix(v, []byte("keep:")) {
		return v
	}
	return nil
}

// TestPersistedShared: what PersistShared picks is recorded in the store
// and restored, below every committed version, by the next server; a pick
// that goes away is removed from the record.
func TestPersistedShared(t *testing.T) {
	eng, _, _ := newEngine(t)
	ctx := context.Background()
	newServer := func(term uint64) *Server {
		s, err := New(Config{Engine: eng, Volume: "dev", Term: term, Node: "srv", Log: testLog(t),
			Registry: NewMemRegistry(), PersistShared: keepPrefixed})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	persist := func(s *Server, k, v string) {
		t.Helper()
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.persistLocked(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	s := newServer(1)
	persist(s, "lu-a", "keep:1")
	persist(s, "lu-b", "drop")
	persist(s, "lu-c", "keep:3")
	rec := bytes.Clone(eng.VolumeAttrs())
	persist(s, "lu-c", "keep:3") // unchanged: no write
	if !bytes.Equal(eng.VolumeAttrs(), rec) {
		t.Fatal("record rewritten for an unchanged pick")
	}
	s.Close()

	s = newServer(2)
	for k, want := range map[string]string{"lu-a": "keep:1", "lu-c": "keep:3"} {
		e := s.shared[k]
		if e == nil || string(e.value) != want || e.version != persistedVersion {
			t.Fatalf("restored %s: %+v, want %q at version %d", k, e, want, persistedVersion)
		}
		if e.version >= s.nextSharedVersion(0) {
			t.Fatal("a restored entry is not older than every committed version")
		}
	}
	if s.shared["lu-b"] != nil {
		t.Fatal("an entry not picked was restored")
	}
	persist(s, "lu-a", "drop")
	persist(s, "lu-c", "drop")
	if a := eng.VolumeAttrs(); a != nil {
		t.Fatalf("record %q left after every pick went away", a)
	}
	s.Close()
}

func TestPersistedRecordCodec(t *testing.T) {
	picks := map[string][]byte{"b": []byte("2"), "a": {}, "c": bytes.Repeat([]byte{9}, 300)}
	b, err := encodePersisted(picks)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != persistedFormat || b[3] != 0 || b[4] != 1 || b[5] != 'a' {
		t.Fatalf("record starts % x: not format 1, sorted by key", b[:6])
	}
	got, err := decodePersisted(b)
	if err != nil || len(got) != 3 || string(got["b"]) != "2" || len(got["c"]) != 300 {
		t.Fatalf("round trip: %v %q", err, got)
	}
	for name, bad := range map[string][]byte{
		"format":    append([]byte{2}, b[1:]...),
		"truncated": b[:len(b)-1],
		"trailing":  append(bytes.Clone(b), 0),
		"empty":     {},
	} {
		if _, err := decodePersisted(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := encodePersisted(map[string][]byte{"k": make([]byte, 70000)}); err == nil ||
		!strings.Contains(err.Error(), "too long") {
		t.Fatalf("oversized value: %v", err)
	}
}
