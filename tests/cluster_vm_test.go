package tests

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/csnap/csnap/tests/cluster"
	"github.com/csnap/csnap/tests/vm"
)

// guestPort is node i's second portal, on 127.0.0.1 (the only host address
// a guest reaches through qemu's user network, as 10.0.2.2).
func guestPort(i int) int { return 13260 + i }

// startClusterForGuest starts the cluster with a second portal per node on
// 127.0.0.1:guestPort(i).
func startClusterForGuest(t *testing.T) *cluster.Cluster {
	t.Helper()
	return startClusterWith(t, cluster.Options{CsnapdArgsFor: func(n cluster.Node) []string {
		return []string{"-iscsi-addr", fmt.Sprintf("%s,127.0.0.1:%d", n.Portal, guestPort(n.Index))}
	}})
}

// TestClusterVM: the Linux initiator (open-iscsi in a VM) logs in to volume
// v through two nodes' portals: the server's node (path A) and another
// (path B). Both paths show the same LU identity (VPD 0x83, the WWID
// dm-multipath groups by); dm-multipath runs over them; ext4 is made and
// written; then node A's csnapd is killed (-9): its path fails, the volume
// fails over to another server, and IO goes on through path B. After the
// failover the host takes a snapshot (file system frozen) through node B,
// and the guest mounts it read-only through path B's portal and finds the
// files. The guest's kernel log may show path A's errors and nothing else:
// no ext4, jbd2 or multipath-device error. The host then checks the origin
// image (fsck clean, files in place).
func TestClusterVM(t *testing.T) {
	vm.Require(t)
	c := startClusterForGuest(t)
	a, term := serverOf(t, c, 1)
	b := others(c, a)[0]
	t.Logf("path A: n%d (the server, term %d); path B: n%d", a, term, b)
	pa, pb := vm.Portal(guestPort(a)), vm.Portal(guestPort(b))
	const snap = "vmsnap"
	snapIQN := clusterIQN + ":" + snap
	var killedAt time.Time
	res, err := vm.Run(ctxFor(t, 6*time.Minute), vm.Options{
		Steps: []vm.Step{
			vm.Discover(pb, clusterIQN),
			vm.Login("pa", clusterIQN, pa).With("replacement", "5"),
			vm.Login("pb", clusterIQN, pb).With("replacement", "5"),
			vm.SameIdentity("pa", "pb"),
			vm.Multipath("m", "pa", "pb"),
			vm.Mkfs("m"),
			vm.Mount("m"),
			vm.Write("m", "before.bin", 1<<20, "1"),
			vm.WriteRandom("m", "rand.bin", 512<<10),
			vm.MultipathStatus("m", 2, 0),
			vm.KernelErrors(false), // path A's errors are the point
			vm.Pause("kill-a", time.Minute),
			vm.Write("m", "after.bin", 1<<20, "2"),
			vm.Sync(),
			vm.Check("m", "before.bin", 1<<20, "1"),
			vm.MultipathStatus("m", 1, 1),
			vm.Manifest("m", "m1"),
			vm.Freeze("m"), vm.Pause("snap", 2*time.Minute), vm.Thaw("m"),
			vm.Remove("m", "before.bin"),
			vm.Write("m", "later.bin", 256<<10, "3"),
			vm.Sync(),
			vm.Login("s", snapIQN, pb),
			vm.MountRO("s"), vm.Verify("s", "m1"), vm.Umount("s"),
			vm.Fsck("s"),
			vm.Logout("s"),
			vm.Umount("m"),
			vm.Fsck("m"),
			vm.MultipathRemove("m"),
			vm.Logout("pb"),
			vm.Logout("pa"),
		},
		OnPause: func(ctx context.Context, name string) error {
			switch name {
			case "kill-a":
				killedAt = time.Now()
				return c.KillCsnapd(a)
			case "snap":
				out, err := runCmd(t, time.Minute, filepath.Join(binDir(t), "csnap-admin"),
					append(c.AdminArgs(b), "snapshot", "create", clusterVolume, snap)...)
				if err != nil {
					return fmt.Errorf("csnap-admin snapshot create on n%d: %v: %s", b, err, out)
				}
				return nil
			}
			return fmt.Errorf("unexpected pause %q", name)
		},
		LogPath: filepath.Join(t.TempDir(), "console.log"),
		Logf:    t.Logf,
	})
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	t.Logf("PASS in %v; after.bin written %v after the kill", res.Duration.Round(time.Millisecond),
		(res.At("WROTE", "path", "after.bin") - res.At("RESUMED", "name", "kill-a")).Round(time.Millisecond))
	da, db := res.Disks["pa"], res.Disks["pb"]
	la, errA := vm.LUDesignators(da.VPD83)
	lb, errB := vm.LUDesignators(db.VPD83)
	if errA != nil || errB != nil || len(la) == 0 || !slices.Equal(la, lb) || da.WWID == "" || da.WWID != db.WWID {
		t.Errorf("paths differ in identity: A %s %v (%v), B %s %v (%v)", da.WWID, la, errA, db.WWID, lb, errB)
	}
	// Only path A's disk and connection may have complained.
	for _, line := range res.KernelErrors {
		l := strings.ToLower(line)
		if strings.Contains(l, "ext4") || strings.Contains(l, "jbd2") || strings.Contains(l, "dm-") ||
			strings.Contains(l, "remounting") || (db.Dev != "" && strings.Contains(l, db.Dev+"]")) ||
			(db.Dev != "" && strings.Contains(l, "dev "+db.Dev)) {
			t.Errorf("kernel error beyond path A: %s", line)
		}
	}
	t.Logf("path A's kernel lines after the kill (%v ago): %d", time.Since(killedAt).Round(time.Second), len(res.KernelErrors))
	if s, newTerm := serverOf(t, c, b); s == a || newTerm <= term {
		t.Errorf("server after the kill: n%d term %d (before: n%d term %d)", s, newTerm, a, term)
	}
	// The host reads the origin image: the guest's last state, clean.
	for _, i := range others(c, a) { // a's csnapd is dead already
		if err := c.StopCsnapd(i); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(c.Dir(), "origin.img")
	if out, err := exec.Command("debugfs", "-R", "cat /after.bin", img).Output(); err != nil || !bytes.Equal(out, vm.Content("after.bin", "2", 1<<20)) {
		t.Errorf("debugfs cat /after.bin: %v (%d bytes)", err, len(out))
	}
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
}
