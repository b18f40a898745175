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
// fsynced, logout, a new session that finds exactly those files, fsck, and
// a clean logout; then the host checks the origin image itself. It runs
// plain, with one-way CHAP and CRC32C header and data digests, and with
// mutual CHAP also on the discovery session. The guest's kernel log must
// show no SCSI, iSCSI or ext4 error.
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
			o.Steps = []vm.Step{
				vm.Discover(p, devIQN),
				vm.Login("o", devIQN, p),
				vm.Mkfs("o"), vm.Mount("o"),
				vm.Mkdir("o", "d"),
				vm.Write("o", "hello.txt", 4096, "h"),
				vm.Write("o", "d/big.bin", 3<<20, "b"),
				vm.WriteRandom("o", "d/rand.bin", 1<<20),
				vm.Manifest("o", "m1"),
				vm.Umount("o"), vm.Logout("o"),
				vm.Login("o2", devIQN, p),
				vm.MountRO("o2"), vm.Verify("o2", "m1"), vm.Umount("o2"),
				vm.Fsck("o2"),
				vm.Logout("o2"),
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
			// The host reads the origin image directly: same bytes.
			n.proc.stop(10 * time.Second)
			img := filepath.Join(dir, "origin.img")
			out, err := exec.Command("debugfs", "-R", "cat /hello.txt", img).Output()
			if err != nil || !bytes.Equal(out, vm.Content("hello.txt", "h", 4096)) {
				t.Fatalf("debugfs cat /hello.txt: %v (%d bytes)", err, len(out))
			}
			if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
				t.Fatalf("e2fsck -fn: %v\n%s", err, out)
			}
		})
	}
}
