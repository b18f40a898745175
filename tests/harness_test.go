// Package tests holds csnap's integration tests: real binaries, real
// initiators (libiscsi's tools, qemu-io), real files. Every process a test
// starts is stopped by PID in a cleanup, even when the test fails.
package tests

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binDir returns the directory holding csnapd and csnap-admin: $CSNAP_BIN
// (set by the Makefile), or a fresh build into a temporary directory.
func binDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("CSNAP_BIN"); d != "" {
		return d
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "csnap-bin-")
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", dir+"/", "../cmd/...")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
		buildDir = dir
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a process started by a test.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startEnv runs a command in the background with extra environment
// variables ("K=V"); a cleanup stops it by PID (SIGTERM, then SIGKILL after
// a grace period) and logs its output if the test failed.
func startEnv(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), out: &syncBuffer{}, done: make(chan struct{})}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- output of %s (pid %d) ---\n%s", filepath.Base(name), p.cmd.Process.Pid, tail(p.out.String(), 8000))
		}
	})
	return p
}

// stop sends SIGTERM and waits; SIGKILL if the process outlives grace.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// waitTCP waits until addr accepts connections or the process dies.
func waitTCP(t *testing.T, p *proc, addr string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			t.Fatalf("process exited before listening on %s: %v\n%s", addr, p.err, p.out.String())
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listening on %s after %v", addr, d)
}

// devNode is a csnapd -dev started for a test.
type devNode struct {
	proc      *proc
	dataDir   string
	iscsiAddr string
	httpAddr  string
}

// startDev starts csnapd -dev on free loopback ports with its own data
// directory (reused if dataDir is not empty).
func startDev(t *testing.T, dataDir string, extra ...string) *devNode {
	t.Helper()
	return startDevEnv(t, dataDir, nil, extra...)
}

// startDevEnv is startDev with extra environment variables (CHAP, token).
func startDevEnv(t *testing.T, dataDir string, env []string, extra ...string) *devNode {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	n := &devNode{
		dataDir:   dataDir,
		iscsiAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		httpAddr:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
	}
	// An -iscsi-addr among extra replaces the default portal; the first
	// of its list is the one the node is reached at.
	for i := 0; i+1 < len(extra); i++ {
		if extra[i] == "-iscsi-addr" {
			n.iscsiAddr, _, _ = strings.Cut(extra[i+1], ",")
		}
	}
	args := append([]string{"-dev", "-data-dir", dataDir, "-iscsi-addr", n.iscsiAddr, "-http-addr", n.httpAddr}, extra...)
	n.proc = startEnv(t, env, filepath.Join(binDir(t), "csnapd"), args...)
	waitTCP(t, n.proc, n.iscsiAddr, 20*time.Second)
	return n
}

// requireTool fails (never skips) when a tool the test drives is missing:
// `make test` installs them, so a missing tool is a setup defect.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run `make deps` (tests/setup-deps.sh) first", name)
	}
	return p
}

// runCmd runs a command with a deadline and returns its combined output.
func runCmd(t *testing.T, d time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s %s: timed out after %v", name, strings.Join(args, " "), d)
	}
	return string(out), err
}
