package iscsi

import (
	"bytes"
	"testing"
)

// FuzzReadPDU feeds arbitrary bytes to the PDU reader, with and without
// digests: it must return PDUs or errors, never panic or over-allocate.
func FuzzReadPDU(f *testing.F) {
	p := new(PDU)
	p.setOpcode(opSCSICmd, flagFinal|flagWrite)
	p.Data = []byte("hello")
	f.Add(p.marshal(false, false), false)
	f.Add(p.marshal(true, true), true)
	p.AHS = []byte{0, 5, 1, 0, 1, 2, 3, 4}
	f.Add(p.marshal(false, false), false)
	f.Add(make([]byte, 48), false)
	f.Fuzz(func(t *testing.T, b []byte, digests bool) {
		pr := pduReader{r: bytes.NewReader(b), headerDigest: digests, dataDigest: digests, maxData: 1 << 16}
		for i := 0; i < 8; i++ {
			var q PDU
			if err := pr.readPDU(&q); err != nil {
				return
			}
			if len(q.Data) != q.dataLen() || len(q.Data) > 1<<16 {
				t.Fatalf("data segment %d bytes, header says %d", len(q.Data), q.dataLen())
			}
			if len(q.AHS) > 0 {
				extendedCDB(q.AHS)
			}
			// A decoded PDU re-encodes to the same header.
			again := q.marshal(digests, digests)
			if !bytes.Equal(again[:bhsLen], q.BHS[:]) {
				t.Fatalf("re-encoded header differs")
			}
		}
	})
}

// FuzzParseText checks the login/text key parser and negotiation on
// arbitrary input: errors are fine, panics and invalid answers are not.
func FuzzParseText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.x\x00SessionType=Normal\x00MaxBurstLength=262144\x00"))
	f.Add([]byte("HeaderDigest=CRC32C,None\x00DataDigest=None\x00"))
	f.Add([]byte("=\x00\x00a=b=c\x00"))
	f.Add([]byte("MaxRecvDataSegmentLength=0x100\x00FirstBurstLength=999999999999\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pairs, err := parseText(b, false)
		if err != nil {
			return
		}
		n := newNegotiator(DefaultOffer())
		for _, p := range pairs {
			n.operational(p.Key, p.Value)
		}
		got := n.finish()
		if got.FirstBurstLength > got.MaxBurstLength {
			t.Fatalf("FirstBurstLength %d > MaxBurstLength %d", got.FirstBurstLength, got.MaxBurstLength)
		}
		if got.MaxXmitDataSegmentLength < 512 || got.MaxBurstLength < 512 {
			t.Fatalf("negotiated below the RFC minimum: %+v", got)
		}
		// Encoding what we parsed and parsing it again is lossless.
		again, err := parseText(encodeText(pairs), false)
		if err != nil || len(again) != len(pairs) {
			t.Fatalf("round trip: %v, %d vs %d pairs", err, len(again), len(pairs))
		}
	})
}
