package iscsi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/target/scsi"
)

// countingConn counts the bytes a connection carries both ways.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// TestExtendedCopyInitiatorBandwidth copies 64 MiB from LUN 0 to LUN 1 of
// one target twice: with EXTENDED COPY, and with READ and WRITE through
// the initiator. It counts the bytes on the initiator's connection (the
// offloaded copy must move none of the data: under 64 KiB in all, against
// twice the data the other way) and logs both throughputs.
func TestExtendedCopyInitiatorBandwidth(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 192 MiB; skipped with -short")
	}
	const size = 64 << 20
	id := func(n byte) scsi.Identity {
		var naa [16]byte
		naa[0], naa[15] = 0x60, n
		return scsi.Identity{Serial: "x" + string('0'+n), NAA: naa, Product: "test"}
	}
	src, dst := scsi.NewMemBackend(size, id(1)), scsi.NewMemBackend(size, id(2))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	if err := src.WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	tgt, err := scsi.NewTarget(map[uint64]*scsi.LU{0: scsi.NewLU(src), 1: scsi.NewLU(dst)}, scsi.NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	l := logrus.New()
	l.SetOutput(io.Discard)
	srv := NewServer(Config{Log: logrus.NewEntry(l)})
	if err := srv.AddTarget(TargetConfig{Name: testIQN, Exec: tgt}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-done })

	in := dialInitiator(t, ln.Addr().String())
	in.nc.SetDeadline(time.Now().Add(5 * time.Minute))
	var wire atomic.Int64
	in.nc = countingConn{Conn: in.nc, n: &wire}
	in.rd.r = bufio.NewReader(in.nc)
	if st := in.login(testIQN, kv{"MaxBurstLength", "1048576"}, kv{"MaxRecvDataSegmentLength", "262144"}); st != 0 {
		t.Fatalf("login status %#x", st)
	}
	for _, n := range []uint64{0, 1} {
		for range 3 { // the unit attentions of a new nexus
			scsiCmdLUN(in, n, make([]byte, 6), 0, false, nil)
		}
	}

	// EXTENDED COPY: LUN 0 -> LUN 1, segments of at most 65535 blocks.
	p := make([]byte, 16, 16+64+3*28)
	binary.BigEndian.PutUint16(p[2:4], 64)
	p[1] = 2 << 3
	for _, n := range []byte{1, 2} {
		d := make([]byte, 32)
		naa := id(n).NAA
		d[0], d[4], d[5], d[7] = 0xe4, 0x01, 0x03, 16
		copy(d[8:24], naa[:])
		d[30] = 2
		p = append(p, d...)
	}
	blocks := uint64(size / scsi.BlockSize)
	for lba := uint64(0); lba < blocks; lba += 0xffff {
		k := min(0xffff, blocks-lba)
		s := make([]byte, 28)
		s[0] = 0x02
		binary.BigEndian.PutUint16(s[2:4], 24)
		binary.BigEndian.PutUint16(s[6:8], 1)
		binary.BigEndian.PutUint16(s[10:12], uint16(k))
		binary.BigEndian.PutUint64(s[12:20], lba)
		binary.BigEndian.PutUint64(s[20:28], lba)
		p = append(p, s...)
	}
	binary.BigEndian.PutUint32(p[8:12], uint32(len(p)-16-64))
	cdb := make([]byte, 16)
	cdb[0] = 0x83
	binary.BigEndian.PutUint32(cdb[10:14], uint32(len(p)))
	wire.Store(0)
	start := time.Now()
	if st, _ := scsiCmdLUN(in, 0, cdb, uint32(len(p)), false, p); st != 0 {
		t.Fatalf("EXTENDED COPY status %#x", st)
	}
	xcopyTime, xcopyWire := time.Since(start), wire.Load()
	got := make([]byte, size)
	if err := dst.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("LUN 1 after EXTENDED COPY: %v", err)
	}

	// The same through the initiator, 1 MiB at a time.
	if err := dst.Unmap(0, size); err != nil {
		t.Fatal(err)
	}
	wire.Store(0)
	start = time.Now()
	const chunk = 1 << 20
	for off := 0; off < size; off += chunk {
		lba, n := uint32(off/scsi.BlockSize), uint16(chunk/scsi.BlockSize)
		st, buf := scsiCmdLUN(in, 0, rw10(0x28, lba, n), chunk, true, nil)
		if st != 0 || len(buf) != chunk {
			t.Fatalf("READ at %d: status %#x, %d bytes", off, st, len(buf))
		}
		if st, _ := scsiCmdLUN(in, 1, rw10(0x2a, lba, n), chunk, false, buf); st != 0 {
			t.Fatalf("WRITE at %d: status %#x", off, st)
		}
	}
	rwTime, rwWire := time.Since(start), wire.Load()
	if err := dst.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("LUN 1 after READ+WRITE: %v", err)
	}

	mibs := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	t.Logf("64 MiB LUN 0 -> LUN 1: EXTENDED COPY %v (%.0f MiB/s), %d bytes on the wire; READ+WRITE through the initiator %v (%.0f MiB/s), %d bytes on the wire; speed ratio %.1f",
		xcopyTime, mibs(xcopyTime), xcopyWire, rwTime, mibs(rwTime), rwWire, rwTime.Seconds()/xcopyTime.Seconds())
	if xcopyWire > 64<<10 {
		t.Errorf("EXTENDED COPY moved %d bytes over the initiator's connection", xcopyWire)
	}
	if rwWire < 2*size {
		t.Errorf("READ+WRITE moved only %d bytes: the comparison is broken", rwWire)
	}
}

// scsiCmdLUN is testInitiator.scsiCmd addressed to LUN lun, without
// immediate data.
func scsiCmdLUN(in *testInitiator, lun uint64, cdb []byte, edtl uint32, read bool, data []byte) (status byte, readData []byte) {
	in.t.Helper()
	in.lun = lun
	defer func() { in.lun = 0 }()
	return in.scsiCmd(cdb, edtl, read, data, 0)
}
