package scsi

import (
	"crypto/sha256"
	"fmt"
)

// IdentityFor derives a logical unit's identity from a stable name (for
// csnap: the volume's UUID and the snapshot id). The same name gives the
// same unit serial number (VPD 0x80) and NAA designator (VPD 0x83) on
// every node, so dm-multipath groups the paths; different names give
// different identities.
func IdentityFor(name, product string) Identity {
	h := sha256.Sum256([]byte(name))
	var id Identity
	id.Serial = fmt.Sprintf("%x", h[:12])
	// NAA 6 (IEEE Registered Extended): 4-bit NAA, 24-bit OUI, 36-bit
	// vendor specific identifier, 64-bit extension. The OUI is a locally
	// administered placeholder (0xa00000); the rest comes from the hash.
	id.NAA[0] = 0x6a
	id.NAA[1] = 0x00
	id.NAA[2] = 0x00
	id.NAA[3] = h[0] & 0x0f
	copy(id.NAA[4:], h[1:13])
	id.Product = product
	return id
}
