package cluster

// Network-namespace mode (Options.Netns).
//
// Each node i lives in a network namespace of its own, <prefix>-n<i>,
// where <prefix> is csnap-<harness pid>-<sequence>. Its only links are
// its loopback (up) and eth0, one end of a veth pair whose other end, p<i>,
// is a port of the bridge br0 in a "switch" namespace, <prefix>-sw. The
// harness creates every namespace and link at Start and deletes the
// namespaces at Stop (which takes their links with them); nothing is added
// to the namespace the harness runs in.
//
// Node i's address, 10.251.0.i/24, exists only on its eth0 inside those
// namespaces. Its Consul agent binds Serf and the server RPC there and
// its HTTP API on the namespace's own 127.0.0.1:18500; csnapd's portal and
// snapshot-server listener are on 10.251.0.i, its HTTP API on the
// namespace's 127.0.0.1:7862 (loopback: no token), and it reaches its
// agent at 127.0.0.1:18500. Processes are started with `ip netns exec`,
// which enters the namespace and then execs the command, so the PID the
// harness tracks and signals is the command's own.
//
// The harness reaches each node's Consul agent and csnapd API through a
// dialer that creates its sockets inside the node's namespace (setns on a
// locked OS thread); Command runs any other program (csnap-admin,
// qemu-io, curl) inside a node's namespace.
//
// Partition(i) detaches node i's switch port from the bridge: node i keeps
// its link and address but reaches no other node, and no other node
// reaches it. Heal(i) attaches it again.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// NetnsSubnet is the /24 the nodes' addresses are in (node i is
// NetnsSubnet.i) in network-namespace mode. It exists only inside the
// harness's namespaces.
const NetnsSubnet = "10.251.0"

const (
	netnsBridge = "br0"
	netnsNodeIf = "eth0"
)

// netnsSeq tells apart the clusters one process starts.
var netnsSeq atomic.Int64

// netnsPrefix is a fresh namespace name prefix for a cluster.
func netnsPrefix() string {
	return fmt.Sprintf("csnap-%d-%d", os.Getpid(), netnsSeq.Add(1))
}

// staleNetns matches the harness's namespace names; group 1 is the PID of
// the process that made them.
var staleNetns = regexp.MustCompile(`^csnap-(\d+)-\d+-(n\d+|sw)$`)

// sweepStaleNetns deletes namespaces an earlier harness left behind when
// it was killed before it could stop (a test binary's timeout): those whose
// name says they belong to a process that no longer exists.
func (c *Cluster) sweepStaleNetns() {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		m := staleNetns.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // its harness may still be running
		}
		if err := ipCmd("netns", "delete", e.Name()); err == nil {
			c.logf("deleted stale namespace %s (its harness, pid %d, is gone)", e.Name(), pid)
		}
	}
}

// ipCmd runs ip(8) with args, bounded; the error holds its output.
func ipCmd(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupNetns creates the switch namespace with its bridge, then each
// node's namespace linked to it. Every namespace is recorded before it is
// configured, so Stop deletes it whatever fails.
func (c *Cluster) setupNetns() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("cluster: network-namespace mode needs ip(8) (iproute2): %w", err)
	}
	c.sweepStaleNetns()
	sw := c.switchNetns
	if err := c.addNetns(sw); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", sw, "link", "set", "lo", "up"},
		{"-n", sw, "link", "add", netnsBridge, "type", "bridge"},
		{"-n", sw, "link", "set", netnsBridge, "up"},
	}
	for _, m := range c.nodes {
		n := m.info
		if err := c.addNetns(n.Netns); err != nil {
			return err
		}
		port := netnsPort(n.Index)
		steps = append(steps,
			[]string{"-n", n.Netns, "link", "set", "lo", "up"},
			[]string{"-n", sw, "link", "add", port, "type", "veth", "peer", "name", netnsNodeIf, "netns", n.Netns},
			[]string{"-n", n.Netns, "addr", "add", n.IP + "/24", "dev", netnsNodeIf},
			[]string{"-n", n.Netns, "link", "set", netnsNodeIf, "up"},
			[]string{"-n", sw, "link", "set", port, "master", netnsBridge, "up"},
		)
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			return fmt.Errorf("cluster: setting up network namespaces: %w", err)
		}
	}
	c.logf("network namespaces ready: %s (bridge %s), nodes %s-n1..n%d on %s.1..%d/24",
		sw, netnsBridge, c.netnsPrefix, len(c.nodes), NetnsSubnet, len(c.nodes))
	return nil
}

// addNetns creates a namespace and records it for deletion.
func (c *Cluster) addNetns(name string) error {
	if err := ipCmd("netns", "add", name); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	c.mu.Lock()
	c.namespaces = append(c.namespaces, name)
	c.mu.Unlock()
	return nil
}

// deleteNetns deletes every namespace the cluster created (their links go
// with them). Called by Stop once no process runs in them.
func (c *Cluster) deleteNetns() error {
	c.mu.Lock()
	names := c.namespaces
	c.namespaces = nil
	c.mu.Unlock()
	for _, m := range c.nodes {
		m.closeIdle()
	}
	var errs []error
	for i := len(names) - 1; i >= 0; i-- {
		if err := ipCmd("netns", "delete", names[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if len(names) > 0 {
		c.logf("deleted network namespaces %s", strings.Join(names, " "))
	}
	return errors.Join(errs...)
}

// netnsPort is node i's port (its veth end) on the switch's bridge.
func netnsPort(i int) string { return fmt.Sprintf("p%d", i) }

// Netns reports whether the cluster runs in network namespaces.
func (c *Cluster) Netns() bool { return c.opts.Netns }

// SwitchNetns is the namespace holding the bridge ("" in loopback mode).
func (c *Cluster) SwitchNetns() string { return c.switchNetns }

// Partition cuts node i off from every other node: its port leaves the
// bridge. Its processes keep running and keep their own loopback.
// Network-namespace mode only.
func (c *Cluster) Partition(i int) error {
	m := c.member(i)
	if !c.opts.Netns {
		return errors.New("cluster: Partition needs Options.Netns")
	}
	if err := ipCmd("-n", c.switchNetns, "link", "set", netnsPort(m.info.Index), "nomaster"); err != nil {
		return fmt.Errorf("cluster: partitioning %s: %w", m.info.Name, err)
	}
	c.mu.Lock()
	c.partitioned = true
	c.mu.Unlock()
	c.logf("%s partitioned (port %s off bridge %s)", m.info.Name, netnsPort(i), netnsBridge)
	return nil
}

// Heal undoes Partition(i): node i's port joins the bridge again. Its
// Consul agent rejoins on its own, through Serf's reconnect attempts to
// failed members (every 30 s): wait with WaitConsul.
func (c *Cluster) Heal(i int) error {
	m := c.member(i)
	if !c.opts.Netns {
		return errors.New("cluster: Heal needs Options.Netns")
	}
	if err := ipCmd("-n", c.switchNetns, "link", "set", netnsPort(m.info.Index), "master", netnsBridge); err != nil {
		return fmt.Errorf("cluster: healing %s: %w", m.info.Name, err)
	}
	c.logf("%s healed (port %s on bridge %s again)", m.info.Name, netnsPort(i), netnsBridge)
	return nil
}

// Command is an exec.Cmd that runs name with args on node i: inside its
// namespace in network-namespace mode (through `ip netns exec`, which
// execs name, so the Cmd's PID is name's own), as is otherwise. ctx
// bounds it as in exec.CommandContext.
func (c *Cluster) Command(ctx context.Context, i int, name string, args ...string) *exec.Cmd {
	m := c.member(i)
	if !c.opts.Netns {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", m.info.Netns, name}, args...)...)
}

// HTTPClient is an HTTP client that reaches node i's csnapd API (at
// Node(i).HTTPAddr) and Consul agent, from node i's namespace in
// network-namespace mode. Its requests are bounded (2 s).
func (c *Cluster) HTTPClient(i int) *http.Client { return c.member(i).http }

// TokenFile is node i's HTTP API token file, which its csnapd generates
// in its data directory at the first start (every API request but GET
// /v1/health needs it: csnap-admin -token-file FILE).
func (c *Cluster) TokenFile(i int) string {
	return filepath.Join(c.member(i).info.DataDir, "api-token")
}

// AdminArgs are csnap-admin's global flags to reach node i's API:
// -addr and -token-file.
func (c *Cluster) AdminArgs(i int) []string {
	return []string{"-addr", c.member(i).info.HTTPAddr, "-token-file", c.TokenFile(i)}
}

// HTTPGet sends GET path (e.g. "/v1/health") to node i's csnapd API and
// returns the status code and body.
func (c *Cluster) HTTPGet(ctx context.Context, i int, path string) (int, []byte, error) {
	m := c.member(i)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.info.HTTPAddr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	if tok, err := os.ReadFile(c.TokenFile(i)); err == nil {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// newHTTPClient is a bounded HTTP client; in namespace ns (if not "")
// every connection is made inside it.
func newHTTPClient(ns string) *http.Client {
	if ns == "" {
		return &http.Client{Timeout: 2 * time.Second}
	}
	tr := &http.Transport{
		DialContext:         nsDialer(ns),
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: tr}
}

// closeIdle closes the member's idle HTTP connections (sockets keep a
// namespace alive after its name is deleted).
func (m *member) closeIdle() {
	if m.http != nil {
		m.http.CloseIdleConnections()
	}
	if m.consulHTTP != nil {
		m.consulHTTP.CloseIdleConnections()
	}
}

// nsDialer dials TCP from inside the network namespace ns: the socket is
// created on an OS thread switched into ns, and a socket belongs for life
// to the namespace it was created in. The thread is switched back before
// it is released; if that fails it stays locked, and Go ends it with the
// goroutine instead of reusing it.
func nsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		ch := make(chan result, 1)
		go func() {
			conn, err := dialInNetns(ctx, ns, network, addr)
			ch <- result{conn, err}
		}()
		r := <-ch
		return r.conn, r.err
	}
}

func dialInNetns(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("cluster: this thread's namespace: %w", err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("cluster: namespace %s: %w", ns, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("cluster: entering namespace %s: %w", ns, err)
	}
	// An IP literal only: no resolver goroutine, so the socket is made
	// on this thread.
	var d net.Dialer
	conn, derr := d.DialContext(ctx, network, addr)
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("cluster: leaving namespace %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return conn, derr
}
