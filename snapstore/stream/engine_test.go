package stream

import (
	"bytes"
	"context"
	"math/rand"
	"testing"

	"github.com/csnap/csnap/snapstore"
)

// snapReader reads a snapshot's content through the engine's mapping (as
// a sender does, under origin-read holds).
type snapReader struct {
	e      *snapstore.Engine
	id     snapstore.SnapID
	od, sd snapstore.Device
	size   int64
}

func (r *snapReader) ReadAt(p []byte, off int64) (int, error) {
	cs := int64(r.e.ChunkSize())
	ctx := context.Background()
	for done := 0; done < len(p); {
		o := off + int64(done)
		c := o / cs
		n := min(int64(len(p)-done), (c+1)*cs-o, r.size-o)
		locs, err := r.e.MapSnapshotReadHold(ctx, r.id, uint64(c), 1)
		if err != nil {
			return done, err
		}
		dev, at := r.sd, locs[0].Offset+o-c*cs
		if locs[0].Origin {
			dev = r.od
		}
		_, err = dev.ReadAt(p[done:done+int(n)], at)
		if locs[0].Origin {
			r.e.ReleaseOriginRead(uint64(c))
		}
		if err != nil {
			return done, err
		}
		done += int(n)
	}
	return len(p), nil
}

// TestEngineSendReceive: a full stream of snapshot a and an incremental
// stream a→b (b writable, with private writes; changes include zeroed
// chunks) made from a real engine's Diff and snapshot reads rebuild a and
// then b exactly on a replica; the incremental stream carries only the
// changed chunks.
func TestEngineSendReceive(t *testing.T) {
	const cs, nc = 4096, 256
	const size = cs*nc - 1000
	ctx := context.Background()
	rng := rand.New(rand.NewSource(7))
	od, sd := snapstore.NewMemDevice(size), snapstore.NewMemDevice(8<<20)
	origin := make([]byte, size)
	for c := 0; c < nc; c += 2 { // every other chunk has data, the rest zeros
		rng.Read(origin[c*cs : min((c+1)*cs, size)])
	}
	od.WriteAt(origin, 0)
	if err := snapstore.Format(od, sd, snapstore.FormatOptions{ChunkSize: cs, TableCapacity: 16, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	e, err := snapstore.Open(od, sd, snapstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	a, err := e.CreateSnapshot(ctx, "a", snapstore.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aData := bytes.Clone(origin)
	// change ~5% of the chunks on the origin, some to zeros
	for i := 0; i < nc/20; i++ {
		c := rng.Intn(nc)
		if _, err := e.PrepareOriginWrite(ctx, uint64(c), 1); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, min(cs, size-c*cs))
		if i%3 != 0 {
			rng.Read(buf)
		}
		od.WriteAt(buf, int64(c*cs))
		copy(origin[c*cs:], buf)
	}
	b, err := e.CreateSnapshot(ctx, "b", snapstore.CreateOptions{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	bData := bytes.Clone(origin)
	for i := 0; i < 4; i++ { // private writes to b
		c := rng.Intn(nc - 1)
		offs, err := e.PrepareSnapshotWrite(ctx, b.ID, uint64(c), 1)
		if err != nil {
			t.Fatal(err)
		}
		sd.WriteAt([]byte("private"), offs[0]+100)
		copy(bData[c*cs+100:], "private")
	}
	uuid := e.UUID()
	ident := func(si snapstore.SnapshotInfo) Snapshot {
		return Snapshot{ID: uint32(si.ID), Name: si.Name, Created: si.Created}
	}
	diff := func(from, to snapstore.SnapID) ExtentFunc {
		return func(ctx context.Context, off int64, limit int) ([]snapstore.Extent, int64, error) {
			return e.Diff(ctx, from, to, off, limit)
		}
	}
	// full send of a
	hFull := Header{Volume: uuid, ChunkSize: cs, VolumeSize: size, To: ident(a)}
	var full bytes.Buffer
	sum, err := Encode(ctx, &full, hFull, Source{Extents: diff(snapstore.NoSnapshot, a.ID), Data: &snapReader{e, a.ID, od, sd, size}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.DataBytes >= size*6/10 {
		t.Fatalf("full stream carries %d data bytes of %d: zero chunks not skipped", sum.DataBytes, size)
	}
	replica := make([]byte, size)
	rng.Read(replica) // the receiver's old content is replaced
	if _, _, err := apply(full.Bytes(), replica); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(replica, aData) {
		t.Fatal("full stream of a did not reproduce a")
	}
	// incremental a→b
	hInc := Header{Volume: uuid, ChunkSize: cs, VolumeSize: size, From: ident(a), To: ident(b)}
	var inc bytes.Buffer
	br := &snapReader{e, b.ID, od, sd, size}
	read := func(p []byte, off int64) error { _, err := br.ReadAt(p, off); return err }
	sum, err = Encode(ctx, &inc, hInc, Source{Extents: diff(a.ID, b.ID), Data: ReadAtFunc(read)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.DataBytes > uint64(nc/20+4)*cs {
		t.Fatalf("incremental stream carries %d data bytes, more than the changed chunks", sum.DataBytes)
	}
	if _, _, err := apply(inc.Bytes(), replica); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(replica, bData) {
		t.Fatal("incremental stream a→b did not reproduce b")
	}
	t.Logf("full stream %d bytes, incremental %d bytes", full.Len(), inc.Len())
}
