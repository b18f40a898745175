package scsi

import "errors"

// compareAndWrite implements COMPARE AND WRITE (SBC-3 5.2). The data-out
// holds the verify data (N blocks) followed by the write data (N blocks).
// The blocks are locked exclusively against every other write for the
// whole read-compare-write, which makes the command atomic on this node,
// and, if the backend is a BlockLocker, against every COMPARE AND WRITE
// of the same blocks on other nodes.
func (lu *LU) compareAndWrite(r *request) Result {
	n := uint64(r.cdb[13])
	res := lu.doCompareAndWrite(r, n)
	res.DataOutLen = int(2 * n * BlockSize)
	return res
}

func (lu *LU) doCompareAndWrite(r *request, n uint64) Result {
	cdb := r.cdb
	lba := be64(cdb[2:10])
	if cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7) // WRPROTECT
	}
	if res, ok := lu.writable(r); !ok {
		return res
	}
	if n > maxCAWBlocks {
		return invalidCDB(13, -1)
	}
	if res, ok := lu.checkRange(lba, n); !ok {
		return res
	}
	size := int(n) * BlockSize
	// The data-out must be exactly the verify and the write data; a
	// mismatch means initiator and target disagree on what is compared
	// (for instance a length of 256 blocks that wrapped to 0 in the CDB).
	if r.cmd.ExpectedLen != uint32(2*size) || len(r.cmd.DataOut) < 2*size {
		return invalidCDB(13, -1)
	}
	if n == 0 {
		return Result{Status: StatusGood}
	}
	verify, data := r.cmd.DataOut[:size], r.cmd.DataOut[size:2*size]

	unlock := lu.locks.lock(lba, n, true)
	defer unlock()
	off := int64(lba) * BlockSize
	check := func() error { return nil }
	if bl, ok := lu.be.(BlockLocker); ok {
		var unlockCluster func()
		var err error
		check, unlockCluster, err = bl.LockBlocks(r.ctx, off, size)
		if err != nil {
			if errors.As(err, new(*SenseError)) {
				return backendError(err, false)
			}
			return abortedCommand(err)
		}
		defer unlockCluster()
	}
	have := make([]byte, size)
	if err := lu.be.ReadAt(have, off); err != nil {
		return backendError(err, false)
	}
	if i := firstDiff(have, verify); i >= 0 {
		return miscompare(i)
	}
	if err := check(); err != nil {
		return abortedCommand(err)
	}
	fua := cdb[1]&0x08 != 0 || !r.writeCache()
	if err := lu.be.WriteAt(data, off, fua); err != nil {
		return backendError(err, true)
	}
	return Result{Status: StatusGood}
}

// abortedCommand ends a command that wrote nothing and may be retried
// (ABORTED COMMAND, no additional sense).
func abortedCommand(err error) Result {
	r := checkCondition(SenseAbortedCommand, ascNoAdditional, 0)
	r.Err = err
	return r
}
