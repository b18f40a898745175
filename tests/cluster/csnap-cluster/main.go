// Command csnap-cluster runs a local csnap cluster for trying csnap by hand
// (`make cluster`): 3 Consul server agents and 3 csnapd nodes on
// 127.0.0.1-3, state and logs in one directory. It prints how to use the
// cluster, then runs until SIGINT or SIGTERM, when it stops every process
// (csnapd first, then Consul) and exits, leaving the directory as it is:
// a new run on the same directory keeps the volumes and snapshots.
//
// It refuses to start while a previous run on the same directory is still
// alive (the directory's pids file names its processes).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/csnap/csnap/tests/cluster"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// config is what the flags say.
type config struct {
	dir, bin string
	nodes    int
	noCsnapd bool
	noTLS    bool
}

func run(args []string, stdout, stderr io.Writer) int {
	var cfg config
	fs := flag.NewFlagSet("csnap-cluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.dir, "dir", "./csnap-cluster", "`directory` for the cluster's state and logs (created)")
	fs.StringVar(&cfg.bin, "bin", "./bin", "`directory` holding csnapd, csnap-admin and consul")
	fs.IntVar(&cfg.nodes, "nodes", 3, "number of nodes (node i on 127.0.0.i)")
	fs.BoolVar(&cfg.noCsnapd, "no-csnapd", false, "start the Consul agents only")
	fs.BoolVar(&cfg.noTLS, "insecure-no-tls", false, "run the snapshot-server protocol without TLS (benchmarks of its cost)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: csnap-cluster [-dir DIR] [-bin DIR] [-nodes N] [-no-csnapd]\n\n"+
			"Runs a local csnap cluster (Consul + csnapd per node on 127.0.0.i) until Ctrl-C.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "csnap-cluster: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	// Signals are caught until the cluster has been stopped, so a second
	// Ctrl-C does not interrupt the orderly stop.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "csnap-cluster: %v\n", err)
		return 1
	}
	return 0
}

// serve starts the cluster, prints how to use it, and stops it once ctx
// ends.
func serve(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	dir, err := filepath.Abs(cfg.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pidsFile := filepath.Join(dir, "pids")
	if err := checkPrevious(pidsFile); err != nil {
		return err
	}
	self := []string{fmt.Sprintf("%d csnap-cluster", os.Getpid())}
	if err := writePids(pidsFile, self); err != nil {
		return err
	}
	c, err := cluster.Start(ctx, cluster.Options{Dir: dir, BinDir: cfg.bin, Nodes: cfg.nodes,
		NoCsnapd: cfg.noCsnapd, NoTLS: cfg.noTLS, Log: stderr})
	if err != nil {
		return err
	}
	werr := writePids(pidsFile, append(self, clusterPids(c)...))
	if werr == nil {
		printUsage(stdout, c, cfg)
		<-ctx.Done()
		fmt.Fprintln(stderr, "csnap-cluster: stopping: csnapd, then Consul")
	}
	return errors.Join(werr, c.Stop())
}

// clusterPids are the pids file's lines for the cluster's processes.
func clusterPids(c *cluster.Cluster) []string {
	var lines []string
	for i := 1; i <= c.Nodes(); i++ {
		n := c.Node(i)
		if n.CsnapdPID != 0 {
			lines = append(lines, fmt.Sprintf("%d csnapd", n.CsnapdPID))
		}
		if n.ConsulPID != 0 {
			lines = append(lines, fmt.Sprintf("%d consul", n.ConsulPID))
		}
	}
	return lines
}

// writePids writes "PID PROGRAM" lines.
func writePids(path string, lines []string) error {
	return os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// checkPrevious fails if a process named in the pids file of an earlier
// run is still alive (same PID, same program: not a reused PID).
func checkPrevious(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var alive []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err == nil && running(pid, f[1]) {
			alive = append(alive, fmt.Sprintf("%s (pid %d)", f[1], pid))
		}
	}
	if len(alive) > 0 {
		return fmt.Errorf("a previous run in %s is still alive: %s; stop it first (Ctrl-C where it runs, or kill -TERM the csnap-cluster pid)",
			filepath.Dir(path), strings.Join(alive, ", "))
	}
	return nil
}

// running tells whether pid is a live process of the program prog.
func running(pid int, prog string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(cmdline) == 0 { // gone, or a zombie
		return false
	}
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return filepath.Base(argv0) == prog
}

// printUsage tells how to reach each node and what to try.
func printUsage(w io.Writer, c *cluster.Cluster, cfg config) {
	dir := c.Dir()
	admin := filepath.Join(cfg.bin, "csnap-admin")
	fmt.Fprintf(w, "\ncsnap cluster: %d nodes; state and logs in %s (nI/consul.log, nI/csnapd.log)\n", c.Nodes(), dir)
	if !cfg.noCsnapd {
		fmt.Fprintf(w, `
Create a volume (origin and store: files every node opens), then snapshot it, through any node:
  %[2]s %[3]s volume create vol1 --origin %[1]s/vol1.origin --store %[1]s/vol1.store --size 1GiB
  %[2]s %[3]s snapshot create vol1 snap1
  %[2]s %[3]s server vol1
`, dir, admin, strings.Join(c.AdminArgs(1), " "))
	}
	for i := 1; i <= c.Nodes(); i++ {
		printNode(w, c.Node(i), admin+" -token-file "+c.TokenFile(i), cfg.noCsnapd)
	}
	fmt.Fprintf(w, "\nConsul: CONSUL_HTTP_ADDR=%s %s members\n", c.ConsulAddr(1), filepath.Join(cfg.bin, "consul"))
	fmt.Fprintf(w, "\nCtrl-C (or kill -TERM %d) stops every process; %s stays as it is.\n", os.Getpid(), dir)
}

func printNode(w io.Writer, n cluster.Node, admin string, noCsnapd bool) {
	fmt.Fprintf(w, "\n%s (%s)\n", n.Name, n.IP)
	fmt.Fprintf(w, "  Consul        http://%s (UI at /ui/), pid %d, log %s\n", n.ConsulAddr, n.ConsulPID, n.ConsulLogPath)
	if noCsnapd {
		return
	}
	iqn := "iqn.2026-11.io.csnap:vol1"
	fmt.Fprintf(w, `  iSCSI portal  %[1]s
  HTTP API      http://%[2]s/v1/ (pid %[3]d, log %[4]s)
    %[5]s -addr %[2]s volume list
    iscsiadm -m discovery -t sendtargets -p %[1]s
    iscsiadm -m node -T %[6]s -p %[1]s --login
    iscsi-ls -s iscsi://%[1]s
`, n.Portal, n.HTTPAddr, n.CsnapdPID, n.CsnapdLogPath, admin, iqn)
}
