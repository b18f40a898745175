package scsi

import "bytes"

// Medium access commands (SBC-3 5): READ, WRITE, WRITE AND VERIFY, VERIFY,
// SYNCHRONIZE CACHE, PRE-FETCH and READ CAPACITY.

// capacityBlocks is the number of logical blocks of the medium.
func (lu *LU) capacityBlocks() uint64 { return uint64(lu.be.Size() / BlockSize) }

// checkRange checks that [lba, lba+blocks) lies on the medium (SBC-3 4.5).
// A zero-length access at the very end is allowed.
func (lu *LU) checkRange(lba uint64, blocks uint64) (Result, bool) {
	capBlocks := lu.capacityBlocks()
	if lba > capBlocks || blocks > capBlocks-lba {
		return lbaOutOfRange(), false
	}
	return Result{}, true
}

// transferField returns the CDB byte of the TRANSFER LENGTH field, for
// sense data field pointers.
func transferField(op byte) int {
	switch cdbLen(op) {
	case 6:
		return 4
	case 10:
		return 7
	case 12:
		return 6
	}
	return 10
}

// rwRange returns the LBA range of a READ/WRITE style CDB; a transfer length
// of 0 in READ(6)/WRITE(6) means 256 blocks (SBC-3 5.15).
func rwRange(cdb []byte) blockRange {
	br, _ := parseBlockRange(cdb)
	if cdbLen(cdb[0]) == 6 && br.blocks == 0 {
		br.blocks = 256
	}
	return br
}

// read implements READ(6/10/12/16) (SBC-3 5.15-5.18).
func (lu *LU) read(r *request) Result {
	br := rwRange(r.cdb)
	if br.flags&0xe0 != 0 {
		return invalidCDB(1, 7) // RDPROTECT: no protection information
	}
	if br.blocks > maxTransferBlocks {
		return invalidCDB(transferField(r.cdb[0]), -1)
	}
	if res, ok := lu.checkRange(br.lba, uint64(br.blocks)); !ok {
		return res
	}
	if br.blocks == 0 {
		return Result{Status: StatusGood}
	}
	n := int(br.blocks) * BlockSize
	buf := r.cmd.DataInBuf
	if len(buf) >= n {
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	if err := lu.be.ReadAt(buf, int64(br.lba)*BlockSize); err != nil {
		return backendError(err, false)
	}
	return Result{Status: StatusGood, Data: buf}
}

// write implements WRITE(6/10/12/16) (SBC-3 5.32-5.35).
func (lu *LU) write(r *request) Result {
	br := rwRange(r.cdb)
	res := lu.writeBlocks(r, br, br.flags&0x08 != 0)
	res.DataOutLen = int(br.blocks) * BlockSize
	return res
}

// writeBlocks writes the data-out of a WRITE style command to br. When the
// initiator sent less data than the CDB asks for, only the whole blocks it
// sent are written (the transport reports the residual).
func (lu *LU) writeBlocks(r *request, br blockRange, fua bool) Result {
	if br.flags&0xe0 != 0 {
		return invalidCDB(1, 7) // WRPROTECT: no protection information
	}
	if res, ok := lu.writable(r); !ok {
		return res
	}
	if br.blocks > maxTransferBlocks {
		return invalidCDB(transferField(r.cdb[0]), -1)
	}
	if res, ok := lu.checkRange(br.lba, uint64(br.blocks)); !ok {
		return res
	}
	n := min(len(r.cmd.DataOut)/BlockSize, int(br.blocks))
	if n == 0 {
		return Result{Status: StatusGood}
	}
	unlock := lu.locks.lock(br.lba, uint64(n), false)
	defer unlock()
	err := lu.be.WriteAt(r.cmd.DataOut[:n*BlockSize], int64(br.lba)*BlockSize, fua || !r.writeCache())
	if err != nil {
		return backendError(err, true)
	}
	return Result{Status: StatusGood}
}

// writeVerify implements WRITE AND VERIFY(10/12/16) (SBC-3 5.36-5.38). The
// data is written with FUA so that it is on the medium; a BYTCHK compare
// of what was just written with itself would add nothing.
func (lu *LU) writeVerify(r *request) Result {
	br := rwRange(r.cdb)
	var res Result
	if bytchk := (r.cdb[1] >> 1) & 0x03; bytchk > 1 {
		res = invalidCDB(1, 2)
	} else {
		res = lu.writeBlocks(r, br, true)
	}
	res.DataOutLen = int(br.blocks) * BlockSize
	return res
}

// verify implements VERIFY(10/12/16) (SBC-3 5.28-5.30). BYTCHK 0 checks
// the range only (the medium has no separate verification); BYTCHK 1
// compares the data-out with the medium; BYTCHK 3 compares one data-out
// block with every block (SBC-4).
func (lu *LU) verify(r *request) Result {
	br := rwRange(r.cdb)
	bytchk := (r.cdb[1] >> 1) & 0x03
	var res Result
	switch bytchk {
	case 1:
		res = lu.doVerify(r, br, bytchk)
		res.DataOutLen = int(br.blocks) * BlockSize
	case 3:
		res = lu.doVerify(r, br, bytchk)
		if br.blocks > 0 {
			res.DataOutLen = BlockSize
		}
	default:
		res = lu.doVerify(r, br, bytchk)
	}
	return res
}

func (lu *LU) doVerify(r *request, br blockRange, bytchk byte) Result {
	if br.flags&0xe0 != 0 {
		return invalidCDB(1, 7) // VRPROTECT
	}
	if bytchk == 2 {
		return invalidCDB(1, 2)
	}
	if br.blocks > maxTransferBlocks {
		return invalidCDB(transferField(r.cdb[0]), -1)
	}
	if res, ok := lu.checkRange(br.lba, uint64(br.blocks)); !ok {
		return res
	}
	if bytchk == 0 || br.blocks == 0 {
		return Result{Status: StatusGood}
	}
	want := r.cmd.DataOut
	n := int(br.blocks) * BlockSize
	if bytchk == 3 {
		if len(want) < BlockSize {
			return paramListLengthError()
		}
		want = bytes.Repeat(want[:BlockSize], int(br.blocks))
	} else if len(want) < n {
		return paramListLengthError()
	}
	have := make([]byte, n)
	if err := lu.be.ReadAt(have, int64(br.lba)*BlockSize); err != nil {
		return backendError(err, false)
	}
	if i := firstDiff(have, want[:n]); i >= 0 {
		if bytchk == 3 {
			i %= BlockSize
		}
		return miscompare(i)
	}
	return Result{Status: StatusGood}
}

// firstDiff returns the index of the first byte where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// syncCache implements SYNCHRONIZE CACHE(10/16) (SBC-3 5.22-5.23): every
// write done so far is made durable, whatever the range; IMMED is honoured
// by simply finishing the flush first.
func (lu *LU) syncCache(r *request) Result {
	lba, blocks := prefetchRange(r.cdb)
	if res, ok := lu.checkRange(lba, blocks); !ok {
		return res
	}
	if err := lu.be.Flush(); err != nil {
		return backendError(err, true)
	}
	return Result{Status: StatusGood}
}

// preFetch implements PRE-FETCH(10/16) (SBC-3 5.10-5.11). There is no
// cache to load, and SBC-3 says GOOD (not CONDITION MET) is the answer when
// the blocks would not fit in it.
func (lu *LU) preFetch(r *request) Result {
	lba, blocks := prefetchRange(r.cdb)
	if res, ok := lu.checkRange(lba, blocks); !ok {
		return res
	}
	return Result{Status: StatusGood}
}

// prefetchRange returns the range of a PRE-FETCH or SYNCHRONIZE CACHE CDB,
// where a zero block count means "to the end of the medium".
func prefetchRange(cdb []byte) (lba, blocks uint64) {
	if cdb[0] == opPreFetch16 || cdb[0] == opSyncCache16 {
		lba, blocks = be64(cdb[2:10]), uint64(be32(cdb[10:14]))
	} else {
		lba, blocks = uint64(be32(cdb[2:6])), uint64(be16(cdb[7:9]))
	}
	return lba, blocks
}

// readCapacity10 implements READ CAPACITY(10) (SBC-3 5.16).
func (lu *LU) readCapacity10(r *request) Result {
	d := make([]byte, 8)
	last := lu.capacityBlocks() - 1
	if lu.capacityBlocks() == 0 {
		last = 0
	}
	put32(d[0:4], uint32(min(last, 0xffffffff)))
	put32(d[4:8], BlockSize)
	return good(d, len(d))
}

// readCapacity16 implements READ CAPACITY(16) (SBC-3 5.17).
func (lu *LU) readCapacity16(r *request) Result {
	alloc := int(be32(r.cdb[10:14]))
	d := make([]byte, 32)
	last := lu.capacityBlocks() - 1
	if lu.capacityBlocks() == 0 {
		last = 0
	}
	put64(d[0:8], last)
	put32(d[8:12], BlockSize)
	// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (see physBlockExp).
	// LOWEST ALIGNED LOGICAL BLOCK ADDRESS (bytes 14-15, low 14 bits) is
	// 0: LBA 0 starts a physical block.
	d[13] = lu.physExp
	d[14] = 0x80 | 0x40 // LBPME (thin provisioned), LBPRZ (unmapped reads zeros)
	return good(d, alloc)
}
