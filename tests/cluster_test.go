package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csnap/csnap/tests/cluster"
)

// The cluster tests run a real 3-agent Consul cluster and 3 csnapd on
// 127.0.0.1-3 (tests/cluster), one volume "v" on files every node opens,
// and qemu-io initiators writing through the nodes that survive a fault.

const (
	clusterVolume = "v"
	clusterIQN    = "iqn.2026-11.io.csnap:v"
	regionSize    = 4 << 20 // each writer owns one region of the volume
	opSize        = 64 << 10
	volumeSize    = 64 << 20
	lastRegion    = volumeSize/regionSize - 1
)

// testWriterLog sends harness progress lines to t.Log.
type testWriterLog struct{ t *testing.T }

func (w testWriterLog) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startCluster starts the cluster, creates volume v (64 MiB) and waits
// until every node exports it. The cluster is stopped at the end of the
// test, by PID, with every csnapd log dumped if the test failed.
func startCluster(t *testing.T, extra ...string) *cluster.Cluster {
	t.Helper()
	return startClusterWith(t, cluster.Options{CsnapdArgs: extra})
}

// startClusterWith is startCluster with harness options (Dir, BinDir and
// Log are filled in). The volume's files are in c.Dir().
func startClusterWith(t *testing.T, o cluster.Options) *cluster.Cluster {
	t.Helper()
	requireTool(t, "qemu-io")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o.Dir, o.BinDir, o.Log = dir, binDir(t), testWriterLog{t}
	if os.Getenv("CSNAP_TEST_CONSUL_ACL") == "1" && !o.ConsulACL {
		// Every cluster test under Consul ACLs (default deny) and
		// gossip encryption, csnapd holding only the shipped policy.
		policy, err := os.ReadFile("../configs/consul-policy-csnapd.hcl")
		if err != nil {
			t.Fatal(err)
		}
		o.ConsulACL, o.CsnapdPolicy = true, string(policy)
	}
	c, err := cluster.Start(ctx, o)
	if err != nil {
		t.Fatalf("starting the cluster: %v", err)
	}
	stopClusterAtEnd(t, c)
	clusterAdmin(t, c, 1, "volume", "create", clusterVolume, "--origin", dir+"/origin.img",
		"--store", dir+"/store.img", "--size", "64MiB") // volumeSize
	for i := 1; i <= c.Nodes(); i++ {
		waitTarget(t, c, i, clusterIQN, true)
	}
	return c
}

// stopClusterAtEnd stops c when the test ends, by PID; if the test
// failed, it first prints the end of every csnapd log and saves the whole
// logs (saveClusterLogs).
func stopClusterAtEnd(t *testing.T, c *cluster.Cluster) {
	t.Cleanup(func() {
		if t.Failed() {
			for i := 1; i <= c.Nodes(); i++ {
				t.Logf("csnapd n%d log (end):\n%s", i, tail(c.CsnapdLog(i), 6000))
			}
			saveClusterLogs(t, c)
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
}

// saveClusterLogs copies every node's whole csnapd and Consul logs into
// $CSNAP_TEST_ARTIFACTS/<test>/ (the failure output has only their ends).
func saveClusterLogs(t *testing.T, c *cluster.Cluster) {
	dir := os.Getenv("CSNAP_TEST_ARTIFACTS")
	if dir == "" {
		return
	}
	dir = filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("saving the csnapd logs: %v", err)
		return
	}
	for i := 1; i <= c.Nodes(); i++ {
		for name, log := range map[string]string{"csnapd": c.CsnapdLog(i), "consul": c.ConsulLog(i)} {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-n%d.log", name, i)), []byte(log), 0o644); err != nil {
				t.Logf("saving the logs: %v", err)
				return
			}
		}
	}
	t.Logf("whole csnapd and Consul logs in %s", dir)
}

// clusterAdmin runs csnap-admin against node i and fails the test on error.
func clusterAdmin(t *testing.T, c *cluster.Cluster, i int, args ...string) string {
	t.Helper()
	out, err := runCmd(t, time.Minute, binDir(t)+"/csnap-admin", append(c.AdminArgs(i), args...)...)
	if err != nil {
		t.Fatalf("csnap-admin %v on n%d: %v\n%s", args, i, err, out)
	}
	return out
}

// health returns node i's GET /v1/health.
func health(c *cluster.Cluster, i int) (targets []string, err error) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + c.Node(i).HTTPAddr + "/v1/health")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var h struct {
		Targets []string `json:"targets"`
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("health: %v: %s", err, b)
	}
	return h.Targets, nil
}

// waitTarget waits (20 s at most) until node i exports iqn (or not).
func waitTarget(t *testing.T, c *cluster.Cluster, i int, iqn string, present bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ts, err := health(c, i)
		if err == nil && slices.Contains(ts, iqn) == present {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("n%d: target %s present=%v not reached in 20 s (targets %v, err %v)", i, iqn, present, ts, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// serverOf returns the index of the node serving the volume, and its term,
// as node i sees them (waiting up to 30 s for a server).
func serverOf(t *testing.T, c *cluster.Cluster, i int) (int, uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := runCmd(t, 10*time.Second, binDir(t)+"/csnap-admin", append(c.AdminArgs(i), "server", clusterVolume, "--json")...)
		var s struct {
			Node string `json:"node"`
			Term uint64 `json:"term"`
		}
		if err == nil && json.Unmarshal([]byte(out), &s) == nil && s.Term > 0 {
			for j := 1; j <= c.Nodes(); j++ {
				if c.Node(j).Name == s.Node {
					return j, s.Term
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no server for %s seen from n%d in 30 s: %v %s", clusterVolume, i, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func lunOn(c *cluster.Cluster, i int, iqn string) string {
	return fmt.Sprintf("iscsi://%s/%s/0", c.Node(i).Portal, iqn)
}

var opsPerSec = regexp.MustCompile(`and ([0-9.]+) ops/sec`)

// writer is a qemu-io process writing a pattern over one region, one 64
// KiB write at a time with a pause between writes, so that it is writing
// while a fault is injected.
type writer struct {
	node, region int
	pattern      byte
	out          string
	err          error
	done         chan struct{}
	cancel       context.CancelFunc // kills the process (by PID)
}

// run starts qemu-io with args in the background; it is killed by cancel,
// after 3 minutes, or at the end of the test.
func (w *writer) run(t *testing.T, args []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	w.cancel = cancel
	t.Cleanup(func() { cancel(); <-w.done })
	cmd := exec.CommandContext(ctx, "qemu-io", args...)
	cmd.WaitDelay = 5 * time.Second
	go func() {
		defer close(w.done)
		out, err := cmd.CombinedOutput()
		w.out, w.err = string(out), err
	}()
}

func startWriter(t *testing.T, c *cluster.Cluster, node, region int, pattern byte, pause time.Duration) *writer {
	w := &writer{node: node, region: region, pattern: pattern, done: make(chan struct{})}
	args := []string{"-f", "raw"}
	for off := 0; off < regionSize; off += opSize {
		args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", pattern, region*regionSize+off, opSize))
		args = append(args, "-c", fmt.Sprintf("sleep %d", pause.Milliseconds()))
	}
	args = append(args, lunOn(c, node, clusterIQN))
	w.run(t, args)
	return w
}

// wait returns the longest single write the initiator saw: the IO stall.
func (w *writer) wait(t *testing.T) time.Duration {
	t.Helper()
	<-w.done
	if w.err != nil || strings.Contains(w.out, "failed") || strings.Contains(w.out, "rror") {
		t.Fatalf("writer on n%d (region %d): %v\n%s", w.node, w.region, w.err, tail(w.out, 20))
	}
	var worst time.Duration
	n := 0
	for _, m := range opsPerSec.FindAllStringSubmatch(w.out, -1) {
		ops, err := strconv.ParseFloat(m[1], 64)
		if err != nil || ops <= 0 {
			continue
		}
		n++
		worst = max(worst, time.Duration(float64(time.Second)/ops))
	}
	if want := regionSize / opSize; n != want {
		t.Fatalf("writer on n%d: %d writes reported, want %d:\n%s", w.node, n, want, tail(w.out, 20))
	}
	return worst
}

// verify reads a region through node i and checks it holds pattern.
func verify(t *testing.T, c *cluster.Cluster, i int, iqn string, region int, pattern byte) {
	t.Helper()
	qemuIO(t, lunOn(c, i, iqn), fmt.Sprintf("read -P %d %d %d", pattern, region*regionSize, regionSize))
}

// others returns the node indexes other than s.
func others(c *cluster.Cluster, s int) []int {
	var out []int
	for i := 1; i <= c.Nodes(); i++ {
		if i != s {
			out = append(out, i)
		}
	}
	return out
}

// TestClusterFailover: while qemu-io initiators write through the two
// nodes that are not the volume's server, the server fails, four ways in
// turn: its csnapd killed (-9), its whole node killed (Consul agent and
// csnapd), a graceful stop, and every node restarted. Each time the
// initiators see no error, another node serves under a newer term, every
// acknowledged write reads back through another node, and every snapshot
// taken so far still reads exactly its point-in-time content. The longest
// write each initiator saw (the stall) is logged.
func TestClusterFailover(t *testing.T) {
	c := startCluster(t)
	// prev[r] is what region r (0: written through one survivor, 1:
	// through the other) holds before the round; snaps records every
	// snapshot with the content it must keep.
	prev := [2]byte{0, 0}
	type snap struct {
		name    string
		content [2]byte
	}
	var snaps []snap
	rounds := []struct {
		name  string
		fault func(t *testing.T, s int)
		heal  func(t *testing.T, s int)
	}{
		{"kill -9 csnapd", func(t *testing.T, s int) { must(t, c.KillCsnapd(s)) }, func(t *testing.T, s int) { must(t, c.StartCsnapd(ctxFor(t, time.Minute), s)) }},
		{"kill node", func(t *testing.T, s int) { must(t, c.KillNode(s)) }, func(t *testing.T, s int) {
			must(t, c.StartNode(ctxFor(t, 2*time.Minute), s))
			must(t, c.WaitFailureTolerance(ctxFor(t, time.Minute), 1))
		}},
		{"graceful stop", func(t *testing.T, s int) { must(t, c.StopCsnapd(s)) }, func(t *testing.T, s int) { must(t, c.StartCsnapd(ctxFor(t, time.Minute), s)) }},
	}
	for k, r := range rounds {
		s, term := serverOf(t, c, 1)
		surv := others(c, s)
		name := fmt.Sprintf("before-%d", k)
		clusterAdmin(t, c, surv[0], "snapshot", "create", clusterVolume, name)
		snaps = append(snaps, snap{name, prev})
		pat := [2]byte{byte(0x20 + 2*k), byte(0x21 + 2*k)}
		ws := []*writer{startWriter(t, c, surv[0], 0, pat[0], 30*time.Millisecond), startWriter(t, c, surv[1], 1, pat[1], 30*time.Millisecond)}
		time.Sleep(700 * time.Millisecond)
		t.Logf("round %q: server n%d (term %d) fails", r.name, s, term)
		failedAt := time.Now()
		r.fault(t, s)
		for _, w := range ws {
			stall := w.wait(t)
			t.Logf("round %q: initiator on n%d: longest write %v", r.name, w.node, stall.Round(time.Millisecond))
		}
		ns, nterm := serverOf(t, c, surv[0])
		t.Logf("round %q: n%d serves under term %d, %v after the fault", r.name, ns, nterm, time.Since(failedAt).Round(time.Millisecond))
		if ns == s || nterm <= term {
			t.Fatalf("round %q: server n%d term %d after the fault of n%d term %d", r.name, ns, nterm, s, term)
		}
		// Each region read back through the other survivor.
		verify(t, c, surv[1], clusterIQN, 0, pat[0])
		verify(t, c, surv[0], clusterIQN, 1, pat[1])
		prev = pat
		for _, sn := range snaps {
			for region := 0; region < 2; region++ {
				verify(t, c, surv[region], clusterIQN+":"+sn.name, region, sn.content[region])
			}
		}
		r.heal(t, s)
		waitTarget(t, c, s, clusterIQN, true)
	}

	// Every node restarted: all data and snapshots are still there.
	t.Log("restarting every node's csnapd")
	for i := 1; i <= c.Nodes(); i++ {
		must(t, c.StopCsnapd(i))
	}
	for i := 1; i <= c.Nodes(); i++ {
		must(t, c.StartCsnapd(ctxFor(t, time.Minute), i))
	}
	for i := 1; i <= c.Nodes(); i++ {
		waitTarget(t, c, i, clusterIQN, true)
	}
	serverOf(t, c, 1)
	for i := 1; i <= c.Nodes(); i++ {
		verify(t, c, i, clusterIQN, 0, prev[0])
		verify(t, c, i, clusterIQN, 1, prev[1])
	}
	for _, sn := range snaps {
		waitTarget(t, c, 2, clusterIQN+":"+sn.name, true)
		for region := 0; region < 2; region++ {
			verify(t, c, 2, clusterIQN+":"+sn.name, region, sn.content[region])
		}
	}
	if out := clusterAdmin(t, c, 3, "check", clusterVolume); !strings.Contains(out, "clean") {
		t.Fatalf("check after the failovers: %s", out)
	}
}

// TestClusterConsulOutage: Consul loses its quorum for longer than the
// server's lease (the Consul agents of the two other nodes frozen for 5
// s), while initiators write through those two nodes. The server cannot
// confirm its lock, so it stops serving; it cannot release the lock or
// destroy its session either, and that session stays valid (its node's
// checks pass). Once Consul has a leader again some node must serve
// again; the initiators see no error (IO waits), and their writes read
// back. Before the election destroyed such a left-over session first,
// the lock stayed with it and no node ever served again.
func TestClusterConsulOutage(t *testing.T) {
	c := startCluster(t)
	s, term := serverOf(t, c, 1)
	o := others(c, s)
	// A snapshot first, so that the writes need the server (copy-outs).
	clusterAdmin(t, c, o[0], "snapshot", "create", clusterVolume, "pre")
	from := len(c.CsnapdLog(s))
	ws := []*writer{startWriter(t, c, o[0], 0, 0x51, 100*time.Millisecond), startWriter(t, c, o[1], 1, 0x52, 100*time.Millisecond)}
	time.Sleep(500 * time.Millisecond)
	var frozen []int
	t.Cleanup(func() {
		for _, pid := range frozen {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	for _, i := range o {
		pid := c.Node(i).ConsulPID
		must(t, syscall.Kill(pid, syscall.SIGSTOP))
		frozen = append(frozen, pid)
	}
	t.Logf("server n%d (term %d); Consul agents of n%d and n%d frozen", s, term, o[0], o[1])
	time.Sleep(5 * time.Second)
	for _, pid := range frozen {
		must(t, syscall.Kill(pid, syscall.SIGCONT))
	}
	frozen = nil
	healed := time.Now()
	for _, w := range ws {
		stall := w.wait(t)
		t.Logf("initiator on n%d: longest write %v", w.node, stall.Round(time.Millisecond))
	}
	ns, nterm := serverOf(t, c, o[0])
	t.Logf("n%d serves under term %d, %v after Consul was healed", ns, nterm, time.Since(healed).Round(time.Millisecond))
	if log := c.CsnapdLog(s)[from:]; !strings.Contains(log, "deposed: stopped serving") {
		t.Fatalf("n%d did not stop serving while Consul had no quorum; the test did not test anything:\n%s", s, tail(log, 3000))
	}
	if nterm <= term {
		t.Fatalf("server n%d term %d after the outage, want a term newer than %d", ns, nterm, term)
	}
	verify(t, c, o[1], clusterIQN, 0, 0x51)
	verify(t, c, o[0], clusterIQN, 1, 0x52)
	waitTarget(t, c, o[1], clusterIQN+":pre", true)
	verify(t, c, o[1], clusterIQN+":pre", 0, 0)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ctxFor returns a context that ends after d or with the test.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
