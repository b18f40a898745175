// Command csnapd is the csnap node daemon: an iSCSI target exporting every
// volume's origin and snapshots, and a client of each volume's snapshot
// server. See README.md and SPEC.md for flags and behaviour.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/node"
)

// version is set at build time (make build: git describe).
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are csnapd's settings; every one has a flag (SPEC.md).
type options struct {
	dev        bool
	config     string
	nodeName   string
	dataDir    string
	iscsiAddr  string
	httpAddr   string
	serverAddr string
	consulAddr string
	logLevel   string
	logFormat  string
	version    bool
	// chapDiscovery also requires CHAP on discovery sessions.
	chapDiscovery bool
	// chapAlgorithms lists the CHAP hashes initiators may use.
	chapAlgorithms string
	// pingTimeout is how long the target waits for the answer to a NOP-In
	// ping before it drops the connection (0: the iscsi default).
	pingTimeout time.Duration

	// HTTP API security (SPEC.md "Security"; node/httpapi.go).
	httpTokenFile   string     // file holding the API token (default: $CSNAP_HTTP_TOKEN, else DATA_DIR/api-token)
	httpHosts       stringList // names accepted in the Host header besides the listen address
	httpOrigins     stringList // browser origins allowed to call the API
	httpTLSCertFile string     // serve the API over TLS with this certificate...
	httpTLSKeyFile  string     // ...and key
	// volumePaths: a volume's origin and store must lie under one of
	// these (or be one of them); -dev: its data directory.
	volumePaths stringList

	// cluster: not -dev and some setting given (-config or flags alone).
	cluster bool

	// Cluster mode only.
	portalGroupTag int           // this node's portal group tag / relative port id (1-65535)
	consulPrefix   string        // KV prefix, default "csnap/"
	lockDelay      time.Duration // Consul lock-delay of the server lock sessions
	checkInterval  time.Duration // interval of csnapd's own Consul health check
	lease          time.Duration // self-fencing lease of a server
	ioTimeout      time.Duration // how long IO waits for a snapshot server before failing
	awaitTimeout   time.Duration // how long a new server waits for the old one's clients
	directIO       bool          // open volumes' origin and store O_DIRECT (coherent across hosts)

	// Mutual TLS of the snapshot-server protocol (tls.go).
	tlsCA, tlsCert, tlsKey string
	insecureNoTLS          bool // cluster: run the protocol without TLS (tests only)
}

// Flag defaults (the node's own: docs/CLUSTER.md explains the timings).
const (
	defaultCHAPAlgorithms = node.DefaultCHAPAlgorithms
	defaultConsulPrefix   = node.DefaultConsulPrefix
	defaultLockDelay      = node.DefaultLockDelay
	defaultCheckInterval  = node.DefaultCheckInterval
	defaultLease          = node.DefaultLease
	defaultIOTimeout      = node.DefaultIOTimeout
	defaultAwaitTimeout   = node.DefaultAwaitTimeout
)

// newFlagSet defines csnapd's flags, each bound to its field of o.
func newFlagSet(o *options, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("csnapd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.dev, "dev", false, "run one node with an embedded volume \"dev\", no Consul needed")
	fs.StringVar(&o.config, "config", "", "cluster mode: HCL configuration `file`")
	fs.StringVar(&o.nodeName, "node-name", "", "this node's name (default: the host name)")
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for this node's local state (-dev: default ./csnap-dev)")
	fs.StringVar(&o.iscsiAddr, "iscsi-addr", "", "iSCSI portal address (default 127.0.0.1:3260)")
	fs.StringVar(&o.httpAddr, "http-addr", "", "HTTP API address (default 127.0.0.1:7862)")
	fs.StringVar(&o.serverAddr, "server-addr", "", "snapshot-server protocol listen address")
	fs.StringVar(&o.consulAddr, "consul-addr", "", "Consul HTTP address (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.chapDiscovery, "chap-discovery", false, "also require CHAP on discovery sessions (credentials from $CSNAP_CHAP_USER etc.)")
	fs.DurationVar(&o.pingTimeout, "iscsi-ping-timeout", 0, "how long a silent initiator has to answer a NOP-In ping before its connection is dropped (0: 15s)")
	fs.StringVar(&o.chapAlgorithms, "chap-algorithms", defaultCHAPAlgorithms, "CHAP hashes initiators may use, in order of preference (leave md5 out to refuse it)")
	fs.StringVar(&o.httpTokenFile, "http-token-file", "", "file holding the HTTP API token (default: $CSNAP_HTTP_TOKEN, else DATA_DIR/api-token, generated at first start)")
	fs.Var(&o.httpHosts, "http-hosts", "comma-separated host names the HTTP API answers to besides its listen address (DNS-rebinding protection)")
	fs.Var(&o.httpOrigins, "http-origins", "comma-separated browser origins (scheme://host[:port]) allowed to call the HTTP API (default: none)")
	fs.StringVar(&o.httpTLSCertFile, "http-tls-cert-file", "", "serve the HTTP API over TLS with this certificate `file` (PEM)")
	fs.StringVar(&o.httpTLSKeyFile, "http-tls-key-file", "", "private key `file` of -http-tls-cert-file (PEM)")
	fs.Var(&o.volumePaths, "volume-paths", "cluster: comma-separated directories or devices volumes' origin and store must lie under (-dev: its data directory)")
	fs.IntVar(&o.portalGroupTag, "portal-group-tag", 0, "cluster: this node's portal group tag and relative target port id, 1-65535, distinct per node (default: derived from the node name)")
	fs.StringVar(&o.consulPrefix, "consul-prefix", defaultConsulPrefix, "cluster: Consul KV prefix")
	fs.DurationVar(&o.lockDelay, "lock-delay", defaultLockDelay, "cluster: Consul lock-delay of the server lock")
	fs.DurationVar(&o.checkInterval, "check-interval", defaultCheckInterval, "cluster: interval of csnapd's own Consul health check")
	fs.DurationVar(&o.lease, "lease", defaultLease, "cluster: a server stops serving when it could not confirm its lock for this long")
	fs.DurationVar(&o.ioTimeout, "io-timeout", defaultIOTimeout, "cluster: how long IO waits for an unreachable snapshot server before failing")
	fs.DurationVar(&o.awaitTimeout, "await-timeout", defaultAwaitTimeout, "cluster: how long a newly elected server waits for the previous server's clients")
	fs.BoolVar(&o.directIO, "direct-io", true, "cluster: open volumes' origin and store with O_DIRECT, bypassing this host's page cache (needed when nodes run on different hosts)")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "snapshot-server protocol: CA certificate `file` (csnap-admin tls ca create; -dev: made in DATA_DIR/tls)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "snapshot-server protocol: this node's certificate `file` (csnap-admin tls cert create)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "snapshot-server protocol: this node's private key `file`")
	fs.BoolVar(&o.insecureNoTLS, "insecure-no-tls", false, "cluster: run the snapshot-server protocol without TLS: any process that reaches the port can act as a node (tests only)")
	return fs
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := newFlagSet(o, stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.dev && o.config != "" {
		return nil, errors.New("-dev and -config are exclusive")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.config != "" {
		// Flags given on the command line override the file.
		if err := applyConfigFile(o, o.config, set); err != nil {
			return nil, err
		}
	}
	o.cluster = !o.dev && len(set) > 0
	return o, nil
}

func newLogger(o *options, w io.Writer) (*logrus.Entry, error) {
	l := logrus.New()
	l.SetOutput(w)
	lvl, err := logrus.ParseLevel(o.logLevel)
	if err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	l.SetLevel(lvl)
	switch o.logFormat {
	case "text":
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339Nano})
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	default:
		return nil, fmt.Errorf("-log-format: %q is neither text nor json", o.logFormat)
	}
	return logrus.NewEntry(l), nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "csnapd:", err)
		return 2
	}
	if o.version {
		fmt.Fprintln(stdout, "csnapd", version)
		return 0
	}
	log, err := newLogger(o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "csnapd:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if addr := os.Getenv("CSNAP_PPROF"); addr != "" {
		// Opt-in profiling for performance work: net/http/pprof on its
		// own listener (loopback only), never on the API.
		if err := startPprof(addr, log); err != nil {
			fmt.Fprintln(stderr, "csnapd:", err)
			return 2
		}
	}
	switch {
	case o.dev:
		err = node.RunDev(ctx, o.nodeConfig(log, stdout))
	case o.cluster:
		err = node.RunCluster(ctx, o.nodeConfig(log, stdout))
	default:
		fmt.Fprintln(stderr, "csnapd: give -dev (one node, no Consul), or -config FILE or cluster flags (cluster mode)")
		return 2
	}
	if err != nil {
		log.WithError(err).Error("csnapd stopped")
		return 1
	}
	return 0
}

// nodeConfig maps the settings to the node's configuration.
func (o *options) nodeConfig(log *logrus.Entry, stdout io.Writer) node.Config {
	return node.Config{
		NodeName: o.nodeName, DataDir: o.dataDir, ISCSIAddr: o.iscsiAddr, HTTPAddr: o.httpAddr,
		ServerAddr: o.serverAddr, ConsulAddr: o.consulAddr,
		CHAPDiscovery: o.chapDiscovery, CHAPAlgorithms: o.chapAlgorithms, ISCSIPingTimeout: o.pingTimeout,
		HTTPTokenFile: o.httpTokenFile, HTTPHosts: o.httpHosts, HTTPOrigins: o.httpOrigins,
		HTTPTLSCertFile: o.httpTLSCertFile, HTTPTLSKeyFile: o.httpTLSKeyFile, VolumePaths: o.volumePaths,
		PortalGroupTag: o.portalGroupTag, ConsulPrefix: o.consulPrefix, LockDelay: o.lockDelay,
		CheckInterval: o.checkInterval, Lease: o.lease, IOTimeout: o.ioTimeout, AwaitTimeout: o.awaitTimeout,
		DirectIO: o.directIO, TLSCA: o.tlsCA, TLSCert: o.tlsCert, TLSKey: o.tlsKey, InsecureNoTLS: o.insecureNoTLS,
		Version: version, Log: log, Stdout: stdout,
	}
}
