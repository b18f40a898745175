package scsi

// INQUIRY (SPC-4 6.6) and the vital product data pages (SPC-4 7.8, SBC-3
// 6.5).

const (
	vendorID        = "CSNAP"
	productRevision = "0001"
)

// VPD page codes.
const (
	vpdSupported      = 0x00
	vpdSerial         = 0x80
	vpdDeviceID       = 0x83
	vpdBlockLimits    = 0xb0
	vpdBlockDevChars  = 0xb1
	vpdLBProvisioning = 0xb2
	vpdThirdPartyCopy = 0x8f
)

// Version descriptors (SPC-4 table 146): SAM-5, iSCSI (no version claimed),
// SPC-4, SBC-3. Initiators (and libiscsi's tests) look for SBC-3 here.
const (
	versionSAM5  = 0x00a0
	versionISCSI = 0x0960
	versionSPC4  = 0x0460
	versionSBC3  = 0x04c0
)

func (lu *LU) inquiry(r *request) Result {
	cdb := r.cdb
	alloc := int(be16(cdb[3:5]))
	if cdb[1]&0x02 != 0 {
		return invalidCDB(1, 1) // CmdDt (obsolete) is not supported
	}
	if cdb[1]&0x01 == 0 {
		if cdb[2] != 0 {
			return invalidCDB(2, -1)
		}
		return good(lu.standardInquiry(), alloc)
	}
	var page []byte
	switch cdb[2] {
	case vpdSupported:
		page = []byte{0, vpdSupported, 0, 7,
			vpdSupported, vpdSerial, vpdDeviceID, vpdThirdPartyCopy, vpdBlockLimits, vpdBlockDevChars, vpdLBProvisioning}
	case vpdSerial:
		s := padASCII(lu.be.Identity().Serial, len(lu.be.Identity().Serial))
		page = append([]byte{0, vpdSerial, 0, byte(len(s))}, s...)
	case vpdDeviceID:
		page = lu.deviceIdentification(r.cmd.Nexus.Port)
	case vpdThirdPartyCopy:
		page = thirdPartyCopyPage()
	case vpdBlockLimits:
		page = lu.blockLimitsPage()
	case vpdBlockDevChars:
		page = make([]byte, 64)
		page[1], page[3] = vpdBlockDevChars, 0x3c
		put16(page[4:6], 0x0001) // MEDIUM ROTATION RATE: non-rotating
		if _, ok := lu.be.(LBAStatusBackend); ok {
			// WABEREQ 01b: a read after SANITIZE BLOCK ERASE succeeds
			// (it returns zeros: LBPRZ).
			page[7] = 0x40
		}
	case vpdLBProvisioning:
		page = make([]byte, 8)
		page[1], page[3] = vpdLBProvisioning, 4
		// LBPU (UNMAP), LBPWS (WRITE SAME(16) UNMAP), LBPWS10,
		// LBPRZ (unmapped blocks read zeros).
		page[5] = 0x80 | 0x40 | 0x20 | 0x04
		page[6] = 0x02 // PROVISIONING TYPE: thin
	default:
		return invalidCDB(2, -1)
	}
	return good(page, alloc)
}

// standardInquiry returns the standard INQUIRY data (SPC-4 6.6.2).
func (lu *LU) standardInquiry() []byte {
	d := make([]byte, 96)
	d[0] = 0x00 // peripheral qualifier 0, direct access block device
	d[2] = 0x06 // VERSION: SPC-4
	d[3] = 0x12 // HISUP, RESPONSE DATA FORMAT 2
	d[4] = byte(len(d) - 5)
	d[5] = 0x10 | 0x08 // TPGS 01b: implicit ALUA; 3PC: third-party copy (EXTENDED COPY)
	d[6] = 0x10        // MULTIP: the unit is exported through several ports
	d[7] = 0x02        // CMDQUE
	copy(d[8:16], padASCII(vendorID, 8))
	copy(d[16:32], padASCII(lu.be.Identity().Product, 16))
	copy(d[32:36], padASCII(productRevision, 4))
	for i, v := range []uint16{versionSAM5, versionISCSI, versionSPC4, versionSBC3} {
		put16(d[58+2*i:], v)
	}
	return d
}

// deviceIdentification returns VPD page 0x83 (SPC-4 7.8.6) as seen through
// port p: the logical unit's NAA name, and the port's identifiers so that
// multipath software can tell the paths apart.
func (lu *LU) deviceIdentification(p Port) []byte {
	const (
		protoISCSI = 0x5 << 4
		csBinary   = 0x1
		csUTF8     = 0x3
		piv        = 0x80
		assocLU    = 0x00
		assocPort  = 0x10
		assocTgt   = 0x20
		typeNAA    = 0x3
		typeRelTP  = 0x4
		typeTPG    = 0x5
		typeName   = 0x8
	)
	d := []byte{0, vpdDeviceID, 0, 0}
	naa := lu.be.Identity().NAA
	d = append(d, csBinary, assocLU|typeNAA, 0, byte(len(naa)))
	d = append(d, naa[:]...)
	name := func(assoc byte, s string) {
		// SCSI name string: UTF-8, null terminated, padded to a multiple
		// of 4 bytes (SPC-4 7.8.6.11).
		n := (len(s) + 4) &^ 3
		if n > 252 {
			return
		}
		d = append(d, protoISCSI|csUTF8, piv|assoc|typeName, 0, byte(n))
		d = append(d, s...)
		d = append(d, make([]byte, n-len(s))...)
	}
	if p.Name != "" {
		name(assocPort, p.Name)
	}
	if p.RelativeID != 0 {
		d = append(d, protoISCSI|csBinary, piv|assocPort|typeRelTP, 0, 4, 0, 0,
			byte(p.RelativeID>>8), byte(p.RelativeID))
		d = append(d, protoISCSI|csBinary, piv|assocPort|typeTPG, 0, 4, 0, 0,
			byte(p.GroupID>>8), byte(p.GroupID))
	}
	if p.TargetName != "" {
		name(assocTgt, p.TargetName)
	}
	put16(d[2:4], uint16(len(d)-4))
	return d
}

// blockLimitsPage returns VPD page 0xB0 (SBC-3 6.5.3).
func (lu *LU) blockLimitsPage() []byte {
	d := make([]byte, 64)
	d[1], d[3] = vpdBlockLimits, 0x3c
	// WSNZ: a WRITE SAME of zero blocks ("to the end of the medium") is
	// refused, as it would exceed MAXIMUM WRITE SAME LENGTH on any LU
	// worth the name.
	d[4] = 0x01
	d[5] = maxCAWBlocks
	// OPTIMAL TRANSFER LENGTH GRANULARITY: one physical block (see
	// physBlockExp). Transfers of whole physical blocks avoid
	// read-modify-write below us.
	put16(d[6:8], uint16(lu.blocksPerPhys()))
	put32(d[8:12], maxTransferBlocks)
	put32(d[12:16], optimalTransferBlocks)
	put32(d[16:20], maxTransferBlocks) // MAXIMUM PREFETCH LENGTH
	put32(d[20:24], maxUnmapBlocks)
	put32(d[24:28], maxUnmapDescriptors)
	// OPTIMAL UNMAP GRANULARITY: one physical block, aligned to LBA 0
	// (UGAVALID set, UNMAP GRANULARITY ALIGNMENT 0). Unaligned UNMAPs
	// still deallocate exactly what they name: see doUnmap.
	put32(d[28:32], lu.blocksPerPhys())
	put32(d[32:36], 0x80000000)
	put64(d[36:44], maxWriteSameBlocks)
	// Atomic writes (SBC-4 Block Limits fields; WRITE ATOMIC(16)): up to maxAtomicBlocks
	// with no alignment (ATOMIC ALIGNMENT 0) or granularity (ATOMIC
	// TRANSFER LENGTH GRANULARITY 0) requirement, since atomicity comes
	// from the range locks, not from the medium's geometry. Atomic
	// boundaries are not supported: MAXIMUM ATOMIC TRANSFER LENGTH WITH
	// ATOMIC BOUNDARY and MAXIMUM ATOMIC BOUNDARY SIZE are 0, and a
	// non-zero ATOMIC BOUNDARY in the CDB is refused.
	put32(d[44:48], maxAtomicBlocks)
	put32(d[48:52], 0)
	put32(d[52:56], 0)
	put32(d[56:60], 0)
	put32(d[60:64], 0)
	return d
}
