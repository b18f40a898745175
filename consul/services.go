package consul

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// Service names and ids csnap registers with its local Consul agent.
const (
	// ISCSIService is registered by every csnapd: its iSCSI portal, with
	// a health check on csnapd itself. Server lock sessions are bound to
	// that check, so a crashed csnapd loses its locks even when its agent
	// lives, and the check's failure tells servers the node left.
	ISCSIService = "csnap-iscsi"
	// ISCSICheckID is the id of csnapd's own check.
	ISCSICheckID = "csnap-iscsi:alive"
	// ServerService is registered, one instance per volume (id
	// csnap-server-V, tag V), by the node serving that volume.
	ServerService = "csnap-server"
)

// ISCSIRegistration describes this node's csnap-iscsi service.
type ISCSIRegistration struct {
	Portal    string              // host:port of the iSCSI portal
	HealthURL string              // csnapd's GET /v1/health (needs no token)
	Header    map[string][]string // extra headers of the check
	// TLSSkipVerify: the check does not verify csnapd's certificate
	// (HealthURL https://, a certificate of csnap's own CA).
	TLSSkipVerify bool
	Interval      time.Duration     // check interval; the timeout is the same
	Meta          map[string]string // e.g. http and server protocol addresses
	// DeregisterAfter removes the service of a csnapd that stayed
	// critical this long (default 1 min).
	DeregisterAfter time.Duration
}

func splitPortal(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return host, port, err
}

// RegisterISCSI registers csnap-iscsi with the local agent, its check
// passing from the start (a session cannot be bound to a critical check).
func RegisterISCSI(ctx context.Context, c *api.Client, r ISCSIRegistration) error {
	host, port, err := splitPortal(r.Portal)
	if err != nil {
		return fmt.Errorf("consul: iSCSI portal %q: %w", r.Portal, err)
	}
	if r.DeregisterAfter <= 0 {
		r.DeregisterAfter = time.Minute
	}
	reg := &api.AgentServiceRegistration{
		ID: ISCSIService, Name: ISCSIService, Address: host, Port: port, Meta: r.Meta,
		Check: &api.AgentServiceCheck{
			CheckID: ISCSICheckID, Name: "csnapd alive",
			HTTP: r.HealthURL, Header: r.Header, Method: "GET", TLSSkipVerify: r.TLSSkipVerify,
			Interval: r.Interval.String(), Timeout: r.Interval.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: r.DeregisterAfter.String(),
		},
	}
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := c.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return fmt.Errorf("consul: registering %s: %w", ISCSIService, err)
	}
	return nil
}

// DeregisterISCSI removes csnap-iscsi (a graceful stop: servers see the
// node leave at once).
func DeregisterISCSI(ctx context.Context, c *api.Client) error {
	if err := c.Agent().ServiceDeregisterOpts(ISCSIService, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: deregistering %s: %w", ISCSIService, err)
	}
	return nil
}

// RegisterServer makes this node visible in Consul as volume's server.
func RegisterServer(ctx context.Context, c *api.Client, volume string, si ServerInfo) error {
	host, port, err := splitPortal(si.Addr)
	if err != nil {
		return fmt.Errorf("consul: server address %q: %w", si.Addr, err)
	}
	reg := &api.AgentServiceRegistration{
		ID: ServerService + "-" + volume, Name: ServerService, Tags: []string{volume},
		Address: host, Port: port,
		Meta: map[string]string{"volume": volume, "term": strconv.FormatUint(si.Term, 10)},
	}
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: registering %s for %s: %w", ServerService, volume, err)
	}
	return nil
}

// DeregisterServer removes this node's csnap-server instance for volume.
func DeregisterServer(ctx context.Context, c *api.Client, volume string) error {
	if err := c.Agent().ServiceDeregisterOpts(ServerService+"-"+volume, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: deregistering %s for %s: %w", ServerService, volume, err)
	}
	return nil
}
