package scsi

// Third-party copy: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4
// 6.4, 6.18; the SPC-3 forms), with the logical unit as its own copy
// manager. The copy is done inside the target, through the backends of
// the logical units involved (for csnap volumes, the snapshot client, so
// copy-outs and read locks apply as to any write and read), so a copy
// between logical units of one copy domain moves no data through the
// initiator.
//
// Supported: block device CSCD descriptors of the identification
// descriptor type (0xE4) naming, by their NAA designator, logical units of
// the target's copy domain (CopyDomain; by default the target's own
// logical units), and block-to-block segment descriptors (0x02). Held data,
// inline data, stream devices and ROD tokens (LID4) are not supported.
//
// Errors found in the parameter list before anything is copied end the
// command with ILLEGAL REQUEST; errors in a segment (an index that names
// no CSCD descriptor, an unknown logical unit, a range beyond the
// capacity, a backend failure) with COPY ABORTED, after the segments
// before it were copied, as SPC-4 6.4.5 describes.

import (
	"fmt"
	"slices"
	"sync"
)

// Operation codes and service actions.
const (
	opExtendedCopy       = 0x83
	opReceiveCopyResults = 0x84

	saExtendedCopyLID1 = 0x00 // EXTENDED COPY(LID1)

	saCopyStatus      = 0x00 // RECEIVE COPY RESULTS: COPY STATUS
	saOperatingParams = 0x03 // RECEIVE COPY RESULTS: OPERATING PARAMETERS
)

// Copy manager limits, reported by RECEIVE COPY RESULTS (OPERATING
// PARAMETERS) and the Third-party Copy VPD page.
const (
	// maxCSCDDescriptors: a copy names a source and a destination.
	maxCSCDDescriptors = 2
	// maxSegmentDescriptors bounds the segments of one EXTENDED COPY.
	maxSegmentDescriptors = 64
	// maxDescriptorListLength bounds the CSCD and segment descriptor
	// lists together: what the two limits above take.
	maxDescriptorListLength = maxCSCDDescriptors*cscdDescLen + maxSegmentDescriptors*b2bSegDescLen
	// maxSegmentBlocks is the most a block-to-block segment can name
	// (its NUMBER OF BLOCKS field has 16 bits).
	maxSegmentBlocks = 0xffff
	// maxConcurrentCopies bounds the copies held per I_T nexus and
	// running at once on a logical unit.
	maxConcurrentCopies = 16
	// copyChunkBlocks is what the copy reads and writes at a time.
	copyChunkBlocks = optimalTransferBlocks

	xcopyHeaderLen = 16
	cscdDescLen    = 32
	b2bSegDescLen  = 28

	cscdIdentification = 0xe4 // identification descriptor CSCD descriptor
	segBlockToBlock    = 0x02 // block device to block device segment
)

// Additional sense codes of third-party copy.
const (
	ascqTooManyTargetDescriptors  = 0x06 // with ascInvalidFieldInParam
	ascqUnsupportedTargetDescType = 0x07
	ascqTooManySegmentDescriptors = 0x08
	ascqUnsupportedSegDescType    = 0x09
	ascqOperationInProgress       = 0x16 // with ASC 0
	ascUnreachableCopyTarget      = 0x08 // ASCQ 4
	senseCopyAborted              = 0x0a
)

// CopyDomain is a set of targets whose logical units EXTENDED COPY can
// name as copy sources and destinations: the logical units of one volume
// (its origin and snapshots, each exported as its own target). It is safe
// for concurrent use.
type CopyDomain struct {
	mu      sync.RWMutex
	targets []*Target
}

// NewCopyDomain returns an empty copy domain.
func NewCopyDomain() *CopyDomain { return &CopyDomain{} }

// Add puts t and its logical units in the domain, and makes the domain
// the one t's EXTENDED COPY commands resolve CSCD descriptors in.
func (d *CopyDomain) Add(t *Target) {
	d.mu.Lock()
	if !slices.Contains(d.targets, t) {
		d.targets = append(d.targets, t)
	}
	d.mu.Unlock()
	t.mu.Lock()
	t.copies = d
	t.mu.Unlock()
}

// Remove takes t out of the domain: copies through the other targets can
// no longer name its logical units.
func (d *CopyDomain) Remove(t *Target) {
	d.mu.Lock()
	d.targets = slices.DeleteFunc(d.targets, func(x *Target) bool { return x == t })
	d.mu.Unlock()
}

// lookup returns the logical unit whose NAA designator is naa, or nil.
func (d *CopyDomain) lookup(naa [16]byte) *LU {
	d.mu.RLock()
	ts := slices.Clone(d.targets)
	d.mu.RUnlock()
	for _, t := range ts {
		if lu := t.luByNAA(naa); lu != nil {
			return lu
		}
	}
	return nil
}

// luByNAA returns t's logical unit whose NAA designator is naa, or nil.
func (t *Target) luByNAA(naa [16]byte) *LU {
	for _, lu := range t.allLUs() {
		if lu.be.Identity().NAA == naa {
			return lu
		}
	}
	return nil
}

// resolveCopyLU returns the logical unit a CSCD descriptor names.
func (t *Target) resolveCopyLU(naa [16]byte) *LU {
	t.mu.RLock()
	d := t.copies
	t.mu.RUnlock()
	if d != nil {
		return d.lookup(naa)
	}
	return t.luByNAA(naa)
}

// copyStatus is the outcome of one EXTENDED COPY as RECEIVE COPY RESULTS
// (COPY STATUS) reports it.
type copyStatus struct {
	done     bool // false while the copy runs
	failed   bool
	segments uint16 // segments processed
	bytes    uint64 // bytes copied
}

// copyManager keeps, per I_T nexus, the copies with a list identifier
// that are running or whose status is held for RECEIVE COPY RESULTS.
type copyManager struct {
	mu    sync.Mutex
	lists map[NexusID]map[byte]*copyStatus
	order map[NexusID][]byte // completion order, oldest first
}

// begin records a copy with list identifier id from n, or reports false
// if one with the same identifier is still running.
func (m *copyManager) begin(n NexusID, id byte) (*copyStatus, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lists == nil {
		m.lists = map[NexusID]map[byte]*copyStatus{}
		m.order = map[NexusID][]byte{}
	}
	l := m.lists[n]
	if l == nil {
		l = map[byte]*copyStatus{}
		m.lists[n] = l
	}
	if cs, ok := l[id]; ok && !cs.done {
		return nil, false
	}
	cs := &copyStatus{}
	l[id] = cs
	m.order[n] = slices.DeleteFunc(m.order[n], func(x byte) bool { return x == id })
	return cs, true
}

// finish records the outcome of a copy; with hold unset (or over the
// bound of held results) its status is not kept.
func (m *copyManager) finish(n NexusID, id byte, cs *copyStatus, out copyStatus, hold bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out.done = true
	*cs = out
	if !hold {
		delete(m.lists[n], id)
		return
	}
	m.order[n] = append(m.order[n], id)
	for len(m.order[n]) > maxConcurrentCopies {
		delete(m.lists[n], m.order[n][0])
		m.order[n] = m.order[n][1:]
	}
}

// status returns the status of list id from n, if it is held or running.
func (m *copyManager) status(n NexusID, id byte) (copyStatus, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cs, ok := m.lists[n][id]
	if !ok {
		return copyStatus{}, false
	}
	return *cs, true
}

// forget drops everything held for nexus n (it ended).
func (m *copyManager) forget(n NexusID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.lists, n)
	delete(m.order, n)
}

// cscd is one parsed CSCD descriptor.
type cscd struct {
	naa [16]byte
	ok  bool // the designator is an NAA one we can resolve
}

// b2bSegment is one parsed block-to-block segment descriptor.
type b2bSegment struct {
	src, dst       uint16
	blocks         uint32
	srcLBA, dstLBA uint64
}

// extendedCopy implements EXTENDED COPY(LID1) (SPC-4 6.4).
func (lu *LU) extendedCopy(r *request) Result {
	n := int(be32(r.cdb[10:14]))
	res := lu.doExtendedCopy(r, n)
	res.DataOutLen = n
	return res
}

func (lu *LU) doExtendedCopy(r *request, n int) Result {
	if n == 0 {
		return Result{Status: StatusGood}
	}
	if n < xcopyHeaderLen || len(r.cmd.DataOut) < n {
		return paramListLengthError()
	}
	p := r.cmd.DataOut[:n]
	listID := p[0]
	usage := (p[1] >> 3) & 0x03
	if p[1]&0x20 != 0 {
		return invalidParam(1, 5) // STR: stream devices are not supported
	}
	if usage == 0x01 {
		return invalidParam(1, 4) // LIST ID USAGE 01b is reserved
	}
	if usage == 0x03 && listID != 0 {
		return invalidParam(0, -1)
	}
	tdl := int(be16(p[2:4]))
	sdl := int(be32(p[8:12]))
	inline := int(be32(p[12:16]))
	if tdl+sdl > maxDescriptorListLength {
		return paramListLengthError()
	}
	if xcopyHeaderLen+tdl+sdl+inline > n {
		return paramListLengthError()
	}
	if inline != 0 {
		return invalidParam(12, -1) // MAXIMUM INLINE DATA LENGTH is 0
	}

	// CSCD descriptors.
	var targets []cscd
	for off := xcopyHeaderLen; off < xcopyHeaderLen+tdl; {
		typ := p[off]
		if typ != cscdIdentification {
			return senseData{key: SenseIllegalRequest, asc: ascInvalidFieldInParam, ascq: ascqUnsupportedTargetDescType,
				sks: fieldPointer(false, off, -1), sksValid: true}.result()
		}
		if len(targets) == maxCSCDDescriptors {
			return checkCondition(SenseIllegalRequest, ascInvalidFieldInParam, ascqTooManyTargetDescriptors)
		}
		if off+cscdDescLen > xcopyHeaderLen+tdl {
			return paramListLengthError()
		}
		d := p[off : off+cscdDescLen]
		// Byte 1 bits 7-5 (LU ID TYPE, NUL) are obsolete in SPC-4 and
		// ignored.
		if d[1]&0x1f != 0 {
			// PERIPHERAL DEVICE TYPE: only direct access block devices.
			return invalidParam(off+1, 4)
		}
		if blen := be24(d[29:32]); blen != BlockSize {
			return invalidParam(off+29, -1) // DISK BLOCK LENGTH
		}
		var t cscd
		// Designation descriptor (bytes 4-23): an NAA designator of a
		// logical unit, 16 bytes (the one csnap's LUs report).
		codeSet, assoc, dtype, dlen := d[4]&0x0f, (d[5]>>4)&0x03, d[5]&0x0f, int(d[7])
		if codeSet == 0x01 && assoc == 0 && dtype == 0x03 && dlen == 16 {
			copy(t.naa[:], d[8:24])
			t.ok = true
		}
		targets = append(targets, t)
		off += cscdDescLen
	}

	// Segment descriptors.
	var segs []b2bSegment
	end := xcopyHeaderLen + tdl + sdl
	for off := xcopyHeaderLen + tdl; off < end; {
		if off+4 > end {
			return paramListLengthError()
		}
		typ := p[off]
		if typ != segBlockToBlock {
			return senseData{key: SenseIllegalRequest, asc: ascInvalidFieldInParam, ascq: ascqUnsupportedSegDescType,
				sks: fieldPointer(false, off, -1), sksValid: true}.result()
		}
		if len(segs) == maxSegmentDescriptors {
			return checkCondition(SenseIllegalRequest, ascInvalidFieldInParam, ascqTooManySegmentDescriptors)
		}
		if int(be16(p[off+2:off+4])) != b2bSegDescLen-4 {
			return invalidParam(off+2, -1)
		}
		if off+b2bSegDescLen > end {
			return paramListLengthError()
		}
		d := p[off : off+b2bSegDescLen]
		segs = append(segs, b2bSegment{
			src: uint16(be16(d[4:6])), dst: uint16(be16(d[6:8])),
			blocks: be16(d[10:12]),
			srcLBA: be64(d[12:20]), dstLBA: be64(d[20:28]),
		})
		off += b2bSegDescLen
	}

	hold := usage == 0x00
	var cs *copyStatus
	if usage != 0x03 {
		var ok bool
		if cs, ok = lu.copies.begin(r.nexus, listID); !ok {
			return checkCondition(SenseIllegalRequest, ascNoAdditional, ascqOperationInProgress)
		}
	}
	out, res := lu.runCopy(r, targets, segs)
	if cs != nil {
		lu.copies.finish(r.nexus, listID, cs, out, hold)
	}
	return res
}

// copyAborted is the COPY ABORTED result of a failed segment.
func copyAborted(asc, ascq byte, err error) Result {
	r := checkCondition(senseCopyAborted, asc, ascq)
	r.Err = err
	return r
}

// runCopy copies every segment in order and returns the copy's status and
// the command's result.
func (lu *LU) runCopy(r *request, targets []cscd, segs []b2bSegment) (copyStatus, Result) {
	var st copyStatus
	resolve := func(i uint16) (*LU, Result, bool) {
		if int(i) >= len(targets) {
			return nil, copyAborted(ascUnreachableCopyTarget, 0x04, fmt.Errorf("CSCD descriptor index %d of %d", i, len(targets))), false
		}
		t := targets[i]
		var other *LU
		if t.ok {
			other = r.t.resolveCopyLU(t.naa)
		}
		if other == nil {
			return nil, copyAborted(ascUnreachableCopyTarget, 0x04, fmt.Errorf("CSCD descriptor %d names no logical unit of the copy domain", i)), false
		}
		return other, Result{}, true
	}
	for _, s := range segs {
		src, res, ok := resolve(s.src)
		if !ok {
			st.failed = true
			return st, res
		}
		dst, res, ok := resolve(s.dst)
		if !ok {
			st.failed = true
			return st, res
		}
		res, ok = lu.copySegment(r, src, dst, s)
		if !ok {
			st.failed = true
			return st, res
		}
		st.segments++
		st.bytes += uint64(s.blocks) * BlockSize
	}
	return st, Result{Status: StatusGood}
}

// copySegment copies one block-to-block segment from src to dst.
func (lu *LU) copySegment(r *request, src, dst *LU, s b2bSegment) (Result, bool) {
	blocks := uint64(s.blocks)
	if s.srcLBA > src.capacityBlocks() || blocks > src.capacityBlocks()-s.srcLBA ||
		s.dstLBA > dst.capacityBlocks() || blocks > dst.capacityBlocks()-s.dstLBA {
		return copyAborted(ascNoAdditional, 0, fmt.Errorf("segment [%d+%d) -> [%d+%d) beyond a capacity", s.srcLBA, blocks, s.dstLBA, blocks)), false
	}
	if blocks == 0 {
		return Result{}, true
	}
	// The destination's and the source's state as a WRITE and a READ
	// from this initiator would see it (for the logical unit addressed,
	// the command's own state).
	dstState, srcState := r.state, r.state
	if dst != lu || src != lu {
		var err error
		if dst != lu {
			if dstState, err = dst.store.Get(dst.id); err != nil {
				return stateError(err), false
			}
		}
		if src != lu {
			if srcState, err = src.store.Get(src.id); err != nil {
				return stateError(err), false
			}
		}
	}
	id := r.nexus
	wcmd, rcmd := lu.cmds.byOp[opWrite16], lu.cmds.byOp[opRead16]
	if dst != lu && dstState.conflicts(id, wcmd, make([]byte, 16)) ||
		src != lu && srcState.conflicts(id, rcmd, make([]byte, 16)) {
		return reservationConflict(), false
	}
	if res, ok := dst.writable(&request{state: dstState}); !ok {
		return res, false
	}
	fua := dstState.Mode.WriteCacheDisabled

	chunk := uint64(copyChunkBlocks)
	buf := make([]byte, min(blocks, chunk)*BlockSize)
	// Overlapping ranges of one logical unit with the destination after
	// the source are copied from the end, so that no block is read after
	// it was overwritten.
	backward := src == dst && s.dstLBA > s.srcLBA && s.dstLBA < s.srcLBA+blocks
	for done := uint64(0); done < blocks; {
		k := min(chunk, blocks-done)
		off := done
		if backward {
			off = blocks - done - k
		}
		p := buf[:k*BlockSize]
		if err := src.be.ReadAt(p, int64(s.srcLBA+off)*BlockSize); err != nil {
			return copyAborted(ascUnrecoveredReadError, 0, fmt.Errorf("copy source read: %w", err)), false
		}
		unlock := dst.locks.lock(s.dstLBA+off, k, false)
		err := dst.be.WriteAt(p, int64(s.dstLBA+off)*BlockSize, fua)
		unlock()
		if err != nil {
			return copyAborted(ascWriteError, 0, fmt.Errorf("copy destination write: %w", err)), false
		}
		done += k
	}
	return Result{}, true
}

// receiveCopyResults implements RECEIVE COPY RESULTS (SPC-4 6.18) with
// the COPY STATUS and OPERATING PARAMETERS service actions.
func (lu *LU) receiveCopyResults(r *request) Result {
	alloc := int(be32(r.cdb[10:14]))
	switch r.cdb[1] & 0x1f {
	case saCopyStatus:
		cs, ok := lu.copies.status(r.nexus, r.cdb[2])
		if !ok {
			return invalidCDB(2, -1) // no such list identifier
		}
		d := make([]byte, 12)
		put32(d[0:4], 8)
		switch {
		case !cs.done:
			d[4] = 0x00 // operation in progress
		case cs.failed:
			d[4] = 0x02 // completed with an error
		default:
			d[4] = 0x01 // completed without error
		}
		put16(d[5:7], cs.segments)
		d[7] = 0x01 // TRANSFER COUNT UNITS: KiB
		put32(d[8:12], uint32(min(cs.bytes/1024, 0xffffffff)))
		return good(d, alloc)
	case saOperatingParams:
		descs := []byte{segBlockToBlock, cscdIdentification}
		d := make([]byte, 44, 44+len(descs))
		d[4] = 0x01 // SNLID: lists without an identifier are supported
		put16(d[8:10], maxCSCDDescriptors)
		put16(d[10:12], maxSegmentDescriptors)
		put32(d[12:16], maxDescriptorListLength)
		put32(d[16:20], maxSegmentBlocks*BlockSize) // MAXIMUM SEGMENT LENGTH
		put32(d[20:24], 0)                          // MAXIMUM INLINE DATA LENGTH
		put32(d[24:28], 0)                          // HELD DATA LIMIT
		put32(d[28:32], 0)                          // MAXIMUM STREAM DEVICE TRANSFER SIZE
		put16(d[34:36], maxConcurrentCopies)        // TOTAL CONCURRENT COPIES
		d[36] = maxConcurrentCopies                 // MAXIMUM CONCURRENT COPIES
		d[37] = 9                                   // DATA SEGMENT GRANULARITY: 2^9 bytes
		d[43] = byte(len(descs))
		d = append(d, descs...)
		put32(d[0:4], uint32(len(d)-4))
		return good(d, alloc)
	}
	return invalidCDB(1, 4)
}

// thirdPartyCopyPage returns the Third-party Copy VPD page (SPC-4 7.8.17)
// for EXTENDED COPY(LID1).
func thirdPartyCopyPage() []byte {
	d := []byte{0, vpdThirdPartyCopy, 0, 0}
	desc := func(typ uint16, body []byte) {
		for len(body)%4 != 0 {
			body = append(body, 0)
		}
		h := make([]byte, 4)
		put16(h[0:2], typ)
		put16(h[2:4], uint16(len(body)))
		d = append(d, h...)
		d = append(d, body...)
	}
	// Supported Commands: EXTENDED COPY(LID1); RECEIVE COPY RESULTS
	// COPY STATUS and OPERATING PARAMETERS.
	cmds := []byte{opExtendedCopy, 1, saExtendedCopyLID1, opReceiveCopyResults, 2, saCopyStatus, saOperatingParams}
	desc(0x0001, append([]byte{byte(len(cmds))}, cmds...))
	// Parameter Data (LID1 limits).
	pd := make([]byte, 28)
	put16(pd[2:4], maxCSCDDescriptors)
	put16(pd[4:6], maxSegmentDescriptors)
	put32(pd[6:10], maxDescriptorListLength)
	put32(pd[10:14], 0) // MAXIMUM INLINE DATA LENGTH
	desc(0x0008, pd)
	// Supported Descriptors.
	desc(0x0009, []byte{2, segBlockToBlock, cscdIdentification})
	// General Copy Operations.
	g := make([]byte, 28)
	put32(g[0:4], maxConcurrentCopies)         // TOTAL CONCURRENT COPIES
	put32(g[4:8], maxConcurrentCopies)         // MAXIMUM IDENTIFIED CONCURRENT COPIES
	put32(g[8:12], maxSegmentBlocks*BlockSize) // MAXIMUM SEGMENT LENGTH
	g[12] = 9                                  // DATA SEGMENT GRANULARITY (log2 bytes)
	desc(0x8001, g)
	put16(d[2:4], uint16(len(d)-4))
	return d
}
