package scsi

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
)

func cawCDB(lba uint64, n byte, flags byte) []byte {
	c := rw16(opCompareAndWrite, lba, 0, flags)
	c[13] = n
	return c
}

func TestCompareAndWrite(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	old, nw := pattern(2, 1), pattern(2, 2)
	f.writeBlocks(5, old)
	r := f.run(nexA, cawCDB(5, 2, 0), append(bytes.Clone(old), nw...))
	wantGood(t, r)
	if r.DataOutLen != 4*BlockSize || !bytes.Equal(f.readBlocks(5, 2), nw) {
		t.Fatal("not written")
	}
	// Miscompare: nothing written, offset reported.
	bad := bytes.Clone(nw)
	bad[700] ^= 0xff
	r = f.run(nexA, cawCDB(5, 2, 0x08), append(bad, old...))
	wantSense(t, r, SenseMiscompare, 0x1d, 0)
	if binary.BigEndian.Uint32(r.Sense[3:7]) != 700 || r.Sense[0]&0x80 == 0 {
		t.Fatalf("INFORMATION % x", r.Sense)
	}
	if !bytes.Equal(f.readBlocks(5, 2), nw) {
		t.Fatal("written after miscompare")
	}
	wantGood(t, f.run(nexA, cawCDB(5, 0, 0), nil))
	// 256 blocks wrap to 0 in the CDB: the data-out gives it away.
	wantSense(t, f.run(nexA, cawCDB(5, 0, 0), make([]byte, 512*BlockSize)), SenseIllegalRequest, 0x24, 0)
	wantSense(t, f.run(nexA, cawCDB(63, 2, 0), make([]byte, 4*BlockSize)), SenseIllegalRequest, 0x21, 0)
	wantSense(t, f.run(nexA, cawCDB(0, 1, 0x20), make([]byte, 2*BlockSize)), SenseIllegalRequest, 0x24, 0)
	// Data-out must be exactly twice the blocks.
	wantSense(t, f.run(nexA, cawCDB(0, 1, 0), make([]byte, 4*BlockSize)), SenseIllegalRequest, 0x24, 0)
	wantSense(t, f.run(nexA, cawCDB(0, 3, 0), make([]byte, 4*BlockSize)), SenseIllegalRequest, 0x24, 0)
}

// TestCompareAndWriteAtomic runs COMPARE AND WRITE increments of a counter
// block against plain writes of neighbouring data to the same block range:
// no increment may be lost, and a CAW may never see a torn block.
func TestCompareAndWriteAtomic(t *testing.T) {
	f := newFixture(t, 64)
	f.ready(nexA)
	f.ready(nexB)
	const workers, incs = 4, 50
	// Block 0 holds a counter in bytes 0-7; the rest of the block is a
	// filler that plain writers rewrite (with the current counter kept
	// intact through CAW... they never touch block 0). Block 1 is plain
	// write traffic in the same lock stripe.
	var wg sync.WaitGroup
	var mu sync.Mutex
	successes := 0
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := nexA
			if w%2 == 1 {
				n = nexB
			}
			done := 0
			for done < incs {
				cur := make([]byte, BlockSize)
				r := f.run(n, rw10(opRead10, 0, 1, 0), nil)
				if r.Status != StatusGood {
					t.Errorf("read: %#x", r.Status)
					return
				}
				copy(cur, r.Data)
				next := bytes.Clone(cur)
				binary.BigEndian.PutUint64(next, binary.BigEndian.Uint64(cur)+1)
				r = f.run(n, cawCDB(0, 1, 0), append(cur, next...))
				switch r.Status {
				case StatusGood:
					done++
				case StatusCheckCondition:
					if k, _, _ := senseOf(r); k != SenseMiscompare {
						t.Errorf("CAW sense key %x", k)
						return
					}
				default:
					t.Errorf("CAW status %#x", r.Status)
					return
				}
			}
			mu.Lock()
			successes += done
			mu.Unlock()
		}()
	}
	// A plain writer hammering block 0's stripe (block 1) and a writer that
	// rewrites block 0 with its own current content is not possible
	// without CAW; instead another goroutine writes block 1 constantly.
	stop := make(chan struct{})
	var wwg sync.WaitGroup
	wwg.Add(1)
	go func() {
		defer wwg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f.run(nexA, rw10(opWrite10, 1, 1, 0), pattern(1, byte(i)))
		}
	}()
	wg.Wait()
	close(stop)
	wwg.Wait()
	got := binary.BigEndian.Uint64(f.readBlocks(0, 1))
	if got != workers*incs || successes != workers*incs {
		t.Fatalf("counter %d, successes %d, want %d", got, successes, workers*incs)
	}
}

// TestCompareAndWriteExcludesWrites checks that a plain write cannot slip
// between the compare and the write of a COMPARE AND WRITE.
func TestCompareAndWriteExcludesWrites(t *testing.T) {
	var l rangeLocks
	unlock := l.lock(0, 1, true)
	wrote := make(chan struct{})
	go func() {
		u := l.lock(0, 8, false)
		close(wrote)
		u()
	}()
	select {
	case <-wrote:
		t.Fatal("shared lock taken while exclusive held")
	default:
	}
	unlock()
	<-wrote
	// Disjoint stripes do not block each other; huge ranges take all.
	u1 := l.lock(0, 1, true)
	u2 := l.lock(lockRegionBlocks, 1, true)
	u2()
	u1()
	u3 := l.lock(1<<40, 1<<40, false)
	u3()
	u4 := l.lock(1<<64-2, 10, false) // wraps
	u4()
}
