package snapstore

import (
	"bytes"
	"context"
	"testing"
)

// TestVolumeAttrs: the volume attributes are kept in the superblock across
// a close and a crash (no Close), survive the epoch and clean-flag writes,
// and are bounded.
func TestVolumeAttrs(t *testing.T) {
	od, sd := formatted(t, 1<<20, 8<<20, FormatOptions{ChunkSize: 8192, JournalBlocks: 256})
	ctx := context.Background()
	e, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a := e.VolumeAttrs(); a != nil {
		t.Fatalf("a new store has attributes %q", a)
	}
	want := []byte("mode parameters of every LU")
	if err := e.SetVolumeAttrs(ctx, want); err != nil {
		t.Fatal(err)
	}
	if err := e.SetEpoch(ctx, 7); err != nil {
		t.Fatal(err)
	}
	// A crash: reopen without Close.
	e2, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := e2.VolumeAttrs(); !bytes.Equal(got, want) {
		t.Fatalf("after a crash: %q, want %q", got, want)
	}
	if err := e2.Close(); err != nil {
		t.Fatal(err)
	}
	e3, err := Open(od, sd, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e3.Close()
	if got := e3.VolumeAttrs(); !bytes.Equal(got, want) {
		t.Fatalf("after a close: %q, want %q", got, want)
	}
	if err := e3.SetVolumeAttrs(ctx, make([]byte, MaxVolumeAttrs+1)); err == nil {
		t.Fatal("attributes over MaxVolumeAttrs accepted")
	}
	if err := e3.SetVolumeAttrs(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if a := e3.VolumeAttrs(); a != nil {
		t.Fatalf("cleared attributes read %q", a)
	}
}
