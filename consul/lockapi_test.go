package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/sirupsen/logrus"
)

// consulBinary is the Consul server `make consul` builds into bin/.
func consulBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CSNAP_CONSUL"); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "bin", "consul")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no Consul binary at %s: run `make consul` (make test does)", p)
	}
	return p
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// devAgent starts `consul agent -dev` on loopback ports of its own and
// stops it by PID at the end of the test.
func devAgent(t *testing.T) *api.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a Consul agent")
	}
	p := freePorts(t, 4)
	cmd := exec.Command(consulBinary(t), "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-node", "n1", "-data-dir", t.TempDir(),
		"-http-port", fmt.Sprint(p[0]), "-serf-lan-port", fmt.Sprint(p[1]), "-serf-wan-port", fmt.Sprint(p[2]),
		"-server-port", fmt.Sprint(p[3]), "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1")
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("consul output:\n%s", out.String())
		}
	})
	cfg := api.DefaultConfig()
	cfg.Address = fmt.Sprintf("127.0.0.1:%d", p[0])
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Ready: a leader, and this node registered with serfHealth passing
	// (sessions bound to it cannot be created before).
	ready := func() bool {
		if l, err := c.Status().Leader(); err != nil || l == "" {
			return false
		}
		checks, _, err := c.Health().Node("n1", nil)
		if err != nil {
			return false
		}
		for _, hc := range checks {
			if hc.CheckID == "serfHealth" && hc.Status == api.HealthPassing {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if ready() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consul -dev not ready after 30 s:\n%s", out.String())
		}
	}
	return c
}

// TestAPILockWithConsul runs the election against a real Consul agent: it
// acquires the lock with a LockIndex term, a second session cannot take
// it, a graceful stop hands it over under a newer term, and stale sessions
// of the node are destroyed.
func TestAPILockWithConsul(t *testing.T) {
	c := devAgent(t)
	mk := func(name string) *APILock {
		l, err := NewAPILock(c, SessionConfig{Node: "n1", Name: name, LockDelay: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	ctx := context.Background()
	a, b := mk("csnap/volumes/v/server"), mk("csnap/volumes/v/server")
	// Stale sessions from an earlier life are cleaned up.
	if _, err := a.CreateSession(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := a.DestroyStaleSessions(ctx); err != nil || n != 1 {
		t.Fatalf("destroyed %d stale sessions: %v", n, err)
	}
	tl := &timeline{}
	l := logrus.New()
	l.SetOutput(io.Discard)
	run := func(api LockAPI, node string) (stop func()) {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			RunElection(cctx, api, ElectionConfig{Key: "csnap/volumes/v/server", Value: []byte(node),
				Lease: 2 * time.Second, Check: 250 * time.Millisecond, Retry: 100 * time.Millisecond,
				RequestTimeout: time.Second, Log: logrus.NewEntry(l),
				OnElected: func(term uint64, _ string) error { tl.add(node, true, term); return nil },
				OnDeposed: func(term uint64, _ bool) { tl.add(node, false, term) }})
		}()
		return func() { cancel(); <-done }
	}
	stopA := run(a, "a")
	defer stopA()
	waitFor(t, "a elected", func() bool { return tl.serving() == "a" })
	stopB := run(b, "b")
	defer stopB()
	time.Sleep(700 * time.Millisecond)
	if s := tl.serving(); s != "a" {
		t.Fatalf("serving %q, want a", s)
	}
	stopA()
	waitFor(t, "b elected", func() bool { return tl.serving() == "b" })
	if err := tl.overlaps(); err != nil {
		t.Fatal(err)
	}
	var terms []uint64
	for _, e := range tl.events {
		if e.elected {
			terms = append(terms, e.term)
		}
	}
	if len(terms) != 2 || terms[1] <= terms[0] {
		t.Fatalf("terms %v: want a newer LockIndex for the new holder", terms)
	}
	t.Logf("terms (LockIndex) %v", terms)
}

// TestKVRegistryWithConsul: the holder of the volume's lock writes the
// client registry; a session that does not hold it (a deposed server)
// cannot; a new holder reads every entry consistently.
func TestKVRegistryWithConsul(t *testing.T) {
	c := devAgent(t)
	ctx := context.Background()
	const lockKey, prefix = "csnap/volumes/v/server", "csnap/volumes/v/clients/"
	lock, err := NewAPILock(c, SessionConfig{Node: "n1", Name: lockKey, LockDelay: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s1, err := lock.CreateSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := lock.Acquire(ctx, lockKey, s1, []byte("n1")); err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	current := s1
	reg, err := NewKVRegistry(c, prefix, lockKey, func() string { return current })
	if err != nil {
		t.Fatal(err)
	}
	a := ClientRecord{ID: [16]byte{1}, Node: "n1"}
	b := ClientRecord{ID: [16]byte{2}, Node: "n2", HoldsLocks: true}
	for _, r := range []ClientRecord{a, b} {
		if err := reg.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := reg.List(ctx)
	if err != nil || len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("list: %+v %v", got, err)
	}
	// Another session (a server that lost the lock) cannot write.
	s2, err := lock.CreateSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	current = s2
	if err := reg.Put(ctx, ClientRecord{ID: [16]byte{3}, Node: "n3"}); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("write by a non-holder: %v, want ErrNotHolder", err)
	}
	if err := reg.Delete(ctx, a.ID); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("delete by a non-holder: %v, want ErrNotHolder", err)
	}
	// The holder hands over; the new holder sees both entries and writes.
	if err := lock.Release(ctx, lockKey, s1); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := lock.Acquire(ctx, lockKey, s2, []byte("n2")); err != nil || !ok {
		t.Fatalf("second acquire: %v %v", ok, err)
	}
	if got, err := reg.List(ctx); err != nil || len(got) != 2 {
		t.Fatalf("new holder's list: %+v %v", got, err)
	}
	if err := reg.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	current = s1 // the old holder again: refused
	if err := reg.Put(ctx, a); !errors.Is(err, ErrNotHolder) {
		t.Fatalf("write by the old holder: %v, want ErrNotHolder", err)
	}
	if got, _ := reg.List(ctx); len(got) != 1 || got[0] != b {
		t.Fatalf("final list: %+v", got)
	}
}
