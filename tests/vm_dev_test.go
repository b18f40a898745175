package tests

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/csnap/csnap/tests/vm"
)

const devIQN = "iqn.2026-11.io.csnap:dev"

// TestVMDev drives csnapd -dev with the Linux kernel initiator (open-iscsi
// in a qemu VM): SendTargets discovery, login, mkfs.ext4, files written and
// fsynced; csnap-admin snapshot create on the host (file system frozen);
// the guest keeps writing and deleting; discovery lists the snapshot
// target; the guest logs in to it, mounts it read-only and finds exactly
// the files as they were at the snapshot, fsck clean; logs out cleanly; a
// new origin session sees the later files; the host checks the origin
// image. It runs plain, with one-way CHAP and CRC32C header and data
// digests, and with mutual CHAP also on the discovery session. The guest's
// kernel log must show no SCSI, iSCSI or ext4 error.
func TestVMDev(t *testing.T) {
	vm.Require(t)
	for _, tc := range []struct {
		name   string
		env    []string
		extra  []string
		opts   vm.Options
		digest bool
	}{
		{name: "plain"},
		{
			name:   "chap-digests",
			env:    []string{"CSNAP_CHAP_USER=guest", "CSNAP_CHAP_SECRET=initiator-secret"},
			opts:   vm.Options{CHAP: &vm.CHAP{User: "guest", Secret: "initiator-secret"}, Digest: "CRC32C"},
			digest: true,
		},
		{
			name: "mutual-chap-discovery",
			env: []string{"CSNAP_CHAP_USER=guest", "CSNAP_CHAP_SECRET=initiator-secret",
				"CSNAP_CHAP_MUTUAL_USER=csnap", "CSNAP_CHAP_MUTUAL_SECRET=target-secret-1"},
			extra: []string{"-chap-discovery"},
			opts: vm.Options{CHAP: &vm.CHAP{User: "guest", Secret: "initiator-secret"},
				MutualCHAP: &vm.CHAP{User: "csnap", Secret: "target-secret-1"}, DiscoveryCHAP: true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // two VMs at a time suit two cores
			dir := t.TempDir()
			n := startDevEnv(t, dir, tc.env, tc.extra...)
			port := n.iscsiAddr[strings.LastIndex(n.iscsiAddr, ":")+1:]
			var portNum int
			fmt.Sscan(port, &portNum)
			p := vm.Portal(portNum)
			o := tc.opts
			o.Logf = t.Logf
			o.LogPath = filepath.Join(t.TempDir(), "console.log")
			snapIQN := devIQN + ":vmsnap"
			o.Steps = []vm.Step{
				vm.Discover(p, devIQN),
				vm.Login("o", devIQN, p),
				vm.Mkfs("o"), vm.Mount("o"),
				vm.Mkdir("o", "d"),
				vm.Write("o", "hello.txt", 4096, "h"),
				vm.Write("o", "d/big.bin", 3<<20, "b"),
				vm.WriteRandom("o", "d/rand.bin", 1<<20),
				vm.Manifest("o", "m1"),
				// The host takes a snapshot while the file system is
				// frozen (consistent on disk), then the guest goes on
				// writing and deleting.
				vm.Freeze("o"), vm.Pause("snap", 2*time.Minute), vm.Thaw("o"),
				vm.Remove("o", "hello.txt"),
				vm.Write("o", "d/after.bin", 1<<20, "a"),
				vm.Write("o", "d/big.bin", 3<<20, "c"),
				vm.Sync(),
				// The snapshot target is listed and holds exactly the
				// files as they were.
				vm.Discover(p, devIQN, snapIQN),
				vm.Login("s", snapIQN, p),
				vm.MountRO("s"), vm.Verify("s", "m1"), vm.Umount("s"),
				vm.Fsck("s"),
				vm.Logout("s"),
				vm.Umount("o"), vm.Logout("o"),
				// A new session on the origin sees the later state.
				vm.Login("o2", devIQN, p),
				vm.MountRO("o2"), vm.Check("o2", "d/after.bin", 1<<20, "a"), vm.Check("o2", "d/big.bin", 3<<20, "c"), vm.Umount("o2"),
				vm.Fsck("o2"),
				vm.Logout("o2"),
			}
			o.OnPause = func(ctx context.Context, name string) error {
				out, err := runCmd(t, time.Minute, filepath.Join(binDir(t), "csnap-admin"), "-addr", n.httpAddr, "-token-file", filepath.Join(n.dataDir, "api-token"), "snapshot", "create", "dev", "vmsnap")
				if err != nil {
					return fmt.Errorf("csnap-admin snapshot create: %v: %s", err, out)
				}
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
			defer cancel()
			res, err := vm.Run(ctx, o)
			if err != nil {
				t.Fatalf("guest: %v", err)
			}
			if len(res.KernelErrors) > 0 {
				t.Fatalf("kernel errors: %v", res.KernelErrors)
			}
			d := res.Disks["o"]
			if tc.digest && (d.Params["HeaderDigest"] != "CRC32C" || d.Params["DataDigest"] != "CRC32C") {
				t.Fatalf("digests not in force: %v", d.Params)
			}
			// The host reads the origin image directly: the file deleted
			// after the snapshot is gone there, the file system is clean.
			n.proc.stop(10 * time.Second)
			img := filepath.Join(dir, "origin.img")
			if out, err := exec.Command("debugfs", "-R", "cat /d/after.bin", img).Output(); err != nil || !bytes.Equal(out, vm.Content("d/after.bin", "a", 1<<20)) {
				t.Fatalf("debugfs cat /d/after.bin: %v (%d bytes)", err, len(out))
			}
			if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
				t.Fatalf("e2fsck -fn: %v\n%s", err, out)
			}
		})
	}
}
