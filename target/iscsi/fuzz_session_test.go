package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/target/scsi"
)

// Stateful fuzzers: the fuzz input is a small program of PDUs that a
// hostile initiator sends; the target runs its real login and full feature
// code on the other end of an in-memory connection, and a property is
// checked on what it did.

// fuzzBytes hands out the fuzz input a byte at a time (zeros once used up).
type fuzzBytes struct {
	b []byte
	i int
}

func (f *fuzzBytes) next() byte {
	if f.i >= len(f.b) {
		f.i++
		return 0
	}
	f.i++
	return f.b[f.i-1]
}

func (f *fuzzBytes) done() bool { return f.i >= len(f.b) }

// pick returns one of the choices, chosen by the next byte.
func (f *fuzzBytes) pick(choices ...string) string {
	return choices[int(f.next())%len(choices)]
}

// drain reads and discards PDUs from nc until it closes, calling seen for
// each.
func drain(nc net.Conn, seen func(*PDU)) {
	rd := pduReader{r: bufio.NewReader(nc), maxData: 1 << 24}
	for {
		var p PDU
		if err := rd.readPDU(&p); err != nil {
			return
		}
		if seen != nil {
			seen(&p)
		}
	}
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// FuzzLoginSequence: whatever sequence of login requests an initiator
// sends, no session reaches full feature phase on a target (or in a
// discovery session) that requires CHAP unless it authenticated for it.
// The fuzzer cannot answer a random CHAP challenge, so every such success
// is a bypass.
func FuzzLoginSequence(f *testing.F) {
	f.Add([]byte{0x81, 3, 0, 0, 1, 1, 2, 0, 3, 0, 0x87, 2, 1, 0, 2, 0})
	f.Add([]byte{0x87, 3, 0, 0, 1, 0, 2, 1})
	f.Add([]byte{0x41, 1, 0, 0, 0x83, 3, 1, 0, 2, 0, 3, 1, 0x81, 1, 4, 2})
	f.Add([]byte{0x01, 2, 0, 1, 1, 1, 0x87, 2, 1, 0, 2, 0})
	f.Fuzz(func(t *testing.T, prog []byte) {
		srv := NewServer(Config{Log: quietLog(), DiscoveryCHAP: &CHAP{User: "disc", Secret: "discsecret12"}})
		srv.AddTarget(TargetConfig{Name: testIQN, Exec: &memExec{}, CHAP: &CHAP{User: "alice", Secret: "alicesecret12"}})
		srv.AddTarget(TargetConfig{Name: openIQN, Exec: &memExec{}})
		srv.AddTarget(TargetConfig{Name: openIQN + "-listed", Exec: &memExec{}, Initiators: []string{"iqn.2026-11.io.csnap:b"}})
		client, server := net.Pipe()
		c := newConn(srv, server)
		done := make(chan error, 1)
		go func() {
			err := c.login()
			server.Close() // the initiator's further writes fail at once
			done <- err
		}()
		go drain(client, nil)
		in := &testInitiator{t: t, isid: 1, cmdSN: 1}
		fb := &fuzzBytes{b: prog}
		for n := 0; n < 8 && !fb.done(); n++ {
			flags := fb.next()
			p := in.loginReq(int(flags>>2)&3, int(flags)&3, flags&0x80 != 0, fuzzLoginKeys(fb)...)
			p.BHS[1] = flags
			client.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := client.Write(p.marshal(false, false)); err != nil {
				break
			}
		}
		client.Close()
		err := <-done
		if err != nil || c.sess == nil {
			return
		}
		s := c.sess
		switch {
		case s.discovery:
			t.Fatalf("discovery session without discovery CHAP (program %x)", prog)
		case s.tgt.cfg.CHAP != nil:
			t.Fatalf("session on %s without CHAP (program %x)", s.tgt.cfg.Name, prog)
		case !s.tgt.allows(s.key.initiator):
			t.Fatalf("initiator %s not on the allow-list of %s logged in", s.key.initiator, s.tgt.cfg.Name)
		case s.key.target != s.tgt.cfg.Name:
			t.Fatalf("session key names %s, session serves %s", s.key.target, s.tgt.cfg.Name)
		}
	})
}

// fuzzLoginKeys builds the text keys of one login request.
func fuzzLoginKeys(fb *fuzzBytes) []kv {
	n := int(fb.next() % 6)
	var out []kv
	for i := 0; i < n; i++ {
		switch fb.next() % 10 {
		case 0:
			out = append(out, kv{"InitiatorName", fb.pick("iqn.2026-11.io.csnap:a", "iqn.2026-11.io.csnap:b", "junk")})
		case 1:
			out = append(out, kv{"SessionType", fb.pick("Normal", "Discovery", "Other")})
		case 2:
			out = append(out, kv{"TargetName", fb.pick(testIQN, openIQN, openIQN+"-listed", "iqn.2026-11.io.csnap:none")})
		case 3:
			out = append(out, kv{"AuthMethod", fb.pick("None", "CHAP", "CHAP,None", "None,CHAP", "SRP")})
		case 4:
			out = append(out, kv{"CHAP_A", fb.pick("5", "7", "5,6,7", "99")})
		case 5:
			out = append(out, kv{"CHAP_N", fb.pick("alice", "disc", "")})
		case 6:
			out = append(out, kv{"CHAP_R", fb.pick("0x00", "0xd41d8cd98f00b204e9800998ecf8427e", "0b", "zz")})
		case 7:
			out = append(out, kv{"CHAP_I", fb.pick("1", "300")}, kv{"CHAP_C", fb.pick("0x0102030405060708", "0x")})
		case 8:
			out = append(out, kv{fb.pick("HeaderDigest", "DataDigest"), fb.pick("None", "CRC32C")})
		default:
			out = append(out, kv{fb.pick("MaxRecvDataSegmentLength", "FirstBurstLength", "InitialR2T", "ImmediateData"), fb.pick("512", "Yes", "No", "16777216")})
		}
	}
	return out
}

// patternByte is what the fuzzing initiator sends at buffer offset off of
// the write whose ITT (and LBA) is itt: never 0 and never the pool poison.
func patternByte(itt uint32, off uint32) byte {
	return byte((itt*7+off*13+off/512)%200) + 1
}

// checkExec stores nothing; it checks that every byte of every WRITE(10)
// it executes is a byte the initiator sent for that position.
type checkExec struct {
	bad    atomic.Int32
	writes atomic.Int32
	first  sync.Once
	what   string
}

func (e *checkExec) Execute(ctx context.Context, c *scsi.Command) scsi.Result {
	if c.CDB[0] != 0x2a {
		return scsi.Result{Data: make([]byte, c.ExpectedLen)[:0]}
	}
	itt := binary.BigEndian.Uint32(c.CDB[2:])
	e.writes.Add(1)
	for off, b := range c.DataOut[:c.ExpectedLen] {
		if b != patternByte(itt, uint32(off)) {
			e.bad.Add(1)
			e.first.Do(func() { e.what = "write byte at offset " + itoa(off) + " was never sent" })
			break
		}
	}
	return scsi.Result{DataOutLen: len(c.DataOut)}
}
func (e *checkExec) LUNs() []uint64       { return []uint64{0} }
func (e *checkExec) NexusLost(scsi.Nexus) {}
func (e *checkExec) TaskManagement(scsi.TMF, uint64, scsi.Nexus) scsi.TMFResponse {
	return scsi.TMFComplete
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// FuzzFullFeatureWrites: after a login, the fuzz program sends WRITE
// commands, Data-Out PDUs with any offsets, lengths, TTTs, DataSNs and F
// bits, NOP-Outs and aborts. Property: no byte reaches the backend that the
// initiator did not send for that position (the server's buffer pool is
// poisoned first, so a recycled byte would show).
func FuzzFullFeatureWrites(f *testing.F) {
	// A write of 2 blocks with its data sent unsolicited in order.
	f.Add([]byte{0, 1, 4, 0, 0, 1, 1, 0, 0, 0, 2, 0x80, 1, 0, 2, 1, 1, 2, 0x80})
	// A 16 KiB write whose two unsolicited Data-Out PDUs both claim
	// offset 0 (issue 14's leak of recycled buffer bytes).
	f.Add([]byte{0, 1, 31, 0, 0, 1, 1, 0, 0, 16, 0, 0, 1, 1, 0, 0, 16, 1, 0x80})
	f.Add([]byte{0, 3, 8, 2, 1, 1, 3, 1, 2, 0, 4, 0x80, 2, 3})
	f.Fuzz(func(t *testing.T, prog []byte) {
		srv := NewServer(Config{Log: quietLog(), MaxTransferLength: 1 << 20, PingInterval: time.Hour})
		poisonPool(srv, 64<<10, 0xee)
		poisonPool(srv, 16<<10, 0xee)
		ex := &checkExec{}
		srv.AddTarget(TargetConfig{Name: testIQN, Exec: ex})
		client, server := net.Pipe()
		c := newConn(srv, server)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		served := make(chan struct{})
		go func() { c.serve(ctx); close(served) }()
		in := &testInitiator{t: t, isid: 1, cmdSN: 1, nc: client, rd: pduReader{r: bufio.NewReader(client), maxData: 1 << 24}, params: map[string]string{}}
		client.SetDeadline(time.Now().Add(5 * time.Second))
		if st := in.login(testIQN, kv{"InitialR2T", "No"}, kv{"ImmediateData", "Yes"}, kv{"FirstBurstLength", "16384"},
			kv{"MaxBurstLength", "16384"}, kv{"MaxRecvDataSegmentLength", "8192"}, kv{"MaxOutstandingR2T", "2"}); st != 0 {
			t.Fatalf("login %#x", st)
		}
		var mu sync.Mutex
		var ttts []uint32
		go drain(client, func(p *PDU) {
			if p.Opcode() == opR2T {
				mu.Lock()
				ttts = append(ttts, p.u32(20))
				mu.Unlock()
			}
		})
		fb := &fuzzBytes{b: prog}
		send := func(p *PDU) bool {
			client.SetWriteDeadline(time.Now().Add(time.Second))
			_, err := client.Write(p.marshal(false, false))
			return err == nil
		}
		ok := true
		for n := 0; n < 32 && ok && !fb.done(); n++ {
			switch fb.next() % 4 {
			case 0: // WRITE(10): ITT, blocks, immediate blocks, flags
				itt := uint32(fb.next() % 8)
				blocks := uint32(fb.next()%64) + 1
				imm := min(uint32(fb.next()%33), blocks)
				flags := fb.next()
				p := new(PDU)
				p.setOpcode(opSCSICmd|(flags&0x40), flagFinal|flagWrite|1)
				p.setU32(16, itt)
				p.setU32(20, blocks*512)
				p.setU32(24, in.cmdSN)
				if flags&0x40 == 0 {
					in.cmdSN++
				}
				copy(p.BHS[32:], rw10(0x2a, itt, uint16(blocks)))
				p.Data = patternData(itt, 0, imm*512)
				ok = send(p)
			case 1: // Data-Out: ITT, TTT choice, offset, length, DataSN, F
				itt := uint32(fb.next() % 8)
				ttt := uint32(reservedTag)
				if k := fb.next(); k%3 != 0 {
					mu.Lock()
					if len(ttts) > 0 {
						ttt = ttts[int(k)%len(ttts)]
					}
					mu.Unlock()
				}
				off := uint32(fb.next()) * 512
				length := uint32(fb.next()%17) * 512
				dataSN := uint32(fb.next() % 8)
				fl := fb.next()
				d := new(PDU)
				d.setOpcode(opDataOut, fl&flagFinal)
				d.setU32(16, itt)
				d.setU32(20, ttt)
				d.setU32(36, dataSN)
				d.setU32(40, off)
				d.Data = patternData(itt, off, length)
				ok = send(d)
			case 2: // NOP-Out
				p := new(PDU)
				p.setOpcode(opNopOut|0x40, flagFinal)
				p.setU32(16, 0x1000+uint32(fb.next()))
				p.setU32(20, reservedTag)
				p.setU32(24, in.cmdSN)
				ok = send(p)
			case 3: // ABORT TASK
				p := new(PDU)
				p.setOpcode(opTaskMgmt|0x40, 0x80|1)
				p.setU32(16, 0x2000+uint32(fb.next()))
				p.setU32(20, uint32(fb.next()%8))
				p.setU32(24, in.cmdSN)
				p.setU32(32, in.cmdSN-1)
				ok = send(p)
			}
		}
		// Let commands that got all their data run, then hang up.
		time.Sleep(5 * time.Millisecond)
		client.Close()
		<-served
		if ex.bad.Load() > 0 {
			t.Fatalf("%s (program %x)", ex.what, prog)
		}
	})
}

// patternData is the data the fuzzing initiator sends for positions
// [off, off+n) of write itt.
func patternData(itt, off, n uint32) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = patternByte(itt, off+uint32(i))
	}
	return b
}
