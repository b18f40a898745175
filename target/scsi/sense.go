package scsi

import (
	"encoding/binary"
	"errors"
)

// Additional sense codes (ASC, ASCQ pairs) this package reports. SPC-4
// Annex D lists them all.
const (
	ascNoAdditional          = 0x00
	ascWriteError            = 0x0c
	ascUnrecoveredReadError  = 0x11
	ascMiscompare            = 0x1d // ASCQ 0: MISCOMPARE DURING VERIFY OPERATION
	ascParamListLength       = 0x1a
	ascInvalidOpcode         = 0x20
	ascLBAOutOfRange         = 0x21
	ascInvalidFieldInCDB     = 0x24
	ascLUNotSupported        = 0x25
	ascInvalidFieldInParam   = 0x26 // ASCQ 0; ASCQ 2: PARAMETER VALUE INVALID
	ascWriteProtected        = 0x27
	ascPowerOnReset          = 0x29
	ascParametersChanged     = 0x2a
	ascSavingNotSupported    = 0x39
	ascReportedLUNsChanged   = 0x3f
	ascCommandSequenceError  = 0x2c
	ascInsufficientResources = 0x55
)

// Sense data sizes: fixed format with the sense-key specific bytes, and
// the additional sense length field value that goes with it.
const (
	fixedSenseLen     = 18
	fixedSenseAddlLen = fixedSenseLen - 8
)

// senseData is the content of one CHECK CONDITION, before it is encoded.
type senseData struct {
	key, asc, ascq byte
	// info is the INFORMATION field (e.g. the miscompare offset); infoValid
	// sets the VALID bit.
	info      uint32
	infoValid bool
	// sks is the 3-byte sense-key specific field; sksValid sets SKSV.
	sks      [3]byte
	sksValid bool
}

// encode returns the fixed-format sense data (SPC-4 4.5.3).
func (s senseData) encode() []byte {
	b := make([]byte, fixedSenseLen)
	b[0] = 0x70 // current error, fixed format
	if s.infoValid {
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[3:7], s.info)
	}
	b[2] = s.key & 0x0f
	b[7] = fixedSenseAddlLen
	b[12] = s.asc
	b[13] = s.ascq
	if s.sksValid {
		b[15] = 0x80 | s.sks[0]
		b[16] = s.sks[1]
		b[17] = s.sks[2]
	}
	return b
}

// result is the CHECK CONDITION result carrying s.
func (s senseData) result() Result {
	return Result{Status: StatusCheckCondition, Sense: s.encode()}
}

// checkCondition is the CHECK CONDITION result for key/asc/ascq with no
// further fields.
func checkCondition(key, asc, ascq byte) Result {
	return senseData{key: key, asc: asc, ascq: ascq}.result()
}

// fieldPointer builds the sense-key specific field of an ILLEGAL REQUEST
// (SPC-4 4.5.2.4.2): inCDB selects C/D, byteIdx the byte, bit the bit
// (bit < 0: no bit pointer).
func fieldPointer(inCDB bool, byteIdx int, bit int) [3]byte {
	var f [3]byte
	if inCDB {
		f[0] |= 0x40
	}
	if bit >= 0 {
		f[0] |= 0x08 | byte(bit&7)
	}
	binary.BigEndian.PutUint16(f[1:], uint16(byteIdx))
	return f
}

// invalidCDB reports INVALID FIELD IN CDB pointing at byteIdx/bit.
func invalidCDB(byteIdx, bit int) Result {
	return senseData{key: SenseIllegalRequest, asc: ascInvalidFieldInCDB,
		sks: fieldPointer(true, byteIdx, bit), sksValid: true}.result()
}

// invalidParam reports INVALID FIELD IN PARAMETER LIST pointing at the
// parameter data byte byteIdx/bit.
func invalidParam(byteIdx, bit int) Result {
	return senseData{key: SenseIllegalRequest, asc: ascInvalidFieldInParam,
		sks: fieldPointer(false, byteIdx, bit), sksValid: true}.result()
}

// paramListLengthError reports PARAMETER LIST LENGTH ERROR.
func paramListLengthError() Result {
	return checkCondition(SenseIllegalRequest, ascParamListLength, 0)
}

func invalidOpcode() Result {
	return senseData{key: SenseIllegalRequest, asc: ascInvalidOpcode,
		sks: fieldPointer(true, 0, -1), sksValid: true}.result()
}

// invalidServiceAction reports an unsupported service action of a command
// with a service action field in CDB byte 1 (e.g. MAINTENANCE IN). SPC-4
// lets a device server answer INVALID FIELD IN CDB here; pointing at byte 1
// tells initiators (libiscsi among them) that the service action, not some
// other field, is unsupported.
func invalidServiceAction() Result {
	return invalidCDB(1, 4)
}

func lbaOutOfRange() Result {
	return checkCondition(SenseIllegalRequest, ascLBAOutOfRange, 0)
}

func writeProtected() Result {
	return checkCondition(SenseDataProtect, ascWriteProtected, 0)
}

func luNotSupported() Result {
	return checkCondition(SenseIllegalRequest, ascLUNotSupported, 0)
}

// miscompare reports MISCOMPARE DURING VERIFY OPERATION with the offset of
// the first differing byte in INFORMATION (SBC-3 5.3, 5.22).
func miscompare(offset int) Result {
	return senseData{key: SenseMiscompare, asc: ascMiscompare,
		info: uint32(offset), infoValid: true}.result()
}

// reservationConflict is the RESERVATION CONFLICT status (no sense data).
func reservationConflict() Result {
	return Result{Status: StatusReservationConflict}
}

// backendError turns an error from a Backend into a result: a *SenseError
// passes through unchanged, anything else is a MEDIUM ERROR (UNRECOVERED
// READ ERROR on reads, WRITE ERROR on writes).
func backendError(err error, write bool) Result {
	var r Result
	var se *SenseError
	switch {
	case errors.As(err, &se):
		r = checkCondition(se.Key, se.ASC, se.ASCQ)
	case write:
		r = checkCondition(SenseMediumError, ascWriteError, 0)
	default:
		r = checkCondition(SenseMediumError, ascUnrecoveredReadError, 0)
	}
	r.Err = err
	return r
}

// good is the GOOD result with data-in data cut to the allocation length.
func good(data []byte, allocLen int) Result {
	if len(data) > allocLen {
		data = data[:allocLen]
	}
	return Result{Status: StatusGood, Data: data}
}
