package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csnap/csnap/tests/vm"
)

// TestClusterVMWriteCache: the Linux initiator (open-iscsi in a VM) logs in
// to volume v through two nodes' portals, A and B, and turns the write
// cache off through A (the kernel's sd sends MODE SELECT, WCE=0); a MODE
// SENSE through B (device rescan) then reports it off. Every csnapd of the
// cluster is stopped and started again; a new session through B still
// finds it off, and turning it on through B is seen through A.
func TestClusterVMWriteCache(t *testing.T) {
	vm.Require(t)
	c := startClusterForGuest(t)
	a, b := 1, 2
	pa, pb := vm.Portal(guestPort(a)), vm.Portal(guestPort(b))
	res, err := vm.Run(ctxFor(t, 8*time.Minute), vm.Options{
		Steps: []vm.Step{
			vm.Discover(pa, clusterIQN),
			vm.Login("pa", clusterIQN, pa),
			vm.Login("pb", clusterIQN, pb),
			vm.WantWriteCache("pb", true),
			vm.SetWriteCache("pa", false),
			vm.WantWriteCache("pb", false),
			vm.Logout("pb"),
			vm.Logout("pa"),
			vm.Pause("restart", 4*time.Minute),
			vm.Login("qb", clusterIQN, pb),
			vm.WantWriteCache("qb", false),
			vm.SetWriteCache("qb", true),
			vm.Login("qa", clusterIQN, pa),
			vm.WantWriteCache("qa", true),
			vm.Logout("qa"),
			vm.Logout("qb"),
		},
		OnPause: func(ctx context.Context, name string) error {
			if name != "restart" {
				return fmt.Errorf("unexpected pause %q", name)
			}
			// Every node at once: the shared state has no node left to
			// keep it, only the store.
			var wg sync.WaitGroup
			errs := make([]error, c.Nodes()+1)
			for i := 1; i <= c.Nodes(); i++ {
				wg.Add(1)
				go func() { defer wg.Done(); errs[i] = c.StopCsnapd(i) }()
			}
			wg.Wait()
			for i := 1; i <= c.Nodes(); i++ {
				if errs[i] != nil {
					return fmt.Errorf("stopping n%d: %w", i, errs[i])
				}
			}
			for i := 1; i <= c.Nodes(); i++ {
				if err := c.StartCsnapd(ctx, i); err != nil {
					return fmt.Errorf("starting n%d: %w", i, err)
				}
			}
			for i := 1; i <= c.Nodes(); i++ {
				waitTarget(t, c, i, clusterIQN, true)
			}
			return nil
		},
		LogPath: filepath.Join(t.TempDir(), "console.log"),
		Logf:    t.Logf,
	})
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	if len(res.KernelErrors) > 0 {
		t.Fatalf("kernel errors: %v", res.KernelErrors)
	}
	t.Logf("PASS in %v", res.Duration.Round(time.Millisecond))
}

// TestVMDevWriteCache: with csnapd -dev, the write cache turned off by the
// Linux initiator (MODE SELECT) stays off after csnapd restarts.
func TestVMDevWriteCache(t *testing.T) {
	vm.Require(t)
	dir := t.TempDir()
	n := startDevEnv(t, dir, nil)
	var port int
	fmt.Sscan(n.iscsiAddr[strings.LastIndex(n.iscsiAddr, ":")+1:], &port)
	p := vm.Portal(port)
	res, err := vm.Run(ctxFor(t, 6*time.Minute), vm.Options{
		Steps: []vm.Step{
			vm.Discover(p, devIQN),
			vm.Login("o", devIQN, p),
			vm.WantWriteCache("o", true),
			vm.SetWriteCache("o", false),
			vm.Logout("o"),
			vm.Pause("restart", 2*time.Minute),
			vm.Login("o2", devIQN, p),
			vm.WantWriteCache("o2", false),
			vm.Logout("o2"),
		},
		OnPause: func(ctx context.Context, name string) error {
			if name != "restart" {
				return fmt.Errorf("unexpected pause %q", name)
			}
			n.proc.stop(10 * time.Second)
			n = startDevEnv(t, dir, nil, "-iscsi-addr", n.iscsiAddr, "-http-addr", n.httpAddr)
			return nil
		},
		LogPath: filepath.Join(t.TempDir(), "console.log"),
		Logf:    t.Logf,
	})
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	if len(res.KernelErrors) > 0 {
		t.Fatalf("kernel errors: %v", res.KernelErrors)
	}
}
