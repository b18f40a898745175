package snapstore

import (
	"errors"
	"fmt"
)

// Allocation: one bit per data chunk (data bitmap) and one bit per metadata
// block of the metadata area (metadata bitmap). Free counts and next-fit
// cursors live in the state block. All functions run with e.mu held.

var errNoSpace = errors.New("no space")

func bitGet(bits []byte, i uint64) bool { return bits[i/8]&(1<<(i%8)) != 0 }
func bitSet(bits []byte, i uint64)      { bits[i/8] |= 1 << (i % 8) }
func bitClr(bits []byte, i uint64)      { bits[i/8] &^= 1 << (i % 8) }

// findFree finds a clear bit in [0, total) starting at cursor, skipping
// those skip reports. It reads at most every bitmap block once.
func (e *Engine) findFree(kind uint8, start, nblocks, total, cursor uint64, skip func(uint64) bool) (uint64, error) {
	if total == 0 {
		return 0, errNoSpace
	}
	if cursor >= total {
		cursor = 0
	}
	scanned := uint64(0)
	i := cursor
	for scanned < total {
		blk := i / bitsPerBitmapBlk
		cb, err := e.getBitmap(kind, start+blk)
		if err != nil {
			return 0, err
		}
		end := (blk + 1) * bitsPerBitmapBlk
		if end > total {
			end = total
		}
		for ; i < end; i, scanned = i+1, scanned+1 {
			off := i - blk*bitsPerBitmapBlk
			if off%8 == 0 && i+8 <= end && cb.bits[off/8] == 0xff {
				i += 7
				scanned += 7
				continue
			}
			if !bitGet(cb.bits, off) && (skip == nil || !skip(i)) {
				return i, nil
			}
		}
		if i >= total {
			i = 0
		}
	}
	return 0, errNoSpace
}

func (e *Engine) dataAvail() uint64 {
	r := uint64(len(e.reserved))
	if e.st.dataFree < r {
		return 0
	}
	return e.st.dataFree - r
}

// reserveData picks a free data chunk and reserves it in memory only; the
// bitmap is changed by commitData in the same critical section as the
// exception that points at the chunk, so a transaction never records an
// allocation without its owner.
func (e *Engine) reserveData() (uint64, error) {
	if e.dataAvail() == 0 {
		return 0, errNoSpace
	}
	x, err := e.findFree(kindDataBitmap, e.sb.dbmStart, e.sb.dbmBlocks, e.sb.dataChunks, e.st.dataCursor,
		func(i uint64) bool { return e.reserved[i] })
	if err != nil {
		return 0, err
	}
	e.reserved[x] = true
	e.st.dataCursor = x + 1
	e.stDirty = true
	return x, nil
}

func (e *Engine) unreserveData(x uint64) { delete(e.reserved, x) }

func (e *Engine) bitmapBit(kind uint8, start, i uint64) (*cblock, uint64, error) {
	cb, err := e.getBitmap(kind, start+i/bitsPerBitmapBlk)
	if err != nil {
		return nil, 0, err
	}
	return cb, i % bitsPerBitmapBlk, nil
}

// commitData marks a reserved chunk allocated.
func (e *Engine) commitData(x uint64) error {
	cb, off, err := e.bitmapBit(kindDataBitmap, e.sb.dbmStart, x)
	if err != nil {
		return err
	}
	if bitGet(cb.bits, off) {
		return fmt.Errorf("data chunk %d already allocated: %w", x, ErrCorrupt)
	}
	bitSet(cb.bits, off)
	e.dirtyBlock(cb)
	delete(e.reserved, x)
	e.st.dataFree--
	e.stDirty = true
	return nil
}

func (e *Engine) freeData(x uint64) error {
	if x >= e.sb.dataChunks {
		return fmt.Errorf("freeing data chunk %d beyond %d: %w", x, e.sb.dataChunks, ErrCorrupt)
	}
	cb, off, err := e.bitmapBit(kindDataBitmap, e.sb.dbmStart, x)
	if err != nil {
		return err
	}
	if !bitGet(cb.bits, off) {
		return fmt.Errorf("freeing data chunk %d that is not allocated: %w", x, ErrCorrupt)
	}
	bitClr(cb.bits, off)
	e.dirtyBlock(cb)
	e.st.dataFree++
	e.stDirty = true
	return nil
}

// allocMeta allocates a metadata block and returns its address.
func (e *Engine) allocMeta() (uint64, error) {
	if e.st.metaFree == 0 {
		return 0, errNoSpace
	}
	i, err := e.findFree(kindMetaBitmap, e.sb.mbmStart, e.sb.mbmBlocks, e.sb.metaBlocks, e.st.metaCursor, nil)
	if err != nil {
		return 0, err
	}
	cb, off, err := e.bitmapBit(kindMetaBitmap, e.sb.mbmStart, i)
	if err != nil {
		return 0, err
	}
	bitSet(cb.bits, off)
	e.dirtyBlock(cb)
	e.st.metaFree--
	e.st.metaCursor = i + 1
	e.stDirty = true
	return e.sb.metaStart + i, nil
}

func (e *Engine) freeMeta(addr uint64) error {
	if !e.isMetaAddr(addr) {
		return fmt.Errorf("freeing metadata block %d outside the metadata area: %w", addr, ErrCorrupt)
	}
	i := addr - e.sb.metaStart
	cb, off, err := e.bitmapBit(kindMetaBitmap, e.sb.mbmStart, i)
	if err != nil {
		return err
	}
	if !bitGet(cb.bits, off) {
		return fmt.Errorf("freeing metadata block %d that is not allocated: %w", addr, ErrCorrupt)
	}
	bitClr(cb.bits, off)
	e.dirtyBlock(cb)
	e.st.metaFree++
	e.stDirty = true
	e.cacheDrop(addr)
	return nil
}
