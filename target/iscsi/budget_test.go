package iscsi

import (
	"runtime"
	"testing"
	"time"
)

// Tests for what the review of issue 14's limits found (each failed before
// its fix): data budget leaks, unbudgeted read buffers, and an in-flight
// count that went negative.

// TestBudgetGivenBackWhenImmediateDataNeverArrives: a write whose
// immediate data is cut off by the connection closing gives its budget back.
func TestBudgetGivenBackWhenImmediateDataNeverArrives(t *testing.T) {
	const mb = 1 << 20
	srv, addr, _ := startServer(t, Config{MaxTransferLength: mb, SessionDataBufferBytes: mb, DataBufferBytes: 2 * mb}, nil)
	for i := 0; i < 3; i++ {
		in := dialInitiator(t, addr)
		if st := in.login(testIQN, kv{"ImmediateData", "Yes"}, kv{"InitialR2T", "No"}); st != 0 {
			t.Fatalf("login %#x", st)
		}
		p := new(PDU)
		p.setOpcode(opSCSICmd, flagFinal|flagWrite|1)
		p.setU32(16, 1)
		p.setU32(20, mb)
		p.setU32(24, in.cmdSN)
		copy(p.BHS[32:], rw10(0x2a, 0, 2048))
		p.Data = make([]byte, 8192)
		in.nc.Write(p.marshal(false, false)[:48+100]) // header and part of the data
		time.Sleep(20 * time.Millisecond)
		in.nc.Close()
	}
	deadline := time.Now().Add(3 * time.Second)
	for srv.dataBuf.inUse() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes of the node's data budget held with no session left", srv.dataBuf.inUse())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBudgetGivenBackOnDataDigestError: a write whose immediate data fails
// its digest is rejected and holds no budget.
func TestBudgetGivenBackOnDataDigestError(t *testing.T) {
	const mb = 1 << 20
	srv, addr, _ := startServer(t, Config{MaxTransferLength: mb, SessionDataBufferBytes: 4 * mb, DataBufferBytes: 4 * mb}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN, kv{"ImmediateData", "Yes"}, kv{"InitialR2T", "No"}, kv{"DataDigest", "CRC32C"}); st != 0 {
		t.Fatalf("login %#x", st)
	}
	if !in.rd.dataDigest {
		t.Fatal("data digest not negotiated")
	}
	for i := 0; i < 6; i++ {
		p := new(PDU)
		p.setOpcode(opSCSICmd, flagFinal|flagWrite|1)
		p.setU32(16, uint32(i+1))
		p.setU32(20, mb)
		p.setU32(24, in.cmdSN)
		copy(p.BHS[32:], rw10(0x2a, 0, 2048))
		p.Data = make([]byte, 8192)
		b := p.marshal(false, true)
		b[len(b)-1] ^= 0xff // corrupt the data digest
		in.nc.Write(b)
		if r := in.recv(); r.Opcode() != opReject {
			t.Fatalf("command %d: opcode %#x, want Reject", i, r.Opcode())
		}
	}
	if n := srv.dataBuf.inUse(); n != 0 {
		t.Fatalf("%d bytes of budget held by commands that no longer exist", n)
	}
}

// TestOversizedCommandOutsideWindow: a command too large to buffer that is
// also outside the CmdSN window is ignored, and the window stays as wide as
// QueueDepth.
func TestOversizedCommandOutsideWindow(t *testing.T) {
	srv, addr, _ := startServer(t, Config{MaxTransferLength: 1 << 20, QueueDepth: 4}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	for i := 0; i < 20; i++ {
		p := new(PDU)
		p.setOpcode(opSCSICmd, flagFinal|flagRead|1)
		p.setU32(16, uint32(100+i))
		p.setU32(20, 64<<20)
		p.setU32(24, in.cmdSN+1000) // far outside the window
		copy(p.BHS[32:], rw10(0x28, 0, 1))
		in.send(p)
	}
	in.sendPing(7) // answered after every command before it was handled
	for r := in.recv(); r.Opcode() != opNopIn; r = in.recv() {
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, s := range srv.sessions {
		if n := s.inflight.Load(); n != 0 {
			t.Fatalf("inflight %d after ignored commands: window %d wide, QueueDepth 4", n, s.maxCmdSN()-s.expCmdSN.Load()+1)
		}
	}
}

// TestReadBuffersBudgeted: reads hold their result until it is sent, so
// they count against the data budget like writes: an initiator that queues
// large reads and stops reading its socket gets TASK SET FULL beyond it.
func TestReadBuffersBudgeted(t *testing.T) {
	const mb = 1 << 20
	_, addr, ex := startServer(t, Config{MaxTransferLength: 8 * mb, QueueDepth: 32, DataBufferBytes: 8 * mb, SessionDataBufferBytes: 8 * mb}, nil)
	ex.delay = 500 * time.Millisecond
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	for i := 0; i < 32; i++ {
		p := new(PDU)
		p.setOpcode(opSCSICmd, flagFinal|flagRead|1)
		p.setU32(16, uint32(i+1))
		p.setU32(20, 8*mb)
		p.setU32(24, in.cmdSN)
		in.cmdSN++
		// TEST UNIT READY with an 8 MiB read expected.
		in.send(p)
	}
	time.Sleep(200 * time.Millisecond) // not reading the socket meanwhile
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("32 reads x 8 MiB expected, initiator not reading: heap +%d MiB (data budget 8 MiB)", grown>>20)
	if grown > 40*mb {
		t.Fatalf("heap grew %d MiB; budget 8 MiB", grown>>20)
	}
	full := 0
	for i := 0; i < 32; i++ {
		if r := in.recv(); r.Opcode() == opSCSIResp && r.BHS[3] == 0x28 {
			full++
		}
	}
	if full == 0 {
		t.Fatal("no read got TASK SET FULL beyond the budget")
	}
}
