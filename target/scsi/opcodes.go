package scsi

// MAINTENANCE IN service actions: REPORT SUPPORTED OPERATION CODES (SPC-4
// 6.35), REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.37) and REPORT
// TARGET PORT GROUPS (SPC-4 6.36).

// timeoutsDescriptor returns the command timeouts descriptor (SPC-4
// 6.35.4) of c.
func timeoutsDescriptor(c *command) []byte {
	d := make([]byte, 12)
	put16(d[0:2], 0x0a)
	put32(d[4:8], c.timeout)  // NOMINAL COMMAND PROCESSING TIMEOUT
	put32(d[8:12], c.timeout) // RECOMMENDED COMMAND TIMEOUT
	return d
}

// reportOpcodes implements REPORT SUPPORTED OPERATION CODES.
func (lu *LU) reportOpcodes(r *request) Result {
	cdb := r.cdb
	rctd := cdb[2]&0x80 != 0
	options := cdb[2] & 0x07
	alloc := int(be32(cdb[6:10]))
	if alloc < 4 {
		// Not even the header fits; SPC-4 allows an empty answer.
		return Result{Status: StatusGood}
	}
	if options == 0 {
		d := make([]byte, 4)
		for _, c := range lu.cmds.all {
			e := make([]byte, 8)
			e[0] = c.op
			if c.hasSA {
				put16(e[2:4], uint16(c.sa))
				e[5] |= 0x01 // SERVACTV
			}
			if rctd {
				e[5] |= 0x02 // CTDP
			}
			put16(e[6:8], uint16(len(c.usage)))
			d = append(d, e...)
			if rctd {
				d = append(d, timeoutsDescriptor(c)...)
			}
		}
		put32(d[0:4], uint32(len(d)-4))
		return good(d, alloc)
	}

	op, sa := cdb[3], be16(cdb[4:6])
	c, hasSA := lu.cmds.find(op, uint16(sa))
	switch options {
	case 1: // by opcode; invalid for commands with service actions
		if hasSA {
			return invalidCDB(3, -1)
		}
	case 2: // by opcode and service action
		if !hasSA {
			return invalidCDB(3, -1)
		}
	case 3: // by opcode, and service action if it has them
	default:
		return invalidCDB(2, 2)
	}
	d := make([]byte, 4)
	if c == nil {
		d[1] = 0x01 // SUPPORT: not supported
		return good(d, alloc)
	}
	d[1] = 0x03 // SUPPORT: supported as the standard says
	if rctd {
		d[1] |= 0x80 // CTDP
	}
	put16(d[2:4], uint16(len(c.usage)))
	d = append(d, c.usage...)
	if rctd {
		d = append(d, timeoutsDescriptor(c)...)
	}
	return good(d, alloc)
}

// reportTMFs implements REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
func (lu *LU) reportTMFs(r *request) Result {
	alloc := int(be32(r.cdb[6:10]))
	if alloc < 4 {
		return invalidCDB(6, -1)
	}
	d := make([]byte, 4)
	if r.cdb[2]&0x80 != 0 { // REPD: extended format
		d = make([]byte, 16)
		d[3] = 0x0c
	}
	// ATS (abort task), ATSS (abort task set), CTSS (clear task set),
	// LURS (logical unit reset), TRS (target reset).
	d[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x02
	return good(d, alloc)
}

// reportTargetPortGroups implements REPORT TARGET PORT GROUPS with the one
// group of the port the command came through, active/optimized: every node
// exports the logical unit with the same access, under implicit ALUA.
func (lu *LU) reportTargetPortGroups(r *request) Result {
	alloc := int(be32(r.cdb[6:10]))
	if alloc < 4 {
		return invalidCDB(6, -1)
	}
	p := r.cmd.Nexus.Port
	d := make([]byte, 4)
	if r.cdb[1]>>5 == 0x01 { // extended header
		d = append(d, 0x10, 0, 0, 0) // FORMAT TYPE 1, no transition time
	}
	desc := make([]byte, 8, 12)
	desc[0] = 0x80 // PREF set; asymmetric access state 0: active/optimized
	desc[1] = 0x01 // AO_SUP: only active/optimized is ever used
	put16(desc[2:4], p.GroupID)
	desc[7] = 1 // TARGET PORT COUNT
	desc = append(desc, 0, 0, byte(p.RelativeID>>8), byte(p.RelativeID))
	d = append(d, desc...)
	put32(d[0:4], uint32(len(d)-4))
	return good(d, alloc)
}
