package scsi

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// xcopyParams builds an EXTENDED COPY(LID1) parameter list: one
// identification CSCD descriptor per NAA, and block-to-block segments.
func xcopyParams(listID, usage byte, naas [][16]byte, segs []b2bSegment) []byte {
	p := make([]byte, xcopyHeaderLen)
	p[0], p[1] = listID, usage<<3
	for _, naa := range naas {
		d := make([]byte, cscdDescLen)
		d[0] = cscdIdentification
		d[4], d[5], d[7] = 0x01, 0x03, 16 // binary, LU, NAA, 16 bytes
		copy(d[8:24], naa[:])
		d[30], d[31] = BlockSize>>8, BlockSize&0xff
		p = append(p, d...)
	}
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)-xcopyHeaderLen))
	sdl := 0
	for _, s := range segs {
		d := make([]byte, b2bSegDescLen)
		d[0] = segBlockToBlock
		binary.BigEndian.PutUint16(d[2:4], b2bSegDescLen-4)
		binary.BigEndian.PutUint16(d[4:6], s.src)
		binary.BigEndian.PutUint16(d[6:8], s.dst)
		binary.BigEndian.PutUint16(d[10:12], uint16(s.blocks))
		binary.BigEndian.PutUint64(d[12:20], s.srcLBA)
		binary.BigEndian.PutUint64(d[20:28], s.dstLBA)
		p = append(p, d...)
		sdl += len(d)
	}
	binary.BigEndian.PutUint32(p[8:12], uint32(sdl))
	return p
}

func xcopyCDB(n int) []byte {
	c := make([]byte, 16)
	c[0], c[1] = opExtendedCopy, saExtendedCopyLID1
	binary.BigEndian.PutUint32(c[10:14], uint32(n))
	return c
}

func rcrCDB(sa, listID byte, alloc uint32) []byte {
	c := make([]byte, 16)
	c[0], c[1], c[2] = opReceiveCopyResults, sa, listID
	binary.BigEndian.PutUint32(c[10:14], alloc)
	return c
}

// copyPair is two targets (an origin and a snapshot, say) of one copy
// domain, over their own backends.
func copyPair(t *testing.T) (a, b *fixture) {
	t.Helper()
	store := NewMemStore()
	idB := testIdentity()
	idB.NAA[15] = 0x02
	idB.Serial = "csnap0002"
	a = node(t, NewMemBackend(8192*BlockSize, testIdentity()), store)
	b = node(t, NewMemBackend(4096*BlockSize, idB), store)
	d := NewCopyDomain()
	d.Add(a.tgt)
	d.Add(b.tgt)
	a.ready(nexA)
	b.ready(nexC)
	return a, b
}

// TestExtendedCopyBetweenLUs: EXTENDED COPY sent to one LU copies blocks
// from it to another LU of the copy domain (and within one LU) through
// the backends; the status is held for RECEIVE COPY RESULTS.
func TestExtendedCopyBetweenLUs(t *testing.T) {
	a, b := copyPair(t)
	naaA, naaB := a.be.Identity().NAA, b.be.Identity().NAA
	src := pattern(3000, 5)
	a.writeBlocks(100, src)

	// Two segments, 3000 blocks (over one copy chunk) A -> B, held as
	// list 7.
	p := xcopyParams(7, 0, [][16]byte{naaA, naaB}, []b2bSegment{
		{src: 0, dst: 1, blocks: 2500, srcLBA: 100, dstLBA: 10},
		{src: 0, dst: 1, blocks: 500, srcLBA: 2600, dstLBA: 2510},
	})
	wantGood(t, a.run(nexA, xcopyCDB(len(p)), p))
	if got := b.readBlocks(10, 3000); !bytes.Equal(got, src) {
		t.Fatal("destination does not hold the source's blocks")
	}
	r := a.run(nexA, rcrCDB(saCopyStatus, 7, 64), nil)
	wantGood(t, r)
	if d := r.Data; len(d) != 12 || d[4] != 0x01 || binary.BigEndian.Uint16(d[5:7]) != 2 || d[7] != 1 ||
		binary.BigEndian.Uint32(d[8:12]) != 3000*BlockSize/1024 {
		t.Fatalf("copy status % x", r.Data)
	}
	// Held for this nexus only; another nexus has no list 7.
	a.ready(nexB)
	wantSense(t, a.run(nexB, rcrCDB(saCopyStatus, 7, 64), nil), SenseIllegalRequest, 0x24, 0)
	// Dropped when the nexus ends.
	a.tgt.NexusLost(nexA)
	a.ready(nexA)
	wantSense(t, a.run(nexA, rcrCDB(saCopyStatus, 7, 64), nil), SenseIllegalRequest, 0x24, 0)

	// Sent to B, copying B -> A: the LU addressed need not be the source.
	p = xcopyParams(0, 2, [][16]byte{naaB, naaA}, []b2bSegment{{src: 0, dst: 1, blocks: 16, srcLBA: 10, dstLBA: 5000}})
	wantGood(t, b.run(nexC, xcopyCDB(len(p)), p))
	if got := a.readBlocks(5000, 16); !bytes.Equal(got, src[:16*BlockSize]) {
		t.Fatal("B -> A copy")
	}
	// LIST ID USAGE 10b: not held.
	wantSense(t, b.run(nexC, rcrCDB(saCopyStatus, 0, 64), nil), SenseIllegalRequest, 0x24, 0)

	// Overlapping ranges of one LU, destination after the source: the
	// result is the source as it was (one descriptor for both ends).
	before := a.readBlocks(100, 3000)
	p = xcopyParams(0, 3, [][16]byte{naaA}, []b2bSegment{{src: 0, dst: 0, blocks: 3000, srcLBA: 100, dstLBA: 1100}})
	wantGood(t, a.run(nexA, xcopyCDB(len(p)), p))
	if got := a.readBlocks(1100, 3000); !bytes.Equal(got, before) {
		t.Fatal("overlapping forward copy corrupted the data")
	}
}

// TestExtendedCopyErrors: parameter list errors are ILLEGAL REQUEST before
// anything is copied; segment errors are COPY ABORTED; a write-protected
// destination is DATA PROTECT; a logical unit outside the copy domain
// cannot be named.
func TestExtendedCopyErrors(t *testing.T) {
	a, b := copyPair(t)
	naaA, naaB := a.be.Identity().NAA, b.be.Identity().NAA
	seg := b2bSegment{src: 0, dst: 1, blocks: 8, srcLBA: 0, dstLBA: 0}
	good := xcopyParams(1, 0, [][16]byte{naaA, naaB}, []b2bSegment{seg})
	run := func(p []byte) Result { return a.run(nexA, xcopyCDB(len(p)), p) }

	wantGood(t, a.run(nexA, xcopyCDB(0), nil)) // empty list: nothing to do
	wantSense(t, run(good[:xcopyHeaderLen+cscdDescLen-1]), SenseIllegalRequest, 0x1a, 0)
	wantSense(t, run(good[:len(good)-1]), SenseIllegalRequest, 0x1a, 0)
	three := xcopyParams(1, 0, [][16]byte{naaA, naaB, naaA}, []b2bSegment{seg})
	wantSense(t, run(three), SenseIllegalRequest, 0x26, ascqTooManyTargetDescriptors)
	many := make([]b2bSegment, maxSegmentDescriptors+1)
	for i := range many {
		many[i] = seg
	}
	wantSense(t, run(xcopyParams(1, 0, [][16]byte{naaA}, many)), SenseIllegalRequest, 0x26, ascqTooManySegmentDescriptors)
	// Both lists over MAXIMUM DESCRIPTOR LIST LENGTH.
	wantSense(t, run(xcopyParams(1, 0, [][16]byte{naaA, naaB}, many)), SenseIllegalRequest, 0x1a, 0)
	bad := bytes.Clone(good)
	bad[xcopyHeaderLen] = 0xe0 // Fibre Channel N_Port_Name
	wantSense(t, run(bad), SenseIllegalRequest, 0x26, ascqUnsupportedTargetDescType)
	bad = bytes.Clone(good)
	bad[xcopyHeaderLen+2*cscdDescLen] = 0x03 // stream to stream
	wantSense(t, run(bad), SenseIllegalRequest, 0x26, ascqUnsupportedSegDescType)
	bad = bytes.Clone(good)
	bad[xcopyHeaderLen+30] = 0x10 // disk block length 4096
	wantSense(t, run(bad), SenseIllegalRequest, 0x26, 0)

	// Segment errors: COPY ABORTED.
	wantSense(t, run(xcopyParams(1, 0, [][16]byte{naaA}, []b2bSegment{seg})), senseCopyAborted, 0x08, 0x04)
	var stranger [16]byte
	stranger[0] = 0x60
	stranger[15] = 0x99
	wantSense(t, run(xcopyParams(1, 0, [][16]byte{naaA, stranger}, []b2bSegment{seg})), senseCopyAborted, 0x08, 0x04)
	eol := seg
	eol.dstLBA = 4096 - 4
	wantSense(t, run(xcopyParams(1, 0, [][16]byte{naaA, naaB}, []b2bSegment{eol})), senseCopyAborted, 0, 0)
	// The failed copy's status is held as "completed with an error".
	r := a.run(nexA, rcrCDB(saCopyStatus, 1, 64), nil)
	wantGood(t, r)
	if r.Data[4] != 0x02 {
		t.Fatalf("failed copy status %#x, want 2", r.Data[4])
	}

	// Write-protected destination: a read-only snapshot, or SWP.
	b.be.SetReadOnly(true)
	wantSense(t, run(good), SenseDataProtect, 0x27, 0)
	b.be.SetReadOnly(false)
	selectSWP(t, b, nexC, true)
	wantSense(t, run(good), SenseDataProtect, 0x27, 0x02)
	selectSWP(t, b, nexC, false)
	wantGood(t, run(good))

	// In a copy domain without B, B cannot be named.
	d := NewCopyDomain()
	d.Add(a.tgt)
	wantSense(t, run(good), senseCopyAborted, 0x08, 0x04)
}

// TestCopyLimitsReported: RECEIVE COPY RESULTS (OPERATING PARAMETERS) and
// the Third-party Copy VPD page report the limits EXTENDED COPY enforces,
// and standard INQUIRY sets 3PC.
func TestCopyLimitsReported(t *testing.T) {
	f := newFixture(t, 1024)
	f.ready(nexA)
	r := f.run(nexA, rcrCDB(saOperatingParams, 0, 1024), nil)
	wantGood(t, r)
	d := r.Data
	if int(binary.BigEndian.Uint32(d[0:4]))+4 != len(d) || binary.BigEndian.Uint16(d[8:10]) != maxCSCDDescriptors ||
		binary.BigEndian.Uint16(d[10:12]) != maxSegmentDescriptors ||
		binary.BigEndian.Uint32(d[12:16]) != maxDescriptorListLength || d[43] != 2 ||
		!bytes.Equal(d[44:46], []byte{segBlockToBlock, cscdIdentification}) {
		t.Fatalf("operating parameters % x", d)
	}
	r = f.run(nexA, inquiry(true, vpdThirdPartyCopy, 1024), nil)
	wantGood(t, r)
	d = r.Data
	if d[1] != vpdThirdPartyCopy || int(binary.BigEndian.Uint16(d[2:4]))+4 != len(d) {
		t.Fatalf("third-party copy page header % x", d[:4])
	}
	found := map[uint16][]byte{}
	for off := 4; off < len(d); {
		typ, n := binary.BigEndian.Uint16(d[off:]), int(binary.BigEndian.Uint16(d[off+2:]))
		if n%4 != 0 {
			t.Fatalf("descriptor %#x length %d", typ, n)
		}
		found[typ] = d[off+4 : off+4+n]
		off += 4 + n
	}
	if c := found[0x0001]; c == nil || !bytes.Contains(c, []byte{opReceiveCopyResults, 2, saCopyStatus, saOperatingParams}) ||
		!bytes.Contains(c, []byte{opExtendedCopy, 1, saExtendedCopyLID1}) {
		t.Fatalf("supported commands % x", c)
	}
	if pd := found[0x0008]; pd == nil || binary.BigEndian.Uint16(pd[2:4]) != maxCSCDDescriptors ||
		binary.BigEndian.Uint16(pd[4:6]) != maxSegmentDescriptors {
		t.Fatalf("parameter data % x", pd)
	}
	r = f.run(nexA, inquiry(false, 0, 255), nil)
	if r.Data[5]&0x08 == 0 {
		t.Fatal("3PC clear in standard INQUIRY data")
	}
	// Unknown service action.
	wantSense(t, f.run(nexA, rcrCDB(0x01, 0, 64), nil), SenseIllegalRequest, 0x24, 0)
}
