package iscsi

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// kv is one key=value pair of a text or login data segment. Order matters
// for responses, so pairs are kept as a list, not a map.
type kv struct{ Key, Value string }

// Limits on text data, so a hostile peer cannot make us hold unbounded
// memory: RFC 7143 section 6.1 limits keys to 63 bytes and values to 8192
// (except a few, which we do not accept longer anyway).
const (
	maxKeyLen   = 63
	maxValueLen = 8192
	// maxTextBytes bounds a whole negotiation's accumulated text
	// (continued PDUs included).
	maxTextBytes = 64 * 1024
)

// parseText decodes "key=value\0key=value\0...". Each pair must end with a
// NUL (the last may be unterminated only if the segment has no padding to
// spare: we accept that leniently). Duplicate keys are an error unless
// allowDup is set (SendTargets answers repeat TargetName and TargetAddress).
func parseText(b []byte, allowDup bool) ([]kv, error) {
	var out []kv
	seen := map[string]bool{}
	for len(b) > 0 {
		var item []byte
		if i := bytes.IndexByte(b, 0); i >= 0 {
			item, b = b[:i], b[i+1:]
		} else {
			item, b = b, nil
		}
		if len(item) == 0 {
			// Stray NULs (padding some initiators add) are skipped.
			continue
		}
		eq := bytes.IndexByte(item, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("text key %q has no value", truncate(item))
		}
		k, v := string(item[:eq]), string(item[eq+1:])
		if len(k) > maxKeyLen {
			return nil, fmt.Errorf("text key %q longer than %d bytes", truncate(item[:eq]), maxKeyLen)
		}
		if len(v) > maxValueLen {
			return nil, fmt.Errorf("value of %s longer than %d bytes", k, maxValueLen)
		}
		if !validKey(k) {
			return nil, fmt.Errorf("text key %q has invalid characters", truncate(item[:eq]))
		}
		if seen[k] && !allowDup {
			return nil, fmt.Errorf("text key %s sent twice", k)
		}
		seen[k] = true
		out = append(out, kv{k, v})
	}
	return out, nil
}

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// validKey checks the key alphabet of RFC 7143 section 6.1: letters, digits,
// '.', '-', '+', '@', '_'.
func validKey(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == '+', c == '@', c == '_':
		default:
			return false
		}
	}
	return true
}

// encodeText is the inverse of parseText.
func encodeText(pairs []kv) []byte {
	var b bytes.Buffer
	for _, p := range pairs {
		b.WriteString(p.Key)
		b.WriteByte('=')
		b.WriteString(p.Value)
		b.WriteByte(0)
	}
	return b.Bytes()
}

// Params are the negotiated operational parameters of a session and its
// connection (RFC 7143 section 13).
type Params struct {
	HeaderDigest             bool
	DataDigest               bool
	MaxConnections           uint32
	InitialR2T               bool
	ImmediateData            bool
	MaxRecvDataSegmentLength uint32 // ours: what we accept
	MaxXmitDataSegmentLength uint32 // the initiator's: what we may send
	MaxBurstLength           uint32
	FirstBurstLength         uint32
	DefaultTime2Wait         uint32
	DefaultTime2Retain       uint32
	MaxOutstandingR2T        uint32
	DataPDUInOrder           bool
	DataSequenceInOrder      bool
	ErrorRecoveryLevel       uint32
}

// rfcDefaults are the values in force when a key is not negotiated.
func rfcDefaults() Params {
	return Params{
		MaxConnections:           1,
		InitialR2T:               true,
		ImmediateData:            true,
		MaxRecvDataSegmentLength: 8192,
		MaxXmitDataSegmentLength: 8192,
		MaxBurstLength:           262144,
		FirstBurstLength:         65536,
		DefaultTime2Wait:         2,
		DefaultTime2Retain:       20,
		MaxOutstandingR2T:        1,
		DataPDUInOrder:           true,
		DataSequenceInOrder:      true,
		ErrorRecoveryLevel:       0,
	}
}

// Offer is what this target is willing to negotiate. Zero values mean the
// built-in defaults (see DefaultOffer).
type Offer struct {
	MaxRecvDataSegmentLength uint32
	MaxBurstLength           uint32
	FirstBurstLength         uint32
	MaxOutstandingR2T        uint32
	// AllowDigests lets initiators negotiate CRC32C digests.
	AllowDigests bool
}

// DefaultOffer favours throughput: large bursts and segments, unsolicited
// and immediate data, several R2Ts in flight.
func DefaultOffer() Offer {
	return Offer{
		MaxRecvDataSegmentLength: 256 * 1024,
		MaxBurstLength:           16 * 1024 * 1024,
		FirstBurstLength:         256 * 1024,
		MaxOutstandingR2T:        8,
		AllowDigests:             true,
	}
}

// numRange validates a numeric value against its RFC range.
func numRange(key, v string, lo, hi uint64) (uint32, bool) {
	n, err := strconv.ParseUint(v, 0, 64)
	if err != nil || n < lo || n > hi {
		return 0, false
	}
	return uint32(n), true
}

func boolVal(v string) (bool, bool) {
	switch v {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// negotiator applies the operational keys of one login to a Params.
type negotiator struct {
	offer Offer
	p     Params
	// declared records keys we answered, so a key the initiator did not
	// send can still be declared by us (MaxRecvDataSegmentLength).
	answered map[string]bool
}

func newNegotiator(o Offer) *negotiator {
	return &negotiator{offer: o, p: rfcDefaults(), answered: map[string]bool{}}
}

// operational negotiates one key and returns the response value, or
// ok=false if the key is not an operational key handled here.
func (n *negotiator) operational(k, v string) (resp string, ok bool) {
	o := n.offer
	switch k {
	case "HeaderDigest", "DataDigest":
		choice := ""
		for _, c := range strings.Split(v, ",") {
			if c == "None" || (c == "CRC32C" && o.AllowDigests) {
				choice = c
				break
			}
		}
		if choice == "" {
			return "Reject", true
		}
		if k == "HeaderDigest" {
			n.p.HeaderDigest = choice == "CRC32C"
		} else {
			n.p.DataDigest = choice == "CRC32C"
		}
		return choice, true
	case "MaxConnections":
		x, good := numRange(k, v, 1, 65535)
		if !good {
			return "Reject", true
		}
		_ = x
		n.p.MaxConnections = 1
		return "1", true
	case "InitialR2T":
		b, good := boolVal(v)
		if !good {
			return "Reject", true
		}
		// OR: we are happy without R2T, so the initiator's value wins.
		n.p.InitialR2T = b
		return yesNo(b), true
	case "ImmediateData":
		b, good := boolVal(v)
		if !good {
			return "Reject", true
		}
		n.p.ImmediateData = b // AND with our Yes
		return yesNo(b), true
	case "DataPDUInOrder", "DataSequenceInOrder":
		if _, good := boolVal(v); !good {
			return "Reject", true
		}
		// OR with our Yes: always Yes.
		return "Yes", true
	case "MaxRecvDataSegmentLength":
		x, good := numRange(k, v, 512, 1<<24-1)
		if !good {
			return "Reject", true
		}
		// Declarative: the initiator's receive limit is our send limit.
		n.p.MaxXmitDataSegmentLength = x
		return "", true
	case "MaxBurstLength":
		x, good := numRange(k, v, 512, 1<<24-1)
		if !good {
			return "Reject", true
		}
		n.p.MaxBurstLength = min(x, o.MaxBurstLength)
		if n.p.FirstBurstLength > n.p.MaxBurstLength {
			n.p.FirstBurstLength = n.p.MaxBurstLength
		}
		return strconv.FormatUint(uint64(n.p.MaxBurstLength), 10), true
	case "FirstBurstLength":
		x, good := numRange(k, v, 512, 1<<24-1)
		if !good {
			return "Reject", true
		}
		n.p.FirstBurstLength = min(x, o.FirstBurstLength, n.p.MaxBurstLength)
		return strconv.FormatUint(uint64(min(x, o.FirstBurstLength)), 10), true
	case "DefaultTime2Wait":
		x, good := numRange(k, v, 0, 3600)
		if !good {
			return "Reject", true
		}
		n.p.DefaultTime2Wait = max(x, 2) // max function
		return strconv.FormatUint(uint64(n.p.DefaultTime2Wait), 10), true
	case "DefaultTime2Retain":
		x, good := numRange(k, v, 0, 3600)
		if !good {
			return "Reject", true
		}
		n.p.DefaultTime2Retain = min(x, 20) // min function
		return strconv.FormatUint(uint64(n.p.DefaultTime2Retain), 10), true
	case "MaxOutstandingR2T":
		x, good := numRange(k, v, 1, 65535)
		if !good {
			return "Reject", true
		}
		n.p.MaxOutstandingR2T = min(x, o.MaxOutstandingR2T)
		return strconv.FormatUint(uint64(n.p.MaxOutstandingR2T), 10), true
	case "ErrorRecoveryLevel":
		if _, good := numRange(k, v, 0, 2); !good {
			return "Reject", true
		}
		n.p.ErrorRecoveryLevel = 0 // min with our 0
		return "0", true
	case "IFMarker", "OFMarker":
		// RFC 3720 markers, removed by RFC 7143: AND with our No.
		if _, good := boolVal(v); !good {
			return "Reject", true
		}
		return "No", true
	case "IFMarkInt", "OFMarkInt":
		return "Irrelevant", true
	}
	return "", false
}

// finish fixes up derived values once a negotiation stage ends.
func (n *negotiator) finish() Params {
	if n.p.FirstBurstLength > n.p.MaxBurstLength {
		n.p.FirstBurstLength = n.p.MaxBurstLength
	}
	n.p.MaxRecvDataSegmentLength = n.offer.MaxRecvDataSegmentLength
	return n.p
}
