package scsi

// Binary encoding of LUState, for replicating the shared state of a logical
// unit between cluster nodes as an opaque blob.
//
// Format version 1. Integers are big-endian and unsigned unless noted; a
// string is a u16 byte length (at most maxCodecString) followed by that many
// bytes; a NexusID is two strings, InitiatorPort then TargetPort.
//
//	offset  size  field
//	0       1     format version, 1
//	1       4     Generation
//	5       8     Capacity, two's complement int64
//	13      1     flags: bit 0 Reservation present, bit 1 Legacy present;
//	              the other bits are 0
//	14      ...   when bit 0 is set, the Reservation:
//	                1    Type
//	                8    Key
//	                ...  Holder, a NexusID
//	        ...   when bit 1 is set, Legacy, a NexusID
//	        2     number of registrations (0..65535), then each one in
//	              the order of Registrations:
//	                8    Key
//	                ...  InitiatorPort, a string
//	                ...  TargetPort, a string
//	                1    AllTargetPorts, 0 or 1
//	                2    RelativeTargetPort
//	        2     number of nexuses (0..65535), then each one in strictly
//	              increasing order of (InitiatorPort, TargetPort):
//	                ...  the NexusID
//	                1    number of pending unit attentions (0..maxPendingUA)
//	                2    each unit attention (ASC<<8 | ASCQ), oldest first
//
// After the last nexus come optional sections, each a u8 tag and its body,
// at most one of each, in increasing tag order (an extension of format 1:
// a state without them encodes exactly as before, and a decoder that
// predates a section refuses a state that has it as "trailing bytes"):
//
//	tag 1   mode parameters, present only when they are not the defaults:
//	          1  flags: bit 0 write cache disabled (WCE clear), bit 1
//	             software write protect (SWP set); the other bits are 0,
//	             and not every bit is 0 (bit 1 was added after bit 0: a
//	             decoder that predates it refuses a state with SWP set)
//
// Nothing else follows. The encoding is canonical: MarshalBinary
// writes the only encoding UnmarshalLUState accepts for a state, so
// re-encoding a decoded state gives back the same bytes. Empty Registrations
// and Nexuses decode as nil, and so does a nexus's empty unit attention
// queue (the nexus itself is kept).

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/csnap/csnap/internal/bigendian"
)

const (
	stateCodecVersion = 1
	// maxCodecString bounds every string (port names) in the encoding.
	maxCodecString = 1024
	// maxCodecCount bounds the registrations and the nexuses.
	maxCodecCount = 65535

	flagReservation = 1 << 0
	flagLegacy      = 1 << 1

	// Optional sections after the nexuses, and the mode section's flags.
	codecSectionMode = 1
	modeFlagWCD      = 1 << 0
	modeFlagSWP      = 1 << 1

	// The smallest encodings of a registration (Key, two empty strings,
	// AllTargetPorts, RelativeTargetPort) and of a nexus (two empty
	// strings, no unit attention): a count is checked against the bytes
	// left before anything is allocated for it.
	minRegistrationLen = 8 + 2 + 2 + 1 + 2
	minNexusLen        = 2 + 2 + 1
)

// MarshalBinary encodes s in the format described at the top of this file.
// The encoding is deterministic: nexuses are sorted. It fails when s exceeds
// a bound of the format (a string over 1024 bytes, over 65535 registrations
// or nexuses, over maxPendingUA unit attentions for a nexus).
func (s *LUState) MarshalBinary() ([]byte, error) {
	e := encoder{b: make([]byte, 0, 64)}
	e.b = append(e.b, stateCodecVersion)
	e.b = binary.BigEndian.AppendUint32(e.b, s.Generation)
	e.b = binary.BigEndian.AppendUint64(e.b, uint64(s.Capacity))
	var flags byte
	if s.Reservation != nil {
		flags |= flagReservation
	}
	if s.Legacy != nil {
		flags |= flagLegacy
	}
	e.b = append(e.b, flags)
	if r := s.Reservation; r != nil {
		e.b = append(e.b, r.Type)
		e.b = binary.BigEndian.AppendUint64(e.b, r.Key)
		e.nexus(r.Holder, "reservation holder")
	}
	if s.Legacy != nil {
		e.nexus(*s.Legacy, "legacy reservation holder")
	}

	if len(s.Registrations) > maxCodecCount {
		return nil, fmt.Errorf("scsi: encoding LU state: %d registrations, over %d", len(s.Registrations), maxCodecCount)
	}
	e.b = binary.BigEndian.AppendUint16(e.b, uint16(len(s.Registrations)))
	for i, r := range s.Registrations {
		e.b = binary.BigEndian.AppendUint64(e.b, r.Key)
		e.item, e.index = "registration", i
		e.str(r.InitiatorPort, "initiator port")
		e.str(r.TargetPort, "target port")
		all := byte(0)
		if r.AllTargetPorts {
			all = 1
		}
		e.b = append(e.b, all)
		e.b = binary.BigEndian.AppendUint16(e.b, r.RelativeTargetPort)
	}

	if len(s.Nexuses) > maxCodecCount {
		return nil, fmt.Errorf("scsi: encoding LU state: %d nexuses, over %d", len(s.Nexuses), maxCodecCount)
	}
	ids := make([]NexusID, 0, len(s.Nexuses))
	for n := range s.Nexuses {
		ids = append(ids, n)
	}
	slices.SortFunc(ids, compareNexus)
	e.b = binary.BigEndian.AppendUint16(e.b, uint16(len(ids)))
	for i, n := range ids {
		e.item, e.index = "nexus", i
		e.nexus(n, "")
		uas := s.Nexuses[n]
		if len(uas) > maxPendingUA {
			return nil, fmt.Errorf("scsi: encoding LU state: nexus %q/%q has %d unit attentions, over %d",
				n.InitiatorPort, n.TargetPort, len(uas), maxPendingUA)
		}
		e.b = append(e.b, byte(len(uas)))
		for _, ua := range uas {
			e.b = binary.BigEndian.AppendUint16(e.b, uint16(ua))
		}
	}
	if s.Mode != (ModeParameters{}) {
		var mf byte
		if s.Mode.WriteCacheDisabled {
			mf |= modeFlagWCD
		}
		if s.Mode.SoftwareWriteProtect {
			mf |= modeFlagSWP
		}
		e.b = append(e.b, codecSectionMode, mf)
	}
	if e.err != nil {
		return nil, e.err
	}
	return e.b, nil
}

// compareNexus orders nexus ids by initiator port, then target port.
func compareNexus(a, b NexusID) int {
	if c := cmp.Compare(a.InitiatorPort, b.InitiatorPort); c != 0 {
		return c
	}
	return cmp.Compare(a.TargetPort, b.TargetPort)
}

// encoder appends to b; the first string over the bound sets err. item and
// index name the registration or nexus being written, for errors.
type encoder struct {
	b     []byte
	err   error
	item  string
	index int
}

func (e *encoder) str(s, what string) {
	if len(s) > maxCodecString {
		if e.err == nil {
			e.err = fmt.Errorf("scsi: encoding LU state: %s%s is %d bytes, over %d",
				itemPrefix(e.item, e.index), what, len(s), maxCodecString)
		}
		return
	}
	e.b = binary.BigEndian.AppendUint16(e.b, uint16(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) nexus(n NexusID, what string) {
	e.str(n.InitiatorPort, strings.TrimSpace(what+" initiator port"))
	e.str(n.TargetPort, strings.TrimSpace(what+" target port"))
}

// UnmarshalLUState decodes an LUState encoded by MarshalBinary. It rejects,
// with an error naming the field, input that is truncated, has trailing
// bytes, another format version, a value out of its bounds or anything
// MarshalBinary would not have written. What it allocates is bounded by
// the length of b.
func UnmarshalLUState(b []byte) (*LUState, error) {
	d := newStateDecoder(b)
	if v := d.U8("format version"); d.Err == nil && v != stateCodecVersion {
		return nil, fmt.Errorf("scsi: decoding LU state: format version %d, want %d", v, stateCodecVersion)
	}
	s := &LUState{}
	s.Generation = d.U32("generation")
	s.Capacity = int64(d.U64("capacity"))
	flags := d.U8("flags")
	if d.Err == nil && flags&^(flagReservation|flagLegacy) != 0 {
		d.fail("flags 0x%02x have unknown bits", flags)
	}
	if d.Err == nil && flags&flagReservation != 0 {
		r := &PersistentReservation{}
		r.Type = d.U8("reservation type")
		r.Key = d.U64("reservation key")
		r.Holder = d.nexus("reservation holder")
		s.Reservation = r
	}
	if d.Err == nil && flags&flagLegacy != 0 {
		l := d.nexus("legacy reservation holder")
		s.Legacy = &l
	}

	if n := d.count("registration count", minRegistrationLen); n > 0 {
		s.Registrations = make([]Registration, n)
		for i := range s.Registrations {
			d.item, d.index = "registration", i
			r := &s.Registrations[i]
			r.Key = d.U64("key")
			r.InitiatorPort = d.str("initiator port")
			r.TargetPort = d.str("target port")
			switch all := d.U8("all target ports"); {
			case d.Err != nil:
			case all == 1:
				r.AllTargetPorts = true
			case all != 0:
				d.fail("all target ports byte is %d, want 0 or 1", all)
			}
			r.RelativeTargetPort = d.U16("relative target port")
		}
		d.item = ""
	}

	if n := d.count("nexus count", minNexusLen); n > 0 {
		s.Nexuses = make(map[NexusID][]UnitAttention, n)
		var prev NexusID
		for i := range n {
			d.item, d.index = "nexus", i
			id := d.nexus("")
			if d.Err == nil && i > 0 && compareNexus(prev, id) >= 0 {
				d.fail("%q/%q does not sort after nexus %d %q/%q",
					id.InitiatorPort, id.TargetPort, i-1, prev.InitiatorPort, prev.TargetPort)
			}
			prev = id
			k := int(d.U8("unit attention count"))
			if d.Err == nil && k > maxPendingUA {
				d.fail("%d unit attentions, over %d", k, maxPendingUA)
			}
			var uas []UnitAttention
			if p := d.Take(2*k, "unit attentions"); d.Err == nil && k > 0 {
				uas = make([]UnitAttention, k)
				for j := range uas {
					uas[j] = UnitAttention(binary.BigEndian.Uint16(p[2*j:]))
				}
			}
			if d.Err != nil {
				break
			}
			s.Nexuses[id] = uas
		}
	}

	d.item = ""
	if d.Err == nil && d.Off < len(d.B) && d.B[d.Off] == codecSectionMode {
		d.Off++
		switch mf := d.U8("mode flags"); {
		case d.Err != nil:
		case mf == 0 || mf&^(modeFlagWCD|modeFlagSWP) != 0:
			d.fail("mode flags 0x%02x: unknown bits, or the defaults (which are not encoded)", mf)
		default:
			s.Mode.WriteCacheDisabled = mf&modeFlagWCD != 0
			s.Mode.SoftwareWriteProtect = mf&modeFlagSWP != 0
		}
	}
	if d.Err == nil && d.Off != len(d.B) {
		d.fail("%d trailing bytes after the last field", len(d.B)-d.Off)
	}
	if d.Err != nil {
		return nil, d.Err
	}
	return s, nil
}

// decoder reads the state (bigendian.Decoder: the first failure sticks;
// after it every read returns a zero value, so a decoding function checks
// Err once at the end, and before anything whose size comes from the
// input). item and index name the registration or nexus being read, for
// errors.
type decoder struct {
	bigendian.Decoder
	item  string
	index int
}

func newStateDecoder(b []byte) *decoder {
	d := &decoder{}
	d.Decoder = bigendian.Decoder{B: b, Short: func(what string, need, off, size int) error {
		return d.failure("truncated: %s needs %d bytes, %d left", what, need, size-off)
	}}
	return d
}

func (d *decoder) failure(format string, args ...any) error {
	return fmt.Errorf("scsi: decoding LU state: at byte %d: %s%s",
		d.Off, itemPrefix(d.item, d.index), fmt.Sprintf(format, args...))
}

func (d *decoder) fail(format string, args ...any) {
	if d.Err == nil {
		d.Err = d.failure(format, args...)
	}
}

// itemPrefix returns "registration 3: " for item "registration" and index 3,
// or "" for no item.
func itemPrefix(item string, index int) string {
	if item == "" {
		return ""
	}
	return fmt.Sprintf("%s %d: ", item, index)
}

func (d *decoder) str(what string) string {
	n := int(d.U16(what)) // the length
	if d.Err == nil && n > maxCodecString {
		d.fail("%s is %d bytes, over %d", what, n, maxCodecString)
	}
	return string(d.Take(n, what))
}

func (d *decoder) nexus(what string) NexusID {
	var n NexusID
	n.InitiatorPort = d.str(strings.TrimSpace(what + " initiator port"))
	n.TargetPort = d.str(strings.TrimSpace(what + " target port"))
	return n
}

// count reads a u16 element count and checks that the bytes left can hold
// that many elements of at least minLen bytes each, so that a forged count
// cannot make the caller allocate more than the input justifies. It returns
// 0 after a failure.
func (d *decoder) count(what string, minLen int) int {
	n := int(d.U16(what))
	if d.Err != nil {
		return 0
	}
	if left := len(d.B) - d.Off; n > left/minLen {
		d.fail("truncated: %s is %d, but only %d bytes are left (each needs at least %d)", what, n, left, minLen)
		return 0
	}
	return n
}
