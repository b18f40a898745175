package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// csnapdArgs are node n's csnapd flags: the cluster-mode contract, then
// Options.CsnapdArgs and Options.CsnapdArgsFor (which may override them).
func (c *Cluster) csnapdArgs(n Node) []string {
	args := []string{
		"-node-name", n.Name,
		"-data-dir", n.DataDir,
		"-iscsi-addr", n.Portal,
		"-http-addr", n.HTTPAddr,
		"-server-addr", n.ServerAddr,
		"-consul-addr", n.ConsulAddr,
		"-portal-group-tag", strconv.Itoa(n.Index),
		"-log-level", "debug",
		// Volumes live in the cluster's directory (HTTP API token:
		// generated in DataDir, see TokenFile).
		"-volume-paths", absPath(c.opts.Dir),
	}
	if c.opts.NoTLS {
		args = append(args, "-insecure-no-tls")
	} else {
		args = append(args, "-tls-ca", n.TLSCA, "-tls-cert", n.TLSCert, "-tls-key", n.TLSKey)
	}
	args = append(args, c.opts.CsnapdArgs...)
	if c.opts.CsnapdArgsFor != nil {
		args = append(args, c.opts.CsnapdArgsFor(n)...)
	}
	return args
}

// spawnCsnapd starts node i's csnapd (not running) without waiting.
func (c *Cluster) spawnCsnapd(i int) (*proc, error) {
	m := c.member(i)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil, fmt.Errorf("n%d: the cluster is stopped", i)
	}
	if pid := m.csnapd.pid(); pid != 0 {
		return nil, fmt.Errorf("n%d: csnapd already running (pid %d)", i, pid)
	}
	env := c.opts.Env
	if m.consulToken != "" {
		env = append(slices.Clone(env), "CONSUL_HTTP_TOKEN="+m.consulToken)
	}
	p, err := c.startProc(m, m.info.Name+" csnapd", m.info.CsnapdLogPath, env,
		filepath.Join(c.opts.BinDir, "csnapd"), c.csnapdArgs(m.info)...)
	if err != nil {
		return nil, err
	}
	m.csnapd = p
	c.logf("%s started (pid %d, log %s)", p.name, p.pid(), p.logPath)
	return p, nil
}

// waitCsnapd waits until node i's csnapd answers GET /v1/health with 200;
// its error ends with the csnapd's log.
func (c *Cluster) waitCsnapd(ctx context.Context, i int) error {
	m := c.member(i)
	c.mu.Lock()
	p := m.csnapd
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("n%d: csnapd not started", i)
	}
	start := time.Now()
	url := "http://" + m.info.HTTPAddr + "/v1/health"
	err := poll(ctx, c.opts.ReadyTimeout, p.name+" ready", func(ctx context.Context) error {
		if p.exited() {
			return permanent{p.exitError()}
		}
		return healthy(ctx, m.http, url)
	})
	if err != nil && !p.exited() { // else the error already ends with the log
		return fmt.Errorf("%w\n%s", err, logTail(p.name, p.logPath))
	}
	if err != nil {
		return err
	}
	c.logf("%s ready in %v", p.name, time.Since(start).Round(time.Millisecond))
	return nil
}

// healthy is nil when GET url answers 200 through hc.
func healthy(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return permanent{err}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// StartCsnapd (re)starts node i's csnapd with the same flags and data
// directory and waits until it is ready; if it does not get ready, it is
// killed and the error holds the end of its log.
func (c *Cluster) StartCsnapd(ctx context.Context, i int) error {
	p, err := c.spawnCsnapd(i)
	if err != nil {
		return err
	}
	if err := c.waitCsnapd(ctx, i); err != nil {
		return errors.Join(err, c.dropCsnapd(i, p, "killing (not ready)", (*proc).kill))
	}
	return nil
}

// StopCsnapd stops node i's csnapd gracefully (SIGTERM; SIGKILL after
// StopGrace, which is then reported as an error) and waits for it.
func (c *Cluster) StopCsnapd(i int) error {
	return c.dropCsnapd(i, nil, "stopping (SIGTERM)", func(p *proc) error { return p.stop(syscall.SIGTERM, c.opts.StopGrace) })
}

// KillCsnapd kills node i's csnapd with SIGKILL and waits for it to exit.
func (c *Cluster) KillCsnapd(i int) error {
	return c.dropCsnapd(i, nil, "killing (SIGKILL)", (*proc).kill)
}

// dropCsnapd takes node i's csnapd (only if it is p, when p is not nil)
// out of the cluster and ends it with end, logging what. No csnapd is an error unless p
// is given.
func (c *Cluster) dropCsnapd(i int, p *proc, what string, end func(*proc) error) error {
	m := c.member(i)
	c.mu.Lock()
	cur := m.csnapd
	if p != nil && cur != p {
		cur = nil
	}
	if cur != nil {
		m.csnapd = nil
	}
	c.mu.Unlock()
	if cur == nil && p == nil {
		return fmt.Errorf("n%d: no csnapd running", i)
	}
	if cur == nil {
		return nil
	}
	c.logf("%s %s (pid %d)", what, cur.name, cur.pid())
	return end(cur)
}

// absPath is p made absolute (csnapd's -volume-paths needs it).
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
