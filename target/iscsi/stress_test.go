package iscsi

import (
	"bytes"
	"math/rand"
	"testing"
	"time"
)

// TestPipelinedStress keeps many commands in flight on one session: writes
// that need several R2Ts (small bursts, several outstanding), reads, and
// ABORT TASKs racing them, with responses arriving out of order. Every
// command gets exactly one answer (or is aborted), and the data written
// reads back.
func TestPipelinedStress(t *testing.T) {
	_, addr, ex := startServer(t, Config{}, nil)
	ex.delay = time.Millisecond
	in := dialInitiator(t, addr)
	in.nc.SetDeadline(time.Now().Add(60 * time.Second))
	if st := in.login(testIQN, kv{"InitialR2T", "No"}, kv{"ImmediateData", "Yes"}, kv{"FirstBurstLength", "4096"},
		kv{"MaxBurstLength", "8192"}, kv{"MaxOutstandingR2T", "3"}); st != 0 {
		t.Fatalf("login %#x", st)
	}
	rng := rand.New(rand.NewSource(1))
	type cmd struct {
		write bool
		lba   uint32
		data  []byte
	}
	const n = 400
	cmds := map[uint32]*cmd{}
	pending := 0
	expect := map[uint32][]byte{} // lba -> last data written by an unaborted, answered write
	// Each command uses its own LBA range so concurrent writes don't overlap.
	for i := 0; i < n; i++ {
		itt := uint32(i + 1)
		c := &cmd{write: rng.Intn(2) == 0, lba: uint32(i * 64)}
		p := new(PDU)
		blocks := 1 + rng.Intn(48)
		edtl := uint32(blocks * 512)
		flags := byte(flagFinal | 1)
		if c.write {
			c.data = make([]byte, edtl)
			rng.Read(c.data)
			flags |= flagWrite
			copy(p.BHS[32:], rw10(0x2a, c.lba, uint16(blocks)))
			imm := min(int(edtl), 1024)
			p.Data = c.data[:imm]
		} else {
			flags |= flagRead
			copy(p.BHS[32:], rw10(0x28, c.lba, uint16(blocks)))
		}
		p.setOpcode(opSCSICmd, flags)
		p.setU32(16, itt)
		p.setU32(20, edtl)
		p.setU32(24, in.cmdSN)
		in.cmdSN++
		in.send(p)
		if c.write && len(c.data) > 1024 {
			// Unsolicited data up to FirstBurstLength.
			end := min(len(c.data), 4096)
			d := new(PDU)
			d.setOpcode(opDataOut, flagFinal)
			d.setU32(16, itt)
			d.setU32(20, reservedTag)
			d.setU32(40, 1024)
			d.Data = c.data[1024:end]
			in.send(d)
		}
		cmds[itt] = c
		pending++
		if rng.Intn(10) == 0 {
			// Abort a recent command: it may be done already.
			ref := uint32(1 + rng.Intn(i+1))
			tm := new(PDU)
			tm.setOpcode(opTaskMgmt|0x40, flagFinal|1)
			tm.setU32(16, 0x10000+itt)
			tm.setU32(20, ref)
			tm.setU32(24, in.cmdSN)
			in.send(tm)
		}
	}
	// Read answers until every command answered, or the stream has been
	// quiet for a while (aborted commands never answer).
	aborted := 0
	for pending > 0 {
		in.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
		if !more(in) {
			break
		}
		r := in.recv()
		switch r.Opcode() {
		case opR2T:
			c := cmds[r.ITT()]
			off, l := r.u32(40), r.u32(44)
			// Answer in PDUs of at most 2 KiB.
			for sent, sn := uint32(0), uint32(0); sent < l; sn++ {
				k := min(l-sent, 2048)
				d := new(PDU)
				fl := byte(0)
				if sent+k == l {
					fl = flagFinal
				}
				d.setOpcode(opDataOut, fl)
				d.setU32(16, r.ITT())
				d.setU32(20, r.u32(20))
				d.setU32(36, sn)
				d.setU32(40, off+sent)
				d.Data = c.data[off+sent : off+sent+k]
				in.send(d)
				sent += k
			}
		case opDataIn:
			if r.Flags()&flagStatus != 0 {
				pending--
			}
		case opSCSIResp:
			c := cmds[r.ITT()]
			if c == nil || r.BHS[3] != 0 {
				t.Fatalf("ITT %#x: status %#x", r.ITT(), r.BHS[3])
			}
			if c.write {
				expect[c.lba] = c.data
			}
			pending--
		case opTaskMgmtRsp:
			if r.BHS[2] == 0 {
				aborted++
			}
		case opReject:
			var h PDU
			copy(h.BHS[:], r.Data)
			t.Fatalf("Reject reason %#x of opcode %#x ITT %#x TTT %#x offset %d len %d", r.BHS[2], h.Opcode(), h.ITT(), h.u32(20), h.u32(40), h.dataLen())
		default:
			t.Fatalf("unexpected opcode %#x", r.Opcode())
		}
	}
	in.nc.SetDeadline(time.Now().Add(30 * time.Second))
	// Aborts that found their task running take it with them; every
	// command is answered or was aborted.
	if pending > aborted {
		t.Fatalf("%d commands unanswered, only %d aborts completed", pending, aborted)
	}
	// Everything written and answered reads back.
	for lba, want := range expect {
		st, got := in.scsiCmd(rw10(0x28, lba, uint16(len(want)/512)), uint32(len(want)), true, nil, 0)
		if st != 0 || !bytes.Equal(got, want) {
			t.Fatalf("lba %d: read back mismatch (status %#x)", lba, st)
		}
	}
	if len(expect) < n/4 {
		t.Fatalf("only %d writes completed", len(expect))
	}
}

// more reports whether another PDU arrives within the read deadline.
func more(in *testInitiator) bool {
	b, err := in.rd.r.(interface{ Peek(int) ([]byte, error) }).Peek(1)
	return err == nil && len(b) == 1
}
