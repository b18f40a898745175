package vm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csnap/csnap/tests/vm"
)

// startTGT starts a private tgtd with one target per spec (sparse 256 MiB
// backing files in the test's temp dir) and stops it at the end of the test.
func startTGT(ctx context.Context, t *testing.T) *vm.TGT {
	t.Helper()
	tg, err := vm.StartTGT(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tg.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("tgtd log:\n%s", tg.Log())
		}
	})
	return tg
}

func sparseFile(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

// debugfsCat reads a file out of an ext4 image without mounting it.
func debugfsCat(t *testing.T, img, path string) []byte {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("debugfs", "-R", "cat "+path, img)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs cat %s: %v: %s", path, err, stderr.String())
	}
	if strings.Contains(stderr.String(), "File not found") {
		t.Fatalf("debugfs cat %s: %s", path, stderr.String())
	}
	return stdout.Bytes()
}

func debugfsExists(t *testing.T, img, path string) bool {
	t.Helper()
	out, _ := exec.Command("debugfs", "-R", "stat "+path, img).CombinedOutput()
	return !strings.Contains(string(out), "File not found")
}

func fsckClean(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

func logPath(t *testing.T) string {
	// kept under the test's temp dir; Result.Err includes the console tail
	return filepath.Join(t.TempDir(), "console.log")
}

// TestTGTBasic proves the harness against tgtd: discovery, login, mkfs,
// write, logout, a new login and read back, then the host reads the backing
// file.
func TestTGTBasic(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	tg := startTGT(ctx, t)
	img := sparseFile(t, "lun.img", 256<<20)
	const iqn = "iqn.2024-01.io.csnap.test:tgt-basic"
	if err := tg.AddTarget(ctx, vm.TGTTarget{TID: 1, IQN: iqn, Backing: img}); err != nil {
		t.Fatal(err)
	}
	portal := vm.Portal(tg.Port)
	const otherIQN = "iqn.2024-01.io.csnap.test:tgt-other"
	otherImg := sparseFile(t, "other.img", 64<<20)
	if err := tg.AddTarget(ctx, vm.TGTTarget{TID: 2, IQN: otherIQN, Backing: otherImg}); err != nil {
		t.Fatal(err)
	}
	const helloSize = 5000
	res, err := vm.Run(ctx, vm.Options{
		Steps: []vm.Step{
			vm.Discover(portal, iqn, otherIQN),
			vm.Login("a", iqn, portal),
			vm.Mkfs("a"),
			vm.Mount("a"),
			vm.Write("a", "hello.txt", helloSize, "basic"),
			vm.WriteRandom("a", "data/random.bin", 2<<20),
			vm.Manifest("a", "written"),
			vm.Umount("a"),
			vm.Logout("a"),
			// a fresh session and block device: the reads reach the target
			vm.Login("b", iqn, portal),
			vm.MountRO("b"),
			vm.Verify("b", "written"),
			vm.Check("b", "hello.txt", helloSize, "basic"),
			vm.Umount("b"),
			vm.Fsck("b"),
			vm.Logout("b"),
			// raw O_DIRECT I/O on a second target
			vm.Login("r", otherIQN, portal),
			vm.RawIO("r", 16, 1, "z"),
			vm.Logout("r"),
		},
		LogPath: logPath(t),
		Logf:    t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PASS in %v (boot %v, login %v)", res.Duration.Round(time.Millisecond),
		res.Boot.Round(time.Millisecond), res.At("LOGIN", "id", "a").Round(time.Millisecond))

	if len(res.Targets) != 2 || res.Targets[0].IQN != iqn || res.Targets[1].IQN != otherIQN {
		t.Errorf("discovery: got %+v, want %s and %s", res.Targets, iqn, otherIQN)
	}
	// host side: the O_DIRECT write reached the backing file
	raw, err := os.ReadFile(otherImg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[16<<20:17<<20], vm.RawContent(16, 1, "z")) {
		t.Errorf("the raw write is not in the backing file")
	}
	a, b := res.Disks["a"], res.Disks["b"]
	if a.Sectors != 256<<20/512 || a.Vendor != "IET" {
		t.Errorf("disk a: %+v", a)
	}
	if a.VPD83 == "" || a.VPD83 != b.VPD83 {
		t.Errorf("VPD 0x83 differs across sessions: %q vs %q", a.VPD83, b.VPD83)
	}

	// host side: the data is in the backing file
	if got, want := debugfsCat(t, img, "/hello.txt"), vm.Content("hello.txt", "basic", helloSize); !bytes.Equal(got, want) {
		t.Errorf("hello.txt in the image: %d bytes, differs from the expected %d", len(got), len(want))
	}
	wrote := res.Find("WROTE", "path", "data/random.bin")
	if len(wrote) != 1 {
		t.Fatalf("no WROTE marker for random.bin")
	}
	sum := sha256.Sum256(debugfsCat(t, img, "/data/random.bin"))
	if hex.EncodeToString(sum[:]) != wrote[0].Get("sha256") {
		t.Errorf("random.bin sha256 in the image %x, guest wrote %s", sum, wrote[0].Get("sha256"))
	}
	fsckClean(t, img)
}

// TestTGTSnapshotFlow runs the snapshot scenario's guest side against tgtd,
// with mutual CHAP and CRC32C header and data digests. The "snapshot" is a
// copy of the backing file taken while the guest is paused with the file
// system frozen, exported as a second, read-only target.
func TestTGTSnapshotFlow(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	tg := startTGT(ctx, t)
	img := sparseFile(t, "origin.img", 256<<20)
	snapImg := filepath.Join(filepath.Dir(img), "snap.img")
	const (
		origin = "iqn.2024-01.io.csnap.test:tgt-origin"
		snap   = "iqn.2024-01.io.csnap.test:tgt-origin.snap1"
	)
	chap := &vm.CHAP{User: "vmuser", Secret: "initiator-secret-1"}
	mutual := &vm.CHAP{User: "vmtarget", Secret: "target-secret-22"}
	tgtSpec := vm.TGTTarget{TID: 1, IQN: origin, Backing: img, CHAP: chap, MutualCHAP: mutual, Digest: "CRC32C,None"}
	if err := tg.AddTarget(ctx, tgtSpec); err != nil {
		t.Fatal(err)
	}
	portal := vm.Portal(tg.Port)
	snapped := false

	res, err := vm.Run(ctx, vm.Options{
		CHAP:       chap,
		MutualCHAP: mutual,
		Digest:     "CRC32C",
		Steps: []vm.Step{
			vm.Discover(portal, origin),
			// a wrong secret is refused
			vm.Login("x", origin, portal).With("pass", "wrong-secret-123").ExpectFail(),
			vm.Login("o", origin, portal),
			vm.Mkfs("o"),
			vm.Mount("o"),
			vm.Write("o", "keep.txt", 3000, "1"),
			vm.Write("o", "gone.txt", 70000, "1"),
			vm.Write("o", "dir/changed.bin", 1<<20, "1"),
			vm.Manifest("o", "at-snap"),
			vm.Freeze("o"),
			vm.Pause("snap", time.Minute),
			vm.Thaw("o"),
			// the origin moves on
			vm.Remove("o", "gone.txt"),
			vm.Write("o", "dir/changed.bin", 1<<20, "2"),
			vm.Write("o", "new.txt", 10000, "2"),
			vm.Sync(),
			vm.Discover(portal, origin, snap),
			vm.Login("s", snap, portal),
			vm.MountRO("s"),
			vm.Verify("s", "at-snap"),
			vm.Check("s", "dir/changed.bin", 1<<20, "1"),
			vm.Umount("s"),
			vm.Fsck("s"),
			vm.Logout("s"),
			vm.Check("o", "dir/changed.bin", 1<<20, "2"),
			vm.Umount("o"),
			vm.Fsck("o"),
			vm.Logout("o"),
		},
		OnPause: func(ctx context.Context, name string) error {
			// the snapshot: a sparse copy of the frozen origin
			if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", img, snapImg).CombinedOutput(); err != nil {
				t.Errorf("cp: %v: %s", err, out)
				return err
			}
			s := tgtSpec
			s.TID, s.IQN, s.Backing, s.ReadOnly = 2, snap, snapImg, true
			snapped = true
			return tg.AddTarget(ctx, s)
		},
		LogPath: logPath(t),
		Logf:    t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PASS in %v (boot %v)", res.Duration.Round(time.Millisecond), res.Boot.Round(time.Millisecond))
	if !snapped {
		t.Fatal("OnPause was not called")
	}
	for _, id := range []string{"o", "s"} {
		p := res.Disks[id].Params
		if p["HeaderDigest"] != "CRC32C" || p["DataDigest"] != "CRC32C" {
			t.Errorf("disk %s: digests not negotiated: %v", id, p)
		}
	}
	if !res.Disks["s"].ReadOnly {
		t.Errorf("snapshot disk is not read-only: %+v", res.Disks["s"])
	}
	// the second discovery (after the snapshot) lists both targets
	seen := map[string]int{}
	for _, tt := range res.Targets {
		seen[tt.IQN]++
	}
	if seen[origin] != 2 || seen[snap] != 1 || len(seen) != 2 {
		t.Errorf("discovered %v", seen)
	}
	if len(res.Find("LOGIN_FAILED", "id", "x")) != 1 {
		t.Errorf("no LOGIN_FAILED for the wrong CHAP secret")
	}

	// host side: snapshot and origin as the guest left them
	fsckClean(t, snapImg)
	fsckClean(t, img)
	if got := debugfsCat(t, snapImg, "/gone.txt"); !bytes.Equal(got, vm.Content("gone.txt", "1", 70000)) {
		t.Errorf("gone.txt in the snapshot differs")
	}
	if debugfsExists(t, img, "/gone.txt") {
		t.Errorf("gone.txt still in the origin")
	}
	if got := debugfsCat(t, img, "/dir/changed.bin"); !bytes.Equal(got, vm.Content("dir/changed.bin", "2", 1<<20)) {
		t.Errorf("dir/changed.bin in the origin is not the new version")
	}
}

// TestHardTimeout: a guest that runs past Options.Timeout is killed by PID
// and reported as such.
func TestHardTimeout(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, err := vm.Start(ctx, vm.Options{
		Steps:   []vm.Step{vm.Pause("forever", 10*time.Minute)},
		Timeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	res, err := g.Wait(ctx)
	if err == nil || !strings.Contains(res.FailReason, "hard timeout") || res.Duration > 20*time.Second {
		t.Fatalf("err=%v reason=%q after %v", err, res.FailReason, res.Duration)
	}
	if err := syscall.Kill(g.PID(), 0); err != syscall.ESRCH {
		t.Fatalf("qemu pid %d still exists: %v", g.PID(), err)
	}
}

// TestTGTMultipathFailover: two tgtd processes export the same backing file
// under the same IQN (so the same LU identity) on two portals; the guest
// builds a dm-multipath device over both sessions, writes, then the first
// tgtd is SIGKILLed and I/O goes on through the second path.
func TestTGTMultipathFailover(t *testing.T) {
	vm.Require(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	img := sparseFile(t, "shared.img", 128<<20)
	const iqn = "iqn.2024-01.io.csnap.test:tgt-shared"
	nodeA, nodeB := startTGT(ctx, t), startTGT(ctx, t)
	for _, n := range []*vm.TGT{nodeA, nodeB} {
		if err := n.AddTarget(ctx, vm.TGTTarget{TID: 1, IQN: iqn, Backing: img}); err != nil {
			t.Fatal(err)
		}
	}
	pa, pb := vm.Portal(nodeA.Port), vm.Portal(nodeB.Port)
	res, err := vm.Run(ctx, vm.Options{
		Steps: []vm.Step{
			vm.Login("pa", iqn, pa).With("replacement", "5"),
			vm.Login("pb", iqn, pb).With("replacement", "5"),
			vm.SameIdentity("pa", "pb"),
			vm.Multipath("m", "pa", "pb"),
			vm.Mkfs("m"),
			vm.Mount("m"),
			vm.Write("m", "before.bin", 256<<10, "1"),
			vm.MultipathStatus("m", 2, 0),
			vm.KernelErrors(false), // path A's errors are the point
			vm.Pause("kill-a", time.Minute),
			vm.Write("m", "after.bin", 256<<10, "1"),
			vm.Sync(),
			vm.Check("m", "before.bin", 256<<10, "1"),
			vm.MultipathStatus("m", 1, 1),
			vm.Umount("m"),
			vm.Fsck("m"),
			vm.MultipathRemove("m"),
			vm.Logout("pb"),
			vm.Logout("pa"),
		},
		OnPause: func(ctx context.Context, name string) error { return nodeA.Kill() },
		LogPath: logPath(t),
		Logf:    t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PASS in %v; after.bin written %v after the kill", res.Duration.Round(time.Millisecond),
		(res.At("WROTE", "path", "after.bin") - res.At("RESUMED", "name", "kill-a")).Round(time.Millisecond))
	fsckClean(t, img)
	if got := debugfsCat(t, img, "/after.bin"); !bytes.Equal(got, vm.Content("after.bin", "1", 256<<10)) {
		t.Errorf("after.bin in the image differs")
	}
}
