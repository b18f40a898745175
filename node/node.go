// Package node is a csnap node as a library: the volumes it exports over
// iSCSI (open, export, serve, fence, close), its part in each volume's
// election (elected, deposed, fenced: cluster.go and hardening.go hold the
// failover state machine's callbacks), provisioning of volume files, the
// adapters between the snapshot client and the SCSI layer, and the HTTP
// API's services. RunDev runs one standalone node with the embedded volume
// "dev"; RunCluster runs a cluster node that finds its volumes, elections
// and peers in Consul. The node knows no flags: cmd/csnapd maps its flags
// and configuration file to Config.
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/metrics"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/target/iscsi"
)

// DefaultCHAPAlgorithms are the CHAP hashes accepted unless
// Config.CHAPAlgorithms says otherwise, in order of preference.
const DefaultCHAPAlgorithms = "sha256,sha1,md5"

// Cluster-mode defaults (docs/CLUSTER.md explains the timings).
const (
	DefaultConsulPrefix  = "csnap/"
	DefaultLockDelay     = time.Second
	DefaultCheckInterval = time.Second
	DefaultLease         = 2 * time.Second
	DefaultIOTimeout     = 25 * time.Second
	DefaultAwaitTimeout  = 30 * time.Second
)

// Config is a node's configuration. Empty addresses take the defaults of
// SPEC.md; cmd/csnapd documents each setting with its flag.
type Config struct {
	NodeName   string // this node's name (default: the host name, or the Consul agent's)
	DataDir    string // local state; -dev: default ./csnap-dev
	ISCSIAddr  string // comma-separated iSCSI portal addresses
	HTTPAddr   string // HTTP API address
	ServerAddr string // snapshot-server protocol listen address
	ConsulAddr string // Consul HTTP address (default: Consul's environment)

	CHAPDiscovery  bool   // also require CHAP on discovery sessions
	CHAPAlgorithms string // CHAP hashes initiators may use
	// ISCSIPingTimeout is how long a silent initiator has to answer a
	// NOP-In ping before its connection is dropped (0: iscsi's default).
	ISCSIPingTimeout time.Duration

	// HTTP API security (SPEC.md "Security"; httpapi.go).
	HTTPTokenFile   string
	HTTPHosts       []string
	HTTPOrigins     []string
	HTTPTLSCertFile string
	HTTPTLSKeyFile  string
	// VolumePaths: a volume's origin and store must lie under one of
	// these (or be one of them); -dev: its data directory.
	VolumePaths []string

	// Cluster mode only.
	PortalGroupTag int           // portal group tag / relative port id (1-65535; 0: derived from the node name)
	ConsulPrefix   string        // KV prefix, default "csnap/"
	LockDelay      time.Duration // Consul lock-delay of the server lock sessions
	CheckInterval  time.Duration // interval of the node's own Consul health check
	Lease          time.Duration // self-fencing lease of a server
	IOTimeout      time.Duration // how long IO waits for a snapshot server before failing
	AwaitTimeout   time.Duration // how long a new server waits for the old one's clients
	DirectIO       bool          // open volumes' origin and store O_DIRECT

	// Mutual TLS of the snapshot-server protocol (tls.go).
	TLSCA, TLSCert, TLSKey string
	InsecureNoTLS          bool // cluster: run the protocol without TLS (tests only)

	// OpenDevice opens a cluster volume's origin or store by its path in
	// the volume's definition (default: the file or block device, O_DIRECT
	// when DirectIO). Tests give in-memory devices shared by their nodes.
	OpenDevice func(path string, direct bool) (Device, error)

	// OnServing, if set, is told when this node starts serving a volume
	// under term (serving) and when it has stopped (its devices fenced
	// first unless the stop was graceful). Tests take timestamps from it.
	OnServing func(e ServingEvent)

	// Version is the build's version (csnap_build_info).
	Version string
	// Metrics receives the node's Prometheus metrics, served at GET
	// /metrics (default: a registry of its own).
	Metrics *metrics.Registry

	// Log receives the node's structured log (default: discarded).
	Log *logrus.Entry
	// Stdout receives the lines printed for the operator at start.
	Stdout io.Writer
}

// ServingEvent is a change of whether this node serves a volume.
type ServingEvent struct {
	Volume  string
	Term    uint64
	Serving bool      // false: stopped serving the term
	Fenced  bool      // stopped with its devices fenced (lease expired or lost)
	At      time.Time // when it happened
}

func (c *Config) serving(e ServingEvent) {
	if c.OnServing != nil {
		if e.At.IsZero() {
			e.At = time.Now()
		}
		c.OnServing(e)
	}
}

// Device is a volume's origin or snapshot store as a node opens it.
type Device interface {
	snapstore.Device
	Close() error
}

func (c *Config) openDevice(path string, direct bool) (Device, error) {
	if c.OpenDevice != nil {
		return c.OpenDevice(path, direct)
	}
	d, err := openFileDev(path, direct)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return d, nil
}

func (c *Config) log() *logrus.Entry {
	if c.Log != nil {
		return c.Log
	}
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func (c *Config) stdout() io.Writer {
	if c.Stdout != nil {
		return c.Stdout
	}
	return io.Discard
}

// RunDev runs one standalone node with the embedded volume "dev" until ctx
// ends: no Consul, the snapshot server in this process.
func RunDev(ctx context.Context, cfg Config) error {
	cfg.setMetrics()
	return runDev(ctx, &cfg, cfg.log(), cfg.stdout())
}

// RunCluster runs a cluster node until ctx ends.
func RunCluster(ctx context.Context, cfg Config) error {
	cfg.setMetrics()
	return runCluster(ctx, &cfg, cfg.log(), cfg.stdout())
}

func (c *Config) setMetrics() {
	if c.Metrics == nil {
		c.Metrics = metrics.New(c.Version)
	}
}

// iscsiConfig is the iSCSI target configuration common to -dev and cluster
// mode: CHAP on discovery sessions and the accepted CHAP algorithms.
func iscsiConfig(o *Config, log *logrus.Entry, chap *iscsi.CHAP) (iscsi.Config, error) {
	icfg := iscsi.Config{Log: log.WithField("component", "iscsi"), PingTimeout: o.ISCSIPingTimeout, Observer: o.Metrics.ISCSIObserver()}
	if o.CHAPDiscovery {
		if chap == nil {
			return icfg, errors.New("-chap-discovery needs CSNAP_CHAP_USER and CSNAP_CHAP_SECRET")
		}
		icfg.DiscoveryCHAP = chap
	}
	list := o.CHAPAlgorithms
	if list == "" {
		list = DefaultCHAPAlgorithms
	}
	algs, err := iscsi.ParseCHAPAlgorithms(list)
	if err != nil {
		return icfg, fmt.Errorf("-chap-algorithms: %w", err)
	}
	icfg.CHAPAlgorithms = algs
	return icfg, nil
}
