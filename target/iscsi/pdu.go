package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcodes (RFC 7143 section 11.1.1). Initiator opcodes are 0x00-0x1f,
// target opcodes 0x20-0x3f.
const (
	opNopOut      = 0x00
	opSCSICmd     = 0x01
	opTaskMgmt    = 0x02
	opLoginReq    = 0x03
	opTextReq     = 0x04
	opDataOut     = 0x05
	opLogoutReq   = 0x06
	opSNACK       = 0x10
	opNopIn       = 0x20
	opSCSIResp    = 0x21
	opTaskMgmtRsp = 0x22
	opLoginResp   = 0x23
	opTextResp    = 0x24
	opDataIn      = 0x25
	opLogoutResp  = 0x26
	opR2T         = 0x31
	opAsyncMsg    = 0x32
	opReject      = 0x3f
)

const (
	bhsLen = 48
	// reservedTag is the "no task" value of Initiator and Target Task Tags.
	reservedTag = 0xffffffff
)

// Flag bits of byte 1.
const (
	flagFinal    = 0x80
	flagRead     = 0x40 // SCSI Command: R; Login: C is 0x40
	flagWrite    = 0x20 // SCSI Command: W
	flagContinue = 0x40 // Login / Text: C
	flagTransit  = 0x80 // Login: T
	flagAck      = 0x40 // Data-In: A
	flagOverflow = 0x04 // Data-In / SCSI Response: O
	flagUnder    = 0x02 // Data-In / SCSI Response: U
	flagStatus   = 0x01 // Data-In: S
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the digest of RFC 7143 section 13.1 (CRC32C, sent little-endian).
func crc32c(b ...[]byte) uint32 {
	var c uint32
	for _, p := range b {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

// PDU is one iSCSI protocol data unit: the 48-byte basic header segment, any
// additional header segments and the data segment (without padding).
//
// Wire layout (RFC 7143 section 11.2), all integers big-endian:
//
//	byte  0     bit 6: I (immediate), bits 0-5: opcode
//	byte  1     F bit (0x80) and opcode-specific flags
//	bytes 2-3   opcode-specific
//	byte  4     TotalAHSLength, in 4-byte words
//	bytes 5-7   DataSegmentLength, in bytes (not counting padding)
//	bytes 8-15  LUN or opcode-specific
//	bytes 16-19 Initiator Task Tag
//	bytes 20-47 opcode-specific (CmdSN, StatSN, ... see the accessors)
//	AHS         TotalAHSLength*4 bytes
//	HeaderDigest  4 bytes CRC32C over BHS+AHS, when negotiated
//	data        DataSegmentLength bytes, padded with zeros to 4 bytes
//	DataDigest  4 bytes CRC32C over data+padding, when negotiated
type PDU struct {
	BHS  [bhsLen]byte
	AHS  []byte
	Data []byte
}

// field is a 4-byte big-endian header field, named by its byte offset in
// the BHS. The opcode-specific part of the BHS (bytes 20-47) holds
// different fields in different PDUs; each name below says which PDUs it
// belongs to and the RFC 7143 section that defines the PDU, so that code
// reads p.get(fieldCmdSN), not p.u32(24).
type field int

const (
	// Initiator Task Tag: every PDU (11.2.1.8).
	fieldITT field = 16

	// Bytes 20-23.
	fieldEDTL       field = 20 // Expected Data Transfer Length: SCSI Command (11.3)
	fieldTTT        field = 20 // Target Transfer Tag: Data-Out/In (11.7), R2T (11.8), Text (11.10, 11.11), NOP-Out/In (11.18, 11.19)
	fieldRefTaskTag field = 20 // Referenced Task Tag: Task Management Request (11.5)

	// Bytes 24-31: sequence numbers.
	fieldCmdSN     field = 24 // CmdSN: initiator requests (SCSI Command 11.3, TMF 11.5, Text 11.10, Login 11.12, Logout 11.14, NOP-Out 11.18)
	fieldStatSN    field = 24 // StatSN: target responses (SCSI Response 11.4, Data-In 11.7, Login 11.13, R2T 11.8 carries the next one)
	fieldExpStatSN field = 28 // ExpStatSN: initiator requests
	fieldExpCmdSN  field = 28 // ExpCmdSN: target responses
	fieldMaxCmdSN  field = 32 // MaxCmdSN: target responses
	fieldRefCmdSN  field = 32 // RefCmdSN: Task Management Request (11.5)

	// Bytes 36-47: data transfer.
	fieldDataSN       field = 36 // DataSN: Data-Out/In (11.7)
	fieldR2TSN        field = 36 // R2TSN: R2T (11.8)
	fieldExpDataSN    field = 36 // ExpDataSN: SCSI Response (11.4)
	fieldBufferOffset field = 40 // Buffer Offset: Data-Out/In (11.7), R2T (11.8)
	fieldDesiredLen   field = 44 // Desired Data Transfer Length: R2T (11.8)
	fieldResidual     field = 44 // Residual Count: SCSI Response (11.4), Data-In with status (11.7)
)

func (p *PDU) Opcode() uint8    { return p.BHS[0] & 0x3f }
func (p *PDU) Immediate() bool  { return p.BHS[0]&0x40 != 0 }
func (p *PDU) Flags() uint8     { return p.BHS[1] }
func (p *PDU) Final() bool      { return p.BHS[1]&flagFinal != 0 }
func (p *PDU) ITT() uint32      { return p.get(fieldITT) }
func (p *PDU) LUNField() uint64 { return binary.BigEndian.Uint64(p.BHS[8:]) }

// get reads a header field; set writes one.
func (p *PDU) get(f field) uint32    { return binary.BigEndian.Uint32(p.BHS[f:]) }
func (p *PDU) set(f field, v uint32) { binary.BigEndian.PutUint32(p.BHS[f:], v) }

// dataLen is the DataSegmentLength field.
func (p *PDU) dataLen() int {
	return int(p.BHS[5])<<16 | int(p.BHS[6])<<8 | int(p.BHS[7])
}

func (p *PDU) setOpcode(op uint8, flags uint8) {
	p.BHS[0] = op
	p.BHS[1] = flags
}

// ErrDigest is returned when a header or data digest does not match.
var ErrDigest = errors.New("iscsi: digest mismatch")

// protoError is a malformed PDU: the connection answers with a Reject (when
// the header could be read) and, for framing errors, closes.
type protoError struct {
	reason byte // Reject reason code (RFC 7143 section 11.17.1)
	msg    string
}

func (e *protoError) Error() string { return "iscsi: " + e.msg }

// Reject reasons.
const (
	rejectDataDigest     = 0x02
	rejectSNACK          = 0x03
	rejectProtocolError  = 0x04
	rejectNotSupported   = 0x05
	rejectImmCmd         = 0x06
	rejectTaskInProgress = 0x07
	rejectInvalidDataAck = 0x08
	rejectInvalidField   = 0x09
	rejectLongOp         = 0x0a
	rejectWaitingLogout  = 0x0c
)

// pduReader reads PDUs from a connection. It is not safe for concurrent use:
// each connection has one reader goroutine.
type pduReader struct {
	r            io.Reader
	headerDigest bool
	dataDigest   bool
	// maxData bounds DataSegmentLength: our MaxRecvDataSegmentLength
	// (or the login limit during login).
	maxData int
	pad     [4]byte
}

// readHeader reads a BHS, its AHS and header digest. The data segment is
// left for readData so the caller can pick the buffer it lands in.
func (pr *pduReader) readHeader(p *PDU) error {
	if _, err := io.ReadFull(pr.r, p.BHS[:]); err != nil {
		return err
	}
	p.AHS = nil
	p.Data = nil
	if n := int(p.BHS[4]) * 4; n > 0 {
		p.AHS = make([]byte, n)
		if _, err := io.ReadFull(pr.r, p.AHS); err != nil {
			return err
		}
	}
	if pr.headerDigest {
		var d [4]byte
		if _, err := io.ReadFull(pr.r, d[:]); err != nil {
			return err
		}
		if binary.LittleEndian.Uint32(d[:]) != crc32c(p.BHS[:], p.AHS) {
			return fmt.Errorf("%w in header (opcode %#x)", ErrDigest, p.Opcode())
		}
	}
	if n := p.dataLen(); n > pr.maxData {
		return &protoError{rejectProtocolError, fmt.Sprintf("data segment of %d bytes exceeds MaxRecvDataSegmentLength %d", n, pr.maxData)}
	}
	return nil
}

// readData reads the data segment announced by p's header into buf (which
// must be exactly dataLen long, or nil to allocate), then padding and digest.
// A data digest error is returned after the whole segment is consumed, so
// the stream stays in sync and the caller may Reject and continue.
func (pr *pduReader) readData(p *PDU, buf []byte) error {
	n := p.dataLen()
	if n == 0 {
		p.Data = nil
		return nil
	}
	if buf == nil {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(pr.r, buf); err != nil {
		return err
	}
	pad := (4 - n%4) % 4
	if pad > 0 {
		if _, err := io.ReadFull(pr.r, pr.pad[:pad]); err != nil {
			return err
		}
	}
	p.Data = buf
	if pr.dataDigest {
		var d [4]byte
		if _, err := io.ReadFull(pr.r, d[:]); err != nil {
			return err
		}
		if binary.LittleEndian.Uint32(d[:]) != crc32c(buf, pr.pad[:pad]) {
			return fmt.Errorf("%w in data segment (opcode %#x)", ErrDigest, p.Opcode())
		}
	}
	return nil
}

// readPDU reads a whole PDU with a freshly allocated data segment.
func (pr *pduReader) readPDU(p *PDU) error {
	if err := pr.readHeader(p); err != nil {
		return err
	}
	return pr.readData(p, nil)
}

var zeroPad [4]byte

// encodeHeader fills the length fields and appends the BHS, AHS and header
// digest of p to dst.
func encodeHeader(dst []byte, p *PDU, headerDigest bool) []byte {
	p.BHS[4] = byte(len(p.AHS) / 4)
	n := len(p.Data)
	p.BHS[5], p.BHS[6], p.BHS[7] = byte(n>>16), byte(n>>8), byte(n)
	start := len(dst)
	dst = append(dst, p.BHS[:]...)
	dst = append(dst, p.AHS...)
	if headerDigest {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(dst[start:]))
	}
	return dst
}

// dataTrailer returns the padding and data digest that follow p.Data.
func dataTrailer(dst []byte, data []byte, dataDigest bool) []byte {
	pad := (4 - len(data)%4) % 4
	dst = append(dst, zeroPad[:pad]...)
	if dataDigest && len(data) > 0 {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(data, zeroPad[:pad]))
	}
	return dst
}

// marshal returns the whole wire form of p (used by tests and small PDUs).
func (p *PDU) marshal(headerDigest, dataDigest bool) []byte {
	b := encodeHeader(nil, p, headerDigest)
	b = append(b, p.Data...)
	return dataTrailer(b, p.Data, dataDigest)
}
