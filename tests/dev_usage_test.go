package tests

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDevPrintedAdminLines: `make run` (csnapd -dev with its default data
// directory ./csnap-dev) prints csnap-admin lines; pasted as they are, in
// the same directory, with no token in the environment, they work. The
// API itself refuses the same request without the token.
func TestDevPrintedAdminLines(t *testing.T) {
	cwd := t.TempDir()
	bin := binDir(t)
	httpAddr := "127.0.0.1:" + itoa(freePort(t))
	iscsiAddr := "127.0.0.1:" + itoa(freePort(t))
	p := &proc{cmd: exec.Command(filepath.Join(bin, "csnapd"), "-dev", "-http-addr", httpAddr, "-iscsi-addr", iscsiAddr),
		out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Dir = cwd
	p.cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("csnapd output:\n%s", tail(p.out.String(), 6000))
		}
	})
	waitTCP(t, p, httpAddr, 60*time.Second)
	re := regexp.MustCompile(`(?m)^\s+(csnap-admin .*)$`)
	var lines []string
	for deadline := time.Now().Add(10 * time.Second); len(lines) < 2 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		lines = nil
		for _, m := range re.FindAllStringSubmatch(p.out.String(), -1) {
			lines = append(lines, m[1])
		}
	}
	if len(lines) < 2 {
		t.Fatalf("csnapd -dev printed %d csnap-admin lines", len(lines))
	}
	for _, line := range lines {
		f := strings.Fields(line)
		cmd := exec.Command(filepath.Join(bin, f[0]), f[1:]...)
		cmd.Dir, cmd.Env = cwd, []string{"PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", line, err, out)
		}
	}
	// Without the token (another directory, nothing in the environment)
	// the same command is refused.
	f := strings.Fields(lines[0])
	cmd := exec.Command(filepath.Join(bin, f[0]), append(f[1:len(f)-1], "snap2")...)
	cmd.Dir, cmd.Env = t.TempDir(), []string{"PATH=/usr/bin:/bin"}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "token") {
		t.Errorf("snapshot create without the token: %v\n%s", err, out)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
