package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/target/scsi"
)

func TestFailureLimiter(t *testing.T) {
	l := failureLimiter{max: 3, window: time.Minute, bySource: map[string]*failures{}}
	t0 := time.Unix(1000, 0)
	for i := 0; i < 2; i++ {
		if l.failed("a", t0.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("blocked after %d failures", i+1)
		}
	}
	if l.blocked("a", t0.Add(3*time.Second)) {
		t.Fatal("blocked before the limit")
	}
	if !l.failed("a", t0.Add(4*time.Second)) {
		t.Fatal("third failure did not block")
	}
	if !l.blocked("a", t0.Add(59*time.Second)) {
		t.Fatal("not blocked within the window")
	}
	if l.blocked("b", t0.Add(5*time.Second)) {
		t.Fatal("another source blocked")
	}
	if l.blocked("a", t0.Add(61*time.Second)) {
		t.Fatal("still blocked after the window")
	}
	// The map stays bounded.
	for i := 0; i < 2*maxTrackedSources; i++ {
		l.failed(string(rune(i)), t0.Add(2*time.Minute))
	}
	if len(l.bySource) > maxTrackedSources {
		t.Fatalf("%d sources tracked", len(l.bySource))
	}
}

// errListener fails its first n Accept calls with err, then accepts.
type errListener struct {
	net.Listener
	n   atomic.Int32
	err error
}

func (l *errListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// serveOn runs srv on l until the test ends.
func serveOn(t *testing.T, srv *Server, l net.Listener) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); srv.Close() })
	return done
}

func quietServer(t *testing.T, cfg Config) *Server {
	l := logrus.New()
	l.SetOutput(io.Discard)
	cfg.Log = logrus.NewEntry(l)
	srv := NewServer(cfg)
	if err := srv.AddTarget(TargetConfig{Name: testIQN, Exec: &memExec{data: make([]byte, 1<<20)}}); err != nil {
		t.Fatal(err)
	}
	return srv
}

// TestAcceptErrorsNotFatal: accept errors such as EMFILE, ENFILE or
// ECONNABORTED are logged and retried; the listener keeps serving.
func TestAcceptErrorsNotFatal(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED} {
		srv := quietServer(t, Config{})
		real, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := &errListener{Listener: real, err: &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}}
		l.n.Store(5)
		done := serveOn(t, srv, l)
		in := dialInitiator(t, real.Addr().String())
		in.nc.SetDeadline(time.Now().Add(5 * time.Second))
		if st := in.login(testIQN); st != 0 {
			t.Fatalf("%v: login after accept errors: status %#x", errno, st)
		}
		select {
		case err := <-done:
			t.Fatalf("%v: Serve returned %v", errno, err)
		default:
		}
	}
}

// TestDescriptorExhaustionRecovers: a flood of connections under a low
// descriptor limit makes accept fail with EMFILE; once the flood ends the
// node serves again.
func TestDescriptorExhaustionRecovers(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	_, addr, _ := startServer(t, Config{MaxConnectionsPerSource: 1000, MaxPendingLoginsPerSource: 1000, MaxPendingLogins: 1000}, nil)
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(len(fds) + 40)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	restore := func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) }
	defer restore()
	var flood []net.Conn
	for i := 0; i < 200; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			continue // the test process is out of descriptors too
		}
		flood = append(flood, c)
	}
	time.Sleep(500 * time.Millisecond) // accept fails meanwhile
	for _, c := range flood {
		c.Close()
	}
	restore()
	deadline := time.Now().Add(10 * time.Second)
	for {
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			in := &testInitiator{t: t, nc: nc, isid: 7, rd: pduReader{r: bufio.NewReader(nc), maxData: 1 << 24}, cmdSN: 1, params: map[string]string{}}
			nc.SetDeadline(time.Now().Add(3 * time.Second))
			var r PDU
			in.send(in.loginReq(stageOperational, stageFullFeature, true,
				kv{"InitiatorName", "iqn.2026-11.io.csnap:x"}, kv{"SessionType", "Normal"}, kv{"TargetName", testIQN}))
			err = in.rd.readPDU(&r)
			nc.Close()
			if err == nil && loginStatus(&r) == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node does not serve after the descriptor flood: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestConnectionLimits: connections and pending logins beyond the
// per-source limits are closed at once; the limits free up as
// connections end or log in.
func TestConnectionLimits(t *testing.T) {
	_, addr, _ := startServer(t, Config{MaxConnectionsPerSource: 4, MaxPendingLoginsPerSource: 2}, nil)
	closed := func(nc net.Conn) bool {
		nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err := nc.Read(make([]byte, 1))
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
	// Two idle connections fill the pending-login limit; a third is closed.
	idle1 := dialInitiator(t, addr)
	idle2 := dialInitiator(t, addr)
	time.Sleep(50 * time.Millisecond)
	if c := dialInitiator(t, addr); !closed(c.nc) {
		t.Fatal("third pending login from one source was not closed")
	}
	if closed(idle1.nc) || closed(idle2.nc) {
		t.Fatal("pending logins within the limit closed")
	}
	// Logging in frees a pending slot.
	idle1.nc.SetDeadline(time.Now().Add(5 * time.Second))
	if st := idle1.login(testIQN); st != 0 {
		t.Fatalf("login %#x", st)
	}
	in3 := dialInitiator(t, addr)
	if st := in3.login(testIQN); st != 0 {
		t.Fatalf("login after a slot freed: %#x", st)
	}
	in4 := dialInitiator(t, addr)
	if st := in4.login(testIQN); st != 0 {
		t.Fatalf("fourth connection: %#x", st)
	}
	// idle1, idle2, in3, in4 are open: a fifth is closed.
	if c := dialInitiator(t, addr); !closed(c.nc) {
		t.Fatal("fifth connection from one source was not closed")
	}
	in4.nc.Close()
	time.Sleep(100 * time.Millisecond)
	if st := dialInitiator(t, addr).login(testIQN); st != 0 {
		t.Fatalf("connection after one closed: %#x", st)
	}
}

// TestAuthFailuresBlockSource: after MaxAuthFailures failed CHAP logins
// from one address, even a correct login is refused for the window.
func TestAuthFailuresBlockSource(t *testing.T) {
	_, addr, _ := startServer(t, Config{MaxAuthFailures: 3}, &CHAP{User: "alice", Secret: "alicesecret12"})
	for i := 0; i < 3; i++ {
		if st := chapLogin(t, dialInitiator(t, addr), "alice", "wrong-secret1", false, ""); st != loginAuthFailed {
			t.Fatalf("wrong secret %d: %#x", i, st)
		}
	}
	if st := chapLogin(t, dialInitiator(t, addr), "alice", "alicesecret12", false, ""); st != loginServiceUnavail {
		t.Fatalf("correct login from a blocked source: %#x, want %#x", st, loginServiceUnavail)
	}
}

// TestCHAPAlgorithmsConfigurable: with MD5 left out of the list, an
// initiator offering only MD5 is refused and one offering SHA-256 logs in.
func TestCHAPAlgorithmsConfigurable(t *testing.T) {
	algs, err := ParseCHAPAlgorithms("sha256,sha1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCHAPAlgorithms("sha512"); err == nil {
		t.Fatal("unknown algorithm accepted")
	}
	_, addr, _ := startServer(t, Config{CHAPAlgorithms: algs}, &CHAP{User: "alice", Secret: "alicesecret12"})
	if st := chapLoginAlg(t, dialInitiator(t, addr), "5", "alice", "alicesecret12"); st != loginAuthFailed {
		t.Errorf("MD5-only initiator: %#x, want %#x", st, loginAuthFailed)
	}
	if st := chapLoginAlg(t, dialInitiator(t, addr), "7,5", "alice", "alicesecret12"); st != 0 {
		t.Errorf("SHA-256 initiator: %#x", st)
	}
}

// chapLoginAlg logs in with one-way CHAP offering the CHAP_A list algs.
func chapLoginAlg(t *testing.T, in *testInitiator, algs, user, secret string) uint16 {
	t.Helper()
	in.send(in.loginReq(stageSecurity, stageOperational, false, kv{"InitiatorName", "iqn.2026-11.io.csnap:test-initiator"},
		kv{"SessionType", "Normal"}, kv{"TargetName", testIQN}, kv{"AuthMethod", "CHAP"}))
	if r := in.recv(); loginStatus(r) != 0 {
		return loginStatus(r)
	}
	in.send(in.loginReq(stageSecurity, stageOperational, false, kv{"CHAP_A", algs}))
	r := in.recv()
	if st := loginStatus(r); st != 0 {
		return st
	}
	m := map[string]string{}
	kvs, _ := parseText(r.Data, false)
	for _, p := range kvs {
		m[p.Key] = p.Value
	}
	id := 0
	fmt.Sscan(m["CHAP_I"], &id)
	chal, _ := decodeBinary(m["CHAP_C"])
	resp := chapResponse(m["CHAP_A"], byte(id), secret, chal)
	in.send(in.loginReq(stageSecurity, stageFullFeature, true, kv{"CHAP_N", user}, kv{"CHAP_R", fmt.Sprintf("0x%x", resp)}))
	return loginStatus(in.recv())
}

// holdWrite sends a WRITE of n bytes whose data never follows and returns
// the first answer: an R2T (the target buffers it) or a status.
func (in *testInitiator) holdWrite(itt uint32, n uint32) *PDU {
	in.t.Helper()
	p := new(PDU)
	p.setOpcode(opSCSICmd, flagFinal|flagWrite|1)
	p.setU32(16, itt)
	p.setU32(20, n)
	p.setU32(24, in.cmdSN)
	in.cmdSN++
	copy(p.BHS[32:], rw10(0x2a, 0, 1))
	in.send(p)
	return in.recv()
}

// TestWriteBudget: writes beyond the session's or the node's budget of
// buffered write data end with TASK SET FULL; a write whose data never
// comes fails after DataOutTimeout and gives its budget back.
func TestWriteBudget(t *testing.T) {
	const mb = 1 << 20
	_, addr, _ := startServer(t, Config{MaxTransferLength: mb, SessionDataBufferBytes: mb, DataBufferBytes: 2 * mb,
		PingInterval: 100 * time.Millisecond, PingTimeout: 5 * time.Second, DataOutTimeout: 700 * time.Millisecond}, nil)
	login := func() *testInitiator {
		in := dialInitiator(t, addr)
		if st := in.login(testIQN, kv{"InitialR2T", "Yes"}, kv{"ImmediateData", "No"}); st != 0 {
			t.Fatalf("login %#x", st)
		}
		return in
	}
	a, b, c := login(), login(), login()
	if r := a.holdWrite(1, mb); r.Opcode() != opR2T {
		t.Fatalf("first write: opcode %#x, want R2T", r.Opcode())
	}
	if r := a.holdWrite(2, mb); r.Opcode() != opSCSIResp || r.BHS[3] != scsi.StatusTaskSetFull {
		t.Fatalf("write over the session budget: opcode %#x status %#x", r.Opcode(), r.BHS[3])
	}
	if r := b.holdWrite(1, mb); r.Opcode() != opR2T {
		t.Fatalf("second session's write: opcode %#x, want R2T", r.Opcode())
	}
	if r := c.holdWrite(1, mb); r.Opcode() != opSCSIResp || r.BHS[3] != scsi.StatusTaskSetFull {
		t.Fatalf("write over the node budget: opcode %#x status %#x", r.Opcode(), r.BHS[3])
	}
	// a's held write times out (CHECK CONDITION) and frees its budget.
	for {
		a.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
		r := a.recv()
		if r.Opcode() == opNopIn {
			continue
		}
		if r.Opcode() != opSCSIResp || r.BHS[3] != scsi.StatusCheckCondition {
			t.Fatalf("held write: opcode %#x status %#x, want CHECK CONDITION", r.Opcode(), r.BHS[3])
		}
		break
	}
	for {
		c.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
		r := c.holdWrite(c.itt+10, mb)
		if r.Opcode() == opNopIn {
			continue
		}
		if r.Opcode() != opR2T {
			t.Fatalf("write after the budget freed: opcode %#x status %#x", r.Opcode(), r.BHS[3])
		}
		break
	}
}

// TestHeldWriteFlood: 48 sessions each announce a 32 MiB write and hold
// its data back, either all of it or all but the first Data-Out. The
// node's heap grows by at most its write budget (plus slack), not by
// 1.5 GiB; a write that never sends data costs no buffer at all. It
// reports the process's resident memory too.
func TestHeldWriteFlood(t *testing.T) {
	for _, sendFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("first Data-Out sent=%v", sendFirst), func(t *testing.T) {
			srv, addr, _ := startServer(t, Config{}, nil)
			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			rss0 := residentBytes(t)
			r2ts, full := 0, 0
			for i := 0; i < 48; i++ {
				in := dialInitiator(t, addr)
				if st := in.login(testIQN, kv{"InitialR2T", "Yes"}, kv{"ImmediateData", "No"}); st != 0 {
					t.Fatalf("login %d: %#x", i, st)
				}
				switch r := in.holdWrite(1, 32<<20); {
				case r.Opcode() == opR2T:
					r2ts++
					if sendFirst {
						d := new(PDU)
						d.setOpcode(opDataOut, 0)
						d.setU32(16, 1)
						d.setU32(20, r.u32(20))
						d.Data = make([]byte, 64<<10)
						in.send(d)
					}
				case r.Opcode() == opSCSIResp && r.BHS[3] == scsi.StatusTaskSetFull:
					full++
				default:
					t.Fatalf("held write %d: opcode %#x status %#x", i, r.Opcode(), r.BHS[3])
				}
			}
			time.Sleep(100 * time.Millisecond) // the last Data-Out is read
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			grown := int64(after.HeapInuse) - int64(before.HeapInuse)
			budget := srv.cfg.DataBufferBytes
			t.Logf("48 x 32 MiB held writes: %d buffered, %d TASK SET FULL; heap +%d MiB, RSS +%d MiB (write budget %d MiB)",
				r2ts, full, grown>>20, (residentBytes(t)-rss0)>>20, budget>>20)
			if grown > budget+32<<20 {
				t.Fatalf("heap grew %d MiB under the flood; budget %d MiB", grown>>20, budget>>20)
			}
			if !sendFirst && grown > 64<<20 {
				t.Fatalf("heap grew %d MiB for writes whose data never came", grown>>20)
			}
			if got := srv.dataBuf.inUse(); got > budget {
				t.Fatalf("write budget in use %d > %d", got, budget)
			}
		})
	}
}

// residentBytes is the process's resident set size.
func residentBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	var size, rss int64
	fmt.Sscan(string(b), &size, &rss)
	return rss * int64(os.Getpagesize())
}

// TestPreLoginMemory: a connection that has not logged in holds small
// buffers only (it used to cost 320 KiB: the full-feature read and write
// buffers were allocated at accept).
func TestPreLoginMemory(t *testing.T) {
	const n = 60
	srv, addr, _ := startServer(t, Config{MaxPendingLogins: 1000, MaxPendingLoginsPerSource: 1000, MaxConnectionsPerSource: 1000}, nil)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		dialInitiator(t, addr)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		srv.mu.Lock()
		open := len(srv.conns)
		srv.mu.Unlock()
		if open == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d connections accepted", open, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapInuse) - int64(before.HeapInuse)) / n
	t.Logf("heap per connection before login: %d bytes", per)
	if per > 32<<10 {
		t.Fatalf("%d bytes of heap per connection before login (at most 32 KiB expected)", per)
	}
}

// TestFailureLimiterFullTable: with the table full of fresh entries, a new
// source's failures are still counted (the oldest entry makes room).
func TestFailureLimiterFullTable(t *testing.T) {
	l := failureLimiter{max: 2, window: time.Minute, bySource: map[string]*failures{}}
	t0 := time.Unix(1000, 0)
	for i := 0; i < maxTrackedSources; i++ {
		l.failed(fmt.Sprint("filler-", i), t0)
	}
	l.failed("attacker", t0.Add(time.Second))
	if !l.failed("attacker", t0.Add(2*time.Second)) || !l.blocked("attacker", t0.Add(3*time.Second)) {
		t.Fatal("a new source is not limited once the table is full")
	}
}
