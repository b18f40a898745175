package scsi

// READ DEFECT DATA(10) and (12) (SBC-3). A csnap logical unit is
// virtual: it has neither a primary (PLIST) nor a grown (GLIST) defect
// list entry, so the answer is always the header of an empty list.

// Request bits and the DEFECT LIST FORMAT field (SBC-3 address formats:
// 000b short block, 001b/010b extended, 011b long block, 100b bytes from
// index, 101b physical sector, 110b vendor specific, 111b reserved).
const (
	defectReqPList       = 0x10 // REQ_PLIST (in the header: PLISTV)
	defectReqGList       = 0x08 // REQ_GLIST (in the header: GLISTV)
	defectFormatMask     = 0x07
	defectFormatReserved = 0x07
)

// defectHeaderFlags returns byte 1 of the defect list header: PLISTV and
// GLISTV echo what was requested (the lists requested are returned, both
// empty), and the DEFECT LIST FORMAT is the requested one, which an empty
// list satisfies in any format. ok is false for the reserved format.
func defectHeaderFlags(req byte) (flags byte, ok bool) {
	format := req & defectFormatMask
	if format == defectFormatReserved {
		return 0, false
	}
	return req&(defectReqPList|defectReqGList) | format, true
}

// readDefectData10 implements READ DEFECT DATA(10): REQ_PLIST, REQ_GLIST
// and the format in CDB byte 2, the allocation length in bytes 7-8, and a
// 4-byte header (the DEFECT LIST LENGTH is 16 bits).
func (lu *LU) readDefectData10(r *request) Result {
	flags, ok := defectHeaderFlags(r.cdb[2])
	if !ok {
		return invalidCDB(2, 2)
	}
	alloc := int(be16(r.cdb[7:9]))
	d := make([]byte, 4)
	d[1] = flags // DEFECT LIST LENGTH (bytes 2-3) stays 0
	return good(d, alloc)
}

// readDefectData12 implements READ DEFECT DATA(12): REQ_PLIST, REQ_GLIST
// and the format in CDB byte 1, the ADDRESS DESCRIPTOR INDEX in bytes 2-5,
// the allocation length in bytes 6-9, and an 8-byte header with a 32-bit
// DEFECT LIST LENGTH. Any descriptor index is past the end of an empty
// list, which yields the header alone; the GENERATION CODE
// is 0, "not supported", as the list never changes.
func (lu *LU) readDefectData12(r *request) Result {
	flags, ok := defectHeaderFlags(r.cdb[1])
	if !ok {
		return invalidCDB(1, 2)
	}
	alloc := int(be32(r.cdb[6:10]))
	d := make([]byte, 8)
	d[1] = flags
	return good(d, alloc)
}
