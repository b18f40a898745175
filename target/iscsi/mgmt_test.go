package iscsi

import (
	"bytes"
	"testing"
	"time"
)

func TestNopOutEcho(t *testing.T) {
	_, addr, _ := startServer(t, Config{}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	p := new(PDU)
	p.setOpcode(opNopOut|0x40, flagFinal)
	p.setU32(16, 77)
	p.setU32(20, reservedTag)
	p.setU32(24, in.cmdSN)
	p.Data = []byte("are you there?")
	in.send(p)
	r := in.recv()
	if r.Opcode() != opNopIn || r.ITT() != 77 || !bytes.Equal(r.Data, p.Data) || r.u32(20) != reservedTag {
		t.Fatalf("NOP-In: opcode %#x ITT %d data %q", r.Opcode(), r.ITT(), r.Data)
	}
}

func TestLogout(t *testing.T) {
	_, addr, ex := startServer(t, Config{}, nil)
	ex.lostDelay = 100 * time.Millisecond // a NexusLost after the response would be seen late
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	p := new(PDU)
	p.setOpcode(opLogoutReq|0x40, flagFinal) // reason 0: close the session
	p.setU32(16, 5)
	p.setU32(24, in.cmdSN)
	in.send(p)
	r := in.recv()
	if r.Opcode() != opLogoutResp || r.BHS[2] != 0 || r.ITT() != 5 {
		t.Fatalf("logout response: opcode %#x response %d", r.Opcode(), r.BHS[2])
	}
	// The nexus was released before the response (an initiator may
	// reserve through another nexus right away), and only once.
	if n := ex.lost.Load(); n != 1 {
		t.Fatalf("NexusLost called %d times before the logout response, want 1", n)
	}
	// The target closes the connection after the response.
	in.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	var q PDU
	if err := in.rd.readPDU(&q); err == nil {
		t.Fatalf("connection still open after logout (got opcode %#x)", q.Opcode())
	}
	time.Sleep(300 * time.Millisecond) // the session's close has run
	if n := ex.lost.Load(); n != 1 {
		t.Fatalf("NexusLost called %d times, want 1", n)
	}
}

func TestTaskManagement(t *testing.T) {
	_, addr, _ := startServer(t, Config{}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	tmf := func(fn byte, lun uint64, ref uint32) byte {
		p := new(PDU)
		p.setOpcode(opTaskMgmt|0x40, flagFinal|fn)
		p.BHS[9] = byte(lun)
		in.itt++
		p.setU32(16, 1000+in.itt)
		p.setU32(20, ref)
		p.setU32(24, in.cmdSN)
		p.setU32(32, in.cmdSN)
		in.send(p)
		r := in.recv()
		if r.Opcode() != opTaskMgmtRsp {
			t.Fatalf("TMF %d: opcode %#x", fn, r.Opcode())
		}
		return r.BHS[2]
	}
	if got := tmf(5, 0, reservedTag); got != 0 {
		t.Errorf("LUN RESET: response %d", got)
	}
	if got := tmf(5, 9, reservedTag); got != 2 {
		t.Errorf("LUN RESET of a missing LUN: response %d, want 2 (LUN does not exist)", got)
	}
	// A LUN on another bus (peripheral addressing, bus 3) does not exist.
	p := new(PDU)
	p.setOpcode(opTaskMgmt|0x40, flagFinal|5)
	p.BHS[8] = 3
	p.setU32(16, 4242)
	p.setU32(20, reservedTag)
	p.setU32(24, in.cmdSN)
	in.send(p)
	if r := in.recv(); r.BHS[2] != 2 {
		t.Errorf("LUN RESET on bus 3: response %d, want 2", r.BHS[2])
	}
	if got := tmf(1, 0, 0xdead); got != 1 {
		t.Errorf("ABORT TASK of an unknown task: response %d, want 1", got)
	}
	if got := tmf(8, 0, 1); got != 4 {
		t.Errorf("TASK REASSIGN: response %d, want 4 (not supported at ERL 0)", got)
	}
	if got := tmf(6, 0, reservedTag); got != 0 {
		t.Errorf("TARGET WARM RESET: response %d", got)
	}
	// The session still works.
	if st, _ := in.scsiCmd(rw10(0x28, 0, 1), 512, true, nil, 0); st != 0 {
		t.Fatalf("I/O after TMFs: status %#x", st)
	}
}

func TestLUNCodec(t *testing.T) {
	for _, lun := range []uint64{0, 1, 255, 256, 4000, 16383} {
		if got := decodeLUN(encodeLUN(lun)); got != lun {
			t.Errorf("LUN %d round-trips to %d", lun, got)
		}
	}
	if got := decodeLUN(0x0305 << 48); got < 1<<16 {
		t.Errorf("bus 3 LUN 5 decoded to existing LUN %d", got)
	}
}

// sendRead1 sends a READ(10) of one block at LBA 0 with task tag itt
// (without waiting for its answer).
func (in *testInitiator) sendRead1(itt uint32) { in.send(in.read1(itt, 0)) }

// read1 builds a READ(10) of block lba with task tag itt and the next CmdSN.
func (in *testInitiator) read1(itt, lba uint32) *PDU {
	p := new(PDU)
	p.setOpcode(opSCSICmd, flagFinal|flagRead|1)
	p.setU32(16, itt)
	p.setU32(20, 512)
	p.setU32(24, in.cmdSN)
	in.cmdSN++
	copy(p.BHS[32:], rw10(0x28, lba, 1))
	return p
}

// sendPing sends an immediate NOP-Out with task tag itt that asks for a
// NOP-In.
func (in *testInitiator) sendPing(itt uint32) {
	nop := new(PDU)
	nop.setOpcode(opNopOut|0x40, flagFinal)
	nop.setU32(16, itt)
	nop.setU32(20, reservedTag)
	nop.setU32(24, in.cmdSN)
	in.send(nop)
}

// TestSlowInlineCommandHandsOffReading: at queue depth 1 the reader runs a
// command itself; when that command is slow, reading moves to another
// goroutine, so a NOP-Out sent behind it is answered first.
func TestSlowInlineCommandHandsOffReading(t *testing.T) {
	_, addr, ex := startServer(t, Config{}, nil)
	ex.delay = 400 * time.Millisecond
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	in.sendRead1(1)
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	in.sendPing(2)
	r := in.recv()
	if r.Opcode() != opNopIn || r.ITT() != 2 {
		t.Fatalf("first answer: opcode %#x ITT %d, want the NOP-In", r.Opcode(), r.ITT())
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("NOP-In took %v behind a slow command", d)
	}
	if r := in.recv(); r.Opcode() != opDataIn || r.ITT() != 1 {
		t.Fatalf("second answer: opcode %#x ITT %d, want the READ's data", r.Opcode(), r.ITT())
	}
	// The session goes on normally afterwards (one reader, not two).
	ex.delay = 0
	for i := 0; i < 20; i++ {
		if st, _ := in.scsiCmd(rw10(0x28, uint32(i), 1), 512, true, nil, 0); st != 0 {
			t.Fatalf("command %d after the handoff: status %#x", i, st)
		}
	}
}

// TestInlineWatchdogRearms: the watchdog that hands reading off from a
// slow inline command is one timer per connection, armed while inline
// commands run back to back and disarmed when they stop. A slow command
// is handed off both right after a run of fast ones (watchdog armed) and
// after the connection was idle (watchdog disarmed), several times.
func TestInlineWatchdogRearms(t *testing.T) {
	_, addr, ex := startServer(t, Config{}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	itt := uint32(100)
	for round := 0; round < 4; round++ {
		ex.delay = 0
		for i := 0; i < 50; i++ {
			if st, _ := in.scsiCmd(rw10(0x28, uint32(i), 1), 512, true, nil, 0); st != 0 {
				t.Fatalf("round %d: fast command %d: status %#x", round, i, st)
			}
		}
		if round%2 == 1 {
			time.Sleep(10 * time.Millisecond) // idle: the watchdog disarms
		}
		ex.delay = 300 * time.Millisecond
		itt++
		in.sendRead1(itt)
		time.Sleep(10 * time.Millisecond)
		itt++
		start := time.Now()
		in.sendPing(itt)
		r := in.recv()
		if r.Opcode() != opNopIn || r.ITT() != itt {
			t.Fatalf("round %d: first answer: opcode %#x ITT %d, want the NOP-In %d", round, r.Opcode(), r.ITT(), itt)
		}
		if d := time.Since(start); d > 150*time.Millisecond {
			t.Fatalf("round %d: NOP-In took %v behind a slow command", round, d)
		}
		if r := in.recv(); r.Opcode() != opDataIn || r.ITT() != itt-1 {
			t.Fatalf("round %d: second answer: opcode %#x ITT %d, want the READ's data", round, r.Opcode(), r.ITT())
		}
	}
}

// TestAbortBeforeArrival: an ABORT TASK whose RefCmdSN lies ahead of the
// commands received (and below the TMF's own CmdSN) cancels that CmdSN: the
// command, arriving late, never runs, and the window moves on.
func TestAbortBeforeArrival(t *testing.T) {
	_, addr, ex := startServer(t, Config{}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	first := in.cmdSN
	tm := new(PDU)
	tm.setOpcode(opTaskMgmt, flagFinal|1) // non-immediate, CmdSN first+1
	tm.setU32(16, 900)
	tm.setU32(20, 77) // the ITT the late command will carry
	tm.setU32(24, first+1)
	tm.setU32(32, first) // RefCmdSN
	in.send(tm)
	if r := in.recv(); r.Opcode() != opTaskMgmtRsp || r.BHS[2] != 0 {
		t.Fatalf("abort of a command not yet arrived: opcode %#x response %d, want FUNCTION COMPLETE", r.Opcode(), r.BHS[2])
	}
	// The late command (a write of 0xab) arrives and must not run.
	data := bytes.Repeat([]byte{0xab}, 512)
	w := new(PDU)
	w.setOpcode(opSCSICmd, flagFinal|flagWrite|1)
	w.setU32(16, 77)
	w.setU32(20, 512)
	w.setU32(24, first)
	copy(w.BHS[32:], rw10(0x2a, 5, 1))
	w.Data = data
	in.send(w)
	// The next command (CmdSN first+2) runs: the window did not stall.
	in.cmdSN = first + 2
	st, got := in.scsiCmd(rw10(0x28, 5, 1), 512, true, nil, 0)
	if st != 0 {
		t.Fatalf("command after the cancelled one: status %#x", st)
	}
	if bytes.Equal(got, data) {
		t.Fatal("the cancelled write ran")
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if ex.data[5*512] == 0xab {
		t.Fatal("the cancelled write reached the backend")
	}
}

// TestPipelinedCommandsRunConcurrently: commands that arrive together (an
// initiator keeping several in flight) are not run inline by the reader one
// after another; only a command with nothing buffered behind it is. Run
// inline, slow commands (O_DIRECT reads waiting on the disk, each under the
// watchdog's budget) executed at queue depth 1 whatever the initiator sent.
func TestPipelinedCommandsRunConcurrently(t *testing.T) {
	srv, addr, _ := startServer(t, Config{}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	// Queue depth 1: commands run inline. Not necessarily every one: when
	// a slow run (the race detector, a loaded machine) outlives the
	// watchdog's budget, the next command can reach the new reader before
	// the old one has counted itself done, and runs in a goroutine.
	before := srv.inlineRuns.Load()
	for i := 0; i < 5; i++ {
		if st, _ := in.scsiCmd(rw10(0x28, uint32(i), 1), 512, true, nil, 0); st != 0 {
			t.Fatalf("command %d: status %#x", i, st)
		}
	}
	if n := srv.inlineRuns.Load() - before; n == 0 {
		t.Fatal("no command at queue depth 1 ran inline")
	}
	// 16 READs in one write: they reach the reader's buffer together.
	const n = 16
	var batch []byte
	for i := 0; i < n; i++ {
		batch = append(batch, in.read1(uint32(1000+i), uint32(i)).marshal(false, false)...)
	}
	before = srv.inlineRuns.Load()
	if _, err := in.nc.Write(batch); err != nil {
		t.Fatal(err)
	}
	for got := 0; got < n; {
		if r := in.recv(); r.Opcode() == opDataIn && r.BHS[1]&0x01 != 0 {
			got++ // the Data-In carrying status ends a command
		}
	}
	if inl := srv.inlineRuns.Load() - before; inl > 1 {
		t.Fatalf("%d of %d pipelined commands ran inline on the reader, want at most the last", inl, n)
	}
}
