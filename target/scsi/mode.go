package scsi

// Mode parameters (SPC-4 7.5, SBC-3 6.4). A csnap logical unit has three
// pages: Caching, Control and Informational Exceptions Control. Only WCE
// (Caching) and SWP (Control: software write protect) are changeable;
// nothing can be saved. The parameters are kept per logical
// unit and shared by all I_T nexuses (SPC-4 7.5.1 allows either), in the
// logical unit's shared state (LUState.Mode), so they are the same through
// every node exporting it and last as long as that state does (a cluster
// keeps it with the volume, across restarts of every node).

// Mode page codes.
const (
	pageCaching  = 0x08
	pageControl  = 0x0a
	pageIEC      = 0x1c
	pageAllPages = 0x3f
)

// Page control values (SPC-4 6.11.1).
const (
	pcCurrent    = 0
	pcChangeable = 1
	pcDefault    = 2
	pcSaved      = 3
)

// modeParams are the changeable mode parameters.
type modeParams struct {
	// wce is the Caching page's write cache enable. With it clear every
	// write is done with FUA, so the cache is write-through.
	wce bool
	// swp is the Control page's software write protect: every command
	// that writes the medium fails with DATA PROTECT (SPC-4 7.5.8).
	swp bool
}

// modeParamsOf returns the mode parameters of shared state s.
func modeParamsOf(s *LUState) modeParams {
	return modeParams{wce: !s.Mode.WriteCacheDisabled, swp: s.Mode.SoftwareWriteProtect}
}

// set stores mp in shared state s.
func (mp modeParams) set(s *LUState) {
	s.Mode.WriteCacheDisabled = !mp.wce
	s.Mode.SoftwareWriteProtect = mp.swp
}

// modePage returns page code as reported with page control pc, or nil if
// the page is not supported.
func modePage(code, pc byte, mp modeParams) []byte {
	var p []byte
	switch code {
	case pageCaching: // SBC-3 6.4.5
		p = make([]byte, 20)
		switch pc {
		case pcChangeable:
			p[2] = 0x04 // WCE
		case pcDefault:
			p[2] = 0x04
		default:
			if mp.wce {
				p[2] = 0x04
			}
		}
	case pageControl: // SPC-4 7.5.8
		p = make([]byte, 12)
		switch pc {
		case pcChangeable:
			p[4] = 0x08 // SWP
		default:
			p[2] = 0x02            // GLTSD: no implicit log saving
			p[3] = 0x10            // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
			put16(p[8:10], 0xffff) // BUSY TIMEOUT PERIOD: unlimited
			if pc == pcCurrent && mp.swp {
				p[4] = 0x08
			}
		}
	case pageIEC: // SPC-4 7.5.12
		p = make([]byte, 12)
		if pc != pcChangeable {
			p[2] = 0x08 // DEXCPT: informational exceptions disabled
		}
	default:
		return nil
	}
	p[0] = code // PS (parameters savable) is zero: nothing can be saved
	p[1] = byte(len(p) - 2)
	return p
}

// modeSense implements MODE SENSE(6) and MODE SENSE(10) (SPC-4 6.11, 6.12).
func (lu *LU) modeSense(r *request) Result {
	cdb := r.cdb
	ten := cdb[0] == opModeSense10
	dbd := cdb[1]&0x08 != 0
	llbaa := ten && cdb[1]&0x10 != 0
	pc, code, sub := cdb[2]>>6, cdb[2]&0x3f, cdb[3]
	alloc := int(cdb[4])
	if ten {
		alloc = int(be16(cdb[7:9]))
	}
	if pc == pcSaved {
		return checkCondition(SenseIllegalRequest, ascSavingNotSupported, 0)
	}
	// No subpages: only subpage 0, and 0xff with "all pages".
	if sub != 0 && !(sub == 0xff && code == pageAllPages) {
		return invalidCDB(3, -1)
	}
	mp := modeParamsOf(r.state)
	var pages []byte
	if code == pageAllPages {
		// Ascending page code order (SPC-4 6.11.1).
		for _, c := range []byte{pageCaching, pageControl, pageIEC} {
			pages = append(pages, modePage(c, pc, mp)...)
		}
	} else if pages = modePage(code, pc, mp); pages == nil {
		return invalidCDB(2, 5)
	}

	var bd []byte
	if !dbd {
		blocks := uint64(lu.be.Size() / BlockSize)
		if llbaa { // long LBA block descriptor (SPC-4 7.5.5.2... SBC-3 6.4.2)
			bd = make([]byte, 16)
			put64(bd[0:8], blocks)
			put32(bd[12:16], BlockSize)
		} else {
			bd = make([]byte, 8)
			put32(bd[0:4], uint32(min(blocks, 0xffffffff)))
			put32(bd[4:8], BlockSize) // byte 4 (density code) stays 0
		}
	}
	// Device-specific parameter (SBC-3 6.4.1): WP, DPOFUA.
	dsp := byte(0x10)
	if lu.be.ReadOnly() || mp.swp {
		dsp |= 0x80
	}
	var data []byte
	if ten {
		data = make([]byte, 8, 8+len(bd)+len(pages))
		data[3] = dsp
		if llbaa && !dbd {
			data[4] = 0x01 // LONGLBA
		}
		put16(data[6:8], uint16(len(bd)))
	} else {
		data = make([]byte, 4, 4+len(bd)+len(pages))
		data[2] = dsp
		data[3] = byte(len(bd))
	}
	data = append(data, bd...)
	data = append(data, pages...)
	if ten {
		put16(data[0:2], uint16(len(data)-2))
	} else {
		data[0] = byte(len(data) - 1)
	}
	return good(data, alloc)
}

// modeSelect implements MODE SELECT(6) and MODE SELECT(10) (SPC-4 6.9,
// 6.10). The whole parameter list is checked before anything changes;
// a change of a parameter posts MODE PARAMETERS CHANGED to the other I_T
// nexuses (SPC-4 7.5.1).
func (lu *LU) modeSelect(r *request) Result {
	cdb := r.cdb
	ten := cdb[0] == opModeSelect10
	n := int(cdb[4])
	hdrLen := 4
	if ten {
		n = int(be16(cdb[7:9]))
		hdrLen = 8
	}
	res := lu.doModeSelect(r, ten, n, hdrLen)
	res.DataOutLen = n
	return res
}

func (lu *LU) doModeSelect(r *request, ten bool, n, hdrLen int) Result {
	if r.cdb[1]&0x01 != 0 {
		return invalidCDB(1, 0) // SP: parameters cannot be saved
	}
	if n == 0 {
		return Result{Status: StatusGood}
	}
	if n > len(r.cmd.DataOut) || n < hdrLen {
		return paramListLengthError()
	}
	p := r.cmd.DataOut[:n]
	var bdLen int
	if ten {
		bdLen = int(be16(p[6:8]))
		if p[4]&0x01 != 0 && bdLen != 0 && bdLen != 16 || p[4]&0x01 == 0 && bdLen != 0 && bdLen != 8 {
			return invalidParam(6, -1)
		}
	} else {
		bdLen = int(p[3])
		if bdLen != 0 && bdLen != 8 {
			return invalidParam(3, -1)
		}
	}
	mt := 1 // MEDIUM TYPE: byte 1 of the (6) header, byte 2 of the (10)
	if ten {
		mt = 2
	}
	if p[mt] != 0 {
		return invalidParam(mt, -1)
	}
	if hdrLen+bdLen > n {
		return paramListLengthError()
	}
	if res, ok := lu.checkBlockDescriptor(p[hdrLen:hdrLen+bdLen], hdrLen); !ok {
		return res
	}

	cur0 := modeParamsOf(r.state)
	next := cur0
	for off := hdrLen + bdLen; off < n; {
		if n-off < 2 {
			return paramListLengthError()
		}
		if p[off]&0x40 != 0 { // SPF: no subpages
			return invalidParam(off, 6)
		}
		code := p[off] & 0x3f
		cur := modePage(code, pcCurrent, next)
		if cur == nil {
			return invalidParam(off, 5)
		}
		if int(p[off+1]) != len(cur)-2 {
			return invalidParam(off+1, -1)
		}
		if off+len(cur) > n {
			return paramListLengthError()
		}
		page := p[off : off+len(cur)]
		mask := modePage(code, pcChangeable, next)
		for i := 2; i < len(cur); i++ {
			if (page[i]^cur[i])&^mask[i] != 0 {
				return invalidParam(off+i, -1)
			}
		}
		switch code {
		case pageCaching:
			next.wce = page[2]&0x04 != 0
		case pageControl:
			next.swp = page[4]&0x08 != 0
		}
		off += len(cur)
	}
	if next == cur0 {
		return Result{Status: StatusGood}
	}
	if _, err := lu.update(func(s *LUState) error {
		if modeParamsOf(s) == next {
			return nil // changed to the same through another node meanwhile
		}
		next.set(s)
		s.postUAAll(uaModeChanged, func(n NexusID) bool { return n == r.nexus })
		return nil
	}); err != nil {
		return stateError(err)
	}
	if next.swp && !cur0.swp {
		// SWP inhibits writing "after writing all cached or buffered
		// write data" (SPC-4 7.5.8): what was acknowledged is made
		// durable before the command completes.
		if err := lu.be.Flush(); err != nil {
			return backendError(err, true)
		}
	}
	return Result{Status: StatusGood}
}

// checkBlockDescriptor validates a MODE SELECT block descriptor: the block
// size cannot change and neither can the capacity (zero means unchanged).
func (lu *LU) checkBlockDescriptor(bd []byte, off int) (Result, bool) {
	var blocks uint64
	var blen uint32
	switch len(bd) {
	case 0:
		return Result{}, true
	case 8:
		blocks, blen = uint64(be32(bd[0:4])), be24(bd[5:8])
		if blocks == 0xffffffff {
			blocks = 0
		}
	case 16:
		blocks, blen = be64(bd[0:8]), be32(bd[12:16])
	}
	if blen != BlockSize {
		return invalidParam(off+len(bd)-3, -1), false
	}
	if cur := uint64(lu.be.Size() / BlockSize); blocks != 0 && blocks != min(cur, 0xffffffff) && blocks != cur {
		return invalidParam(off, -1), false
	}
	return Result{}, true
}

// writable checks that request r may write the medium: not when the
// backend is read-only (a snapshot), which is DATA PROTECT, WRITE
// PROTECTED, nor when the shared state the command started with has SWP
// set, which is DATA PROTECT, LOGICAL UNIT SOFTWARE WRITE PROTECTED
// (SPC-4 7.5.8).
func (lu *LU) writable(r *request) (Result, bool) {
	switch {
	case lu.be.ReadOnly():
		return writeProtected(), false
	case r.state.Mode.SoftwareWriteProtect:
		return checkCondition(SenseDataProtect, ascWriteProtected, 0x02), false
	}
	return Result{}, true
}

// writeCache reports whether the write cache is enabled (WCE) in the
// shared state the command started with.
func (r *request) writeCache() bool { return !r.state.Mode.WriteCacheDisabled }
