package consul

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/clock"
)

// Cluster is everything a csnap node needs from Consul, in narrow parts,
// so that a node runs over Consul (Agent) or over a fake in tests. Nothing
// outside this package touches Consul's API.
type Cluster interface {
	Volumes
	Services
	Watches
	Locks
}

// Volumes are the volume definitions and their servers in KV.
type Volumes interface {
	// ListVolumes returns every definition and the announced server of
	// each volume that has one.
	ListVolumes(ctx context.Context) ([]VolumeDef, map[string]ServerInfo, error)
	// GetVolume returns volume name's definition (nil: none).
	GetVolume(ctx context.Context, name string) (*VolumeDef, error)
	// PublishVolume writes a new definition (ErrVolumeExists if taken).
	PublishVolume(ctx context.Context, def VolumeDef) error
	// UpdateVolume changes a definition atomically (ErrNoVolume if none).
	UpdateVolume(ctx context.Context, name string, change func(*VolumeDef) error) (VolumeDef, error)
	// WatchVolumes calls fn with every definition on each change, until
	// ctx ends.
	WatchVolumes(ctx context.Context, log *logrus.Entry, fn func([]VolumeDef))
}

// Services are this node's registrations with its agent.
type Services interface {
	// AgentNode waits for the local agent and returns its node name.
	AgentNode(ctx context.Context, log *logrus.Entry) (string, error)
	// Address names the Consul reached (for messages).
	Address() string
	RegisterISCSI(ctx context.Context, r ISCSIRegistration) error
	DeregisterISCSI(ctx context.Context) error
	// ISCSIRegistered reports whether the catalogue lists node's
	// csnap-iscsi service.
	ISCSIRegistered(ctx context.Context, node string) (bool, error)
	RegisterServer(ctx context.Context, volume string, si ServerInfo) error
	DeregisterServer(ctx context.Context, volume string) error
}

// Watches follow what other nodes do.
type Watches interface {
	// WatchServer follows volume's server lock until ctx ends.
	WatchServer(ctx context.Context, volume string, log *logrus.Entry) *ServerWatch
	// WatchMembers follows the live csnap nodes until ctx ends; onLeft
	// is called for each departure.
	WatchMembers(ctx context.Context, log *logrus.Entry, onLeft func(node string)) *Members
}

// Locks are the election's locks and the client registries they guard.
type Locks interface {
	// Keys is the KV layout: the election's lock key of each volume.
	Keys() Keys
	// NewLock returns the lock API of one volume's election.
	NewLock(cfg SessionConfig) (Lock, error)
	// ClientRegistry returns volume's client registry, written only
	// while its server lock is held by session().
	ClientRegistry(volume string, session func() string) (ClientRegistry, error)
}

// Lock is an election's lock API, able to clean up after a previous run.
type Lock interface {
	LockAPI
	// DestroyStaleSessions destroys this node's sessions of the same
	// name left by a previous run; it returns how many.
	DestroyStaleSessions(ctx context.Context) (int, error)
}

// ClientRegistry stores a server's client registry (KVRegistry).
type ClientRegistry interface {
	Put(ctx context.Context, rec ClientRecord) error
	Delete(ctx context.Context, id [16]byte) error
	List(ctx context.Context) ([]ClientRecord, error)
}

// Agent is the Cluster of a real Consul, reached through its HTTP API.
type Agent struct {
	c    *api.Client
	addr string
	keys Keys
}

var _ Cluster = (*Agent)(nil)

// NewAgent returns the Cluster reached at addr (empty: Consul's own
// environment, CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL and
// the other TLS variables), its keys under prefix.
func NewAgent(addr, prefix string) (*Agent, error) {
	cfg := AgentConfig(addr)
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return &Agent{c: c, addr: cfg.Address, keys: Keys{Prefix: prefix}}, nil
}

// AgentConfig is the Consul client's configuration: Consul's environment,
// with addr (if not empty) overriding the address.
func AgentConfig(addr string) *api.Config {
	cfg := api.DefaultConfig()
	if addr != "" {
		cfg.Address = addr
	}
	return cfg
}

// Keys returns the KV layout.
func (a *Agent) Keys() Keys { return a.keys }

func (a *Agent) ListVolumes(ctx context.Context) ([]VolumeDef, map[string]ServerInfo, error) {
	return ListVolumes(ctx, a.c, a.keys)
}

func (a *Agent) GetVolume(ctx context.Context, name string) (*VolumeDef, error) {
	return GetVolume(ctx, a.c, a.keys, name)
}

func (a *Agent) PublishVolume(ctx context.Context, def VolumeDef) error {
	return PublishVolume(ctx, a.c, a.keys, def)
}

func (a *Agent) UpdateVolume(ctx context.Context, name string, change func(*VolumeDef) error) (VolumeDef, error) {
	return UpdateVolume(ctx, a.c, a.keys, name, change)
}

func (a *Agent) WatchVolumes(ctx context.Context, log *logrus.Entry, fn func([]VolumeDef)) {
	WatchVolumes(ctx, a.c, a.keys, log, fn)
}

func (a *Agent) Address() string { return a.addr }

// AgentNode waits up to 60 s for the local agent and returns its node name.
func (a *Agent) AgentNode(ctx context.Context, log *logrus.Entry) (string, error) {
	deadline := time.Now().Add(60 * time.Second)
	for attempt := 1; ; attempt++ {
		name, err := a.c.Agent().NodeName()
		if err == nil && name != "" {
			return name, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no Consul agent answered at %s within 60 s: %v", a.addr, err)
		}
		if attempt == 1 {
			log.WithError(err).Warn("waiting for the local Consul agent")
		}
		if !clock.Sleep(ctx, 500*time.Millisecond) {
			return "", ctx.Err()
		}
	}
}

func (a *Agent) RegisterISCSI(ctx context.Context, r ISCSIRegistration) error {
	return RegisterISCSI(ctx, a.c, r)
}

func (a *Agent) DeregisterISCSI(ctx context.Context) error { return DeregisterISCSI(ctx, a.c) }

func (a *Agent) ISCSIRegistered(ctx context.Context, node string) (bool, error) {
	entries, _, err := a.c.Catalog().Service(ISCSIService, "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("consul: catalogue of %s: %w", ISCSIService, err)
	}
	for _, e := range entries {
		if e.Node == node {
			return true, nil
		}
	}
	return false, nil
}

func (a *Agent) RegisterServer(ctx context.Context, volume string, si ServerInfo) error {
	return RegisterServer(ctx, a.c, volume, si)
}

func (a *Agent) DeregisterServer(ctx context.Context, volume string) error {
	return DeregisterServer(ctx, a.c, volume)
}

func (a *Agent) WatchServer(ctx context.Context, volume string, log *logrus.Entry) *ServerWatch {
	return WatchServer(ctx, a.c, a.keys, volume, log)
}

func (a *Agent) WatchMembers(ctx context.Context, log *logrus.Entry, onLeft func(node string)) *Members {
	return WatchMembers(ctx, a.c, ISCSIService, log, onLeft)
}

func (a *Agent) NewLock(cfg SessionConfig) (Lock, error) { return NewAPILock(a.c, cfg) }

func (a *Agent) ClientRegistry(volume string, session func() string) (ClientRegistry, error) {
	return NewKVRegistry(a.c, a.keys.Clients(volume), a.keys.ServerLock(volume), session)
}
