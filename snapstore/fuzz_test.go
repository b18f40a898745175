package snapstore

import (
	"bytes"
	"context"
	"reflect"
	"testing"
)

// Fuzz targets for every on-disk decoder. Each seeds its corpus with valid
// blocks and corrupted variants; `go test` runs the seeds, `go test
// -fuzz=FuzzDecodeNode` explores. Decoders must return errors, never panic,
// and whatever they accept must re-encode to a block that decodes equal.

var fuzzUUID = [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func addCorruptions(f *testing.F, b []byte) {
	f.Add(b)
	for _, off := range []int{0, 4, 5, 8, 16, 24, 32, 48, 56, 60, 100, 200, 4095} {
		c := append([]byte(nil), b...)
		c[off] ^= 0x5a
		f.Add(c)
		d := append([]byte(nil), c...)
		sealBlock(d) // valid checksum over corrupted content
		f.Add(d)
	}
	f.Add(b[:100])
	f.Add([]byte{})
}

func sampleSuper() *superblock {
	return &superblock{uuid: fuzzUUID, seq: 3, chunkSize: 65536, originSize: 1 << 30, storeSize: 1 << 30,
		tableCap: 62, tableStart: 3, tableBlocks: 2, journalStart: 5, journalBlocks: 1024, dbmStart: 1029, dbmBlocks: 1,
		mbmStart: 1030, mbmBlocks: 1, metaStart: 1031, metaBlocks: 1280, dataStart: 2320, dataChunks: 16238, stateAddr: 2,
		attrs: []byte("volume attributes")}
}

func FuzzDecodeSuper(f *testing.F) {
	addCorruptions(f, encodeSuper(sampleSuper(), 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSuper(b, 0)
		if err != nil {
			return
		}
		s2, err := decodeSuper(encodeSuper(s, 0), 0)
		if err != nil || !reflect.DeepEqual(s2, s) {
			t.Fatalf("superblock does not round-trip: %v", err)
		}
	})
}

func FuzzDecodeState(f *testing.F) {
	st := &state{root: 1031, height: 3, nextID: 77, generation: 76, pendingDiff: -3, dataFree: 10, metaFree: 20,
		reclaiming: true, cursorSet: true, cursor: key{chunk: 9, lo: 4, priv: true}, exceptions: 1234}
	addCorruptions(f, encodeState(st, fuzzUUID, 2, 9))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeState(b, 2, fuzzUUID)
		if err != nil {
			return
		}
		s2, err := decodeState(encodeState(s, fuzzUUID, 2, 1), 2, fuzzUUID)
		if err != nil || !reflect.DeepEqual(s2, s) {
			t.Fatalf("state block does not round-trip: %v", err)
		}
	})
}

func FuzzDecodeTable(f *testing.F) {
	ents := make([]tableEntry, tableEntriesPerBlk)
	ents[0] = tableEntry{id: 5, state: slotLive, flags: flagWritable, priority: -2, ctime: 99, diff: 3, uniq: 2, priv: 1, name: "nightly-1"}
	ents[7] = tableEntry{id: 9, state: slotDropped, flags: flagDropped, name: "x"}
	addCorruptions(f, encodeTableBlock(ents, fuzzUUID, 3, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := decodeTableBlock(b, 3, fuzzUUID)
		if err != nil {
			return
		}
		es2, err := decodeTableBlock(encodeTableBlock(es, fuzzUUID, 3, 1), 3, fuzzUUID)
		if err != nil {
			t.Fatal(err)
		}
		for i := range es {
			if es[i] != es2[i] {
				t.Fatalf("table entry %d does not round-trip", i)
			}
		}
	})
}

func FuzzDecodeBitmap(f *testing.F) {
	bits := make([]byte, BlockSize-hdrSize)
	bits[0], bits[100] = 0xff, 0x81
	addCorruptions(f, encodeBitmap(bits, kindDataBitmap, fuzzUUID, 40, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		bs, err := decodeBitmap(b, kindDataBitmap, 40, fuzzUUID)
		if err != nil {
			return
		}
		bs2, err := decodeBitmap(encodeBitmap(bs, kindDataBitmap, fuzzUUID, 40, 1), kindDataBitmap, 40, fuzzUUID)
		if err != nil || !bytes.Equal(bs, bs2) {
			t.Fatalf("bitmap does not round-trip: %v", err)
		}
	})
}

func FuzzDecodeNode(f *testing.F) {
	leaf := &node{addr: 50, leaf: true, ents: []exception{
		{chunk: 1, lo: 1, hi: 4, store: 7}, {chunk: 1, lo: 2, hi: 2, store: 8, priv: true}, {chunk: 9, lo: 5, hi: 9, store: 1 << 40}}}
	branch := &node{addr: 50, keys: []key{{}, {chunk: 5, lo: 1}, {chunk: 9, lo: 3, priv: true}}, kids: []uint64{60, 61, 62}}
	addCorruptions(f, encodeNode(leaf, fuzzUUID, 1))
	addCorruptions(f, encodeNode(branch, fuzzUUID, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := decodeNode(b, 50, fuzzUUID)
		if err != nil {
			return
		}
		n2, err := decodeNode(encodeNode(n, fuzzUUID, 1), 50, fuzzUUID)
		if err != nil || n2.leaf != n.leaf || len(n2.ents) != len(n.ents) || len(n2.kids) != len(n.kids) {
			t.Fatalf("node does not round-trip: %v", err)
		}
		for i := range n.ents {
			if n.ents[i] != n2.ents[i] {
				t.Fatalf("entry %d does not round-trip", i)
			}
		}
		for i := range n.kids {
			if n.kids[i] != n2.kids[i] || n.keys[i] != n2.keys[i] {
				t.Fatalf("branch entry %d does not round-trip", i)
			}
		}
	})
}

func FuzzDecodeJournal(f *testing.F) {
	addCorruptions(f, encodeJDesc(&jdesc{seq: 12, crc: 0xdeadbeef, homes: []uint64{2, 3, 1031, 1032}}, fuzzUUID, 5))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeJDesc(b, 5, fuzzUUID)
		if err != nil {
			return
		}
		d2, err := decodeJDesc(encodeJDesc(d, fuzzUUID, 5), 5, fuzzUUID)
		if err != nil || d2.seq != d.seq || d2.crc != d.crc || len(d2.homes) != len(d.homes) {
			t.Fatalf("journal descriptor does not round-trip: %v", err)
		}
	})
}

// fuzzStore builds a small store with snapshots, exceptions, a deleted
// snapshot and journal contents (not closed cleanly), once per process.
func fuzzStore(t testing.TB) (origin, store []byte) {
	od := NewMemDevice(64 * 4096)
	sd := NewMemDevice(2 << 20)
	if err := Format(od, sd, FormatOptions{ChunkSize: 4096, TableCapacity: 40, JournalBlocks: 256, metaBlocks: 128, UUID: fuzzUUID}); err != nil {
		t.Fatal(err)
	}
	e, err := Open(od, sd, Options{ManualReclaim: true, nodeCap: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		if _, err := e.CreateSnapshot(ctx, "s"+string(rune('a'+i)), CreateOptions{Writable: i%2 == 0}); err != nil {
			t.Fatal(err)
		}
		for c := uint64(i); c < 64; c += 5 {
			if _, err := e.PrepareOriginWrite(ctx, c, 1); err != nil {
				t.Fatal(err)
			}
		}
		if i%2 == 0 {
			if _, err := e.PrepareSnapshotWrite(ctx, SnapID(i+1), uint64(i), 3); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.DeleteSnapshot(ctx, 2); err != nil {
		t.Fatal(err)
	}
	// Abandon the engine without Close: the journal holds transactions.
	return append([]byte(nil), od.buf...), append([]byte(nil), sd.buf...)
}

// FuzzOpenCorrupt corrupts bytes of a real store image and opens it: Open,
// Check and a few operations must fail cleanly, never panic.
func FuzzOpenCorrupt(f *testing.F) {
	origin, store := fuzzStore(f)
	for _, blk := range []uint32{0, 1, 2, 3, 4, 5, 6, 7, 261, 262, 263, 264, 265, 266, 267, 270} {
		f.Add(blk*BlockSize+20, []byte{0xff})
		f.Add(blk*BlockSize+60, []byte{1, 2, 3, 4})
		f.Add(blk*BlockSize+8, []byte{0, 0, 0, 0})
	}
	f.Fuzz(func(t *testing.T, off uint32, patch []byte) {
		sd := NewMemDevice(int64(len(store)))
		copy(sd.buf, store)
		if int(off) < len(store) {
			copy(sd.buf[off:], patch)
		}
		od := NewMemDevice(int64(len(origin)))
		copy(od.buf, origin)
		e, err := Open(od, sd, Options{ManualReclaim: true, nodeCap: 4})
		if err != nil {
			return
		}
		ctx := context.Background()
		e.Check(ctx, nil)
		for _, si := range e.Snapshots() {
			e.MapSnapshotRead(ctx, si.ID, 0, 64)
		}
		e.PrepareOriginWrite(ctx, 0, 64)
		e.Reclaim(ctx)
		e.Check(ctx, nil)
		e.Close()
	})
}
