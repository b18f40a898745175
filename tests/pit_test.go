package tests

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// pitWrite is one acknowledged (or attempted) write of the point-in-time
// test: block b got value v between start and end.
type pitWrite struct {
	block      int
	value      byte
	start, end time.Time
}

// dumpLUN copies the first blocks*4 KiB of a LUN to a file with qemu-img dd
// (its own iSCSI session) and returns the bytes.
func dumpLUN(t *testing.T, url string, blocks int) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "dump.img")
	o, err := runCmd(t, time.Minute, requireTool(t, "qemu-img"), "dd", "-f", "raw", "-O", "raw", "bs=4096",
		fmt.Sprintf("count=%d", blocks), "if="+url, "of="+out)
	if err != nil {
		t.Fatalf("qemu-img dd %s: %v\n%s", url, err, o)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPointInTime: several initiators (each write its own iSCSI session)
// write known patterns continuously while snapshots are created. For every
// snapshot and every block, the block holds exactly the value of one write
// (no torn 4 KiB block), that write is not older than the last write to the
// block acknowledged before the create began, and it started before the
// create returned.
func TestPointInTime(t *testing.T) {
	n := startDev(t, "")
	origin := lunURL(n, "iqn.2026-11.io.csnap:dev")
	const writers, blocksPer = 3, 32 // block b belongs to writer b/blocksPer
	var mu sync.Mutex
	var writes []pitWrite
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w + 1)))
			for v := 1; v < 250; v++ {
				select {
				case <-stop:
					return
				default:
				}
				b := w*blocksPer + rng.Intn(blocksPer)
				start := time.Now()
				out, err := runCmd(t, time.Minute, requireTool(t, "qemu-io"), "-f", "raw",
					"-c", fmt.Sprintf("write -P %d %d 4096", v, b*4096), origin)
				end := time.Now()
				if err != nil || !strings.Contains(out, "wrote 4096/4096") {
					t.Errorf("writer %d: %v\n%s", w, err, out)
					return
				}
				mu.Lock()
				writes = append(writes, pitWrite{block: b, value: byte(v), start: start, end: end})
				mu.Unlock()
			}
		}()
	}
	type snap struct {
		name         string
		begin, ended time.Time
	}
	var snaps []snap
	for i := 0; i < 4; i++ {
		time.Sleep(400 * time.Millisecond)
		s := snap{name: fmt.Sprintf("pit%d", i), begin: time.Now()}
		admin(t, n, "snapshot", "create", "dev", s.name)
		s.ended = time.Now()
		snaps = append(snaps, s)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	if len(writes) < 30 {
		t.Fatalf("only %d writes: the test did not exercise anything", len(writes))
	}
	byBlock := map[int][]pitWrite{} // in order: one writer per block, sequential
	for _, w := range writes {
		byBlock[w.block] = append(byBlock[w.block], w)
	}
	checked := 0
	for _, s := range snaps {
		img := dumpLUN(t, lunURL(n, "iqn.2026-11.io.csnap:dev:"+s.name), writers*blocksPer)
		for b := 0; b < writers*blocksPer; b++ {
			blk := img[b*4096 : (b+1)*4096]
			v := blk[0]
			for _, x := range blk {
				if x != v {
					t.Fatalf("snapshot %s block %d is torn (%#x and %#x)", s.name, b, v, x)
				}
			}
			// Index of the write whose value the snapshot holds (-1:
			// never written), the newest write acknowledged before the
			// create began, and the newest started before it returned.
			got, mustAtLeast, mayAtMost := -1, -1, -1
			for i, w := range byBlock[b] {
				if w.value == v {
					got = i
				}
				if w.end.Before(s.begin) {
					mustAtLeast = i
				}
				if w.start.Before(s.ended) {
					mayAtMost = i
				}
			}
			if v != 0 && got == -1 {
				t.Fatalf("snapshot %s block %d holds %d, a value never written there", s.name, b, v)
			}
			if got < mustAtLeast {
				t.Errorf("snapshot %s block %d lacks a write acknowledged before the create began (holds write #%d, want >= #%d)", s.name, b, got, mustAtLeast)
			}
			if got > mayAtMost {
				t.Errorf("snapshot %s block %d holds write #%d, started after the create returned (newest allowed #%d)", s.name, b, got, mayAtMost)
			}
			checked++
		}
	}
	t.Logf("%d writes by %d initiators, %d snapshots, %d block checks", len(writes), writers, len(snaps), checked)
	admin(t, n, "check", "dev")
}

// TestSnapshotReadsRaceOverwrites: many sessions read a snapshot while many
// others overwrite the same origin chunks; no snapshot read ever returns
// data written after the snapshot.
func TestSnapshotReadsRaceOverwrites(t *testing.T) {
	n := startDev(t, "")
	origin := lunURL(n, "iqn.2026-11.io.csnap:dev")
	qemuIO(t, origin, "write -P 0x5a 0 16M")
	admin(t, n, "snapshot", "create", "dev", "r")
	snapURL := lunURL(n, "iqn.2026-11.io.csnap:dev:r")
	deadline := time.Now().Add(4 * time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	reads, writes := 0, 0
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(100 + i)))
			for time.Now().Before(deadline) && !t.Failed() {
				off := rng.Intn(16<<20/65536) * 65536
				size := 65536 * (1 + rng.Intn(8))
				if off+size > 16<<20 {
					size = 16<<20 - off
				}
				var cmds []string
				if i%2 == 0 { // writers overwrite origin chunks with other patterns
					cmds = []string{fmt.Sprintf("aio_write -P %d %d %d", 0x60+rng.Intn(16), off, size),
						fmt.Sprintf("aio_write -P %d %d %d", 0x70+rng.Intn(16), (off+size/2)&^511, 4096), "aio_flush"}
				} else { // readers check the snapshot still holds 0x5a
					cmds = []string{fmt.Sprintf("aio_read -P 0x5a %d %d", off, size),
						fmt.Sprintf("aio_read -P 0x5a %d %d", (off*7)%(16<<20-65536), 65536), "aio_flush"}
				}
				url := origin
				if i%2 == 1 {
					url = snapURL
				}
				qemuIO(t, url, cmds...)
				mu.Lock()
				if i%2 == 0 {
					writes++
				} else {
					reads++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if reads < 5 || writes < 5 {
		t.Fatalf("only %d read and %d write rounds", reads, writes)
	}
	qemuIO(t, snapURL, "read -P 0x5a 0 16M")
	t.Logf("%d snapshot read rounds raced %d origin write rounds", reads, writes)
	admin(t, n, "check", "dev")
}
