package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// TGT is a private tgtd (Linux SCSI target framework, Debian package tgt)
// on a free loopback port: the reference target that the harness's own
// tests run against, and a known-good initiator-side baseline for csnapd.
//
// It has its own control port (tgtadm -C), so it never touches another
// tgtd, and it is stopped by its PID only.
type TGT struct {
	Port        int // iSCSI portal port on 127.0.0.1
	ControlPort int // tgtadm -C

	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}

	mu   sync.Mutex
	tids []int
}

// TGTTarget describes a target to create with AddTarget.
type TGTTarget struct {
	TID      int
	IQN      string
	Backing  string // file backing LUN 1 (tgt's LUN 0 is its controller)
	ReadOnly bool
	// CHAP: initiators must authenticate with these credentials.
	CHAP *CHAP
	// MutualCHAP: the target's own credentials (outgoing account).
	MutualCHAP *CHAP
	// Digest, if set, is offered for HeaderDigest and DataDigest, e.g.
	// "CRC32C,None" (tgt offers only None by default).
	Digest string
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// StartTGT starts tgtd in the foreground on 127.0.0.1 at a free port and
// waits until it listens. Close it when done.
func StartTGT(ctx context.Context) (*TGT, error) {
	if _, err := exec.LookPath("tgtd"); err != nil {
		return nil, fmt.Errorf("%w: tgtd: %v", ErrNotSetUp, err)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		// tgtd takes control ports up to 32767; it refuses to start (lock
		// on /var/run/tgtd/socket.N.lock) if another tgtd has the same one
		t := &TGT{Port: port, ControlPort: port % 32768, out: &lockedBuffer{}, done: make(chan struct{})}
		if t.ControlPort == 0 {
			t.ControlPort = 32767
		}
		// exec'ed directly: cmd.Process.Pid is tgtd itself
		t.cmd = exec.Command("tgtd", "-f", "-C", strconv.Itoa(t.ControlPort), "--iscsi", "portal=127.0.0.1:"+strconv.Itoa(port))
		t.cmd.Stdout, t.cmd.Stderr = t.out, t.out
		t.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := t.cmd.Start(); err != nil {
			return nil, fmt.Errorf("vm: starting tgtd: %w", err)
		}
		go func() { _ = t.cmd.Wait(); close(t.done) }()
		if lastErr = t.waitListening(ctx); lastErr == nil {
			return t, nil
		}
		t.Close()
	}
	return nil, lastErr
}

func (t *TGT) waitListening(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-t.done:
			return fmt.Errorf("vm: tgtd exited at start: %s", t.out.String())
		default:
		}
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(t.Port), time.Second)
		if err == nil {
			c.Close()
			// tgtadm works once the control socket is up as well
			if _, err := t.adm(ctx, "--op", "show", "--mode", "sys"); err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vm: tgtd (pid %d) not ready on port %d: %v; log: %s", t.PID(), t.Port, err, t.out.String())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PID is tgtd's process ID.
func (t *TGT) PID() int { return t.cmd.Process.Pid }

// Log returns what tgtd printed so far.
func (t *TGT) Log() string { return t.out.String() }

func (t *TGT) adm(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	full := append([]string{"-C", strconv.Itoa(t.ControlPort), "--lld", "iscsi"}, args...)
	out, err := exec.CommandContext(ctx, "tgtadm", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("tgtadm %v: %v: %s", args, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// AddTarget creates a target with its backing file as LUN 1, open to every
// initiator address, with the given CHAP and digest settings.
func (t *TGT) AddTarget(ctx context.Context, tt TGTTarget) error {
	tid := strconv.Itoa(tt.TID)
	if _, err := t.adm(ctx, "--op", "new", "--mode", "target", "--tid", tid, "-T", tt.IQN); err != nil {
		return err
	}
	t.mu.Lock()
	t.tids = append(t.tids, tt.TID)
	t.mu.Unlock()
	steps := [][]string{{"--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", "1", "-b", tt.Backing}}
	if tt.ReadOnly {
		steps = append(steps, []string{"--op", "update", "--mode", "logicalunit", "--tid", tid, "--lun", "1", "--params", "readonly=1"})
	}
	steps = append(steps, []string{"--op", "bind", "--mode", "target", "--tid", tid, "-I", "ALL"})
	if tt.Digest != "" {
		for _, n := range []string{"HeaderDigest", "DataDigest"} {
			steps = append(steps, []string{"--op", "update", "--mode", "target", "--tid", tid, "--name", n, "--value", tt.Digest})
		}
	}
	if tt.CHAP != nil {
		steps = append(steps, []string{"--op", "bind", "--mode", "account", "--tid", tid, "--user", tt.CHAP.User})
	}
	if tt.MutualCHAP != nil {
		steps = append(steps, []string{"--op", "bind", "--mode", "account", "--tid", tid, "--user", tt.MutualCHAP.User, "--outgoing"})
	}
	for _, c := range []*CHAP{tt.CHAP, tt.MutualCHAP} {
		if c == nil {
			continue
		}
		// accounts are global to this tgtd; an existing one is reused
		if out, err := t.adm(ctx, "--op", "new", "--mode", "account", "--user", c.User, "--password", c.Secret); err != nil &&
			!bytes.Contains([]byte(out), []byte("exist")) {
			return err
		}
	}
	for _, s := range steps {
		if _, err := t.adm(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// Kill SIGKILLs tgtd (by PID), like a crashed node: its connections are
// reset and nothing is cleaned up.
func (t *TGT) Kill() error {
	_ = t.cmd.Process.Kill()
	select {
	case <-t.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("vm: tgtd pid %d does not exit after SIGKILL", t.PID())
	}
}

// Close deletes the targets and the tgtd system over the control port (tgtd
// ignores SIGTERM while it has targets), waits for tgtd to exit and sends
// SIGKILL to its PID as a last resort.
func (t *TGT) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	select {
	case <-t.done:
		return nil
	default:
	}
	t.mu.Lock()
	tids := append([]int(nil), t.tids...)
	t.mu.Unlock()
	for _, tid := range tids {
		_, _ = t.adm(ctx, "--op", "delete", "--mode", "target", "--tid", strconv.Itoa(tid), "--force")
	}
	_, _ = exec.CommandContext(ctx, "tgtadm", "-C", strconv.Itoa(t.ControlPort), "--op", "delete", "--mode", "system").CombinedOutput()
	select {
	case <-t.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = t.cmd.Process.Kill()
	select {
	case <-t.done:
		return errors.New("vm: tgtd ignored the shutdown request and was killed")
	case <-time.After(10 * time.Second):
		return fmt.Errorf("vm: tgtd pid %d does not exit", t.PID())
	}
}
