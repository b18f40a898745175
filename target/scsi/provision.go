package scsi

import "bytes"

// Logical block provisioning (SBC-3 4.7): WRITE SAME, UNMAP and GET LBA
// STATUS. csnap logical units are thin provisioned and unmapped blocks
// read as zeros (LBPRZ).

// LBAStatusBackend is an optional Backend interface for GET LBA STATUS. A
// Backend without it reports every block mapped.
type LBAStatusBackend interface {
	// LBAStatus reports whether the block at byte offset off is mapped,
	// and the length in bytes of the extent starting at off whose blocks
	// all have that status (at least one block).
	LBAStatus(off int64) (mapped bool, length int64, err error)
}

// writeSameChunk is how much WRITE SAME writes per backend call.
const writeSameChunk = 1 << 20

// writeSame implements WRITE SAME(10/16) (SBC-3 5.42-5.43).
func (lu *LU) writeSame(r *request) Result {
	ndob := r.cdb[0] == opWriteSame16 && r.cdb[1]&0x01 != 0
	res := lu.doWriteSame(r, ndob)
	if !ndob {
		res.DataOutLen = BlockSize
	}
	return res
}

func (lu *LU) doWriteSame(r *request, ndob bool) Result {
	cdb := r.cdb
	var lba, blocks uint64
	lenField := 7
	if cdb[0] == opWriteSame16 {
		lba, blocks, lenField = be64(cdb[2:10]), uint64(be32(cdb[10:14])), 10
	} else {
		lba, blocks = uint64(be32(cdb[2:6])), uint64(be16(cdb[7:9]))
	}
	unmap := cdb[1]&0x08 != 0
	switch {
	case cdb[1]&0xe0 != 0:
		return invalidCDB(1, 7) // WRPROTECT
	case cdb[1]&0x10 != 0:
		return invalidCDB(1, 4) // ANCHOR: anchored blocks not supported
	}
	if res, ok := lu.writable(r); !ok {
		return res
	}
	if blocks == 0 || blocks > maxWriteSameBlocks {
		// WSNZ is set and MAXIMUM WRITE SAME LENGTH is reported (VPD B0).
		return invalidCDB(lenField, -1)
	}
	if res, ok := lu.checkRange(lba, blocks); !ok {
		return res
	}
	block := make([]byte, BlockSize) // NDOB: a block of zeros
	if !ndob {
		// Exactly one block of data-out (SBC-3 5.42).
		if r.cmd.ExpectedLen != BlockSize || len(r.cmd.DataOut) < BlockSize {
			return invalidCDB(lenField, -1)
		}
		block = r.cmd.DataOut[:BlockSize]
	}
	unlock := lu.locks.lock(lba, blocks, false)
	defer unlock()
	off, end := int64(lba)*BlockSize, int64(lba+blocks)*BlockSize
	if unmap && isZero(block) {
		// Deallocating gives the same content, as unmapped blocks read
		// zeros (LBPRZ).
		if err := lu.be.Unmap(off, end-off); err != nil {
			return backendError(err, true)
		}
		return lu.unmapDone(r)
	}
	chunk := bytes.Repeat(block, int(min(blocks, writeSameChunk/BlockSize)))
	fua := !r.writeCache()
	for off < end {
		n := min(int64(len(chunk)), end-off)
		if err := lu.be.WriteAt(chunk[:n], off, fua); err != nil {
			return backendError(err, true)
		}
		off += n
	}
	return Result{Status: StatusGood}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// unmap implements UNMAP (SBC-3 5.27). All descriptors are checked before
// any block is deallocated.
//
// Ranges need not be aligned to the 4 KiB physical blocks (OPTIMAL UNMAP
// GRANULARITY is only a hint in the Block Limits page): every range, and every WRITE
// SAME with UNMAP, goes to Backend.Unmap as named, in logical blocks, and
// the Backend contract is that the whole range then reads as zeros
// (LBPRZ). A backend that allocates in larger units either deallocates
// the units the range covers whole and zeroes the rest (fileback punches
// a hole: the kernel frees the whole pages and zeroes the partial ones,
// which stay mapped) or tracks blocks itself (MemBackend). Never is a
// block outside the range touched, and never does a block inside it keep
// its old data.
func (lu *LU) unmap(r *request) Result {
	n := int(be16(r.cdb[7:9]))
	res := lu.doUnmap(r, n)
	res.DataOutLen = n
	return res
}

func (lu *LU) doUnmap(r *request, n int) Result {
	if r.cdb[1]&0x01 != 0 {
		return invalidCDB(1, 0) // ANCHOR not supported
	}
	if res, ok := lu.writable(r); !ok {
		return res
	}
	if n == 0 {
		return Result{Status: StatusGood}
	}
	if n < 8 || len(r.cmd.DataOut) < n {
		return paramListLengthError()
	}
	p := r.cmd.DataOut[:n]
	// The descriptors are what both the header and the parameter list
	// length cover; a partial trailing descriptor is ignored.
	bdLen := min(int(be16(p[2:4])), n-8)
	count := bdLen / 16
	if count > maxUnmapDescriptors {
		return invalidParam(2, -1)
	}
	type extent struct{ lba, blocks uint64 }
	exts := make([]extent, 0, count)
	var total uint64
	for i := 0; i < count; i++ {
		d := p[8+16*i:]
		e := extent{be64(d[0:8]), uint64(be32(d[8:12]))}
		if total += e.blocks; total > maxUnmapBlocks {
			return invalidParam(8+16*i+8, -1)
		}
		if res, ok := lu.checkRange(e.lba, e.blocks); !ok {
			return res
		}
		if e.blocks > 0 {
			exts = append(exts, e)
		}
	}
	for _, e := range exts {
		unlock := lu.locks.lock(e.lba, e.blocks, false)
		err := lu.be.Unmap(int64(e.lba)*BlockSize, int64(e.blocks)*BlockSize)
		unlock()
		if err != nil {
			return backendError(err, true)
		}
	}
	return lu.unmapDone(r)
}

// unmapDone ends a deallocation: with the write cache disabled (WCE=0)
// every write is durable when it completes, and a deallocation is a write
// (the blocks read zeros afterwards), so the backend is flushed first.
// Backend.Unmap has no FUA of its own.
func (lu *LU) unmapDone(r *request) Result {
	if !r.writeCache() {
		if err := lu.be.Flush(); err != nil {
			return backendError(err, true)
		}
	}
	return Result{Status: StatusGood}
}

// getLBAStatus implements GET LBA STATUS (SBC-3 5.6): descriptors of
// mapped and deallocated extents from the given LBA, as many as the
// allocation length holds.
func (lu *LU) getLBAStatus(r *request) Result {
	lba := be64(r.cdb[2:10])
	alloc := int(be32(r.cdb[10:14]))
	capBlocks := lu.capacityBlocks()
	if lba >= capBlocks {
		return lbaOutOfRange()
	}
	maxDesc := max((alloc-8)/16, 1)
	data := make([]byte, 8, 8+16*min(maxDesc, 64))
	sb, hasStatus := lu.be.(LBAStatusBackend)
	for i := 0; i < maxDesc && lba < capBlocks; i++ {
		mapped, blocks := true, capBlocks-lba
		if hasStatus {
			m, length, err := sb.LBAStatus(int64(lba) * BlockSize)
			if err != nil {
				return backendError(err, false)
			}
			mapped = m
			blocks = min(max(uint64(length)/BlockSize, 1), capBlocks-lba)
		}
		blocks = min(blocks, 0xffffffff)
		d := make([]byte, 16)
		put64(d[0:8], lba)
		put32(d[8:12], uint32(blocks))
		if !mapped {
			d[12] = 1 // deallocated
		}
		data = append(data, d...)
		lba += blocks
		if !hasStatus {
			break
		}
	}
	put32(data[0:4], uint32(len(data)-4))
	return good(data, alloc)
}
