package scsi

import "sync"

// rangeLocks serialize COMPARE AND WRITE with every other write to the same
// blocks (SBC-3 5.2: the compare and the write are one atomic operation).
// Writes lock the stripes their blocks hash to shared, COMPARE AND WRITE
// locks them exclusive, so ordinary writes never wait for each other. The
// stripes are always taken in ascending order, so no two commands deadlock.
type rangeLocks struct {
	stripes [lockStripes]sync.RWMutex
}

const (
	lockStripes      = 64
	lockRegionBlocks = 128 // 64 KiB of blocks share a stripe
)

// lock locks the stripes of blocks [lba, lba+blocks) and returns the
// function that unlocks them.
func (l *rangeLocks) lock(lba, blocks uint64, exclusive bool) (unlock func()) {
	var set uint64 // bit i: stripe i
	if blocks == 0 {
		blocks = 1
	}
	first, last := lba/lockRegionBlocks, (lba+blocks-1)/lockRegionBlocks
	if last < first || last-first >= lockStripes {
		set = ^uint64(0)
	} else {
		for r := first; r <= last; r++ {
			set |= 1 << (r % lockStripes)
		}
	}
	for i := range lockStripes {
		if set&(1<<i) == 0 {
			continue
		}
		if exclusive {
			l.stripes[i].Lock()
		} else {
			l.stripes[i].RLock()
		}
	}
	return func() {
		for i := range lockStripes {
			if set&(1<<i) == 0 {
				continue
			}
			if exclusive {
				l.stripes[i].Unlock()
			} else {
				l.stripes[i].RUnlock()
			}
		}
	}
}
