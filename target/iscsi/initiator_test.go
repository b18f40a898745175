package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/target/scsi"
)

// memExec is a minimal SCSI executor for transport tests: READ(10) and
// WRITE(10) over a byte slice, GOOD for anything else. The real command
// sets live in package scsi and have their own tests.
type memExec struct {
	mu   sync.Mutex
	data []byte
	// delay, when set, slows every command (to keep tasks in flight).
	delay time.Duration
	lost  atomic.Int32 // NexusLost calls
	// lostDelay, when set, slows NexusLost (its count moves at the end).
	lostDelay time.Duration
}

func (m *memExec) Execute(ctx context.Context, c *scsi.Command) scsi.Result {
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	switch c.CDB[0] {
	case 0x28, 0x2a:
		lba := int(binary.BigEndian.Uint32(c.CDB[2:]))
		n := int(binary.BigEndian.Uint16(c.CDB[7:])) * 512
		off := lba * 512
		if off+n > len(m.data) {
			return senseResult(scsi.SenseIllegalRequest, 0x21, 0)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if c.CDB[0] == 0x28 {
			buf := make([]byte, n)
			copy(buf, m.data[off:])
			return scsi.Result{Data: buf}
		}
		if len(c.DataOut) < n {
			return senseResult(scsi.SenseIllegalRequest, 0x24, 0)
		}
		copy(m.data[off:], c.DataOut[:n])
		return scsi.Result{DataOutLen: n}
	}
	return scsi.Result{}
}
func (m *memExec) LUNs() []uint64 { return []uint64{0} }
func (m *memExec) NexusLost(scsi.Nexus) {
	time.Sleep(m.lostDelay)
	m.lost.Add(1)
}
func (m *memExec) TaskManagement(scsi.TMF, uint64, scsi.Nexus) scsi.TMFResponse {
	return scsi.TMFComplete
}

const testIQN = "iqn.2026-11.io.csnap:test"

// startServer runs a Server with one memExec target on a loopback port.
func startServer(t *testing.T, cfg Config, chap *CHAP) (*Server, string, *memExec) {
	t.Helper()
	if cfg.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		cfg.Log = logrus.NewEntry(l)
	}
	srv := NewServer(cfg)
	ex := &memExec{data: make([]byte, 16<<20)}
	if err := srv.AddTarget(TargetConfig{Name: testIQN, Exec: ex, CHAP: chap}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); srv.Close(); <-done })
	return srv, l.Addr().String(), ex
}

// testInitiator is a deliberately simple iSCSI initiator for tests: one
// connection, no digests, commands sent one at a time unless the test
// drives the PDUs itself.
type testInitiator struct {
	t      *testing.T
	nc     net.Conn
	rd     pduReader
	cmdSN  uint32
	statSN uint32
	itt    uint32
	lun    uint64 // the LUN scsiCmd addresses
	isid   uint16
	params map[string]string
}

func dialInitiator(t *testing.T, addr string) *testInitiator {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	// Every test initiator gets its own ISID (from its unique local
	// port), so logins do not reinstate each other's sessions.
	isid := uint16(nc.LocalAddr().(*net.TCPAddr).Port)
	return &testInitiator{t: t, nc: nc, isid: isid, rd: pduReader{r: bufio.NewReader(nc), maxData: 1 << 24}, cmdSN: 1, params: map[string]string{}}
}

func (in *testInitiator) send(p *PDU) {
	in.t.Helper()
	if _, err := in.nc.Write(p.marshal(in.rd.headerDigest, in.rd.dataDigest)); err != nil {
		in.t.Fatalf("send: %v", err)
	}
}

func (in *testInitiator) recv() *PDU {
	in.t.Helper()
	p := new(PDU)
	if err := in.rd.readPDU(p); err != nil {
		in.t.Fatalf("recv: %v", err)
	}
	return p
}

// loginReq builds a login request.
func (in *testInitiator) loginReq(csg, nsg int, transit bool, pairs ...kv) *PDU {
	p := new(PDU)
	flags := byte(csg<<2 | nsg)
	if transit {
		flags |= flagTransit
	}
	p.setOpcode(opLoginReq|0x40, flags)
	copy(p.BHS[8:14], []byte{0x80, 0, 0, 0, byte(in.isid >> 8), byte(in.isid)})
	p.setU32(16, in.itt)
	p.setU32(24, in.cmdSN)
	p.setU32(28, in.statSN)
	p.Data = encodeText(pairs)
	return p
}

// login performs a login without authentication straight into full
// feature phase and returns the response's status.
func (in *testInitiator) login(target string, extra ...kv) uint16 {
	in.t.Helper()
	pairs := []kv{{"InitiatorName", "iqn.2026-11.io.csnap:test-initiator"}, {"SessionType", "Normal"}, {"TargetName", target}}
	if target == "" {
		pairs = []kv{{"InitiatorName", "iqn.2026-11.io.csnap:test-initiator"}, {"SessionType", "Discovery"}}
	}
	pairs = append(pairs, extra...)
	in.send(in.loginReq(stageOperational, stageFullFeature, true, pairs...))
	r := in.recv()
	if r.Opcode() != opLoginResp {
		in.t.Fatalf("login: got opcode %#x", r.Opcode())
	}
	status := uint16(r.BHS[36])<<8 | uint16(r.BHS[37])
	in.statSN = r.u32(24) + 1
	kvs, _ := parseText(r.Data, false)
	for _, p := range kvs {
		in.params[p.Key] = p.Value
	}
	// Digests apply from the first PDU after the login.
	in.rd.headerDigest = in.params["HeaderDigest"] == "CRC32C"
	in.rd.dataDigest = in.params["DataDigest"] == "CRC32C"
	return status
}

// scsiCmd sends a SCSI command (with immediate data if given) to the
// initiator's LUN (in.lun) and returns the PDUs of its answer up to the
// status, answering R2Ts with Data-Out PDUs no larger than the target's
// MaxRecvDataSegmentLength.
func (in *testInitiator) scsiCmd(cdb []byte, edtl uint32, read bool, data []byte, immediate int) (status byte, readData []byte) {
	in.t.Helper()
	in.itt++
	p := new(PDU)
	flags := byte(flagFinal)
	if read {
		flags |= flagRead
	}
	if data != nil {
		flags |= flagWrite
	}
	p.setOpcode(opSCSICmd, flags|1)
	binary.BigEndian.PutUint64(p.BHS[8:], encodeLUN(in.lun))
	p.setU32(16, in.itt)
	p.setU32(20, edtl)
	p.setU32(24, in.cmdSN)
	in.cmdSN++
	p.setU32(28, in.statSN)
	copy(p.BHS[32:], cdb)
	if immediate > 0 {
		p.Data = data[:immediate]
	}
	in.send(p)
	seg := uint32(8192) // the least a target may declare
	if v, err := strconv.ParseUint(in.params["MaxRecvDataSegmentLength"], 10, 32); err == nil && v > 0 {
		seg = uint32(v)
	}
	for {
		r := in.recv()
		switch r.Opcode() {
		case opR2T:
			off, n := r.u32(40), r.u32(44)
			for sent, sn := uint32(0), uint32(0); sent < n; sn++ {
				k := min(n-sent, seg)
				d := new(PDU)
				fl := byte(0)
				if sent+k == n {
					fl = flagFinal
				}
				d.setOpcode(opDataOut, fl)
				binary.BigEndian.PutUint64(d.BHS[8:], encodeLUN(in.lun))
				d.setU32(16, in.itt)
				d.setU32(20, r.u32(20))
				d.setU32(36, sn) // DataSN within the R2T's sequence
				d.setU32(40, off+sent)
				d.Data = data[off+sent : off+sent+k]
				in.send(d)
				sent += k
			}
		case opDataIn:
			readData = append(readData, r.Data...)
			if r.Flags()&flagStatus != 0 {
				in.statSN = r.u32(24) + 1
				return r.BHS[3], readData
			}
		case opSCSIResp:
			in.statSN = r.u32(24) + 1
			return r.BHS[3], readData
		default:
			in.t.Fatalf("unexpected opcode %#x while waiting for a SCSI answer", r.Opcode())
		}
	}
}

func rw10(op byte, lba uint32, blocks uint16) []byte {
	cdb := make([]byte, 10)
	cdb[0] = op
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], blocks)
	return cdb
}

func TestLoginWriteRead(t *testing.T) {
	_, addr, _ := startServer(t, Config{}, nil)
	for _, tc := range []struct {
		name      string
		keys      []kv
		immediate int
	}{
		{"R2T only", []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "No"}, {"MaxBurstLength", "16384"}}, 0},
		{"immediate+R2T", []kv{{"InitialR2T", "Yes"}, {"ImmediateData", "Yes"}, {"FirstBurstLength", "8192"}}, 8192},
		{"many R2Ts", []kv{{"MaxBurstLength", "4096"}, {"MaxOutstandingR2T", "4"}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := dialInitiator(t, addr)
			if st := in.login(testIQN, tc.keys...); st != 0 {
				t.Fatalf("login status %#x", st)
			}
			data := make([]byte, 64*1024)
			for i := range data {
				data[i] = byte(i * 7)
			}
			if st, _ := in.scsiCmd(rw10(0x2a, 8, 128), uint32(len(data)), false, data, tc.immediate); st != 0 {
				t.Fatalf("write status %#x", st)
			}
			st, got := in.scsiCmd(rw10(0x28, 8, 128), uint32(len(data)), true, nil, 0)
			if st != 0 || string(got) != string(data) {
				t.Fatalf("read back status %#x, %d bytes, equal=%v", st, len(got), string(got) == string(data))
			}
		})
	}
}

func TestLoginFailures(t *testing.T) {
	_, addr, _ := startServer(t, Config{}, &CHAP{User: "u", Secret: "secretsecret"})
	in := dialInitiator(t, addr)
	if st := in.login("iqn.2026-11.io.csnap:nope"); st != loginNotFound {
		t.Errorf("unknown target: status %#x, want %#x", st, loginNotFound)
	}
	in = dialInitiator(t, addr)
	// Skipping security on a CHAP target is an authentication failure.
	if st := in.login(testIQN); st != loginAuthFailed {
		t.Errorf("no auth on CHAP target: status %#x, want %#x", st, loginAuthFailed)
	}
}

// chapLogin logs in with CHAP (MD5), optionally mutual, and returns the
// final status.
func chapLogin(t *testing.T, in *testInitiator, user, secret string, mutual bool, targetSecret string) uint16 {
	t.Helper()
	base := []kv{{"InitiatorName", "iqn.2026-11.io.csnap:test-initiator"}, {"SessionType", "Normal"}, {"TargetName", testIQN}, {"AuthMethod", "CHAP,None"}}
	in.send(in.loginReq(stageSecurity, stageOperational, false, base...))
	r := in.recv()
	if st := uint16(r.BHS[36])<<8 | uint16(r.BHS[37]); st != 0 {
		return st
	}
	in.send(in.loginReq(stageSecurity, stageOperational, false, kv{"CHAP_A", "5"}))
	r = in.recv()
	m := map[string]string{}
	kvs, _ := parseText(r.Data, false)
	for _, p := range kvs {
		m[p.Key] = p.Value
	}
	id := 0
	fmt.Sscan(m["CHAP_I"], &id)
	chal, err := decodeBinary(m["CHAP_C"])
	if err != nil {
		t.Fatalf("CHAP_C %q: %v", m["CHAP_C"], err)
	}
	resp := chapResponse(m["CHAP_A"], byte(id), secret, chal)
	keys := []kv{{"CHAP_N", user}, {"CHAP_R", fmt.Sprintf("0x%x", resp)}}
	myChal := []byte("0123456789abcdef")
	if mutual {
		keys = append(keys, kv{"CHAP_I", "7"}, kv{"CHAP_C", fmt.Sprintf("0x%x", myChal)})
	}
	in.send(in.loginReq(stageSecurity, stageOperational, true, keys...))
	r = in.recv()
	if st := uint16(r.BHS[36])<<8 | uint16(r.BHS[37]); st != 0 {
		return st
	}
	if mutual {
		kvs, _ := parseText(r.Data, false)
		m = map[string]string{}
		for _, p := range kvs {
			m[p.Key] = p.Value
		}
		got, _ := decodeBinary(m["CHAP_R"])
		if want := chapResponse(m2alg(r), 7, targetSecret, myChal); string(got) != string(want) {
			t.Errorf("mutual CHAP: target's response does not verify")
		}
	}
	in.send(in.loginReq(stageOperational, stageFullFeature, true))
	r = in.recv()
	return uint16(r.BHS[36])<<8 | uint16(r.BHS[37])
}

func m2alg(*PDU) string { return "5" }

func TestCHAP(t *testing.T) {
	cfg := &CHAP{User: "alice", Secret: "alicesecret12", MutualUser: "tgt", MutualSecret: "targetsecret1"}
	_, addr, _ := startServer(t, Config{}, cfg)
	if st := chapLogin(t, dialInitiator(t, addr), "alice", "alicesecret12", false, ""); st != 0 {
		t.Errorf("one-way CHAP: status %#x", st)
	}
	if st := chapLogin(t, dialInitiator(t, addr), "alice", "alicesecret12", true, "targetsecret1"); st != 0 {
		t.Errorf("mutual CHAP: status %#x", st)
	}
	if st := chapLogin(t, dialInitiator(t, addr), "alice", "wrong-secret1", false, ""); st != loginAuthFailed {
		t.Errorf("wrong secret: status %#x, want %#x", st, loginAuthFailed)
	}
	if st := chapLogin(t, dialInitiator(t, addr), "mallory", "alicesecret12", false, ""); st != loginAuthFailed {
		t.Errorf("wrong user: status %#x, want %#x", st, loginAuthFailed)
	}
}

func TestDiscoverySendTargets(t *testing.T) {
	srv, addr, _ := startServer(t, Config{}, nil)
	// Enough targets that the answer spans several text responses.
	for i := 0; i < 300; i++ {
		srv.AddTarget(TargetConfig{Name: fmt.Sprintf("%s:snap-%04d", testIQN, i), Exec: &memExec{}})
	}
	in := dialInitiator(t, addr)
	if st := in.login("", kv{"MaxRecvDataSegmentLength", "4096"}); st != 0 {
		t.Fatalf("discovery login status %#x", st)
	}
	var text []byte
	ttt := uint32(reservedTag)
	for i := 0; i < 100; i++ {
		p := new(PDU)
		p.setOpcode(opTextReq|0x40, flagFinal)
		p.setU32(16, 99)
		p.setU32(20, ttt)
		p.setU32(24, in.cmdSN)
		if ttt == reservedTag {
			p.Data = encodeText([]kv{{"SendTargets", "All"}})
		}
		in.send(p)
		r := in.recv()
		if r.Opcode() != opTextResp {
			t.Fatalf("opcode %#x", r.Opcode())
		}
		if len(r.Data) > 4096 {
			t.Fatalf("text response of %d bytes exceeds the initiator's 4096", len(r.Data))
		}
		text = append(text, r.Data...)
		if r.Final() {
			break
		}
		ttt = r.u32(20)
	}
	pairs, err := parseText(text, true)
	if err != nil {
		t.Fatal(err)
	}
	names := 0
	for _, p := range pairs {
		if p.Key == "TargetName" {
			names++
		}
		if p.Key == "TargetAddress" && !strings.HasPrefix(p.Value, addr+",") {
			t.Errorf("TargetAddress %q, want the portal %s", p.Value, addr)
		}
	}
	if names != 301 {
		t.Errorf("SendTargets listed %d targets, want 301", names)
	}
}

// TestMalformedPDUIsolated sends garbage on one connection while another
// session does I/O: the bad connection is rejected or closed, the good one
// carries on undisturbed.
func TestMalformedPDUIsolated(t *testing.T) {
	_, addr, _ := startServer(t, Config{}, nil)
	good := dialInitiator(t, addr)
	if st := good.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	data := make([]byte, 32*1024)
	for i := range data {
		data[i] = byte(i)
	}
	bad := []func(in *testInitiator){
		func(in *testInitiator) { in.nc.Write(make([]byte, 48)) }, // all zero NOP-Out, CmdSN 0
		func(in *testInitiator) { // data segment length beyond any limit
			p := new(PDU)
			p.setOpcode(opSCSICmd, flagFinal|flagWrite)
			b := p.marshal(false, false)
			b[5], b[6], b[7] = 0xff, 0xff, 0xff
			in.nc.Write(b)
		},
		func(in *testInitiator) { // Data-Out for a task that does not exist
			p := new(PDU)
			p.setOpcode(opDataOut, flagFinal)
			p.setU32(16, 1234)
			p.setU32(20, 77)
			p.Data = make([]byte, 512)
			in.nc.Write(p.marshal(false, false))
		},
		func(in *testInitiator) { // unknown opcode
			p := new(PDU)
			p.setOpcode(0x1c, flagFinal)
			in.nc.Write(p.marshal(false, false))
		},
		func(in *testInitiator) { in.nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) },
	}
	for i, f := range bad {
		in := dialInitiator(t, addr)
		if i%2 == 0 {
			if st := in.login(testIQN); st != 0 {
				t.Fatalf("login %#x", st)
			}
		}
		f(in)
		if st, _ := good.scsiCmd(rw10(0x2a, uint32(i*64), 64), uint32(len(data)), false, data, 0); st != 0 {
			t.Fatalf("good session write after bad input %d: status %#x", i, st)
		}
		st, got := good.scsiCmd(rw10(0x28, uint32(i*64), 64), uint32(len(data)), true, nil, 0)
		if st != 0 || string(got) != string(data) {
			t.Fatalf("good session read after bad input %d failed", i)
		}
	}
}

// TestCmdSNWindow checks that a command outside the window is ignored and
// that many commands may be in flight at once.
func TestCmdSNWindow(t *testing.T) {
	_, addr, ex := startServer(t, Config{}, nil)
	ex.delay = 50 * time.Millisecond
	in := dialInitiator(t, addr)
	if st := in.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	const n = 128
	start := time.Now()
	for i := 0; i < n; i++ {
		in.send(in.read1(uint32(1000+i), uint32(i)))
	}
	got := 0
	for got < n {
		r := in.recv()
		if r.Opcode() == opDataIn && r.Flags()&flagStatus != 0 {
			got++
		}
	}
	// 128 commands of 50 ms each, executed concurrently, finish in well
	// under the 6.4 s a serial target would take.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("%d commands took %v: not executed concurrently", n, d)
	}
}

// TestDigests negotiates CRC32C header and data digests and moves data both
// ways; then a corrupted data digest is rejected without losing the session.
func TestDigests(t *testing.T) {
	_, addr, _ := startServer(t, Config{}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN, kv{"HeaderDigest", "CRC32C,None"}, kv{"DataDigest", "CRC32C"}); st != 0 {
		t.Fatalf("login %#x", st)
	}
	if !in.rd.headerDigest || !in.rd.dataDigest {
		t.Fatalf("digests not negotiated: %v", in.params)
	}
	data := make([]byte, 40*1024)
	for i := range data {
		data[i] = byte(i * 13)
	}
	if st, _ := in.scsiCmd(rw10(0x2a, 0, 80), uint32(len(data)), false, data, 8192); st != 0 {
		t.Fatalf("write %#x", st)
	}
	st, got := in.scsiCmd(rw10(0x28, 0, 80), uint32(len(data)), true, nil, 0)
	if st != 0 || string(got) != string(data) {
		t.Fatalf("read back with digests failed: status %#x", st)
	}
	// A NOP-Out whose data digest is wrong: the target rejects the PDU
	// (reason: data digest error) and the session goes on.
	p := new(PDU)
	p.setOpcode(opNopOut|0x40, flagFinal)
	p.setU32(16, 4242)
	p.setU32(20, reservedTag)
	p.setU32(24, in.cmdSN)
	p.Data = []byte("ping")
	b := p.marshal(true, true)
	b[len(b)-1] ^= 0xff
	in.nc.Write(b)
	r := in.recv()
	if r.Opcode() != opReject || r.BHS[2] != rejectDataDigest {
		t.Fatalf("corrupt data digest: got opcode %#x reason %#x, want Reject %#x", r.Opcode(), r.BHS[2], rejectDataDigest)
	}
	if st, got := in.scsiCmd(rw10(0x28, 0, 80), uint32(len(data)), true, nil, 0); st != 0 || string(got) != string(data) {
		t.Fatalf("session unusable after a digest error")
	}
}

// TestPing checks that the target pings an idle initiator, keeps a session
// that answers, and drops one that does not.
func TestPing(t *testing.T) {
	_, addr, _ := startServer(t, Config{PingInterval: 200 * time.Millisecond, PingTimeout: 400 * time.Millisecond}, nil)
	alive := dialInitiator(t, addr)
	dead := dialInitiator(t, addr)
	for _, in := range []*testInitiator{alive, dead} {
		if st := in.login(testIQN); st != 0 {
			t.Fatalf("login %#x", st)
		}
	}
	// The live initiator answers every ping for a while.
	deadline := time.Now().Add(1500 * time.Millisecond)
	pings := 0
	for time.Now().Before(deadline) {
		alive.nc.SetReadDeadline(time.Now().Add(time.Second))
		r := alive.recv()
		if r.Opcode() != opNopIn || r.ITT() != reservedTag {
			t.Fatalf("unexpected opcode %#x", r.Opcode())
		}
		pings++
		p := new(PDU)
		p.setOpcode(opNopOut|0x40, flagFinal)
		p.setU32(16, reservedTag)
		p.setU32(20, r.u32(20))
		p.setU32(24, alive.cmdSN)
		alive.send(p)
	}
	if pings < 2 {
		t.Fatalf("only %d pings in 1.5 s with a 200 ms interval", pings)
	}
	// The silent one was dropped: reading finds the connection closed
	// (after any pings it was sent).
	dead.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		var p PDU
		if err := dead.rd.readPDU(&p); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("silent initiator was not dropped")
			}
			break
		}
	}
	// And the live one still works.
	if st, _ := alive.scsiCmd(rw10(0x28, 0, 1), 512, true, nil, 0); st != 0 {
		t.Fatalf("live session broken: %#x", st)
	}
}

// TestCHAPTransitEarly: open-iscsi sets T=1 (to operational) on its first
// security-stage request; the target answers T=0 and carries on with CHAP.
func TestCHAPTransitEarly(t *testing.T) {
	_, addr, _ := startServer(t, Config{}, &CHAP{User: "alice", Secret: "alicesecret12"})
	in := dialInitiator(t, addr)
	base := []kv{{"InitiatorName", "iqn.2026-11.io.csnap:test-initiator"}, {"SessionType", "Normal"}, {"TargetName", testIQN}, {"AuthMethod", "CHAP,None"}}
	in.send(in.loginReq(stageSecurity, stageOperational, true, base...))
	r := in.recv()
	if st := uint16(r.BHS[36])<<8 | uint16(r.BHS[37]); st != 0 || r.Flags()&flagTransit != 0 {
		t.Fatalf("first response: status %#x, flags %#x (want success without T)", st, r.Flags())
	}
	in.send(in.loginReq(stageSecurity, stageOperational, true, kv{"CHAP_A", "5"}))
	r = in.recv()
	m := map[string]string{}
	kvs, _ := parseText(r.Data, false)
	for _, p := range kvs {
		m[p.Key] = p.Value
	}
	if r.Flags()&flagTransit != 0 || m["CHAP_C"] == "" {
		t.Fatalf("second response: flags %#x, keys %v", r.Flags(), m)
	}
	id := 0
	fmt.Sscan(m["CHAP_I"], &id)
	chal, _ := decodeBinary(m["CHAP_C"])
	resp := chapResponse("5", byte(id), "alicesecret12", chal)
	in.send(in.loginReq(stageSecurity, stageOperational, true, kv{"CHAP_N", "alice"}, kv{"CHAP_R", fmt.Sprintf("0x%x", resp)}))
	r = in.recv()
	if st := uint16(r.BHS[36])<<8 | uint16(r.BHS[37]); st != 0 || r.Flags()&flagTransit == 0 {
		t.Fatalf("after CHAP_R: status %#x, flags %#x (want transit)", st, r.Flags())
	}
}

// u32 and setU32 read and write a header field by raw offset: test
// initiators build and pick apart PDUs byte by byte (the target's code uses
// the named fields of pdu.go).
func (p *PDU) u32(off int) uint32       { return p.get(field(off)) }
func (p *PDU) setU32(off int, v uint32) { p.set(field(off), v) }
