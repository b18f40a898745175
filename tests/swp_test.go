package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// swp runs libiscsi's iscsi-swp (set or clear the Control mode page's
// software write protect) against url.
func swp(t *testing.T, url string, on bool) {
	t.Helper()
	arg := "off"
	if on {
		arg = "on"
	}
	if out, err := runCmd(t, time.Minute, requireTool(t, "iscsi-swp"), "-s", arg, url); err != nil {
		t.Fatalf("iscsi-swp -s %s %s: %v\n%s", arg, url, err, out)
	}
}

// TestSoftwareWriteProtectTwoPortals: SWP set through one portal
// write-protects the origin through the other (qemu-io refuses to open it
// for writing: MODE SENSE reports WP), lasts across a restart of csnapd
// (it is in the LU's persisted mode parameters), and cleared through the
// second portal makes the LU writable through the first.
func TestSoftwareWriteProtectTwoPortals(t *testing.T) {
	dir := t.TempDir()
	p1 := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p2 := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	n := startDev(t, dir, "-iscsi-addr", p1+","+p2)
	waitTCP(t, n.proc, p2, 10*time.Second)
	iqn := "iqn.2026-11.io.csnap:dev"
	u1, u2 := fmt.Sprintf("iscsi://%s/%s/0", p1, iqn), fmt.Sprintf("iscsi://%s/%s/0", p2, iqn)
	qemu := requireTool(t, "qemu-io")
	refused := func(url string) {
		t.Helper()
		out, err := runCmd(t, time.Minute, qemu, "-f", "raw", "-c", "write -P 0x11 0 4096", url)
		if err == nil || !strings.Contains(out, "write protected") {
			t.Fatalf("write through %s under SWP was not refused (err %v):\n%s", url, err, out)
		}
	}
	qemuIO(t, u1, "write -P 0x22 0 4096")
	swp(t, u1, true)
	refused(u2)
	qemuIO(t, u2, "read -P 0x22 0 4096")

	n.proc.stop(10 * time.Second)
	n2 := startDev(t, dir, "-iscsi-addr", p1+","+p2)
	waitTCP(t, n2.proc, p2, 10*time.Second)
	refused(u1)
	swp(t, u2, false)
	qemuIO(t, u1, "write -P 0x33 0 4096", "read -P 0x33 0 4096")
}
