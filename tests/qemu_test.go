package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// qemuIO runs qemu-io commands against an iscsi:// URL and fails the test on
// any I/O error or pattern mismatch. Reads alone open the LUN read-only.
func qemuIO(t *testing.T, url string, cmds ...string) string {
	t.Helper()
	bin := requireTool(t, "qemu-io")
	args := []string{"-f", "raw"}
	readOnly := true
	for _, c := range cmds {
		args = append(args, "-c", c)
		readOnly = readOnly && (strings.HasPrefix(c, "read ") || strings.HasPrefix(c, "aio_read ") || c == "aio_flush")
	}
	if readOnly {
		// Opened read-only, so read-only (snapshot) LUNs work too.
		args = append(args, "-r")
	}
	args = append(args, url)
	out, err := runCmd(t, 3*time.Minute, bin, args...)
	if err != nil {
		t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
	}
	for _, bad := range []string{"Pattern verification failed", "error", "Error", "failed"} {
		if strings.Contains(out, bad) {
			t.Fatalf("qemu-io %v reported %q:\n%s", cmds, bad, out)
		}
	}
	return out
}

// TestQemuIOPatterns writes and read-verifies patterns through qemu's
// libiscsi-based iscsi:// driver, then restarts csnapd on the same data
// directory and verifies the data is still there.
func TestQemuIOPatterns(t *testing.T) {
	dir := t.TempDir()
	n := startDev(t, dir)
	url := fmt.Sprintf("iscsi://%s/iqn.2026-11.io.csnap:dev/0", n.iscsiAddr)
	out := qemuIO(t, url,
		"write -P 0xab 0 4M",
		"read -P 0xab 0 4M",
		"write -P 0x5c 5M 1M",
		"write -P 0x11 7777280 4096", // unaligned to the MiB, aligned to blocks
		"read -P 0x5c 5M 1M",
		"read -P 0x11 7777280 4096",
		"read -P 0x00 4M 1M",
	)
	if c := strings.Count(out, "wrote "); c != 3 {
		t.Fatalf("expected 3 writes, qemu-io said:\n%s", out)
	}
	if c := strings.Count(out, "read "); c != 4 {
		t.Fatalf("expected 4 verified reads, qemu-io said:\n%s", out)
	}
	// Large I/O crosses many PDUs, R2Ts and bursts.
	qemuIO(t, url, "aio_write -P 0x77 16M 8M", "aio_flush", "read -P 0x77 16M 8M")

	n.proc.stop(10 * time.Second)
	if n.proc.err != nil {
		t.Fatalf("csnapd did not stop cleanly on SIGTERM: %v", n.proc.err)
	}
	n2 := startDev(t, dir)
	url2 := fmt.Sprintf("iscsi://%s/iqn.2026-11.io.csnap:dev/0", n2.iscsiAddr)
	qemuIO(t, url2, "read -P 0xab 0 4M", "read -P 0x5c 5M 1M", "read -P 0x77 16M 8M")
}
