package node

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/consul"
	"github.com/csnap/csnap/internal/clock"
	"github.com/csnap/csnap/metrics"
	"github.com/csnap/csnap/pki"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/snapstore/wire"
	"github.com/csnap/csnap/target/iscsi"
)

// Cluster-mode listener defaults (SPEC.md).
const (
	defaultISCSIAddr  = "127.0.0.1:3260"
	defaultHTTPAddr   = "127.0.0.1:7862"
	defaultServerAddr = "127.0.0.1:7863"
)

// clusterNode is csnapd in cluster mode: an iSCSI target exporting every
// volume published in Consul, a snapshot client of each volume's server,
// and a candidate in each volume's election.
type clusterNode struct {
	o          *Config
	log        *logrus.Entry
	consul     consul.Cluster
	node       string
	serverAddr string // where this node's snapshot-server listener is reached
	isrv       *iscsi.Server
	chap       *iscsi.CHAP
	mux        *server.Mux
	members    *consul.Members
	certs      *pki.Holder // the snapshot-server protocol's TLS; nil: -insecure-no-tls

	mu      sync.Mutex
	vols    map[string]*clusterVolume
	refused map[string]string // volume -> why this node does not export it
	ctx     context.Context   // the volumes' context: cancelled to stop them
	stop    context.CancelFunc
	wg      sync.WaitGroup

	// Set by start: the listeners' skeleton and what the banner names.
	run       *runner
	hs        *http.Server
	httpTLS   bool
	tokenFile string
	httpAddr  string
	portals   []string
	pgt       int
	stopMux   context.CancelFunc
	stopTLS   context.CancelFunc
}

// runCluster runs csnapd in cluster mode, over Consul, until ctx ends.
func runCluster(ctx context.Context, o *Config, log *logrus.Entry, stdout io.Writer) error {
	prefix := o.ConsulPrefix
	if prefix == "" {
		prefix = DefaultConsulPrefix
	}
	cc, err := consul.NewAgent(o.ConsulAddr, prefix)
	if err != nil {
		return err
	}
	n, err := startCluster(ctx, o, cc, log)
	if err != nil {
		return err
	}
	n.printBanner(stdout)
	return n.wait(ctx)
}

// CheckTimings refuses settings under which the election cannot work or
// two servers of a volume could overlap: consul.CheckTimings with the
// failure detection of a server whose csnapd is cut off from its agent
// (its check's interval plus its timeout, which is the interval too).
func CheckTimings(lease, lockDelay, checkInterval, ioTimeout, awaitTimeout time.Duration) error {
	switch {
	case lease < 500*time.Millisecond:
		return fmt.Errorf("-lease %v is too short (at least 500ms)", lease)
	case lockDelay <= 0:
		return fmt.Errorf("-lock-delay must be positive")
	case checkInterval <= 0:
		return fmt.Errorf("-check-interval must be positive")
	case ioTimeout <= 0 || awaitTimeout <= 0:
		return fmt.Errorf("-io-timeout and -await-timeout must be positive")
	}
	if err := consul.CheckTimings(lease, 2*checkInterval, lockDelay); err != nil {
		return fmt.Errorf("-lease %v, -check-interval %v, -lock-delay %v: %w (failure detection = 2 x -check-interval)",
			lease, checkInterval, lockDelay, err)
	}
	return nil
}

// clusterIdentity is this node's name: the local Consul agent's, which
// Config.NodeName, if set, must match (sessions and checks are per node).
func clusterIdentity(ctx context.Context, o *Config, cc consul.Cluster, log *logrus.Entry) (string, error) {
	agentNode, err := cc.AgentNode(ctx, log)
	if err != nil {
		return "", err
	}
	node := o.NodeName
	switch {
	case node == "":
		node = agentNode
	case node != agentNode:
		return "", fmt.Errorf("-node-name %q differs from the local Consul agent's node name %q: they must match (sessions and health checks are per Consul node)", node, agentNode)
	}
	if !wire.ValidNodeName(node) {
		return "", fmt.Errorf("node name %q is not valid for csnap", node)
	}
	return node, nil
}

// newClusterNode checks the settings and builds the node (nothing is
// listening yet).
func newClusterNode(ctx context.Context, o *Config, cc consul.Cluster, log *logrus.Entry) (*clusterNode, error) {
	node, err := clusterIdentity(ctx, o, cc, log)
	if err != nil {
		return nil, err
	}
	if err := CheckTimings(o.Lease, o.LockDelay, o.CheckInterval, o.IOTimeout, o.AwaitTimeout); err != nil {
		return nil, err
	}
	if len(o.VolumePaths) == 0 {
		log.Warn("no volume_paths (-volume-paths) configured: this node creates and exports no volume")
	}
	if o.DataDir != "" {
		if err := makeDir(o.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
	}
	chap, err := chapFromEnv(os.Getenv)
	if err != nil {
		return nil, err
	}
	pgt := o.PortalGroupTag
	if pgt == 0 {
		pgt = derivedPortalGroupTag(node)
	}
	if pgt < 1 || pgt > 65535 {
		return nil, fmt.Errorf("-portal-group-tag %d is outside 1-65535", pgt)
	}
	icfg, err := iscsiConfig(o, log, chap)
	if err != nil {
		return nil, err
	}
	icfg.PortalGroupTag = uint16(pgt)
	tlsCtx, stopTLS := context.WithCancel(context.Background())
	certs, err := nodeTLS(tlsCtx, o, false, o.DataDir, node, log)
	if err != nil {
		stopTLS()
		return nil, err
	}
	volCtx, stopVols := context.WithCancel(context.Background())
	return &clusterNode{
		o: o, log: log, consul: cc, node: node, isrv: iscsi.NewServer(icfg), chap: chap,
		mux:  server.NewMux(log.WithField("component", "snapserver"), 0),
		vols: map[string]*clusterVolume{}, refused: map[string]string{}, ctx: volCtx, stop: stopVols,
		certs: certs, pgt: pgt, stopTLS: stopTLS,
	}, nil
}

// startCluster starts a cluster node over cc: listeners first (an
// address in use is reported before anything is registered in Consul),
// then the registration, the members' watch, the portals and the volumes.
// wait runs it until ctx ends.
func startCluster(ctx context.Context, o *Config, cc consul.Cluster, log *logrus.Entry) (_ *clusterNode, err error) {
	n, err := newClusterNode(ctx, o, cc, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.stop()
			n.stopTLS()
		}
	}()
	r := &runner{}
	n.run = r
	portalLns, hl, sl, err := n.listen(r)
	if err != nil {
		return nil, err
	}
	token, tokenFile, err := apiToken(o, o.DataDir, os.Getenv)
	if err != nil {
		r.closeAll()
		return nil, err
	}
	tlsCfg, err := apiTLS(o)
	if err != nil {
		r.closeAll()
		return nil, err
	}
	n.tokenFile, n.httpTLS, n.httpAddr = tokenFile, tlsCfg != nil, hl.Addr().String()
	n.serverAddr = sl.Addr().String()
	n.hs = newHTTPServer(newAPI(&clusterService{n: n}, o.Metrics, apiAccess(hl.Addr(), token, o)), tlsCfg)
	r.serve(serveHTTP("HTTP API", n.hs, hl, tlsCfg != nil))
	muxCtx, stopMux := context.WithCancel(context.Background())
	n.stopMux = stopMux
	r.serve(func() error {
		if err := n.mux.Serve(muxCtx, tlsListener(sl, n.certs)); err != nil && muxCtx.Err() == nil {
			return fmt.Errorf("snapshot-server listener: %w", err)
		}
		return nil
	})
	reg := consul.ISCSIRegistration{
		Portal: portalLns[0].Addr().String(), HealthURL: httpScheme(n.httpTLS) + hl.Addr().String() + api.HealthPath,
		// The health answer is public: the check need not verify
		// the certificate (Consul's agent does not know csnap's CA).
		TLSSkipVerify: n.httpTLS, Interval: o.CheckInterval,
		Meta: map[string]string{"node": n.node, "http": hl.Addr().String(), "server": n.serverAddr,
			// Other nodes forget this node's iSCSI nexuses by it when it
			// leaves (nodeLeft).
			metaPortalGroupTag: strconv.Itoa(n.pgt)},
	}
	if err := n.register(ctx, reg); err != nil {
		n.hs.Close()
		stopMux()
		r.wg.Wait()
		return nil, err
	}
	for _, l := range portalLns {
		r.serve(func() error { return n.isrv.Serve(ctx, l) })
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.consul.WatchVolumes(n.ctx, log, n.syncVolumes)
	}()
	return n, nil
}

// listen opens the node's listeners: the iSCSI portals, the HTTP API and
// the snapshot-server protocol.
func (n *clusterNode) listen(r *runner) (portals []net.Listener, httpL, srvL net.Listener, err error) {
	o := n.o
	n.portals = splitAddrs(o.ISCSIAddr, defaultISCSIAddr)
	for _, a := range n.portals {
		l, err := r.listen("iSCSI portal", a)
		if err != nil {
			return nil, nil, nil, err
		}
		portals = append(portals, l)
	}
	if httpL, err = r.listen("HTTP API", or(o.HTTPAddr, defaultHTTPAddr)); err != nil {
		return nil, nil, nil, err
	}
	srvAddr := or(o.ServerAddr, defaultServerAddr)
	if srvL, err = r.listen("snapshot-server listener", srvAddr); err != nil {
		return nil, nil, nil, err
	}
	if ta := srvL.Addr().(*net.TCPAddr); ta.IP.IsUnspecified() {
		r.closeAll()
		return nil, nil, nil, fmt.Errorf("-server-addr %s: give the address other nodes reach this node at, not a wildcard", srvAddr)
	}
	return portals, httpL, srvL, nil
}

// register registers the node with its agent (the service check points at
// the HTTP API's health endpoint, which needs no token; server lock
// sessions are bound to it), keeps it registered, and follows the members.
func (n *clusterNode) register(ctx context.Context, reg consul.ISCSIRegistration) error {
	regCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// A registration left by a previous csnapd of this node (killed) keeps
	// its check's critical status across a re-registration; start afresh
	// so this node is a member, and can hold sessions, at once.
	_ = n.consul.DeregisterISCSI(regCtx)
	if err := n.consul.RegisterISCSI(regCtx, reg); err != nil {
		return err
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.keepRegistered(n.ctx, reg)
	}()
	n.members = n.consul.WatchMembers(n.ctx, n.log, n.nodeLeft)
	waitCtx, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	if err := n.members.Wait(waitCtx); err != nil {
		n.log.WithError(err).Warn("no answer yet from Consul about cluster members; going on")
	}
	return nil
}

// printBanner prints what an operator needs to use the node.
func (n *clusterNode) printBanner(stdout io.Writer) {
	httpAddr := n.httpAddr
	fmt.Fprintf(stdout, `csnapd: node %q in cluster mode (Consul %s, KV prefix %q)
  iSCSI portal%s %s (portal group %d); HTTP API %s; snapshot-server protocol %s
  Volumes published in Consul are exported as %sVOLUME and %sVOLUME:SNAPSHOT.
  Volume paths allowed on this node: %s
  %s volume create NAME --origin PATH --store PATH --size 1GiB
`, n.node, n.consul.Address(), or(n.o.ConsulPrefix, DefaultConsulPrefix), plural(len(n.portals)), strings.Join(n.portals, ", "), n.pgt,
		httpAddr, n.serverAddr, iqnPrefix, iqnPrefix, orNone(n.o.VolumePaths), clusterAdminCommand(httpAddr, n.httpTLS, n.tokenFile))
	n.log.WithFields(logrus.Fields{"node": n.node, "portals": n.portals, "http": httpAddr,
		"snapserver": n.serverAddr, "portal_group_tag": n.pgt}).Info("csnapd serving in cluster mode")
}

// wait serves until ctx ends or a listener fails, then shuts down.
func (n *clusterNode) wait(ctx context.Context) error {
	runErr := n.run.wait(ctx, n.log)
	n.shutdown(n.hs, n.stop)
	n.stopMux()
	n.run.wg.Wait()
	n.stopTLS()
	return runErr
}

// servedEngines returns the store engines of the volumes this node
// serves now, by volume name.
func (n *clusterNode) servedEngines() map[string]*snapstore.Engine {
	out := map[string]*snapstore.Engine{}
	for _, v := range n.volumes() {
		v.mu.Lock()
		if v.eng != nil {
			out[v.def.Name] = v.eng
		}
		v.mu.Unlock()
	}
	return out
}

// volumes returns the node's volumes.
func (n *clusterNode) volumes() []*clusterVolume {
	n.mu.Lock()
	defer n.mu.Unlock()
	vols := make([]*clusterVolume, 0, len(n.vols))
	for _, v := range n.vols {
		vols = append(vols, v)
	}
	return vols
}

// shutdown stops the node in the order that loses nothing: iSCSI sessions
// end (running commands finish), the clients flush and disconnect, the
// volumes this node serves are closed cleanly and their locks released,
// and only then does the node leave Consul's catalogue.
func (n *clusterNode) shutdown(hs *http.Server, stopVols context.CancelFunc) {
	n.isrv.Close()
	for _, v := range n.volumes() {
		v.closeClient()
	}
	stopVols()
	n.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.consul.DeregisterISCSI(ctx); err != nil {
		n.log.WithError(err).Warn("deregistering from Consul")
	}
	hs.Shutdown(ctx)
}

// keepRegistered puts csnap-iscsi back when the local agent lost it: an
// agent cut off from the cluster for long is reaped by autopilot, and the
// catalogue forgets its services and checks until the agent's next
// anti-entropy sync, a minute or two later. Without the check this node
// can neither hold server sessions nor count as a member.
func (n *clusterNode) keepRegistered(ctx context.Context, reg consul.ISCSIRegistration) {
	const every = 5 * time.Second
	for {
		clock.Sleep(ctx, every)
		if ctx.Err() != nil {
			return
		}
		qctx, cancel := context.WithTimeout(ctx, every)
		if found, err := n.consul.ISCSIRegistered(qctx, n.node); err == nil && !found {
			n.log.Warn("this node's csnap-iscsi service is missing from Consul's catalogue; registering it again")
			if err := n.consul.RegisterISCSI(qctx, reg); err != nil {
				n.log.WithError(err).Warn("re-registering csnap-iscsi")
			}
		}
		cancel()
	}
}

// derivedPortalGroupTag gives a node without -portal-group-tag a stable
// tag of its own (collisions are possible: set it explicitly in production).
func derivedPortalGroupTag(node string) int {
	h := fnv.New32a()
	h.Write([]byte(node))
	return int(h.Sum32()%65535) + 1
}

// clusterAdminCommand is the csnap-admin command line csnapd prints in
// cluster mode: with -token-file when the token is in a file (with
// $CSNAP_HTTP_TOKEN csnap-admin reads the same variable).
func clusterAdminCommand(httpAddr string, tls bool, tokenFile string) string {
	cmd := "csnap-admin -addr " + httpAddr
	if tls {
		cmd = "csnap-admin -addr https://" + httpAddr + " -ca-file CA.pem"
	}
	if tokenFile != "" {
		if abs, err := filepath.Abs(tokenFile); err == nil {
			tokenFile = abs
		}
		cmd += " -token-file " + tokenFile
	}
	return cmd
}

func orNone(l []string) string {
	if len(l) == 0 {
		return "none (set volume_paths or -volume-paths)"
	}
	return strings.Join(l, ", ")
}

// syncVolumes starts every published volume not running yet, and brings
// running ones in line with their definition (the initiator allow-list).
// Volumes are never stopped here: a definition that disappears is logged
// (removing a volume is not part of csnap yet). A volume this node
// refuses (a path outside volume_paths, a device that does not open) is
// logged once per reason and reported by the API (api.Volume.Refused).
func (n *clusterNode) syncVolumes(defs []consul.VolumeDef) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	seen := map[string]bool{}
	for _, d := range defs {
		seen[d.Name] = true
		if v, ok := n.vols[d.Name]; ok {
			v.update(d)
			continue
		}
		v, err := n.newVolume(d)
		if err != nil {
			if n.refused[d.Name] != err.Error() {
				n.log.WithError(err).WithFields(logrus.Fields{"volume": d.Name, "origin": d.Origin, "store": d.Store}).
					Error("volume refused on this node: not exported")
			}
			n.refused[d.Name] = err.Error()
			continue
		}
		delete(n.refused, d.Name)
		n.vols[d.Name] = v
		n.o.Metrics.SetVolumeState(d.Name, v.metricsState)
		v.start()
	}
	for name := range n.vols {
		if !seen[name] {
			n.log.WithField("volume", name).Warn("volume definition gone from Consul; still exported until restart")
		}
	}
	for name := range n.refused {
		if !seen[name] {
			delete(n.refused, name)
		}
	}
}

// refusal says why this node does not export volume name ("" if it does
// or does not know it).
func (n *clusterNode) refusal(name string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.refused[name]
}

// metaPortalGroupTag is the csnap-iscsi service metadata key of a node's
// portal group tag.
const metaPortalGroupTag = "portal_group_tag"

// nodeLeft strikes a departed node's clients off every volume served here,
// and forgets the iSCSI nexuses of its target ports in the volume's
// logical units' shared state (with their pending unit attentions: its
// sessions are gone; reservations and registrations stay, SPC-4 5.12.1).
func (n *clusterNode) nodeLeft(node string) {
	n.mu.Lock()
	vols := make([]*clusterVolume, 0, len(n.vols))
	for _, v := range n.vols {
		vols = append(vols, v)
	}
	n.mu.Unlock()
	pgt, _ := strconv.Atoi(n.members.Meta(node, metaPortalGroupTag))
	for _, v := range vols {
		srv := v.server()
		if srv == nil {
			continue
		}
		srv.NodeLeft(node)
		if pgt < 1 || pgt > 65535 || pgt == n.pgt {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
		changed, err := srv.RewriteShared(ctx, forgetPortGroup(uint16(pgt)))
		cancel()
		if err != nil {
			v.log.WithError(err).WithField("node", node).Warn("forgetting a departed node's nexuses")
		} else if changed > 0 {
			v.log.WithFields(logrus.Fields{"node": node, "portal_group_tag": pgt, "logical_units": changed}).Info("forgot a departed node's iSCSI nexuses")
		}
	}
}

func (n *clusterNode) volume(name string) *clusterVolume {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.vols[name]
}

// clusterVolume is one volume on this node: its shared devices, its
// snapshot client and exported targets, and its election; while this node
// is the volume's server, also the engine and the server.
type clusterVolume struct {
	n      *clusterNode
	def    consul.VolumeDef
	uuid   [16]byte
	log    *logrus.Entry
	origin Device
	store  Device
	watch  *consul.ServerWatch

	mu  sync.Mutex
	cl  *client.Client
	exp *export
	// lock is the election's Consul lock (the server's LockCheck reads
	// it); resign tells the election to give a term up (hardening.go).
	lock   consul.Lock
	resign chan uint64
	// While serving:
	srv       *server.Server
	eng       *snapstore.Engine
	fences    []*fencedDev
	reg       *registryAdapter
	term      uint64
	deposing  bool
	stopWatch context.CancelFunc // ends watchEngine
	// lastTerm is the last term this node served (elected only).
	lastTerm uint64
}

func (n *clusterNode) newVolume(d consul.VolumeDef) (*clusterVolume, error) {
	uuid, err := hex.DecodeString(d.UUID)
	if err != nil || len(uuid) != 16 {
		return nil, fmt.Errorf("volume %s: bad uuid %q in its definition", d.Name, d.UUID)
	}
	if err := checkVolumePaths(n.o.VolumePaths, d.Origin, d.Store); err != nil {
		return nil, fmt.Errorf("volume %s: %w", d.Name, err)
	}
	if err := api.ValidInitiators(d.Initiators); err != nil {
		return nil, fmt.Errorf("volume %s: %w", d.Name, err)
	}
	origin, err := n.o.openDevice(d.Origin, n.o.DirectIO)
	if err != nil {
		return nil, fmt.Errorf("volume %s: origin: %w", d.Name, err)
	}
	if looksLikeStore(origin) {
		origin.Close()
		return nil, fmt.Errorf("volume %s: origin %s holds a csnap snapshot store: refusing to export it as an origin", d.Name, d.Origin)
	}
	store, err := n.o.openDevice(d.Store, n.o.DirectIO)
	if err != nil {
		origin.Close()
		return nil, fmt.Errorf("volume %s: snapshot store: %w", d.Name, err)
	}
	if err := allocateDevice(store); err != nil {
		n.log.WithField("volume", d.Name).WithError(err).Warn("snapshot store not fully allocated: the file system may run out of space under it (snapshots are then dropped)")
	}
	v := &clusterVolume{n: n, def: d, origin: origin, store: store,
		log: n.log.WithField("volume", d.Name), resign: make(chan uint64, 1)}
	copy(v.uuid[:], uuid)
	return v, nil
}

// start runs the volume's election and its client, until the node stops.
func (v *clusterVolume) start() {
	n := v.n
	v.watch = n.consul.WatchServer(n.ctx, v.def.Name, v.log)
	var both sync.WaitGroup
	both.Add(2)
	go func() {
		defer both.Done()
		v.runElection(n.ctx)
	}()
	go func() {
		defer both.Done()
		v.runClient(n.ctx)
	}()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		both.Wait() // the engine and the client are done with the devices
		v.origin.Close()
		v.store.Close()
	}()
}

// update applies a changed definition of the running volume: its
// initiator allow-list (origin and store never change).
func (v *clusterVolume) update(d consul.VolumeDef) {
	if err := api.ValidInitiators(d.Initiators); err != nil {
		v.log.WithError(err).Error("volume definition has a bad initiator allow-list; keeping the previous one")
		return
	}
	v.mu.Lock()
	v.def.Initiators = slices.Clone(d.Initiators)
	exp := v.exp
	v.mu.Unlock()
	if exp != nil {
		exp.setInitiators(d.Initiators)
	}
}

func (v *clusterVolume) server() *server.Server {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.srv
}

// runClient connects the node's snapshot client to whichever node serves
// the volume, exports the targets, and keeps the snapshot targets in line
// with the server's list. It returns, with the election, when ctx ends.
func (v *clusterVolume) runClient(ctx context.Context) {
	n := v.n
	var cl *client.Client
	for cl == nil {
		var err error
		cl, err = client.New(ctx, client.Config{
			Volume: v.def.Name, Node: n.node, ID: clientID(n.node, v.def.Name),
			Locator: v.watch, TLS: clientTLS(n.certs), Origin: v.origin, Store: v.store, IOTimeout: n.o.IOTimeout,
			// A failover takes seconds: retry often (the locator reads
			// Consul on every attempt) rather than back off to 1 s.
			MaxBackoff: 250 * time.Millisecond,
			Log:        v.log.WithField("component", "snapclient"),
			OnChange:   func(uint64) { v.refresh() },
		})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			v.log.WithError(err).Warn("snapshot client not connected yet; retrying")
			clock.Sleep(ctx, time.Second)
		}
	}
	v.mu.Lock()
	exp := newExport(v.def.Name, v.uuid, cl, n.isrv, n.chap, v.def.Initiators, v.log)
	exp.metrics = n.o.Metrics
	v.cl, v.exp = cl, exp
	v.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if err := exp.start(sctx); err != nil {
		v.log.WithError(err).Warn("exporting the volume's targets")
	}
	cancel()
	v.log.WithField("target", originIQN(v.def.Name)).Info("volume exported")
	// The targets follow the snapshot list through the client's OnChange:
	// the server announces every create and delete (INVALIDATE), and a
	// reconnection may have missed some.
	<-ctx.Done()
	v.closeClient()
}

// refresh brings the snapshot targets in line with the server's list.
func (v *clusterVolume) refresh() {
	v.mu.Lock()
	exp := v.exp
	v.mu.Unlock()
	if exp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(v.n.ctx, 10*time.Second)
	defer cancel()
	if err := exp.refresh(ctx); err != nil && ctx.Err() == nil {
		v.log.WithError(err).Debug("refreshing snapshot targets")
	}
}

// closeClient flushes and disconnects the node's client (after the iSCSI
// sessions ended). Idempotent.
func (v *clusterVolume) closeClient() {
	v.mu.Lock()
	cl := v.cl
	v.cl, v.exp = nil, nil
	v.mu.Unlock()
	if cl == nil {
		return
	}
	if err := cl.Origin().Flush(); err != nil {
		v.log.WithError(err).Error("final flush")
	}
	cl.Close()
}

// runElection competes for the volume's server lock until ctx ends.
func (v *clusterVolume) runElection(ctx context.Context) {
	n := v.n
	lock, err := n.consul.NewLock(consul.SessionConfig{
		Node: n.node, Name: "csnap server " + v.def.Name,
		ServiceCheckID: consul.ISCSICheckID, LockDelay: n.o.LockDelay,
	})
	if err != nil {
		v.log.WithError(err).Error("cannot take part in the election")
		return
	}
	// A fast restart leaves our previous session holding the lock until
	// its check fails: destroy it so the volume is served again at once.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if k, err := lock.DestroyStaleSessions(sctx); err != nil {
		v.log.WithError(err).Warn("destroying this node's stale sessions")
	} else if k > 0 {
		v.log.WithField("sessions", k).Info("destroyed this node's stale sessions")
	}
	cancel()
	v.mu.Lock()
	v.lock = lock
	v.mu.Unlock()
	lease := n.o.Lease
	err = consul.RunElection(ctx, lock, consul.ElectionConfig{
		Key:   n.consul.Keys().ServerLock(v.def.Name),
		Value: consul.ServerInfo{Node: n.node, Addr: n.serverAddr}.Encode(),
		Lease: lease, Check: lease / 4, Retry: 250 * time.Millisecond, RequestTimeout: lease / 2,
		OnElected: v.elected,
		OnDeposed: v.deposed,
		Resign:    v.resign,
		Announce: func(term uint64) []byte {
			return consul.ServerInfo{Node: n.node, Addr: n.serverAddr, Term: term, Since: time.Now().UTC()}.Encode()
		},
		Log: v.log.WithField("component", "election"),
	})
	if err != nil {
		v.log.WithError(err).Error("election stopped")
	}
}

// elected opens the engine through fenced devices and starts serving
// under term: the term is recorded in the store, and the registry of the
// previous server says which clients to await.
func (v *clusterVolume) elected(term uint64, session string) error {
	n := v.n
	fo, fs := &fencedDev{Device: v.origin}, &fencedDev{Device: v.store}
	eng, err := snapstore.Open(fo, fs, snapstore.Options{OnEvent: engineEvents(v.log, n.o.Metrics.Volume(v.def.Name))})
	if err != nil {
		return fmt.Errorf("opening the snapshot store %s: %w", v.def.Store, err)
	}
	prevTerm := eng.Epoch()
	kv, err := n.consul.ClientRegistry(v.def.Name, func() string { return session })
	if err != nil {
		eng.Close()
		return err
	}
	reg := &registryAdapter{kv: kv}
	srv, err := server.New(server.Config{
		Engine: eng, Volume: v.def.Name, Term: term, Node: n.node,
		Registry: reg, Membership: n.members,
		AwaitTimeout: n.o.AwaitTimeout,
		Log:          v.log.WithField("component", "snapserver"),
		OnDeposed:    func(newer uint64) { go v.fence(term, newer) },
		PeerNode:     peerNode(n.certs),
		// A claimed newer term is checked against the lock in Consul.
		LockCheck: consulLockCheck{holder: v.lockHolder, key: n.consul.Keys().ServerLock(v.def.Name), session: session, term: term},
		// Shared-state values are LU states (sharedstore.go).
		ValidateShared: validateLUState,
		// The SCSI mode parameters outlive a restart of every node.
		PersistShared: persistedSCSIState,
	})
	if err != nil {
		fo.fence()
		fs.fence()
		eng.Close()
		return err
	}
	// Clients of the previous server whose nodes are gone will never
	// come back: strike them off now rather than wait for them.
	for _, c := range srv.Clients() {
		if c.State() == "awaited" && !n.members.IsMember(c.Node) {
			srv.NodeLeft(c.Node)
		}
	}
	wctx, stopWatch := context.WithCancel(n.ctx)
	v.mu.Lock()
	v.srv, v.eng, v.fences, v.term, v.deposing, v.reg = srv, eng, []*fencedDev{fo, fs}, term, false, reg
	v.stopWatch = stopWatch
	v.mu.Unlock()
	go v.watchEngine(wctx, eng, term)
	// A failover: the store's previous term is not one this node served.
	n.o.Metrics.Volume(v.def.Name).TermBegun(prevTerm != 0 && prevTerm != v.lastTerm)
	v.lastTerm = term
	n.o.serving(ServingEvent{Volume: v.def.Name, Term: term, Serving: true})
	n.mux.Handle(v.def.Name, srv)
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	if err := n.consul.RegisterServer(ctx, v.def.Name, consul.ServerInfo{Node: n.node, Addr: n.serverAddr, Term: term}); err != nil {
		v.log.WithError(err).Warn("registering as the volume's server in Consul")
	}
	return nil
}

// metricsState is what /metrics reports of the volume on this node.
func (v *clusterVolume) metricsState() metrics.VolumeState {
	v.mu.Lock()
	eng, fences := v.eng, v.fences
	v.mu.Unlock()
	vs := engineVolumeState(eng, eng != nil)
	if slices.ContainsFunc(fences, (*fencedDev).isFenced) {
		vs.Engine = "fenced"
	}
	return vs
}

// fence stops the server of term once a client's newer term is confirmed
// by the lock in Consul (the lock is no longer ours): its devices refuse
// writes at once, and the election gives the term up (deposed: the lock
// released, the session destroyed) so another node is elected.
func (v *clusterVolume) fence(term, newer uint64) {
	v.log.WithFields(logrus.Fields{"term": term, "newer_term": newer}).Error("a newer server exists (confirmed by the lock in Consul): fencing")
	v.fenceTerm(term)
}

// lockHolder reads the volume's lock key consistently (LockCheck).
func (v *clusterVolume) lockHolder(ctx context.Context, key string) (string, uint64, error) {
	v.mu.Lock()
	lock := v.lock
	v.mu.Unlock()
	if lock == nil {
		return "", 0, errors.New("no election running")
	}
	return lock.Holder(ctx, key)
}

// deposed stops serving. With the lease still valid (a graceful stop) the
// engine is closed cleanly; otherwise another node may already serve, so
// the devices are fenced first and nothing more is written.
func (v *clusterVolume) deposed(term uint64, leaseValid bool) {
	n := v.n
	v.mu.Lock()
	srv, eng, fences, reg := v.srv, v.eng, v.fences, v.reg
	v.srv, v.eng, v.fences, v.term, v.reg = nil, nil, nil, 0, nil
	if v.stopWatch != nil {
		v.stopWatch()
		v.stopWatch = nil
	}
	v.mu.Unlock()
	if !leaseValid {
		for _, f := range fences {
			f.fence()
		}
		if reg != nil {
			reg.fenced.Store(true)
		}
	}
	n.mux.Handle(v.def.Name, nil)
	if srv != nil {
		// Fenced (unless graceful) and unreachable: no longer serving.
		n.o.serving(ServingEvent{Volume: v.def.Name, Term: term, Fenced: !leaseValid})
		srv.Close()
	}
	if eng != nil {
		if err := eng.Close(); err != nil && leaseValid {
			v.log.WithError(err).Error("closing the snapshot store")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.consul.DeregisterServer(ctx, v.def.Name); err != nil {
		v.log.WithError(err).Debug("deregistering as the volume's server")
	}
}

// registryAdapter stores the server's client registry in Consul KV.
// Once its server is fenced it refuses at once: the lock is lost, so
// Consul would refuse the write anyway, and the closing server's deletes
// would otherwise each wait out their deadline on a cut-off node.
type registryAdapter struct {
	kv     consul.ClientRegistry
	fenced atomic.Bool
}

func (r *registryAdapter) Put(ctx context.Context, e server.Entry) error {
	if r.fenced.Load() {
		return errFenced
	}
	return r.kv.Put(ctx, consul.ClientRecord{ID: e.ID, Node: e.Node, HoldsLocks: e.HoldsLocks})
}

func (r *registryAdapter) Delete(ctx context.Context, id wire.ClientID) error {
	if r.fenced.Load() {
		return errFenced
	}
	return r.kv.Delete(ctx, id)
}

func (r *registryAdapter) List(ctx context.Context) ([]server.Entry, error) {
	recs, err := r.kv.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]server.Entry, 0, len(recs))
	for _, c := range recs {
		out = append(out, server.Entry{ID: c.ID, Node: c.Node, HoldsLocks: c.HoldsLocks})
	}
	return out, nil
}
