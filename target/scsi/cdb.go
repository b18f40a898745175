package scsi

import "encoding/binary"

// Operation codes (SPC-4 Annex E, SBC-3 5.1).
const (
	opTestUnitReady     = 0x00
	opRequestSense      = 0x03
	opRead6             = 0x08
	opWrite6            = 0x0a
	opInquiry           = 0x12
	opModeSelect6       = 0x15
	opReserve6          = 0x16
	opRelease6          = 0x17
	opModeSense6        = 0x1a
	opStartStopUnit     = 0x1b
	opPreventAllow      = 0x1e
	opReadCapacity10    = 0x25
	opRead10            = 0x28
	opWrite10           = 0x2a
	opWriteVerify10     = 0x2e
	opVerify10          = 0x2f
	opPreFetch10        = 0x34
	opSyncCache10       = 0x35
	opReadDefectData10  = 0x37
	opWriteSame10       = 0x41
	opUnmap             = 0x42
	opModeSelect10      = 0x55
	opReserve10         = 0x56
	opRelease10         = 0x57
	opModeSense10       = 0x5a
	opPRIn              = 0x5e
	opPROut             = 0x5f
	opRead16            = 0x88
	opCompareAndWrite   = 0x89
	opWrite16           = 0x8a
	opOrWrite16         = 0x8b
	opWriteVerify16     = 0x8e
	opVerify16          = 0x8f
	opPreFetch16        = 0x90
	opSyncCache16       = 0x91
	opWriteSame16       = 0x93
	opWriteAtomic16     = 0x9c
	opServiceActionIn16 = 0x9e
	opReportLUNs        = 0xa0
	opMaintenanceIn     = 0xa3
	opRead12            = 0xa8
	opWrite12           = 0xaa
	opWriteVerify12     = 0xae
	opVerify12          = 0xaf
	opReadDefectData12  = 0xb7
)

// Service actions.
const (
	saReadCapacity16 = 0x10 // SERVICE ACTION IN(16)
	saGetLBAStatus   = 0x12 // SERVICE ACTION IN(16)
	saReportTPGs     = 0x0a // MAINTENANCE IN
	saReportOpcodes  = 0x0c // MAINTENANCE IN
	saReportTMFs     = 0x0d // MAINTENANCE IN
)

// cdbLen returns the CDB length implied by the opcode's group code
// (SPC-4 4.2.5.1), or 0 for reserved or vendor specific groups.
func cdbLen(op byte) int {
	switch op >> 5 {
	case 0:
		return 6
	case 1, 2:
		return 10
	case 4:
		return 16
	case 5:
		return 12
	}
	return 0
}

func be16(b []byte) uint32 { return uint32(binary.BigEndian.Uint16(b)) }
func be24(b []byte) uint32 { return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

func put16(b []byte, v uint16) { binary.BigEndian.PutUint16(b, v) }
func put32(b []byte, v uint32) { binary.BigEndian.PutUint32(b, v) }
func put64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }

// blockRange is the LBA, block count and flag byte of a medium access CDB.
type blockRange struct {
	lba    uint64
	blocks uint32
	// flags is CDB byte 1 (RDPROTECT/WRPROTECT, DPO, FUA, ...); zero for
	// the 6-byte CDBs, which have none.
	flags byte
}

// parseBlockRange decodes the LBA and TRANSFER LENGTH of READ/WRITE/VERIFY
// and friends in their 6, 10, 12 and 16 byte forms (SBC-3 5.x). ok is false
// when the CDB is too short for its opcode.
func parseBlockRange(cdb []byte) (r blockRange, ok bool) {
	n := cdbLen(cdb[0])
	if n == 0 || len(cdb) < n {
		return r, false
	}
	switch n {
	case 6:
		r.lba = uint64(be24(cdb[1:4]) & 0x1fffff)
		r.blocks = uint32(cdb[4])
	case 10:
		r.flags = cdb[1]
		r.lba = uint64(be32(cdb[2:6]))
		r.blocks = be16(cdb[7:9])
	case 12:
		r.flags = cdb[1]
		r.lba = uint64(be32(cdb[2:6]))
		r.blocks = be32(cdb[6:10])
	case 16:
		r.flags = cdb[1]
		r.lba = be64(cdb[2:10])
		r.blocks = be32(cdb[10:14])
	}
	return r, true
}

// padASCII returns s cut or padded with spaces to n bytes, with bytes outside
// printable ASCII replaced, as INQUIRY text fields require (SPC-4 4.4.1).
func padASCII(s string, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		c := byte(' ')
		if i < len(s) {
			c = s[i]
			if c < 0x20 || c > 0x7e {
				c = '_'
			}
		}
		b[i] = c
	}
	return b
}
