package scsi

// SANITIZE (SBC-3 5.19, SBC-4): OVERWRITE writes an initialization
// pattern over every block, BLOCK ERASE deallocates every block (offered
// only by logical units whose backend reports deallocation, LBAStatusBackend,
// so that GET LBA STATUS shows the result), EXIT FAILURE MODE leaves the
// failure mode a failed sanitize leaves the unit in. CRYPTO ERASE is not
// supported (no data is encrypted).
//
// An OVERWRITE takes at most DefaultSanitizeRate of bandwidth (see
// LU.SetSanitizeRate). A sanitize runs in the background of the logical unit, whether the
// command waits for it (IMMED clear) or not: task management (ABORT TASK,
// LUN or target reset) and the end of the I_T nexus do not stop it. While
// it runs, every command but INQUIRY, REPORT LUNS, REQUEST SENSE and the
// MAINTENANCE IN reports ends with NOT READY, SANITIZE IN PROGRESS and
// its progress indication, as does REQUEST SENSE (SBC-3 4.11). The state
// is the node's: another node exporting the same logical unit does not
// see the sanitize in progress (see docs/session8/notes-conform.md).
//
// A backend can refuse a sanitize (SanitizeGuard): csnap's origin does
// while snapshots share its data, since they would keep what the sanitize
// is meant to destroy.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Service actions of SANITIZE.
const (
	opSanitize = 0x48

	saSanitizeOverwrite  = 0x01
	saSanitizeBlockErase = 0x02
	saSanitizeCrypto     = 0x03
	saSanitizeExitFail   = 0x1f
)

// Additional sense codes of SANITIZE.
const (
	ascNotReady            = 0x04 // ASCQ 0x1b: SANITIZE IN PROGRESS
	ascqSanitizeInProgress = 0x1b
	ascMediumFormatCorrupt = 0x31 // ASCQ 0x03: SANITIZE COMMAND FAILED
	ascqSanitizeFailed     = 0x03
)

// sanitizeChunk is what one backend call of a sanitize covers.
const sanitizeChunk = 1 << 20

// DefaultSanitizeRate is the bandwidth (bytes per second) an OVERWRITE
// sanitize takes at most, unless LU.SetSanitizeRate says otherwise: a
// whole-volume overwrite is a background operation and must not take the
// node's disk bandwidth from the other volumes' IO.
const DefaultSanitizeRate = 128 << 20

// SanitizeGuard is an optional Backend interface: SANITIZE runs only when
// SanitizeAllowed returns nil. An error that is a *SenseError chooses the
// sense data of the refusal (else it is ILLEGAL REQUEST, COMMAND SEQUENCE
// ERROR).
type SanitizeGuard interface {
	SanitizeAllowed(ctx context.Context) error
}

// sanitizer is a logical unit's sanitize state on this node.
type sanitizer struct {
	// busy is set (under mu) while running or failed: every command
	// looks at it, most without taking mu.
	busy    atomic.Bool
	mu      sync.Mutex
	running *sanitizeOp
	failed  bool // sanitize failure mode, until EXIT FAILURE MODE
	// rate bounds an overwrite's bandwidth (bytes per second); 0 is
	// DefaultSanitizeRate, negative is unlimited.
	rate int64
}

// SetSanitizeRate sets the bandwidth (bytes per second) a SANITIZE
// OVERWRITE of the logical unit takes at most; 0 restores
// DefaultSanitizeRate, a negative rate lifts the bound.
func (lu *LU) SetSanitizeRate(bytesPerSecond int64) {
	lu.sanitize.mu.Lock()
	lu.sanitize.rate = bytesPerSecond
	lu.sanitize.mu.Unlock()
}

// pace returns how long to wait after writing done bytes since start to
// keep within the rate.
func (s *sanitizer) pace(start time.Time, done int64) time.Duration {
	s.mu.Lock()
	rate := s.rate
	s.mu.Unlock()
	switch {
	case rate < 0:
		return 0
	case rate == 0:
		rate = DefaultSanitizeRate
	}
	due := start.Add(time.Duration(float64(done) / float64(rate) * float64(time.Second)))
	return time.Until(due)
}

// sanitizeOp is one sanitize in progress.
type sanitizeOp struct {
	progress atomic.Uint32 // 0..65536
	done     chan struct{}
	res      Result // set before done is closed
}

// state returns the running sanitize, if any, and whether the unit
// is in sanitize failure mode.
func (s *sanitizer) state() (*sanitizeOp, bool) {
	if !s.busy.Load() {
		return nil, false // the common case, without the lock
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running, s.failed
}

// sanitizeInProgress is NOT READY, SANITIZE IN PROGRESS with op's
// progress indication.
func sanitizeInProgress(op *sanitizeOp) senseData {
	p := min(op.progress.Load(), 0xffff)
	return senseData{key: SenseNotReady, asc: ascNotReady, ascq: ascqSanitizeInProgress,
		sks: [3]byte{0, byte(p >> 8), byte(p)}, sksValid: true}
}

// sanitizeGate returns the result of command c while a sanitize runs or
// after one failed, or ok when c may run.
func (lu *LU) sanitizeGate(c *command) (Result, bool) {
	if c.keepUA || c.op == opMaintenanceIn {
		return Result{}, true
	}
	op, failed := lu.sanitize.state()
	switch {
	case op != nil:
		return sanitizeInProgress(op).result(), false
	case failed && c.op != opSanitize && c.op != opInquiry:
		return checkCondition(SenseMediumError, ascMediumFormatCorrupt, ascqSanitizeFailed), false
	}
	return Result{}, true
}

// sanitizeCmd implements SANITIZE.
func (lu *LU) sanitizeCmd(r *request) Result {
	n := int(be16(r.cdb[7:9]))
	res := lu.doSanitize(r, n)
	res.DataOutLen = n
	return res
}

func (lu *LU) doSanitize(r *request, n int) Result {
	cdb := r.cdb
	immed := cdb[1]&0x80 != 0
	sa := cdb[1] & 0x1f
	if cdb[1]&0x40 != 0 {
		return invalidCDB(1, 6) // reserved
	}
	for i := 2; i <= 6; i++ {
		if cdb[i] != 0 {
			return invalidCDB(i, -1) // reserved
		}
	}
	if sa == saSanitizeExitFail {
		if n != 0 {
			return invalidCDB(7, -1)
		}
		lu.sanitize.mu.Lock()
		lu.sanitize.failed = false
		lu.sanitize.busy.Store(lu.sanitize.running != nil)
		lu.sanitize.mu.Unlock()
		return Result{Status: StatusGood}
	}

	var pattern []byte
	var invert bool
	var passes int
	switch sa {
	case saSanitizeOverwrite:
		// Parameter list: byte 0 INVERT, TEST, OVERWRITE COUNT; bytes
		// 2-3 INITIALIZATION PATTERN LENGTH; the pattern (SBC-3 5.19.3).
		if n <= 4 || n > BlockSize+4 {
			return invalidCDB(7, -1)
		}
		if len(r.cmd.DataOut) < n {
			return paramListLengthError()
		}
		p := r.cmd.DataOut[:n]
		invert = p[0]&0x80 != 0
		passes = int(p[0] & 0x1f)
		plen := int(be16(p[2:4]))
		switch {
		case p[0]&0x60 != 0:
			return invalidParam(0, 6) // TEST
		case passes == 0:
			return invalidParam(0, 4)
		case plen == 0 || plen > BlockSize || plen+4 != n:
			return invalidParam(2, -1)
		}
		pattern = p[4:n]
	case saSanitizeBlockErase:
		if n != 0 {
			return invalidCDB(7, -1)
		}
		if _, ok := lu.be.(LBAStatusBackend); !ok {
			return invalidServiceAction()
		}
	default:
		return invalidServiceAction()
	}
	if res, ok := lu.writable(r); !ok {
		return res
	}
	if g, ok := lu.be.(SanitizeGuard); ok {
		if err := g.SanitizeAllowed(r.ctx); err != nil {
			res := backendError(err, true)
			if res.Sense[2]&0x0f == SenseMediumError {
				res.Sense = senseData{key: SenseIllegalRequest, asc: ascCommandSequenceError}.encode()
			}
			return res
		}
	}

	op := &sanitizeOp{done: make(chan struct{})}
	lu.sanitize.mu.Lock()
	if lu.sanitize.running != nil {
		running := lu.sanitize.running
		lu.sanitize.mu.Unlock()
		return sanitizeInProgress(running).result()
	}
	lu.sanitize.running = op
	lu.sanitize.busy.Store(true)
	lu.sanitize.mu.Unlock()

	go func() {
		var res Result
		if sa == saSanitizeOverwrite {
			res = lu.overwrite(op, pattern, invert, passes)
		} else {
			res = lu.blockErase(op)
		}
		lu.sanitize.mu.Lock()
		lu.sanitize.running = nil
		lu.sanitize.failed = res.Status != StatusGood
		lu.sanitize.busy.Store(lu.sanitize.failed)
		lu.sanitize.mu.Unlock()
		op.res = res
		close(op.done)
	}()
	if immed {
		return Result{Status: StatusGood}
	}
	select {
	case <-op.done:
		return op.res
	case <-r.ctx.Done():
		// Aborted (or the connection went): the sanitize goes on in
		// the background; nobody hears this result.
		res := checkCondition(SenseAbortedCommand, ascNoAdditional, 0)
		res.Err = r.ctx.Err()
		return res
	}
}

// overwrite writes pattern (repeated to fill each block, inverted on
// every other pass with invert) over the whole medium, passes times.
func (lu *LU) overwrite(op *sanitizeOp, pattern []byte, invert bool, passes int) Result {
	capBlocks := lu.capacityBlocks()
	if capBlocks == 0 {
		return Result{Status: StatusGood}
	}
	block := make([]byte, BlockSize)
	for i := range block {
		block[i] = pattern[i%len(pattern)]
	}
	buf := make([]byte, 0, sanitizeChunk)
	for len(buf) < sanitizeChunk {
		buf = append(buf, block...)
	}
	total := uint64(passes) * capBlocks
	chunk := uint64(sanitizeChunk / BlockSize)
	start := time.Now()
	var written int64
	for pass := range passes {
		if invert && pass > 0 {
			for i := range buf {
				buf[i] = ^buf[i]
			}
		}
		for lba := uint64(0); lba < capBlocks; lba += chunk {
			k := min(chunk, capBlocks-lba)
			unlock := lu.locks.lock(lba, k, false)
			// Written through (FUA): the progress reported is that of
			// data destroyed on the medium, and each pass reaches it
			// (a cache would keep only the last).
			err := lu.be.WriteAt(buf[:k*BlockSize], int64(lba)*BlockSize, true)
			unlock()
			if err != nil {
				return backendError(err, true)
			}
			op.progress.Store(uint32((uint64(pass)*capBlocks + lba + k) * 65536 / total))
			written += int64(k) * BlockSize
			if d := lu.sanitize.pace(start, written); d > 0 {
				time.Sleep(d)
			}
		}
	}
	if err := lu.be.Flush(); err != nil {
		return backendError(err, true)
	}
	return Result{Status: StatusGood}
}

// blockErase deallocates the whole medium.
func (lu *LU) blockErase(op *sanitizeOp) Result {
	size := lu.be.Size()
	if size == 0 {
		return Result{Status: StatusGood}
	}
	const step = 256 * sanitizeChunk
	for off := int64(0); off < size; off += step {
		k := min(step, size-off)
		unlock := lu.locks.lock(uint64(off/BlockSize), uint64(k/BlockSize), false)
		err := lu.be.Unmap(off, k)
		unlock()
		if err != nil {
			return backendError(err, true)
		}
		op.progress.Store(uint32((off + k) * 65536 / size))
	}
	if err := lu.be.Flush(); err != nil {
		return backendError(err, true)
	}
	return Result{Status: StatusGood}
}
