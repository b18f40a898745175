package iscsi

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/csnap/csnap/target/scsi"
)

// Tests for the attacks of issue 14: each drives the target the way a
// hostile initiator would and checks that the target refuses.

const openIQN = "iqn.2026-11.io.csnap:open"

// loginStatus is the status class and detail of a login response.
func loginStatus(r *PDU) uint16 { return uint16(r.BHS[36])<<8 | uint16(r.BHS[37]) }

// chapServer runs a server whose test target needs CHAP and a second
// target, openIQN, that needs none.
func chapServer(t *testing.T, cfg Config) (*Server, string, *memExec) {
	t.Helper()
	srv, addr, ex := startServer(t, cfg, &CHAP{User: "alice", Secret: "alicesecret12"})
	if err := srv.AddTarget(TargetConfig{Name: openIQN, Exec: &memExec{data: make([]byte, 1<<20)}}); err != nil {
		t.Fatal(err)
	}
	return srv, addr, ex
}

// expectNoFullFeature sends the login requests one after another and fails
// the test if any response is a success that enters full feature phase, or
// if a WRITE then goes through.
func expectNoFullFeature(t *testing.T, in *testInitiator, ex *memExec, reqs ...*PDU) {
	t.Helper()
	for i, req := range reqs {
		in.send(req)
		var r PDU
		if err := in.rd.readPDU(&r); err != nil {
			return // connection closed: refused
		}
		if st := loginStatus(&r); st != loginSuccess {
			return // refused
		}
		if i == len(reqs)-1 && r.Flags()&flagTransit != 0 && r.Flags()&3 == stageFullFeature {
			// The target says we are in: prove the damage.
			in.statSN = r.u32(24) + 1
			data := bytes.Repeat([]byte{0x66}, 512)
			st, _ := in.scsiCmd(rw10(0x2a, 0, 1), 512, false, data, 0)
			t.Fatalf("login reached full feature phase without authentication (WRITE status %#x, written: %v)",
				st, bytes.Equal(ex.data[:512], data))
		}
	}
}

// TestDiscoveryThenNormalRefused: a login that declares a discovery session
// (no CHAP needed) in its first request and a normal session on the CHAP
// target in the next must not reach full feature phase.
func TestDiscoveryThenNormalRefused(t *testing.T) {
	_, addr, ex := chapServer(t, Config{})
	in := dialInitiator(t, addr)
	expectNoFullFeature(t, in, ex,
		in.loginReq(stageSecurity, stageOperational, true,
			kv{"InitiatorName", "iqn.2026-11.io.csnap:attacker"}, kv{"SessionType", "Discovery"}, kv{"AuthMethod", "None"}),
		in.loginReq(stageOperational, stageFullFeature, true,
			kv{"SessionType", "Normal"}, kv{"TargetName", testIQN}),
	)
}

// TestTargetSwitchRefused: authenticate (trivially) for a target without
// CHAP, then name the CHAP target in a later request.
func TestTargetSwitchRefused(t *testing.T) {
	_, addr, ex := chapServer(t, Config{})
	in := dialInitiator(t, addr)
	expectNoFullFeature(t, in, ex,
		in.loginReq(stageSecurity, stageOperational, true,
			kv{"InitiatorName", "iqn.2026-11.io.csnap:attacker"}, kv{"SessionType", "Normal"},
			kv{"TargetName", openIQN}, kv{"AuthMethod", "None"}),
		in.loginReq(stageOperational, stageFullFeature, true, kv{"TargetName", testIQN}),
	)
	// Changing the initiator name later is refused too.
	in = dialInitiator(t, addr)
	in.send(in.loginReq(stageSecurity, stageOperational, true,
		kv{"InitiatorName", "iqn.2026-11.io.csnap:a"}, kv{"SessionType", "Normal"},
		kv{"TargetName", openIQN}, kv{"AuthMethod", "None"}))
	if r := in.recv(); loginStatus(r) != loginSuccess {
		t.Fatalf("first request refused: %#x", loginStatus(r))
	}
	in.send(in.loginReq(stageOperational, stageFullFeature, true, kv{"InitiatorName", "iqn.2026-11.io.csnap:b"}))
	if r := in.recv(); loginStatus(r) != loginInitiatorError {
		t.Fatalf("changed InitiatorName: status %#x, want %#x", loginStatus(r), loginInitiatorError)
	}
}

// TestContinuedFirstRequestNeedsAuth: the first login request split over two
// PDUs (C bit) must still be judged as the first request.
func TestContinuedFirstRequestNeedsAuth(t *testing.T) {
	_, addr, ex := chapServer(t, Config{})
	in := dialInitiator(t, addr)
	first := in.loginReq(stageSecurity, stageOperational, false,
		kv{"InitiatorName", "iqn.2026-11.io.csnap:attacker"})
	first.BHS[1] |= flagContinue
	expectNoFullFeature(t, in, ex, first,
		in.loginReq(stageSecurity, stageFullFeature, true,
			kv{"SessionType", "Normal"}, kv{"TargetName", testIQN}, kv{"AuthMethod", "None"}),
	)
}

// TestSkipSecurityOnLaterRequest: a first request in the operational stage
// naming the open target, then the CHAP target.
func TestOperationalTargetSwitchRefused(t *testing.T) {
	_, addr, ex := chapServer(t, Config{})
	in := dialInitiator(t, addr)
	expectNoFullFeature(t, in, ex,
		in.loginReq(stageOperational, stageOperational, false,
			kv{"InitiatorName", "iqn.2026-11.io.csnap:attacker"}, kv{"SessionType", "Normal"}, kv{"TargetName", openIQN}),
		in.loginReq(stageOperational, stageFullFeature, true, kv{"TargetName", testIQN}),
	)
}

// poisonPool leaves buffers full of marker bytes in the server's pool, as
// a read of another session would.
func poisonPool(srv *Server, size int, marker byte) {
	for i := 0; i < 8; i++ {
		b := srv.bufs.get(size)
		for j := range b {
			b[j] = marker
		}
		srv.bufs.put(b)
	}
}

// writeWithOffsets sends a WRITE(10) of len(data) bytes at LBA 0 and answers
// each R2T with Data-Out PDUs of seg bytes whose BufferOffset comes from
// offset(burstOffset, i) instead of the true offset. It returns the status.
func writeWithOffsets(t *testing.T, in *testInitiator, data []byte, seg int, offset func(base uint32, i int) uint32) byte {
	t.Helper()
	in.itt++
	p := new(PDU)
	p.setOpcode(opSCSICmd, flagFinal|flagWrite|1)
	p.setU32(16, in.itt)
	p.setU32(20, uint32(len(data)))
	p.setU32(24, in.cmdSN)
	in.cmdSN++
	p.setU32(28, in.statSN)
	copy(p.BHS[32:], rw10(0x2a, 0, uint16(len(data)/512)))
	in.send(p)
	for {
		r := in.recv()
		switch r.Opcode() {
		case opR2T:
			base, n := r.u32(40), r.u32(44)
			for i := 0; i*seg < int(n); i++ {
				d := new(PDU)
				flags := byte(0)
				if (i+1)*seg >= int(n) {
					flags = flagFinal
				}
				d.setOpcode(opDataOut, flags)
				d.setU32(16, in.itt)
				d.setU32(20, r.u32(20))
				d.setU32(36, uint32(i))
				d.setU32(40, offset(base, i))
				d.Data = data[base+uint32(i*seg) : base+uint32(min((i+1)*seg, int(n)))]
				in.send(d)
			}
		case opSCSIResp:
			in.statSN = r.u32(24) + 1
			return r.BHS[3]
		case opReject:
			// A reject of a data PDU is fine; the status follows.
		default:
			t.Fatalf("unexpected opcode %#x", r.Opcode())
		}
	}
}

// TestDataOutOffsetEnforced: Data-Out PDUs that all carry BufferOffset 0
// must not let the rest of a recycled buffer (another session's bytes)
// reach the backend: the command fails and nothing is written.
func TestDataOutOffsetEnforced(t *testing.T) {
	srv, addr, ex := startServer(t, Config{}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN, kv{"InitialR2T", "Yes"}, kv{"ImmediateData", "No"}, kv{"MaxBurstLength", "1048576"}); st != 0 {
		t.Fatalf("login %#x", st)
	}
	const size = 1 << 20
	poisonPool(srv, size, 0xee)
	data := bytes.Repeat([]byte{0x11}, size)
	st := writeWithOffsets(t, in, data, 64*1024, func(uint32, int) uint32 { return 0 })
	if st == scsi.StatusGood {
		t.Errorf("WRITE with every Data-Out at offset 0: status GOOD")
	}
	if n := bytes.Count(ex.data[:size], []byte{0xee}); n > 0 {
		t.Fatalf("%d bytes of another command's buffer reached the backend", n)
	}
	if n := bytes.Count(ex.data[:size], []byte{0x11}); n > 0 {
		t.Fatalf("%d bytes of the failed write reached the backend", n)
	}
	// Offsets that skip a piece, and offsets that go back, fail too.
	for name, off := range map[string]func(uint32, int) uint32{
		"skip":    func(b uint32, i int) uint32 { return b + uint32(i*64*1024) + 512 },
		"reverse": func(b uint32, i int) uint32 { return b + uint32((15-i)*64*1024) },
	} {
		if st := writeWithOffsets(t, in, data, 64*1024, off); st == scsi.StatusGood {
			t.Errorf("%s offsets: status GOOD", name)
		}
	}
	if n := bytes.Count(ex.data[:size], []byte{0}); n != size {
		t.Fatalf("backend changed by refused writes (%d of %d bytes still zero)", n, size)
	}
	// The session still works with honest offsets.
	if st := writeWithOffsets(t, in, data, 64*1024, func(b uint32, i int) uint32 { return b + uint32(i*64*1024) }); st != scsi.StatusGood {
		t.Fatalf("honest write: status %#x", st)
	}
	if !bytes.Equal(ex.data[:size], data) {
		t.Fatal("honest write not stored")
	}
}

// TestUnsolicitedOffsetEnforced: the same for unsolicited Data-Out (no R2T).
func TestUnsolicitedOffsetEnforced(t *testing.T) {
	srv, addr, ex := startServer(t, Config{}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN, kv{"InitialR2T", "No"}, kv{"ImmediateData", "No"}, kv{"FirstBurstLength", "65536"}); st != 0 {
		t.Fatalf("login %#x", st)
	}
	poisonPool(srv, 64*1024, 0xee)
	in.itt++
	p := new(PDU)
	p.setOpcode(opSCSICmd, flagFinal|flagWrite|1)
	p.setU32(16, in.itt)
	p.setU32(20, 64*1024)
	p.setU32(24, in.cmdSN)
	in.cmdSN++
	copy(p.BHS[32:], rw10(0x2a, 0, 128))
	in.send(p)
	for i := 0; i < 4; i++ {
		d := new(PDU)
		if i == 3 {
			d.setOpcode(opDataOut, flagFinal)
		} else {
			d.setOpcode(opDataOut, 0)
		}
		d.setU32(16, in.itt)
		d.setU32(20, reservedTag)
		d.setU32(36, uint32(i))
		d.setU32(40, 0) // always offset 0
		d.Data = bytes.Repeat([]byte{0x22}, 16*1024)
		in.send(d)
	}
	for {
		r := in.recv()
		if r.Opcode() == opR2T {
			t.Fatalf("R2T for a command that sent its whole first burst")
		}
		if r.Opcode() == opSCSIResp {
			if r.BHS[3] == scsi.StatusGood {
				t.Errorf("unsolicited Data-Out all at offset 0: status GOOD")
			}
			break
		}
	}
	if n := bytes.Count(ex.data[:64*1024], []byte{0}); n != 64*1024 {
		t.Fatalf("backend written by a refused write (%d bytes non-zero)", 64*1024-n)
	}
}

// TestImmediateCommandsCountAgainstWindow: immediate commands must not
// bypass the command window; beyond it they are rejected.
func TestImmediateCommandsCountAgainstWindow(t *testing.T) {
	const depth = 16
	_, addr, _ := startServer(t, Config{QueueDepth: depth}, nil)
	in := dialInitiator(t, addr)
	if st := in.login(testIQN, kv{"InitialR2T", "Yes"}, kv{"ImmediateData", "No"}); st != 0 {
		t.Fatalf("login %#x", st)
	}
	const n = 4 * depth
	for i := 0; i < n; i++ {
		p := new(PDU)
		p.setOpcode(opSCSICmd|0x40, flagFinal|flagWrite|1) // immediate, data never sent
		p.setU32(16, uint32(100+i))
		p.setU32(20, 4096)
		p.setU32(24, in.cmdSN)
		copy(p.BHS[32:], rw10(0x2a, uint32(i*8), 8))
		in.send(p)
	}
	r2ts, rejects := 0, 0
	for r2ts+rejects < n {
		r := in.recv()
		switch r.Opcode() {
		case opR2T:
			r2ts++
		case opReject:
			if r.BHS[2] != rejectImmCmd {
				t.Fatalf("reject reason %#x, want %#x", r.BHS[2], rejectImmCmd)
			}
			rejects++
		case opSCSIResp:
			rejects++ // refused with a status is fine too
		default:
			t.Fatalf("unexpected opcode %#x", r.Opcode())
		}
	}
	if r2ts > depth {
		t.Fatalf("%d immediate commands admitted with a window of %d", r2ts, depth)
	}
}

// TestInitiatorNameValidated: names that are not iSCSI names, or too long,
// are refused at login.
func TestInitiatorNameValidated(t *testing.T) {
	_, addr, _ := startServer(t, Config{}, nil)
	for _, name := range []string{
		"iqn." + strings.Repeat("a", 8192),
		"iqn.2026-11.io.csnap:" + strings.Repeat("x", 223),
		"hello",
		"iqn.2026-11.io csnap",
		"eui.xyz",
		"naa.123",
		"iqn.2026-11.io.csnap:\x00x",
	} {
		in := dialInitiator(t, addr)
		in.send(in.loginReq(stageOperational, stageFullFeature, true,
			kv{"InitiatorName", name}, kv{"SessionType", "Normal"}, kv{"TargetName", testIQN}))
		var r PDU
		if err := in.rd.readPDU(&r); err != nil {
			continue
		}
		if st := loginStatus(&r); st == loginSuccess {
			t.Errorf("InitiatorName %.40q (%d bytes) accepted", name, len(name))
		}
	}
	for _, name := range []string{"eui.02004567a425678d", "naa.52004567ba64678d", "iqn.2026-11.io.csnap:ok"} {
		in := dialInitiator(t, addr)
		if st := in.loginAs(name, testIQN); st != loginSuccess {
			t.Errorf("valid InitiatorName %q refused: %#x", name, st)
		}
	}
}

// loginAs logs in as the given initiator name without authentication.
func (in *testInitiator) loginAs(initiator, target string) uint16 {
	in.t.Helper()
	in.send(in.loginReq(stageOperational, stageFullFeature, true,
		kv{"InitiatorName", initiator}, kv{"SessionType", "Normal"}, kv{"TargetName", target}))
	r := in.recv()
	in.statSN = r.u32(24) + 1
	return loginStatus(r)
}

// TestInitiatorAllowList: a target with an allow-list admits only those
// names, and discovery lists it only to them.
func TestInitiatorAllowList(t *testing.T) {
	srv, addr, _ := startServer(t, Config{}, nil)
	if err := srv.AddTarget(TargetConfig{Name: openIQN, Exec: &memExec{data: make([]byte, 1<<20)},
		Initiators: []string{"iqn.2026-11.io.csnap:good"}}); err != nil {
		t.Fatal(err)
	}
	if st := dialInitiator(t, addr).loginAs("iqn.2026-11.io.csnap:evil", openIQN); st != loginForbidden {
		t.Errorf("initiator not on the list: status %#x, want %#x", st, loginForbidden)
	}
	if st := dialInitiator(t, addr).loginAs("iqn.2026-11.io.csnap:good", openIQN); st != loginSuccess {
		t.Errorf("initiator on the list: status %#x", st)
	}
	// Discovery hides the target from others.
	for name, want := range map[string]bool{"iqn.2026-11.io.csnap:evil": false, "iqn.2026-11.io.csnap:good": true} {
		in := dialInitiator(t, addr)
		in.send(in.loginReq(stageOperational, stageFullFeature, true, kv{"InitiatorName", name}, kv{"SessionType", "Discovery"}))
		if r := in.recv(); loginStatus(r) != 0 {
			t.Fatalf("discovery login %#x", loginStatus(r))
		}
		p := new(PDU)
		p.setOpcode(opTextReq|0x40, flagFinal)
		p.setU32(16, 9)
		p.setU32(20, reservedTag)
		p.setU32(24, in.cmdSN)
		p.Data = encodeText([]kv{{"SendTargets", "All"}})
		in.send(p)
		r := in.recv()
		if got := strings.Contains(string(r.Data), openIQN); got != want {
			t.Errorf("discovery as %s lists %s: %v, want %v", name, openIQN, got, want)
		}
	}
}

// TestReinstatementNeedsSameIdentity: a login that would reinstate (end) a
// session authenticated as one CHAP user is refused when made as another.
func TestReinstatementNeedsSameIdentity(t *testing.T) {
	srv, addr, _ := startServer(t, Config{}, &CHAP{User: "alice", Secret: "alicesecret12"})
	a := dialInitiator(t, addr)
	if st := chapLogin(t, a, "alice", "alicesecret12", false, ""); st != 0 {
		t.Fatalf("alice: %#x", st)
	}
	// The target's credentials change (bob); bob, knowing alice's
	// initiator name and ISID, tries to take her session over.
	srv.AddTarget(TargetConfig{Name: testIQN, Exec: &memExec{data: make([]byte, 1<<20)}, CHAP: &CHAP{User: "bob", Secret: "bobsecret1234"}})
	b := dialInitiator(t, addr)
	b.isid = a.isid
	if st := chapLogin(t, b, "bob", "bobsecret1234", false, ""); st != loginForbidden {
		t.Errorf("reinstatement as another CHAP user: status %#x, want %#x", st, loginForbidden)
	}
	// alice's session is still alive.
	if st, _ := a.scsiCmd(rw10(0x28, 0, 1), 512, true, nil, 0); st != 0 {
		t.Fatalf("alice's session broken: %#x", st)
	}
	_ = binary.BigEndian
}

// TestAuthRecheckedAtFullFeature: a target that starts requiring CHAP (or
// drops the initiator from its allow-list) while a login is under way is
// decided again when the login enters full feature phase.
func TestAuthRecheckedAtFullFeature(t *testing.T) {
	srv, addr, _ := chapServer(t, Config{})
	for name, later := range map[string]TargetConfig{
		"CHAP turned on":  {Name: openIQN, Exec: &memExec{}, CHAP: &CHAP{User: "alice", Secret: "alicesecret12"}},
		"not on the list": {Name: openIQN, Exec: &memExec{}, Initiators: []string{"iqn.2026-11.io.csnap:other"}},
	} {
		srv.AddTarget(TargetConfig{Name: openIQN, Exec: &memExec{}})
		in := dialInitiator(t, addr)
		in.send(in.loginReq(stageSecurity, stageOperational, true,
			kv{"InitiatorName", "iqn.2026-11.io.csnap:a"}, kv{"SessionType", "Normal"}, kv{"TargetName", openIQN}, kv{"AuthMethod", "None"}))
		if r := in.recv(); loginStatus(r) != 0 {
			t.Fatalf("%s: security stage %#x", name, loginStatus(r))
		}
		srv.AddTarget(later)
		in.send(in.loginReq(stageOperational, stageFullFeature, true))
		if r := in.recv(); loginStatus(r) == loginSuccess {
			t.Errorf("%s during the login: full feature phase granted", name)
		}
	}
}

// TestAllowListChangeClosesSessions: an initiator taken off a target's
// allow-list loses its session at once; others keep theirs.
func TestAllowListChangeClosesSessions(t *testing.T) {
	srv, addr, _ := startServer(t, Config{}, nil)
	good, bad := dialInitiator(t, addr), dialInitiator(t, addr)
	if st := good.loginAs("iqn.2026-11.io.csnap:good", testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	if st := bad.loginAs("iqn.2026-11.io.csnap:bad", testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	srv.AddTarget(TargetConfig{Name: testIQN, Exec: &memExec{data: make([]byte, 1<<20)}, Initiators: []string{"iqn.2026-11.io.csnap:good"}})
	var p PDU
	if err := bad.rd.readPDU(&p); err == nil {
		t.Fatalf("removed initiator's session still open (got opcode %#x)", p.Opcode())
	}
	if st, _ := good.scsiCmd(rw10(0x28, 0, 1), 512, true, nil, 0); st != 0 {
		t.Fatalf("allowed initiator's session broken: %#x", st)
	}
}
