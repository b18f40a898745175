package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/csnap/csnap/tests/cluster"
)

// The partition test runs the cluster in network namespaces (tests/cluster
// Options.Netns): every node has its own namespace, linked to the others
// through a bridge, so one node can be cut off the network while all its
// processes keep running. Everything the test does against a node (its
// API, csnap-admin, qemu-io) runs inside that node's namespace.

const (
	msgDeposed = "deposed: stopped serving"
	msgElected = "elected: serving"
)

// startNetnsCluster starts the cluster in network namespaces with stamped
// logs, creates volume v (64 MiB, files in the test's temporary directory,
// which every namespace sees) and waits until every node exports it. The
// cluster is stopped by PID and its namespaces deleted at the end of the
// test, with every csnapd log dumped if the test failed.
func startNetnsCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	requireTool(t, "qemu-io")
	requireTool(t, "ip")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{Dir: dir, BinDir: binDir(t), Log: testWriterLog{t},
		Netns: true, StampLogs: true, ReadyTimeout: 90 * time.Second})
	if err != nil {
		t.Fatalf("starting the cluster in network namespaces: %v", err)
	}
	stopClusterAtEnd(t, c)
	nsAdmin(t, c, 1, "volume", "create", clusterVolume, "--origin", dir+"/origin.img",
		"--store", dir+"/store.img", "--size", "64MiB")
	for i := 1; i <= c.Nodes(); i++ {
		nsWaitTarget(t, c, i, clusterIQN, 20*time.Second)
	}
	return c
}

// nsRun runs a command in node i's namespace with a deadline and returns
// its combined output.
func nsRun(c *cluster.Cluster, i int, d time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := c.Command(ctx, i, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s %s on n%d: timed out after %v", name, strings.Join(args, " "), i, d)
	}
	return string(out), err
}

// nsAdmin runs csnap-admin against node i's API from inside its namespace
// and fails the test on error.
func nsAdmin(t *testing.T, c *cluster.Cluster, i int, args ...string) string {
	t.Helper()
	out, err := nsRun(c, i, time.Minute, binDir(t)+"/csnap-admin", append(c.AdminArgs(i), args...)...)
	if err != nil {
		t.Fatalf("csnap-admin %v on n%d: %v\n%s", args, i, err, out)
	}
	return out
}

// nsGetJSON decodes GET path on node i's API into v.
func nsGetJSON(c *cluster.Cluster, i int, path string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	code, body, err := c.HTTPGet(ctx, i, path)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s on n%d: %d %s", path, i, code, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, v)
}

// nsWaitTarget waits (d at most) until node i exports iqn.
func nsWaitTarget(t *testing.T, c *cluster.Cluster, i int, iqn string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var h struct {
			Targets []string `json:"targets"`
		}
		err := nsGetJSON(c, i, "/v1/health", &h)
		if err == nil && slices.Contains(h.Targets, iqn) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("n%d: target %s not exported after %v (targets %v, err %v)", i, iqn, d, h.Targets, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nsServer is the volume's server (node index, 0 if unknown) and term as
// node i's API reports them.
func nsServer(c *cluster.Cluster, i int) (int, uint64, error) {
	var s struct {
		Node string `json:"node"`
		Term uint64 `json:"term"`
	}
	if err := nsGetJSON(c, i, "/v1/volumes/"+clusterVolume+"/server", &s); err != nil {
		return 0, 0, err
	}
	for j := 1; j <= c.Nodes(); j++ {
		if c.Node(j).Name == s.Node {
			return j, s.Term, nil
		}
	}
	return 0, s.Term, fmt.Errorf("n%d: server %q is no node of the cluster", i, s.Node)
}

// nsWaitServer waits (d at most) until node i reports a server for which
// ok holds, and returns it.
func nsWaitServer(t *testing.T, c *cluster.Cluster, i int, d time.Duration, what string, ok func(node int, term uint64) bool) (int, uint64) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		node, term, err := nsServer(c, i)
		if err == nil && term > 0 && ok(node, term) {
			return node, term
		}
		if time.Now().After(deadline) {
			t.Fatalf("n%d: no %s after %v (last: n%d term %d, err %v)", i, what, d, node, term, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nsWaitClient waits (d at most) until node srv, the volume's server,
// lists a client of node i as connected.
func nsWaitClient(t *testing.T, c *cluster.Cluster, srv, i int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var cls []struct {
			Node  string `json:"node"`
			State string `json:"state"`
		}
		err := nsGetJSON(c, srv, "/v1/volumes/"+clusterVolume+"/clients", &cls)
		for _, cl := range cls {
			if err == nil && cl.Node == c.Node(i).Name && cl.State == "connected" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("n%d: no connected client of n%d after %v (clients %+v, err %v)", srv, i, d, cls, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// nsLun is the origin (or a snapshot) LUN at node i's portal.
func nsLun(c *cluster.Cluster, i int, iqn string) string {
	return fmt.Sprintf("iscsi://%s/%s/0", c.Node(i).Portal, iqn)
}

// nsQemuIO runs qemu-io commands inside node i's namespace against a LUN
// of node i's portal; the error covers I/O errors and pattern mismatches.
func nsQemuIO(c *cluster.Cluster, i int, iqn string, cmds ...string) (string, error) {
	args := []string{"-f", "raw"}
	readOnly := true
	for _, cmd := range cmds {
		args = append(args, "-c", cmd)
		readOnly = readOnly && strings.HasPrefix(cmd, "read ")
	}
	if readOnly {
		args = append(args, "-r")
	}
	args = append(args, nsLun(c, i, iqn))
	out, err := nsRun(c, i, 2*time.Minute, "qemu-io", args...)
	if err != nil {
		return out, fmt.Errorf("qemu-io %v on n%d: %v", cmds, i, err)
	}
	for _, bad := range []string{"Pattern verification failed", "error", "Error", "failed"} {
		if strings.Contains(out, bad) {
			return out, fmt.Errorf("qemu-io %v on n%d reported %q", cmds, i, bad)
		}
	}
	return out, nil
}

// nsVerify reads a region through node i and checks it holds pattern.
func nsVerify(t *testing.T, c *cluster.Cluster, i int, iqn string, region int, pattern byte) {
	t.Helper()
	if out, err := nsQemuIO(c, i, iqn, fmt.Sprintf("read -P %d %d %d", pattern, region*regionSize, regionSize)); err != nil {
		t.Fatalf("%v\n%s", err, tail(out, 2000))
	}
}

// nsStartWriter is startWriter (cluster_test.go) from inside node's
// namespace, through node's portal.
func nsStartWriter(c *cluster.Cluster, node, region int, pattern byte, pause time.Duration) *writer {
	w := &writer{node: node, region: region, pattern: pattern, done: make(chan struct{})}
	args := []string{"-f", "raw"}
	for off := 0; off < regionSize; off += opSize {
		args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", pattern, region*regionSize+off, opSize))
		args = append(args, "-c", fmt.Sprintf("sleep %d", pause.Milliseconds()))
	}
	args = append(args, nsLun(c, node, clusterIQN))
	go func() {
		defer close(w.done)
		w.out, w.err = nsRun(c, node, 3*time.Minute, "qemu-io", args...)
	}()
	return w
}

// logEvent is one csnapd log line: when the harness read it (µs), and
// when csnapd says it logged it (its own time= field).
type logEvent struct {
	read time.Time // the harness's stamp
	own  time.Time // csnapd's time= field
	raw  string    // csnapd's time= as written
	line string
}

var (
	logTimeField = regexp.MustCompile(`\btime="([^"]+)"`)
	logTermField = regexp.MustCompile(`\bterm=(\d+)\b`)
)

// findLogEvent finds the first line of a stamped csnapd log with message
// msg and field term=term.
func findLogEvent(log, msg string, term uint64) (logEvent, bool) {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		at, rest, ok := cluster.SplitStamp(sc.Text())
		if !ok || !strings.Contains(rest, `msg="`+msg+`"`) {
			continue
		}
		m := logTermField.FindStringSubmatch(rest)
		if m == nil || m[1] != strconv.FormatUint(term, 10) {
			continue
		}
		ev := logEvent{read: at, line: rest}
		if tm := logTimeField.FindStringSubmatch(rest); tm != nil {
			ev.raw = tm[1]
			ev.own, _ = time.Parse(time.RFC3339Nano, tm[1])
		}
		return ev, true
	}
	return logEvent{}, false
}

// servingInterval is when a node served a term, from its log: start at
// its "elected: serving" line, stop at its "deposed: stopped serving" one
// (zero while it still serves).
type servingInterval struct {
	node        int
	term        uint64
	start, stop time.Time
}

// servingIntervals reads every csnapd log for the terms served.
func servingIntervals(c *cluster.Cluster) []servingInterval {
	var out []servingInterval
	for i := 1; i <= c.Nodes(); i++ {
		open := map[uint64]int{} // term -> index in out
		sc := bufio.NewScanner(strings.NewReader(c.CsnapdLog(i)))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			at, rest, ok := cluster.SplitStamp(sc.Text())
			m := logTermField.FindStringSubmatch(rest)
			if !ok || m == nil {
				continue
			}
			term, _ := strconv.ParseUint(m[1], 10, 64)
			switch {
			case strings.Contains(rest, `msg="`+msgElected+`"`):
				open[term] = len(out)
				out = append(out, servingInterval{node: i, term: term, start: at})
			case strings.Contains(rest, `msg="`+msgDeposed+`"`):
				if k, ok := open[term]; ok {
					out[k].stop = at
					delete(open, term)
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b servingInterval) int { return a.start.Compare(b.start) })
	return out
}

// checkServingDisjoint fails the test if two serving intervals overlap
// (by the harness's stamps): each must end before the next one starts.
func checkServingDisjoint(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ivs := servingIntervals(c)
	for k, iv := range ivs {
		stop := "still serving"
		if !iv.stop.IsZero() {
			stop = stamp(iv.stop)
		}
		t.Logf("served: n%d term %d from %s to %s", iv.node, iv.term, stamp(iv.start), stop)
		if k == 0 {
			continue
		}
		prev := ivs[k-1]
		if prev.stop.IsZero() || !prev.stop.Before(iv.start) {
			t.Errorf("overlap: n%d term %d started at %s while n%d term %d served (stopped: %v)",
				iv.node, iv.term, stamp(iv.start), prev.node, prev.term, prev.stop)
		}
	}
}

func stamp(t time.Time) string { return t.UTC().Format(cluster.LogStampLayout) }

// TestPartitionNoOverlap: while a qemu-io initiator writes through another
// node, the volume's server node S is cut off the network (its processes
// keep running). Its lease runs out unconfirmed, so it stops serving; the
// others see its node fail, its lock session ends, and another node is
// elected. From the csnapd logs (each line stamped by the harness when it
// was read, to the microsecond; csnapd's own timestamps have 1 s
// resolution) the test shows that S logged "deposed: stopped serving" for
// its term strictly before the new server logged "elected: serving" for
// the newer one: no two servers at once (and, over the whole run, that no
// two terms' serving intervals overlap). The initiator sees latency, no
// error, and its data reads back. Once healed, S rejoins Consul, still
// exports the volume and reads the data written while it was cut off, and
// comes back as a client of the server: through its own portal it reads
// the snapshot and writes again.
func TestPartitionNoOverlap(t *testing.T) {
	c := startNetnsCluster(t)
	s, term := nsWaitServer(t, c, 1, 30*time.Second, "server", func(int, uint64) bool { return true })
	surv := others(c, s)
	t.Logf("n%d serves %s under term %d", s, clusterVolume, term)

	// Region 0 holds 0x41 in snapshot "before": every write of the
	// initiator then needs the server (copy-out), so it must fail over.
	if out, err := nsQemuIO(c, surv[0], clusterIQN, fmt.Sprintf("write -P %d 0 %d", 0x41, regionSize)); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	nsAdmin(t, c, surv[1], "snapshot", "create", clusterVolume, "before")
	nsWaitTarget(t, c, surv[1], clusterIQN+":before", 10*time.Second)

	// Which Consul server leads Raft matters for the timings: if it is
	// S, the others elect a new leader first.
	if leader, err := c.Consul(surv[0]).Status().Leader(); err == nil {
		t.Logf("Consul's Raft leader: %s (n%d is at %s)", leader, s, c.Node(s).IP)
	}
	w := nsStartWriter(c, surv[0], 0, 0x42, 100*time.Millisecond)
	time.Sleep(time.Second)
	if err := c.Partition(s); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	t.Logf("partitioned n%d at %s", s, stamp(cut))

	ns, nterm := nsWaitServer(t, c, surv[1], 30*time.Second, fmt.Sprintf("server other than n%d under a term newer than %d", s, term),
		func(node int, tm uint64) bool { return node != s && node != 0 && tm > term })
	t.Logf("n%d serves under term %d, seen %v after the partition", ns, nterm, time.Since(cut).Round(time.Millisecond))

	newStart, ok := findLogEvent(c.CsnapdLog(ns), msgElected, nterm)
	if !ok {
		t.Fatalf("n%d serves term %d but its log has no %q line for it", ns, nterm, msgElected)
	}
	// S must already have stopped; wait a little so a late stop can be
	// measured (and reported as an overlap) rather than just missed.
	var oldStop logEvent
	for deadline := time.Now().Add(10 * time.Second); ; {
		if oldStop, ok = findLogEvent(c.CsnapdLog(s), msgDeposed, term); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !ok {
		t.Fatalf("n%d never logged %q for term %d (n%d started serving term %d at %s)", s, msgDeposed, term, ns, nterm, stamp(newStart.read))
	}
	gap := newStart.read.Sub(oldStop.read)
	t.Logf("old server n%d stopped: %s (csnapd time=%s, %v after the partition): %s", s, stamp(oldStop.read), oldStop.raw, oldStop.read.Sub(cut).Round(time.Millisecond), oldStop.line)
	t.Logf("new server n%d started: %s (csnapd time=%s, %v after the partition): %s", ns, stamp(newStart.read), newStart.raw, newStart.read.Sub(cut).Round(time.Millisecond), newStart.line)
	t.Logf("gap between the old server's stop and the new one's start: %v", gap.Round(time.Microsecond))
	if !strings.Contains(oldStop.line, "lease_valid=false") {
		t.Errorf("n%d deposed with a lease still valid (a release, not an expiry?): %s", s, oldStop.line)
	}
	if gap <= 0 {
		t.Errorf("overlap: n%d started serving term %d at %s, not after n%d stopped serving term %d at %s (gap %v)",
			ns, nterm, stamp(newStart.read), s, term, stamp(oldStop.read), gap)
	}
	// csnapd's own timestamps must agree (to their resolution).
	if oldStop.own.IsZero() || newStart.own.IsZero() {
		t.Errorf("unparsable csnapd time= fields: %q, %q", oldStop.raw, newStart.raw)
	} else if newStart.own.Before(oldStop.own) || (strings.Contains(oldStop.raw, ".") && !newStart.own.After(oldStop.own)) {
		t.Errorf("csnapd's own timestamps overlap: stop %s, start %s", oldStop.raw, newStart.raw)
	}

	// The initiator saw latency, no error, and every write reads back
	// through the other survivor; the snapshot kept its content.
	stall := w.wait(t)
	t.Logf("initiator on n%d: every write done, longest %v", w.node, stall.Round(time.Millisecond))
	nsVerify(t, c, surv[1], clusterIQN, 0, 0x42)
	nsVerify(t, c, surv[1], clusterIQN+":before", 0, 0x41)

	// Healed, S rejoins Consul. At once it still exports the volume and
	// reads what was written while it was cut off (origin reads need no
	// server). Then it comes back as a client of the current server: it
	// reads the snapshot (through the server) and writes over the
	// snapshot's chunks (copy-outs by the server) through its own portal.
	if err := c.Heal(s); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	wctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.WaitConsul(wctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("n%d's Consul agent rejoined %v after Heal", s, time.Since(healed).Round(time.Millisecond))
	if c.Node(s).CsnapdPID == 0 {
		t.Fatalf("n%d's csnapd exited while partitioned", s)
	}
	nsWaitTarget(t, c, s, clusterIQN, 20*time.Second)
	nsVerify(t, c, s, clusterIQN, 0, 0x42)
	t.Logf("n%d exports %s and reads the data written during the partition, %v after Heal", s, clusterIQN, time.Since(healed).Round(time.Millisecond))

	cur, cterm := nsWaitServer(t, c, surv[1], 30*time.Second, "server", func(node int, tm uint64) bool { return node != 0 && tm >= nterm })
	if cur != ns || cterm != nterm {
		t.Logf("after Heal the server changed again: n%d term %d (was n%d term %d)", cur, cterm, ns, nterm)
	}
	if cur != s {
		// A node that autopilot removed from Consul while it was cut off
		// gets its service and check back only with the agent's next
		// anti-entropy sync (every 1-2 min): until then its csnapd can
		// neither open a session nor count as a member. Hence the bound.
		nsWaitClient(t, c, cur, s, 150*time.Second)
		t.Logf("n%d connected to the server n%d as a client %v after Heal", s, cur, time.Since(healed).Round(time.Millisecond))
		if strings.Contains(c.CsnapdLog(s), "Missing check") {
			t.Logf("(n%d's csnapd met \"Missing check ... registration\" from Consul after Heal: its node had been removed from the catalog)", s)
		}
	}
	nsWaitServer(t, c, s, 30*time.Second, fmt.Sprintf("server n%d term %d", cur, cterm),
		func(node int, tm uint64) bool { return node == cur && tm == cterm })
	nsWaitTarget(t, c, s, clusterIQN+":before", 20*time.Second)
	nsVerify(t, c, s, clusterIQN+":before", 0, 0x41)
	if out, err := nsQemuIO(c, s, clusterIQN, fmt.Sprintf("write -P %d %d %d", 0x43, regionSize, regionSize)); err != nil {
		t.Fatalf("writing through n%d after Heal: %v\n%s", s, err, tail(out, 2000))
	}
	nsVerify(t, c, surv[0], clusterIQN, 1, 0x43)
	nsVerify(t, c, surv[0], clusterIQN+":before", 1, 0)
	t.Logf("n%d reads and writes through its portal as a client again, %v after Heal", s, time.Since(healed).Round(time.Millisecond))

	// Over the whole run, no two terms were ever served at once.
	checkServingDisjoint(t, c)
	if out := nsAdmin(t, c, cur, "check", clusterVolume); !strings.Contains(out, "clean") {
		t.Fatalf("check after the partition: %s", out)
	}
}
