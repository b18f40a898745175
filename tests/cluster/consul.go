package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// agentConfig is node n's Consul agent configuration: a server of a
// cluster of o.Nodes servers, on n.IP with the harness's ports (its HTTP
// API on the namespace's loopback in Netns mode).
func agentConfig(o Options, n Node) string {
	var join []string
	for j := 1; j <= o.Nodes; j++ {
		if j != n.Index {
			join = append(join, fmt.Sprintf("%q", fmt.Sprintf("%s:%d", nodeIP(o, j), ConsulSerfLANPort)))
		}
	}
	clientAddr := n.IP
	if o.Netns {
		clientAddr = "127.0.0.1"
	}
	return fmt.Sprintf(`# Written by the csnap cluster harness (tests/cluster); rewritten at every start.
node_name        = %q
datacenter       = "dc1"
data_dir         = %q
server           = true
bootstrap_expect = %d
session_ttl_min  = "1s"
performance { raft_multiplier = 1 }
bind_addr        = %q
advertise_addr   = %q
client_addr      = %q
retry_join       = [%s]
retry_interval   = "1s"
ports {
  http     = %d
  serf_lan = %d
  server   = %d
  dns      = -1
  grpc     = -1
  grpc_tls = -1
  serf_wan = -1
  https    = -1
}
gossip_lan {
  probe_interval = "500ms"
  probe_timeout  = "250ms"
  suspicion_mult = 3
}
leave_on_terminate   = true
log_level            = "info"
disable_update_check = true
connect   { enabled = false }
ui_config { enabled = true }
peering   { enabled = false }
`, n.Name, n.ConsulDataDir, o.Nodes, n.IP, n.IP, clientAddr, strings.Join(join, ", "),
		ConsulHTTPPort, ConsulSerfLANPort, ConsulServerPort) + aclConfig(o)
}

// consulClient is an API client for the agent at addr, through hc (whose
// requests are bounded), whatever CONSUL_HTTP_* the environment holds.
func consulClient(addr string, hc *http.Client, token string) (*api.Client, error) {
	c, err := api.NewClient(&api.Config{Address: addr, Scheme: "http", HttpClient: hc, Token: token})
	if err != nil {
		return nil, fmt.Errorf("cluster: Consul client for %s: %w", addr, err)
	}
	return c, nil
}

func queryOpts(ctx context.Context) *api.QueryOptions {
	return (&api.QueryOptions{}).WithContext(ctx)
}

// startAgent starts node i's Consul agent (not running) without waiting.
func (c *Cluster) startAgent(i int) error {
	m := c.member(i)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return fmt.Errorf("n%d: the cluster is stopped", i)
	}
	if pid := m.agent.pid(); pid != 0 {
		return fmt.Errorf("n%d: Consul agent already running (pid %d)", i, pid)
	}
	p, err := c.startProc(m, m.info.Name+" consul", m.info.ConsulLogPath, nil,
		filepath.Join(c.opts.BinDir, "consul"), "agent", "-config-file", m.info.ConsulConfig)
	if err != nil {
		return err
	}
	m.agent = p
	c.logf("%s started (pid %d, log %s)", p.name, p.pid(), p.logPath)
	return nil
}

// runningAgent is a member with the agent it should be running.
type runningAgent struct {
	m *member
	p *proc
}

// runningAgents lists the nodes whose agent has been started and not
// stopped on purpose (it may have crashed since).
func (c *Cluster) runningAgents() []runningAgent {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []runningAgent
	for _, m := range c.nodes {
		if m.agent != nil {
			out = append(out, runningAgent{m, m.agent})
		}
	}
	return out
}

// waitConsul waits until every running agent has a leader and sees every
// running node's serfHealth passing; its error ends with the agents' logs.
func (c *Cluster) waitConsul(ctx context.Context) error {
	start := time.Now()
	if err := poll(ctx, c.opts.ReadyTimeout, "Consul cluster ready", c.consulReady); err != nil {
		return fmt.Errorf("%w\n%s", err, c.consulLogTails())
	}
	c.logf("Consul ready in %v (leader, serfHealth passing)", time.Since(start).Round(time.Millisecond))
	return nil
}

// WaitConsul waits (ReadyTimeout at most) until every running agent has
// a leader and sees every running node's serfHealth passing: after Heal,
// the partitioned node has rejoined.
func (c *Cluster) WaitConsul(ctx context.Context) error { return c.waitConsul(ctx) }

func (c *Cluster) consulReady(ctx context.Context) error {
	agents := c.runningAgents()
	if len(agents) == 0 {
		return permanent{errors.New("no Consul agent running")}
	}
	for _, a := range agents {
		if a.p.exited() {
			return permanent{a.p.exitError()}
		}
		leader, err := a.m.consul.Status().LeaderWithQueryOptions(queryOpts(ctx))
		if err != nil {
			return fmt.Errorf("%s: leader: %w", a.m.info.Name, err)
		}
		if leader == "" {
			return fmt.Errorf("%s: no leader yet", a.m.info.Name)
		}
	}
	for _, a := range agents {
		passing, err := c.serfPassing(ctx, a.m)
		if err != nil {
			return err
		}
		for _, b := range agents {
			if !passing[b.m.info.Name] {
				return fmt.Errorf("%s: serfHealth of %s not passing yet", a.m.info.Name, b.m.info.Name)
			}
		}
	}
	return nil
}

// serfPassing is the set of nodes whose serfHealth passes, as m's agent
// reports it.
func (c *Cluster) serfPassing(ctx context.Context, m *member) (map[string]bool, error) {
	checks, _, err := m.consul.Health().State(api.HealthPassing, queryOpts(ctx))
	if err != nil {
		return nil, fmt.Errorf("%s: passing checks: %w", m.info.Name, err)
	}
	out := map[string]bool{}
	for _, hc := range checks {
		if hc.CheckID == "serfHealth" {
			out[hc.Node] = true
		}
	}
	return out, nil
}

// SerfHealth is the status ("passing", "critical", ...) of node j's
// serfHealth check as node i's agent reports it.
func (c *Cluster) SerfHealth(ctx context.Context, i, j int) (string, error) {
	from, of := c.member(i), c.member(j)
	checks, _, err := from.consul.Health().Node(of.info.Name, queryOpts(ctx))
	if err != nil {
		return "", fmt.Errorf("%s: checks of %s: %w", from.info.Name, of.info.Name, err)
	}
	for _, hc := range checks {
		if hc.CheckID == "serfHealth" {
			return hc.Status, nil
		}
	}
	return "", fmt.Errorf("%s: %s has no serfHealth check", from.info.Name, of.info.Name)
}

// WaitFailureTolerance waits until Consul's autopilot reports a failure
// tolerance of at least n (wait for 1 between server faults: autopilot
// drops a killed server from the voters, and a restarted one votes again
// only once stable). Bounded by ReadyTimeout.
func (c *Cluster) WaitFailureTolerance(ctx context.Context, n int) error {
	start := time.Now()
	err := poll(ctx, c.opts.ReadyTimeout, fmt.Sprintf("autopilot failure tolerance >= %d", n),
		func(ctx context.Context) error { return c.failureTolerance(ctx, n) })
	if err != nil {
		return err
	}
	c.logf("autopilot failure tolerance >= %d after %v", n, time.Since(start).Round(time.Millisecond))
	return nil
}

// failureTolerance asks the running agents, first that answers, for
// autopilot's health; nil when its failure tolerance is at least n.
func (c *Cluster) failureTolerance(ctx context.Context, n int) error {
	var errs []error
	for _, a := range c.runningAgents() {
		h, err := a.m.consul.Operator().AutopilotServerHealth(queryOpts(ctx))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.m.info.Name, err))
			continue
		}
		if h.FailureTolerance >= n {
			return nil
		}
		var servers []string
		for _, s := range h.Servers {
			servers = append(servers, fmt.Sprintf("%s(healthy=%v voter=%v leader=%v)", s.Name, s.Healthy, s.Voter, s.Leader))
		}
		return fmt.Errorf("failure tolerance %d; servers %s", h.FailureTolerance, strings.Join(servers, " "))
	}
	if len(errs) == 0 {
		return errors.New("no Consul agent running")
	}
	return errors.Join(errs...)
}

// consulLogTails is the end of every agent's log.
func (c *Cluster) consulLogTails() string {
	var b strings.Builder
	for _, m := range c.nodes {
		b.WriteString(logTail(m.info.Name+" consul", m.info.ConsulLogPath))
	}
	return b.String()
}
