package cluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// binDir is $CSNAP_BIN (set by the Makefile) or the repository's bin/. It
// fails, never skips, when Consul is missing: `make test` builds it.
func binDir(t *testing.T) string {
	t.Helper()
	d := os.Getenv("CSNAP_BIN")
	if d == "" {
		_, file, _, _ := runtime.Caller(0)
		d = filepath.Join(filepath.Dir(file), "..", "..", "bin")
	}
	if _, err := os.Stat(filepath.Join(d, "consul")); err != nil {
		t.Fatalf("no Consul binary in %s: run `make consul` (make test does): %v", d, err)
	}
	return d
}

// testLog turns the harness's progress lines into test log lines.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestConsulCluster starts the 3 Consul agents alone, kills node 3 (a
// crashed machine), measures how long agent 1 takes to see its serfHealth
// critical, restarts it, waits for autopilot to tolerate a failure again,
// and checks that Stop leaves no process behind.
func TestConsulCluster(t *testing.T) {
	bin := binDir(t)
	ctx := context.Background()
	c, err := Start(ctx, Options{Dir: t.TempDir(), BinDir: bin, NoCsnapd: true, Log: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	leader, err := c.Consul(1).Status().Leader()
	if err != nil || leader == "" {
		t.Fatalf("leader %q: %v", leader, err)
	}
	t.Logf("leader %s", leader)
	for j := 1; j <= 3; j++ {
		if s, err := c.SerfHealth(ctx, 1, j); err != nil || s != api.HealthPassing {
			t.Fatalf("n%d serfHealth %q: %v", j, s, err)
		}
	}

	killed := time.Now()
	if err := c.KillNode(3); err != nil {
		t.Fatal(err)
	}
	waitCritical(t, c, 3, killed)

	if err := c.StartNode(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if s, err := c.SerfHealth(ctx, 1, 3); err != nil || s != api.HealthPassing {
		t.Fatalf("n3 serfHealth after restart %q: %v", s, err)
	}
	if err := c.WaitFailureTolerance(ctx, 1); err != nil {
		t.Fatal(err)
	}

	var pids []int
	for j := 1; j <= 3; j++ {
		pids = append(pids, c.Node(j).ConsulPID)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for j, pid := range pids {
		if pid == 0 {
			t.Fatalf("n%d had no Consul PID before Stop", j+1)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("n%d consul pid %d still exists after Stop (kill 0: %v)", j+1, pid, err)
		}
		if p := c.Node(j + 1).ConsulPID; p != 0 {
			t.Errorf("n%d reports consul pid %d after Stop", j+1, p)
		}
	}
}

// waitCritical waits up to 10 s after since for agent 1 to report node j's
// serfHealth critical, and logs how long that took.
func waitCritical(t *testing.T, c *Cluster, j int, since time.Time) {
	t.Helper()
	var last string
	for time.Since(since) < 10*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := c.SerfHealth(ctx, 1, j)
		cancel()
		if err == nil && s == api.HealthCritical {
			t.Logf("n%d's serfHealth critical (seen from n1) %v after SIGKILL", j, time.Since(since).Round(time.Millisecond))
			return
		}
		last = s
		if err != nil {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("n%d's serfHealth not critical 10 s after SIGKILL (last: %s)\n%s", j, last, c.ConsulLog(1))
}
