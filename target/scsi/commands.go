package scsi

import "slices"

// conflictRule says how a command fares from an I_T nexus that does not hold
// the persistent reservation of the logical unit (SPC-4 5.12.3 table 66, SBC-3
// 4.17 table 13).
type conflictRule uint8

const (
	// prAllowed: allowed under every reservation type.
	prAllowed conflictRule = iota
	// prReadOnly: allowed under the write exclusive types, conflicts under
	// the exclusive access types (commands that only read).
	prReadOnly
	// prConflict: conflicts under every type (commands that change the
	// medium or the logical unit's state).
	prConflict
)

// command describes one supported command: how to run it, how it is
// reported by REPORT SUPPORTED OPERATION CODES, and how it interacts with
// reservations and unit attentions. The set of commands lives in one table
// (commandTable) so that dispatch and reporting cannot disagree.
type command struct {
	op    byte
	sa    byte // service action, when hasSA
	hasSA bool
	name  string
	run   func(lu *LU, r *request) Result
	// usage is the CDB USAGE DATA (SPC-4 6.35.3): the bits the command
	// evaluates, with usage[0] the opcode (and the service action in its
	// field). Its length is the CDB length.
	usage []byte
	// conflict is the persistent reservation rule; ruleFor, when set,
	// refines it from the CDB (START STOP UNIT, PREVENT ALLOW ...).
	conflict conflictRule
	ruleFor  func(cdb []byte) conflictRule
	// spc2OK marks the commands allowed from other I_T nexuses while an
	// SPC-2 RESERVE is held (SPC-2 5.5.1).
	spc2OK bool
	// keepUA marks the commands that neither report nor clear a pending
	// unit attention: INQUIRY, REPORT LUNS, REQUEST SENSE (SAM-5 5.14,
	// SPC-4 5.8.7).
	keepUA bool
	// timeout is the recommended command timeout in seconds, for the
	// command timeouts descriptor (RCTD).
	timeout uint32
}

func (c *command) rule(cdb []byte) conflictRule {
	if c.ruleFor != nil {
		return c.ruleFor(cdb)
	}
	return c.conflict
}

// usage10, usage12 and usage16 are the CDB usage data of the medium access
// commands: flags byte, LBA, length, group number. The control byte mask
// 0x04 is NACA, which is evaluated (and refused: ACA is not supported).
func usage10(op, flags byte) []byte {
	return []byte{op, flags, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04}
}

func usage12(op, flags byte) []byte {
	return []byte{op, flags, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04}
}

func usage16(op, flags byte) []byte {
	return []byte{op, flags, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0x1f, 0x04}
}

// commandTable returns the commands a csnap logical unit supports.
func commandTable() []*command {
	const (
		ioTimeout    = 30
		shortTimeout = 5
		longTimeout  = 120
		// sanitizeTimeout: a whole-medium overwrite.
		sanitizeTimeout = 3600
	)
	rw := func(op byte, name string, run func(*LU, *request) Result, flags byte, rule conflictRule) *command {
		c := &command{op: op, name: name, run: run, conflict: rule, timeout: ioTimeout}
		switch cdbLen(op) {
		case 6:
			c.usage = []byte{op, 0x1f, 0xff, 0xff, 0xff, 0x04}
		case 10:
			c.usage = usage10(op, flags)
		case 12:
			c.usage = usage12(op, flags)
		case 16:
			c.usage = usage16(op, flags)
		}
		return c
	}
	return []*command{
		{op: opTestUnitReady, name: "TEST UNIT READY", run: (*LU).testUnitReady,
			usage: []byte{opTestUnitReady, 0, 0, 0, 0, 0x04}, timeout: shortTimeout},
		{op: opRequestSense, name: "REQUEST SENSE", run: (*LU).requestSense, keepUA: true, spc2OK: true,
			usage: []byte{opRequestSense, 0x01, 0, 0, 0xff, 0x04}, timeout: shortTimeout},
		rw(opRead6, "READ(6)", (*LU).read, 0, prReadOnly),
		rw(opWrite6, "WRITE(6)", (*LU).write, 0, prConflict),
		{op: opInquiry, name: "INQUIRY", run: (*LU).inquiry, keepUA: true, spc2OK: true,
			usage: []byte{opInquiry, 0x01, 0xff, 0xff, 0xff, 0x04}, timeout: shortTimeout},
		{op: opModeSelect6, name: "MODE SELECT(6)", run: (*LU).modeSelect, conflict: prConflict,
			usage: []byte{opModeSelect6, 0x11, 0, 0, 0xff, 0x04}, timeout: shortTimeout},
		{op: opReserve6, name: "RESERVE(6)", run: (*LU).reserve,
			usage: []byte{opReserve6, 0, 0, 0, 0, 0x04}, timeout: shortTimeout},
		{op: opRelease6, name: "RELEASE(6)", run: (*LU).release, spc2OK: true,
			usage: []byte{opRelease6, 0, 0, 0, 0, 0x04}, timeout: shortTimeout},
		{op: opModeSense6, name: "MODE SENSE(6)", run: (*LU).modeSense, conflict: prReadOnly,
			usage: []byte{opModeSense6, 0x08, 0xff, 0xff, 0xff, 0x04}, timeout: shortTimeout},
		{op: opStartStopUnit, name: "START STOP UNIT", run: (*LU).startStopUnit, ruleFor: startStopRule,
			usage: []byte{opStartStopUnit, 0x01, 0, 0x0f, 0xf7, 0x04}, timeout: longTimeout},
		{op: opPreventAllow, name: "PREVENT ALLOW MEDIUM REMOVAL", run: (*LU).preventAllow, ruleFor: preventRule,
			usage: []byte{opPreventAllow, 0, 0, 0, 0x03, 0x04}, timeout: shortTimeout},
		{op: opReadCapacity10, name: "READ CAPACITY(10)", run: (*LU).readCapacity10,
			usage: []byte{opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0x04}, timeout: shortTimeout},
		rw(opRead10, "READ(10)", (*LU).read, 0x18, prReadOnly),
		rw(opWrite10, "WRITE(10)", (*LU).write, 0x18, prConflict),
		rw(opWriteVerify10, "WRITE AND VERIFY(10)", (*LU).writeVerify, 0x12, prConflict),
		rw(opVerify10, "VERIFY(10)", (*LU).verify, 0x16, prReadOnly),
		rw(opPreFetch10, "PRE-FETCH(10)", (*LU).preFetch, 0x02, prReadOnly),
		rw(opSyncCache10, "SYNCHRONIZE CACHE(10)", (*LU).syncCache, 0x02, prConflict),
		{op: opReadDefectData10, name: "READ DEFECT DATA(10)", run: (*LU).readDefectData10, conflict: prReadOnly,
			usage: []byte{opReadDefectData10, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0x04}, timeout: shortTimeout},
		rw(opWriteSame10, "WRITE SAME(10)", (*LU).writeSame, 0x18, prConflict),
		{op: opUnmap, name: "UNMAP", run: (*LU).unmap, conflict: prConflict,
			usage: []byte{opUnmap, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x04}, timeout: longTimeout},
		{op: opModeSelect10, name: "MODE SELECT(10)", run: (*LU).modeSelect, conflict: prConflict,
			usage: []byte{opModeSelect10, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04}, timeout: shortTimeout},
		{op: opReserve10, name: "RESERVE(10)", run: (*LU).reserve,
			usage: []byte{opReserve10, 0, 0, 0, 0, 0, 0, 0, 0, 0x04}, timeout: shortTimeout},
		{op: opRelease10, name: "RELEASE(10)", run: (*LU).release, spc2OK: true,
			usage: []byte{opRelease10, 0, 0, 0, 0, 0, 0, 0, 0, 0x04}, timeout: shortTimeout},
		{op: opModeSense10, name: "MODE SENSE(10)", run: (*LU).modeSense, conflict: prReadOnly,
			usage: []byte{opModeSense10, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x04}, timeout: shortTimeout},
		{op: opPRIn, name: "PERSISTENT RESERVE IN", run: (*LU).persistentReserveIn,
			usage: []byte{opPRIn, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04}, timeout: shortTimeout},
		{op: opPROut, name: "PERSISTENT RESERVE OUT", run: (*LU).persistentReserveOut,
			usage: []byte{opPROut, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04}, timeout: shortTimeout},
		rw(opRead16, "READ(16)", (*LU).read, 0x18, prReadOnly),
		{op: opCompareAndWrite, name: "COMPARE AND WRITE", run: (*LU).compareAndWrite, conflict: prConflict,
			usage: []byte{opCompareAndWrite, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
				0, 0, 0, 0xff, 0x1f, 0x04}, timeout: ioTimeout},
		rw(opWrite16, "WRITE(16)", (*LU).write, 0x18, prConflict),
		rw(opOrWrite16, "ORWRITE(16)", (*LU).orWrite, 0x18, prConflict),
		rw(opWriteVerify16, "WRITE AND VERIFY(16)", (*LU).writeVerify, 0x12, prConflict),
		rw(opVerify16, "VERIFY(16)", (*LU).verify, 0x16, prReadOnly),
		{op: opPreFetch16, name: "PRE-FETCH(16)", run: (*LU).preFetch, conflict: prReadOnly,
			usage: usage16pf(opPreFetch16), timeout: ioTimeout},
		{op: opSyncCache16, name: "SYNCHRONIZE CACHE(16)", run: (*LU).syncCache, conflict: prConflict,
			usage: usage16pf(opSyncCache16), timeout: ioTimeout},
		rw(opWriteSame16, "WRITE SAME(16)", (*LU).writeSame, 0x19, prConflict),
		// WRITE ATOMIC(16): ATOMIC BOUNDARY (bytes 10-11) is not
		// supported, only checked to be zero, so its usage bits are clear.
		{op: opWriteAtomic16, name: "WRITE ATOMIC(16)", run: (*LU).writeAtomic, conflict: prConflict,
			usage: []byte{opWriteAtomic16, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
				0, 0, 0xff, 0xff, 0x1f, 0x04}, timeout: ioTimeout},
		{op: opSanitize, sa: saSanitizeOverwrite, hasSA: true, name: "SANITIZE(OVERWRITE)",
			run: (*LU).sanitizeCmd, conflict: prConflict, timeout: sanitizeTimeout,
			usage: []byte{opSanitize, 0xa0 | saSanitizeOverwrite, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04}},
		{op: opSanitize, sa: saSanitizeBlockErase, hasSA: true, name: "SANITIZE(BLOCK ERASE)",
			run: (*LU).sanitizeCmd, conflict: prConflict, timeout: sanitizeTimeout,
			usage: []byte{opSanitize, 0xa0 | saSanitizeBlockErase, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04}},
		{op: opSanitize, sa: saSanitizeExitFail, hasSA: true, name: "SANITIZE(EXIT FAILURE MODE)",
			run: (*LU).sanitizeCmd, conflict: prConflict, timeout: shortTimeout,
			usage: []byte{opSanitize, 0xa0 | saSanitizeExitFail, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04}},
		{op: opExtendedCopy, sa: saExtendedCopyLID1, hasSA: true, name: "EXTENDED COPY(LID1)",
			run: (*LU).extendedCopy, conflict: prConflict, timeout: longTimeout,
			usage: []byte{opExtendedCopy, saExtendedCopyLID1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}},
		{op: opReceiveCopyResults, sa: saCopyStatus, hasSA: true, name: "RECEIVE COPY RESULTS(COPY STATUS)",
			run: (*LU).receiveCopyResults, conflict: prReadOnly, timeout: shortTimeout,
			usage: []byte{opReceiveCopyResults, saCopyStatus, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}},
		{op: opReceiveCopyResults, sa: saOperatingParams, hasSA: true, name: "RECEIVE COPY RESULTS(OPERATING PARAMETERS)",
			run: (*LU).receiveCopyResults, conflict: prReadOnly, timeout: shortTimeout,
			usage: []byte{opReceiveCopyResults, saOperatingParams, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}},
		{op: opServiceActionIn16, sa: saReadCapacity16, hasSA: true, name: "READ CAPACITY(16)",
			run: (*LU).readCapacity16, timeout: shortTimeout,
			usage: []byte{opServiceActionIn16, saReadCapacity16, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}},
		{op: opServiceActionIn16, sa: saGetLBAStatus, hasSA: true, name: "GET LBA STATUS",
			run: (*LU).getLBAStatus, conflict: prReadOnly, timeout: ioTimeout,
			usage: []byte{opServiceActionIn16, saGetLBAStatus, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04}},
		{op: opReportLUNs, name: "REPORT LUNS", run: (*LU).reportLUNs, keepUA: true, spc2OK: true,
			usage: []byte{opReportLUNs, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}, timeout: shortTimeout},
		{op: opMaintenanceIn, sa: saReportTPGs, hasSA: true, name: "REPORT TARGET PORT GROUPS",
			run: (*LU).reportTargetPortGroups, spc2OK: true, timeout: shortTimeout,
			usage: []byte{opMaintenanceIn, 0xe0 | saReportTPGs, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}},
		{op: opMaintenanceIn, sa: saReportOpcodes, hasSA: true, name: "REPORT SUPPORTED OPERATION CODES",
			run: (*LU).reportOpcodes, spc2OK: true, timeout: shortTimeout,
			usage: []byte{opMaintenanceIn, saReportOpcodes, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04}},
		{op: opMaintenanceIn, sa: saReportTMFs, hasSA: true, name: "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
			run: (*LU).reportTMFs, spc2OK: true, timeout: shortTimeout,
			usage: []byte{opMaintenanceIn, saReportTMFs, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}},
		rw(opRead12, "READ(12)", (*LU).read, 0x18, prReadOnly),
		rw(opWrite12, "WRITE(12)", (*LU).write, 0x18, prConflict),
		rw(opWriteVerify12, "WRITE AND VERIFY(12)", (*LU).writeVerify, 0x12, prConflict),
		rw(opVerify12, "VERIFY(12)", (*LU).verify, 0x16, prReadOnly),
		{op: opReadDefectData12, name: "READ DEFECT DATA(12)", run: (*LU).readDefectData12, conflict: prReadOnly,
			usage:   []byte{opReadDefectData12, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04},
			timeout: shortTimeout},
	}
}

// usage16pf is the usage of PRE-FETCH(16) and SYNCHRONIZE CACHE(16), whose
// group number and length sit after a 4-byte block count.
func usage16pf(op byte) []byte {
	return []byte{op, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0x1f, 0x04}
}

// startStopRule: START STOP UNIT with START=1 and POWER CONDITION=0 only
// makes the unit ready and is allowed; anything else conflicts (SBC-3
// table 13).
func startStopRule(cdb []byte) conflictRule {
	if cdb[4]&0x01 != 0 && cdb[4]>>4 == 0 {
		return prAllowed
	}
	return prConflict
}

// preventRule: PREVENT ALLOW MEDIUM REMOVAL with PREVENT=0 is allowed,
// otherwise it conflicts (SPC-4 table 66).
func preventRule(cdb []byte) conflictRule {
	if cdb[4]&0x03 == 0 {
		return prAllowed
	}
	return prConflict
}

// commandSet indexes the command table for dispatch.
type commandSet struct {
	all   []*command
	byOp  [256]*command       // commands without a service action
	bySA  map[uint16]*command // op<<8 | sa
	hasSA [256]bool
}

// newCommandSetFor returns the commands a logical unit over b supports:
// SANITIZE BLOCK ERASE only when b reports deallocated blocks (GET LBA
// STATUS is how an initiator sees a block erase done).
func newCommandSetFor(b Backend) *commandSet {
	all := commandTable()
	if _, ok := b.(LBAStatusBackend); !ok {
		all = slices.DeleteFunc(all, func(c *command) bool { return c.op == opSanitize && c.sa == saSanitizeBlockErase })
	}
	return newCommandSetOf(all)
}

func newCommandSetOf(all []*command) *commandSet {
	cs := &commandSet{all: all, bySA: make(map[uint16]*command)}
	for _, c := range cs.all {
		if c.hasSA {
			cs.hasSA[c.op] = true
			cs.bySA[uint16(c.op)<<8|uint16(c.sa)] = c
		} else {
			cs.byOp[c.op] = c
		}
	}
	return cs
}

// lookup returns the command a CDB invokes, or nil.
func (cs *commandSet) lookup(cdb []byte) *command {
	op := cdb[0]
	if cs.hasSA[op] {
		return cs.bySA[uint16(op)<<8|uint16(cdb[1]&0x1f)]
	}
	return cs.byOp[op]
}

// find returns the command with opcode op and, if it has service actions,
// service action sa; hasSA reports whether op has service actions at all.
func (cs *commandSet) find(op byte, sa uint16) (c *command, hasSA bool) {
	if cs.hasSA[op] {
		if sa > 0x1f {
			return nil, true
		}
		return cs.bySA[uint16(op)<<8|sa], true
	}
	return cs.byOp[op], false
}
