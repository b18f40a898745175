package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets the test binary run as csnap-admin itself (for
// TestProgressOnRealTerminal), when CSNAP_ADMIN_RUN_MAIN is set.
func TestMain(m *testing.M) {
	if os.Getenv("CSNAP_ADMIN_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// openPTY returns a new pseudo-terminal's master and slave ends.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening a pseudo-terminal: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pseudo-terminal number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening the pseudo-terminal's slave: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestIsTerminal: a pseudo-terminal is a terminal; a pipe and a file are not.
func TestIsTerminal(t *testing.T) {
	_, pts := openPTY(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name string
		f    *os.File
		want bool
	}{{"pseudo-terminal", pts, true}, {"pipe", w, false}, {"file", f, false}} {
		if got := isTerminal(tc.f); got != tc.want {
			t.Errorf("isTerminal(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestProgressOnRealTerminal runs csnap-admin as a process whose stderr is
// a pseudo-terminal (as in an operator's shell) against a node that takes
// 1.5 s to check a store: the terminal shows the progress line with its
// elapsed time, then the line is cleared and the result printed on
// stdout. With stderr on a pipe, no progress is written.
func TestProgressOnRealTerminal(t *testing.T) {
	ts := httptest.NewServer(slow{1500 * time.Millisecond, `{"volume":"dev","clean":true,"checked_blocks":3}`})
	defer ts.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	run := func(stderr *os.File) (stdout string) {
		t.Helper()
		var out bytes.Buffer
		cmd := exec.Command(self, "-addr", strings.TrimPrefix(ts.URL, "http://"), "check", "dev")
		cmd.Env = append(os.Environ(), "CSNAP_ADMIN_RUN_MAIN=1")
		cmd.Stdout, cmd.Stderr = &out, stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("csnap-admin check: %v (stdout %q)", err, out.String())
		}
		return out.String()
	}

	ptm, pts := openPTY(t)
	screen := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(ptm) // ends with EIO once every slave fd is closed
		screen <- string(b)
	}()
	out := run(pts)
	pts.Close()
	var seen string
	select {
	case seen = <-screen:
	case <-time.After(10 * time.Second):
		t.Fatal("reading the pseudo-terminal did not end")
	}
	if !strings.Contains(out, "clean") {
		t.Errorf("stdout %q, want the check's result", out)
	}
	if !strings.Contains(seen, "checking the store of dev (1.") {
		t.Errorf("terminal showed %q, want the progress line with at least 1 s elapsed", seen)
	}
	if !strings.HasSuffix(seen, "\r\033[K") {
		t.Errorf("terminal showed %q: the progress line was not cleared at the end", seen)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	run(w)
	w.Close()
	if b, _ := io.ReadAll(r); len(b) != 0 {
		t.Errorf("stderr on a pipe got %q, want nothing", b)
	}
}
