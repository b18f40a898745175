package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestNetnsPartition starts the 3 Consul agents in network namespaces,
// checks that each tracked PID is the agent itself inside its node's
// namespace, partitions node 3 off (the others see its serfHealth go
// critical, and it reaches none of them), heals it (it rejoins), and
// checks that Stop leaves neither a process nor a namespace behind.
func TestNetnsPartition(t *testing.T) {
	bin := binDir(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("ip(8) not found: the network-namespace mode needs iproute2: %v", err)
	}
	ctx := context.Background()
	c, err := Start(ctx, Options{Dir: t.TempDir(), BinDir: bin, NoCsnapd: true, Netns: true, StampLogs: true, Log: testLog{t},
		ReadyTimeout: 2 * time.Minute}) // Serf reconnects a healed node every 30 s
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	var names []string
	for i := 1; i <= c.Nodes(); i++ {
		n := c.Node(i)
		if !strings.HasPrefix(n.IP, NetnsSubnet+".") || n.Netns == "" {
			t.Fatalf("n%d: IP %s netns %q", i, n.IP, n.Netns)
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n.ConsulPID))
		if got := strings.TrimSpace(string(comm)); got != "consul" {
			t.Fatalf("n%d: pid %d is %q, not consul", i, n.ConsulPID, got)
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", n.ConsulPID))
		if err != nil || ns == self {
			t.Fatalf("n%d: consul pid %d in namespace %s (ours %s): %v", i, n.ConsulPID, ns, self, err)
		}
		want, err := namespaceID(n.Netns)
		if err != nil || ns != want {
			t.Fatalf("n%d: consul pid %d in %s, namespace %s is %s (%v)", i, n.ConsulPID, ns, n.Netns, want, err)
		}
		pids = append(pids, n.ConsulPID)
		names = append(names, n.Netns)
	}
	names = append(names, c.SwitchNetns())
	// Command runs inside the node's namespace: only its own address.
	out, err := c.Command(ctx, 2, "ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), c.Node(2).IP+"/24") {
		t.Fatalf("ip addr in n2's namespace: %v\n%s", err, out)
	}

	if err := c.Partition(3); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	waitSerf(t, c, 1, 3, api.HealthCritical, cut)
	// n3 reaches nobody: a TCP connect from its namespace to n1's Serf port fails.
	if out, err := c.Command(ctx, 3, "bash", "-c", fmt.Sprintf("timeout 2 bash -c '</dev/tcp/%s/%d'", c.Node(1).IP, ConsulSerfLANPort)).CombinedOutput(); err == nil {
		t.Fatalf("n3 still reaches n1 after Partition: %s", out)
	}
	if err := c.Heal(3); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.WaitConsul(wctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("n3 rejoined %v after Heal", time.Since(healed).Round(time.Millisecond))

	if err := c.Stop(); err != nil {
		art := os.Getenv("CSNAP_TEST_ARTIFACTS")
		for i := 1; i <= c.Nodes(); i++ {
			t.Logf("n%d Consul log (end):\n%s", i, logTail(fmt.Sprintf("n%d consul", i), c.Node(i).ConsulLogPath))
			if art != "" {
				dir := filepath.Join(art, t.Name())
				if err := os.MkdirAll(dir, 0o755); err == nil {
					os.WriteFile(filepath.Join(dir, fmt.Sprintf("consul-n%d.log", i)), []byte(c.ConsulLog(i)), 0o644)
				}
			}
		}
		t.Fatal(err)
	}
	for j, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("n%d consul pid %d still exists after Stop (kill 0: %v)", j+1, pid, err)
		}
	}
	for _, ns := range names {
		if _, err := os.Stat("/run/netns/" + ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s still exists after Stop (%v)", ns, err)
		}
	}
}

// namespaceID is the net:[inode] of a named namespace, as /proc shows it.
func namespaceID(name string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+name, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("net:[%d]", st.Ino), nil
}

// waitSerf waits up to 20 s after since for agent i to report node j's
// serfHealth as status, and logs how long that took.
func waitSerf(t *testing.T, c *Cluster, i, j int, status string, since time.Time) {
	t.Helper()
	var last string
	for time.Since(since) < 20*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := c.SerfHealth(ctx, i, j)
		cancel()
		if err == nil && s == status {
			t.Logf("n%d's serfHealth %s (seen from n%d) %v after the partition", j, status, i, time.Since(since).Round(time.Millisecond))
			return
		}
		last = s
		if err != nil {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("n%d's serfHealth not %s (seen from n%d) 20 s after the partition (last: %s)\n%s", j, status, i, last, c.ConsulLog(i))
}
