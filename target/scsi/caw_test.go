package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
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

// lockingBackend is a MemBackend that is a BlockLocker: it records the
// locks asked for and released, and its check answers checkErr.
type lockingBackend struct {
	*MemBackend
	mu       sync.Mutex
	locked   [][2]int64 // offset, length
	unlocked int
	lockErr  error
	checkErr error
}

func (b *lockingBackend) LockBlocks(_ context.Context, off int64, n int) (func() error, func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lockErr != nil {
		return nil, nil, b.lockErr
	}
	b.locked = append(b.locked, [2]int64{off, int64(n)})
	return func() error { return b.checkErr }, func() {
		b.mu.Lock()
		b.unlocked++
		b.mu.Unlock()
	}, nil
}

// TestCompareAndWriteBlockLocker: with a BlockLocker backend, COMPARE AND
// WRITE takes the backend's lock on exactly its bytes and releases it; a
// lock that cannot be taken, or is no longer certain before the write,
// ends the command with ABORTED COMMAND and writes nothing.
func TestCompareAndWriteBlockLocker(t *testing.T) {
	be := &lockingBackend{MemBackend: NewMemBackend(64*BlockSize, testIdentity())}
	tgt, _ := NewTarget(map[uint64]*LU{0: NewLU(be)}, NewMemStore())
	f := &fixture{t: t, tgt: tgt, be: be.MemBackend}
	f.ready(nexA)
	old, nw := pattern(2, 1), pattern(2, 2)
	f.writeBlocks(5, old)
	wantGood(t, f.run(nexA, cawCDB(5, 2, 0), append(bytes.Clone(old), nw...)))
	if len(be.locked) != 1 || be.locked[0] != [2]int64{5 * BlockSize, 2 * BlockSize} || be.unlocked != 1 {
		t.Fatalf("locks %v, %d unlocked; want one lock of blocks 5-6, released", be.locked, be.unlocked)
	}
	be.checkErr = errors.New("lock lost")
	r := f.run(nexA, cawCDB(5, 2, 0), append(bytes.Clone(nw), old...))
	wantSense(t, r, SenseAbortedCommand, 0, 0)
	if !bytes.Equal(f.readBlocks(5, 2), nw) || be.unlocked != 2 {
		t.Fatalf("written (or not unlocked: %d) although the lock was lost", be.unlocked)
	}
	be.checkErr, be.lockErr = nil, errors.New("server unreachable")
	wantSense(t, f.run(nexA, cawCDB(5, 2, 0), append(bytes.Clone(nw), old...)), SenseAbortedCommand, 0, 0)
	be.lockErr = &SenseError{Key: SenseHardwareError, ASC: 0x44}
	wantSense(t, f.run(nexA, cawCDB(5, 2, 0), append(bytes.Clone(nw), old...)), SenseHardwareError, 0x44, 0)
	if !bytes.Equal(f.readBlocks(5, 2), nw) {
		t.Fatal("written without the lock")
	}
}
