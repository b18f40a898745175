package scsi

// Writes that must be atomic with respect to other writes: ORWRITE(16)
// (SBC-3 5.12) and WRITE ATOMIC(16) (SBC-4). Like COMPARE AND WRITE
// they take their blocks' range locks exclusively, so no other write
// through this logical unit (every write takes the same locks, shared)
// can land on those blocks between the read and the write of an ORWRITE,
// or in the middle of an atomic write.
//
// What the locks do not give: they serialize the commands of this node
// only, and they are not a crash guarantee. Backend.WriteAt of a
// multi-block buffer is one pwrite (fileback) that a power failure may
// leave half done, as with any other write; csnap does not journal.
// Reads take no range lock either, so a READ that runs concurrently with
// an atomic write may return part old, part new data: the guarantee here
// is against other writes only (as for COMPARE AND WRITE).

// orWrite implements ORWRITE(16) (SBC-3 5.12) with the one operation the
// 16-byte CDB has (BMOP 000b): each block becomes the bitwise OR of what
// the medium holds and the data-out. ORPROTECT (byte 1 bits 7-5) must be
// zero as the unit has no protection information; DPO is accepted and
// ignored; FUA writes through.
func (lu *LU) orWrite(r *request) Result {
	br := rwRange(r.cdb)
	res := lu.doOrWrite(r, br)
	res.DataOutLen = int(br.blocks) * BlockSize
	return res
}

func (lu *LU) doOrWrite(r *request, br blockRange) Result {
	if br.flags&0xe0 != 0 {
		return invalidCDB(1, 7) // ORPROTECT
	}
	if res, ok := lu.writable(r); !ok {
		return res
	}
	if br.blocks > maxTransferBlocks {
		return invalidCDB(10, -1)
	}
	if res, ok := lu.checkRange(br.lba, uint64(br.blocks)); !ok {
		return res
	}
	// As for WRITE, only the whole blocks the initiator sent are used
	// (the transport reports the residual).
	n := min(len(r.cmd.DataOut)/BlockSize, int(br.blocks))
	if n == 0 {
		return Result{Status: StatusGood}
	}
	data := r.cmd.DataOut[:n*BlockSize]
	off := int64(br.lba) * BlockSize

	unlock := lu.locks.lock(br.lba, uint64(n), true)
	defer unlock()
	buf := make([]byte, len(data))
	if err := lu.be.ReadAt(buf, off); err != nil {
		return backendError(err, false)
	}
	for i, b := range data {
		buf[i] |= b
	}
	fua := br.flags&0x08 != 0 || !r.writeCache()
	if err := lu.be.WriteAt(buf, off, fua); err != nil {
		return backendError(err, true)
	}
	return Result{Status: StatusGood}
}

// writeAtomic implements WRITE ATOMIC(16) (SBC-4): LBA in bytes 2-9,
// ATOMIC BOUNDARY in bytes 10-11, a 16-bit TRANSFER LENGTH in bytes 12-13.
// The limits are those of the Block Limits VPD page: at most
// maxAtomicBlocks, no alignment or granularity requirement, and no atomic
// boundaries (a non-zero ATOMIC BOUNDARY is refused).
func (lu *LU) writeAtomic(r *request) Result {
	blocks := be16(r.cdb[12:14])
	res := lu.doWriteAtomic(r, be64(r.cdb[2:10]), blocks)
	res.DataOutLen = int(blocks) * BlockSize
	return res
}

func (lu *LU) doWriteAtomic(r *request, lba uint64, blocks uint32) Result {
	cdb := r.cdb
	if cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7) // WRPROTECT
	}
	if be16(cdb[10:12]) != 0 {
		return invalidCDB(10, -1) // ATOMIC BOUNDARY: not supported
	}
	if res, ok := lu.writable(r); !ok {
		return res
	}
	if blocks > maxAtomicBlocks {
		return invalidCDB(12, -1) // beyond MAXIMUM ATOMIC TRANSFER LENGTH
	}
	if res, ok := lu.checkRange(lba, uint64(blocks)); !ok {
		return res
	}
	if blocks == 0 {
		return Result{Status: StatusGood}
	}
	n := int(blocks) * BlockSize
	if len(r.cmd.DataOut) < n {
		// Writing the part that was sent would not be an atomic write of
		// the blocks the CDB names; nothing is written.
		return invalidCDB(12, -1)
	}
	// The exclusive lock is what makes the write atomic against other
	// writes (see the top of this file); the backend sees one WriteAt.
	unlock := lu.locks.lock(lba, uint64(blocks), true)
	defer unlock()
	fua := cdb[1]&0x08 != 0 || !r.writeCache()
	if err := lu.be.WriteAt(r.cmd.DataOut[:n], int64(lba)*BlockSize, fua); err != nil {
		return backendError(err, true)
	}
	return Result{Status: StatusGood}
}
