package tests

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// admin runs csnap-admin against a node and returns its stdout; it fails
// the test on a non-zero exit.
func admin(t *testing.T, n *devNode, args ...string) string {
	t.Helper()
	out, err := runCmd(t, time.Minute, filepath.Join(binDir(t), "csnap-admin"), append([]string{"-addr", n.httpAddr, "-token-file", filepath.Join(n.dataDir, "api-token")}, args...)...)
	if err != nil {
		t.Fatalf("csnap-admin %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func lunURL(n *devNode, iqn string) string { return fmt.Sprintf("iscsi://%s/%s/0", n.iscsiAddr, iqn) }

// TestSnapshotsWithQemu is issue 4's acceptance flow with qemu-io over
// iscsi://: write A; snapshot s1; write B; snapshot s2; write C over part;
// s1 reads A, s2 reads B, origin reads C (and B around it). After a restart
// the same. Deleting s1 leaves s2 and the origin unchanged. A writable
// snapshot diverges from the origin without changing other snapshots, and a
// read-only snapshot refuses writes.
func TestSnapshotsWithQemu(t *testing.T) {
	dir := t.TempDir()
	n := startDev(t, dir)
	origin := lunURL(n, "iqn.2026-11.io.csnap:dev")
	s1 := lunURL(n, "iqn.2026-11.io.csnap:dev:s1")

	qemuIO(t, origin, "write -P 0xaa 0 8M")
	admin(t, n, "snapshot", "create", "dev", "s1")
	qemuIO(t, origin, "write -P 0xbb 0 8M")
	admin(t, n, "snapshot", "create", "dev", "s2", "--priority", "5")
	qemuIO(t, origin, "write -P 0xcc 1M 3M", "write -P 0xcd 7M 4096")
	verify := func(n *devNode, withS1 bool) {
		t.Helper()
		origin, s1, s2 := lunURL(n, "iqn.2026-11.io.csnap:dev"), lunURL(n, "iqn.2026-11.io.csnap:dev:s1"), lunURL(n, "iqn.2026-11.io.csnap:dev:s2")
		if withS1 {
			qemuIO(t, s1, "read -P 0xaa 0 8M")
		}
		qemuIO(t, s2, "read -P 0xbb 0 8M")
		qemuIO(t, origin, "read -P 0xbb 0 1M", "read -P 0xcc 1M 3M", "read -P 0xbb 4M 3M", "read -P 0xcd 7M 4096", "read -P 0xbb 7344128 1044480")
	}
	verify(n, true)

	// Reads of s1 (which lives wholly in the store) in 1 MiB pieces go
	// through the node's cache of store locations: the first asks the
	// server, and for the locations ahead of it; the others hit.
	var reads []string
	for off := 0; off < 8; off++ {
		reads = append(reads, fmt.Sprintf("read -P 0xaa %dM 1M", off))
	}
	qemuIO(t, s1, reads...)
	var vol struct {
		LocationCache *struct {
			Hits   uint64 `json:"hits"`
			Misses uint64 `json:"misses"`
		} `json:"location_cache"`
	}
	if err := json.Unmarshal([]byte(admin(t, n, "volume", "status", "dev", "--json")), &vol); err != nil || vol.LocationCache == nil {
		t.Fatalf("volume status: %v %+v", err, vol)
	}
	if lc := vol.LocationCache; lc.Hits < 7 {
		t.Errorf("location cache after eight 1 MiB reads of s1: %d hits, %d misses, want at least 7 hits", lc.Hits, lc.Misses)
	}
	t.Logf("location cache: %d hits, %d misses", vol.LocationCache.Hits, vol.LocationCache.Misses)

	// Snapshots are read-only LUNs unless created --writable.
	out, err := runCmd(t, time.Minute, requireTool(t, "qemu-io"), "-f", "raw", "-c", "write -P 0x11 0 4096", s1)
	if err == nil && !strings.Contains(out, "write protected") {
		t.Fatalf("write to a read-only snapshot was not refused:\n%s", out)
	}

	// Discovery lists the origin and every snapshot target.
	ls, err := runCmd(t, time.Minute, requireTool(t, "iscsi-ls"), "-s", "iscsi://"+n.iscsiAddr)
	if err != nil {
		t.Fatalf("iscsi-ls: %v\n%s", err, ls)
	}
	for _, iqn := range []string{"iqn.2026-11.io.csnap:dev", "iqn.2026-11.io.csnap:dev:s1", "iqn.2026-11.io.csnap:dev:s2"} {
		if !strings.Contains(ls, "Target:"+iqn+" ") && !strings.Contains(ls, "Target:"+iqn+"\n") {
			t.Errorf("discovery does not list %s:\n%s", iqn, ls)
		}
	}

	// The list reports what each snapshot holds on its own.
	var snaps []struct {
		Name        string `json:"name"`
		Priority    int    `json:"priority"`
		UniqueBytes int64  `json:"unique_bytes"`
	}
	if err := json.Unmarshal([]byte(admin(t, n, "snapshot", "list", "dev", "--json")), &snaps); err != nil || len(snaps) != 2 {
		t.Fatalf("snapshot list: %v %+v", err, snaps)
	}
	if snaps[0].Name != "s1" || snaps[0].UniqueBytes != 8<<20 || snaps[1].Priority != 5 || snaps[1].UniqueBytes == 0 {
		t.Errorf("snapshot list: %+v", snaps)
	}

	// Restart on the same data directory: everything is still there.
	n.proc.stop(15 * time.Second)
	if n.proc.err != nil {
		t.Fatalf("csnapd did not stop cleanly: %v", n.proc.err)
	}
	n = startDev(t, dir)
	verify(n, true)
	admin(t, n, "check", "dev")

	// Delete s1: s2 and the origin are unchanged; s1's target is gone.
	admin(t, n, "snapshot", "delete", "dev", "s1")
	verify(n, false)
	if out, err := runCmd(t, time.Minute, requireTool(t, "qemu-io"), "-f", "raw", "-r", "-c", "read 0 4096", lunURL(n, "iqn.2026-11.io.csnap:dev:s1")); err == nil && !strings.Contains(out, "Failed") && !strings.Contains(out, "failed") {
		t.Fatalf("deleted snapshot still readable:\n%s", out)
	}

	// A writable snapshot diverges from the origin without changing s2.
	w := lunURL(n, "iqn.2026-11.io.csnap:dev:w")
	admin(t, n, "snapshot", "create", "dev", "w", "--writable")
	qemuIO(t, w, "read -P 0xbb 0 1M", "write -P 0xee 512K 1M", "read -P 0xee 512K 1M", "read -P 0xbb 0 512K", "read -P 0xcc 1536K 2560K")
	qemuIO(t, lunURL(n, "iqn.2026-11.io.csnap:dev"), "read -P 0xbb 0 1M", "read -P 0xcc 1M 3M", "write -P 0x77 0 2M")
	qemuIO(t, w, "read -P 0xee 512K 1M", "read -P 0xbb 0 512K")
	verifyS2 := lunURL(n, "iqn.2026-11.io.csnap:dev:s2")
	qemuIO(t, verifyS2, "read -P 0xbb 0 8M")
	admin(t, n, "check", "dev")
}
