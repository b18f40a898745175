package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMakeCluster runs what `make cluster` runs, as a process: it waits
// for the usage text, follows it (creates a volume and a snapshot through
// node 1 with the printed command), stops the cluster with SIGINT as Ctrl-C
// would, and checks that every process it named in its pids file is gone,
// and that a second start on the same directory finds the volume again.
func TestMakeCluster(t *testing.T) {
	bin := os.Getenv("CSNAP_BIN")
	if bin == "" {
		_, file, _, _ := runtime.Caller(0)
		bin = filepath.Join(filepath.Dir(file), "..", "..", "..", "bin")
	}
	for _, b := range []string{"consul", "csnapd", "csnap-admin"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("no %s in %s: run `make build consul` (make test does): %v", b, bin, err)
		}
	}
	exe := filepath.Join(t.TempDir(), "csnap-cluster")
	if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()

	usage := runCluster(t, exe, bin, dir, func(usage string) {
		// The printed volume create and snapshot create commands, as a
		// user would paste them.
		for _, line := range strings.Split(usage, "\n") {
			line = strings.TrimSpace(line)
			if strings.Contains(line, " volume create ") || strings.Contains(line, " snapshot create ") {
				f := strings.Fields(line)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				out, err := exec.CommandContext(ctx, f[0], f[1:]...).CombinedOutput()
				cancel()
				if err != nil {
					t.Errorf("%s: %v\n%s", line, err, out)
				}
			}
		}
	})
	if !strings.Contains(usage, "iscsiadm -m discovery") || !strings.Contains(usage, "Ctrl-C") {
		t.Errorf("usage text lacks the login and stop instructions:\n%s", usage)
	}
	// State stays: a new run on the same directory serves the volume and
	// its snapshot again.
	runCluster(t, exe, bin, dir, func(usage string) {
		admin := filepath.Join(bin, "csnap-admin")
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := exec.Command(admin, "-addr", "127.0.0.1:7862", "-token-file", filepath.Join(dir, "n1", "csnapd", "api-token"), "snapshot", "list", "vol1").CombinedOutput()
			if err == nil && strings.Contains(string(out), "snap1") {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("after a restart, snapshot list vol1: %v\n%s", err, out)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// runCluster starts csnap-cluster on dir, calls use with its usage text
// once printed, then sends SIGINT and checks that it exits 0 and that no
// process of its pids file survives. It returns the usage text.
func runCluster(t *testing.T, exe, bin, dir string, use func(usage string)) string {
	t.Helper()
	start := time.Now()
	cmd := exec.Command(exe, "-bin", bin, "-dir", dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		waitErr = cmd.Wait()
		close(exited)
	}()
	// On any failure, stop it the way a user would, then by force.
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-exited:
			case <-time.After(time.Minute):
				_ = cmd.Process.Kill()
			}
		}
	}()

	var usage strings.Builder
	timeout := time.After(2 * time.Minute)
	for !strings.Contains(usage.String(), "Ctrl-C") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("csnap-cluster ended before printing its usage:\n%s", stderr.String())
			}
			usage.WriteString(l + "\n")
		case <-timeout:
			t.Fatalf("no usage text within 2 minutes:\n%s", stderr.String())
		}
	}
	t.Logf("usage printed after %v", time.Since(start).Round(time.Millisecond))
	use(usage.String())
	t.Logf("used after %v", time.Since(start).Round(time.Millisecond))

	pids := readPids(t, filepath.Join(dir, "pids"))
	if len(pids) != 7 { // itself, 3 csnapd, 3 consul
		t.Errorf("pids file names %d processes, want 7: %v", len(pids), pids)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("csnap-cluster exited with %v after SIGINT:\n%s", waitErr, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("csnap-cluster did not stop within a minute of SIGINT:\n%s", stderr.String())
	}
	t.Logf("stopped after %v", time.Since(start).Round(time.Millisecond))
	for pid, prog := range pids {
		if running(pid, prog) {
			t.Errorf("%s (pid %d) still runs after the cluster stopped", prog, pid)
		}
	}
	return usage.String()
}

// readPids reads the "PID PROGRAM" lines of a pids file.
func readPids(t *testing.T, path string) map[int]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 2 {
			if pid, err := strconv.Atoi(f[0]); err == nil {
				out[pid] = f[1]
			}
		}
	}
	return out
}
