package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/pki"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/target/iscsi"
)

// Defaults of the embedded -dev mode (SPEC.md).
const (
	devVolume    = "dev"
	devSize      = 1 << 30
	devChunkSize = 64 << 10
	devDataDir   = "./csnap-dev"
	devISCSIAddr = "127.0.0.1:3260"
	devHTTPAddr  = "127.0.0.1:7862"
	devSrvAddr   = "127.0.0.1:0"
	iqnPrefix    = "iqn.2026-11.io.csnap:"
)

// fileDev is a snapstore device over a file that can also punch holes, so
// unmapped origin chunks are deallocated rather than zero-filled.
type fileDev struct {
	*snapstore.FileDevice
	f *os.File
}

// openFileDev opens a volume's origin or store. direct opens it O_DIRECT
// (cluster volumes, -direct-io): the nodes share the device from different
// hosts, and IO through each host's page cache would read what another
// host has since overwritten (docs/CLUSTER.md, "Coherence across hosts").
// fallocate, and so PunchHole, works on a direct descriptor as well.
func openFileDev(path string, direct bool) (*fileDev, error) {
	if !direct {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		snapstore.AdviseRandom(f)
		return &fileDev{FileDevice: snapstore.NewFileDevice(f), f: f}, nil
	}
	d, err := snapstore.OpenDirect(path)
	if err != nil {
		return nil, explainDirectErr(err)
	}
	return &fileDev{FileDevice: d, f: d.File()}, nil
}

// explainDirectErr says, when direct IO is what failed, how to run
// without it and what that costs.
func explainDirectErr(err error) error {
	if errors.Is(err, snapstore.ErrDirectIOUnsupported) {
		return fmt.Errorf("%w; -direct-io=false opens it buffered, which is safe only while every node runs on this one host", err)
	}
	return err
}

// PunchHole deallocates [off, off+n): later reads return zeros.
func (d *fileDev) PunchHole(off, n int64) error {
	const punchHole, keepSize = 0x02, 0x01
	return syscall.Fallocate(int(d.f.Fd()), punchHole|keepSize, off, n)
}

// createSparse makes a sparse file of size bytes; it reports whether the
// file was created (false: it existed and is left alone). The file and its
// directory entry are durable when it returns.
func createSparse(path string, size int64) (bool, error) {
	return createSparseWith(path, size, syncDir)
}

// createSparseWith is createSparse with the directory sync it calls after
// creating the file (tests watch it).
func createSparseWith(path string, size int64, syncDir func(dir string) error) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return true, err
	}
	if err := f.Sync(); err != nil {
		return true, err
	}
	return true, syncDir(filepath.Dir(path))
}

// makeDir makes directory dir (and its parents) if missing; the entry of
// each directory it creates is made durable in its parent.
func makeDir(dir string, perm os.FileMode) error {
	return makeDirWith(dir, perm, syncDir)
}

func makeDirWith(dir string, perm os.FileMode, syncDir func(dir string) error) error {
	dir = filepath.Clean(dir)
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := makeDirWith(parent, perm, syncDir); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return syncDir(filepath.Dir(dir))
}

// createWritten makes a file of size bytes with every block allocated and
// written (zeros); it reports whether the file was created (false: it
// existed and is left alone). With CSNAP_DEV_PREALLOC=1 the -dev snapshot
// store is made this way instead of sparse (SPEC: sparse). In a sparse
// store each copy-out allocates blocks, so the fdatasync of every journal
// commit must also commit that allocation: a journal commit of the whole
// filesystem, which in ext4's ordered mode waits for every file's newly
// allocated data, other processes' included. On a busy machine that made
// first writes after a snapshot 2-3 times slower (issue 4,
// tests/bench/RESULTS.md), which a store on a block device never pays.
// fallocate alone is not enough: it leaves "unwritten" extents, and their
// conversion on first write is a journaled change again. The file is filled
// under a temporary name and linked into place when complete, so a crash
// meanwhile leaves no half-made store at path.
func createWritten(path string, size int64) (bool, error) {
	if _, err := os.Lstat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp) // once linked, only the temporary name goes
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return false, err
	}
	// Allocating everything at once is much cheaper than allocating on
	// each write below (and keeps the file contiguous).
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil &&
		!errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.ENOSYS) {
		return false, fmt.Errorf("allocating %d bytes: %w", size, err)
	}
	// The zeros are written in snapstore.WritePiece pieces and stay in the
	// page cache, as the store's pages are once it has been in use (and as
	// the plain file the issue-4 benchmark compares with is): copy-outs then
	// write into pages already in memory. Dropped from the cache (until
	// the sixth session), every copy-out had to take fresh pages, and on a
	// virtual machine whose memory the host backs on first touch (this
	// project's test machine) a buffered write into fresh pages ran at
	// 1.8-2.5 GB/s against 7.2 GB/s into recycled ones: first writes after
	// a snapshot fell to about 270 MiB/s in every store region not yet
	// used (tests/bench/RESULTS.md). Written in pieces, the file is cached
	// in small folios, which small copy-outs need (see
	// snapstore.FileDevice.WriteAt).
	z := make([]byte, 8<<20)
	for off := int64(0); off < size; off += int64(len(z)) {
		n := min(int64(len(z)), size-off)
		if _, err := snapstore.WriteInPieces(f, z[:n], off); err != nil {
			return false, fmt.Errorf("writing zeros at %d: %w", off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return false, err
	}
	if err := os.Link(tmp, path); errors.Is(err, os.ErrExist) {
		return false, nil // another process made it meanwhile
	} else if err != nil {
		return false, err
	}
	return true, syncDir(filepath.Dir(path))
}

// devPrealloc reads CSNAP_DEV_PREALLOC: "1" (or "true") makes a new -dev
// snapshot store fully allocated (createWritten) rather than sparse. The
// issue-4 benchmark sets it, as the plain backend it is compared with
// writes into an already-filled file.
func devPrealloc(getenv func(string) string) (bool, error) {
	v := getenv("CSNAP_DEV_PREALLOC")
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("CSNAP_DEV_PREALLOC=%q: want 1 or 0", v)
	}
	return b, nil
}

// syncDir makes the directory's entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// runDev runs one node with the embedded volume "dev": no Consul; origin and
// snapshot store are sparse files in the data directory (the store
// preallocated with CSNAP_DEV_PREALLOC=1); the snapshot
// server runs in this process on a loopback port and this node is its only
// client (the same code paths as a cluster, standalone coordination).
func runDev(ctx context.Context, o *Config, log *logrus.Entry, stdout io.Writer) (err error) {
	dir := or(o.DataDir, devDataDir)
	vol, err := openDevVolume(dir, o, log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := vol.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	node := or(o.NodeName, hostname())
	srvCtx, stopSrv := context.WithCancel(context.Background())
	defer stopSrv()
	certs, err := nodeTLS(srvCtx, o, true, dir, node, log)
	if err != nil {
		return err
	}
	snapSrv, srvAddr, closeSrv, err := startDevServer(srvCtx, o, vol.eng, node, certs, log)
	if err != nil {
		return err
	}
	defer closeSrv()
	chap, err := chapFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	icfg, err := iscsiConfig(o, log, chap)
	if err != nil {
		return err
	}
	isrv := iscsi.NewServer(icfg)
	cl, exp, err := devExport(ctx, vol, node, srvAddr, certs, isrv, chap, log)
	if err != nil {
		return err
	}
	defer cl.Close()
	svc := &devService{
		node: node, exp: exp, cl: cl, srv: snapSrv, eng: vol.eng, iscsi: isrv,
		serverAddr: srvAddr, origin: vol.originPath, store: vol.storePath, dir: dir,
	}
	r := &runner{}
	hs, err := serveDev(ctx, r, o, svc, stdout, log)
	if err != nil {
		return err
	}
	runErr := r.wait(ctx, log)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs.Shutdown(shutdownCtx)
	isrv.Close() // sessions end; running commands finish first
	r.wg.Wait()
	if err := cl.Origin().Flush(); err != nil && runErr == nil {
		runErr = fmt.Errorf("final flush: %w", err)
	}
	return runErr
}

// devVolumeFiles is the -dev volume's files, devices and engine.
type devVolumeFiles struct {
	originPath, storePath string
	origin, store         *fileDev
	eng                   *snapstore.Engine
}

// close closes the engine, then the devices.
func (v *devVolumeFiles) close() error {
	var err error
	if cerr := v.eng.Close(); cerr != nil {
		err = fmt.Errorf("closing the snapshot store: %w", cerr)
	}
	v.store.Close()
	v.origin.Close()
	return err
}

// openDevVolume makes (first start) and opens the -dev volume in dir.
func openDevVolume(dir string, o *Config, log *logrus.Entry) (_ *devVolumeFiles, err error) {
	if err := makeDir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	v := &devVolumeFiles{originPath: filepath.Join(dir, "origin.img"), storePath: filepath.Join(dir, "store.img")}
	// -dev's volume paths: its data directory, unless -volume-paths says
	// otherwise (the volume's files are always in the data directory).
	roots := o.VolumePaths
	if len(roots) == 0 {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		roots = []string{abs}
	}
	absOrigin, _ := filepath.Abs(v.originPath)
	absStore, _ := filepath.Abs(v.storePath)
	if err := checkVolumePaths(roots, absOrigin, absStore); err != nil {
		return nil, err
	}
	if _, err := createSparse(v.originPath, devSize); err != nil {
		return nil, fmt.Errorf("origin %s: %w", v.originPath, err)
	}
	prealloc, err := devPrealloc(os.Getenv)
	if err != nil {
		return nil, err
	}
	create := createStoreFile
	if prealloc {
		create = createWritten
	}
	t0 := time.Now()
	fresh, err := create(v.storePath, devSize)
	if err != nil {
		return nil, fmt.Errorf("snapshot store %s: %w", v.storePath, err)
	}
	if v.origin, err = openFileDev(v.originPath, false); err != nil { // one node: its page cache is the only one
		return nil, err
	}
	if v.store, err = openFileDev(v.storePath, false); err != nil {
		v.origin.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			v.store.Close()
			v.origin.Close()
		}
	}()
	if err := allocateStore(v.store); err != nil {
		log.WithError(err).Warn("snapshot store not fully allocated: the file system may run out of space under it (snapshots are then dropped)")
	}
	if fresh {
		// Only a store this run created is formatted: an existing file
		// that does not open is reported, never overwritten.
		if err := snapstore.Format(v.origin, v.store, snapstore.FormatOptions{ChunkSize: devChunkSize}); err != nil {
			return nil, fmt.Errorf("formatting the snapshot store %s: %w", v.storePath, err)
		}
		log.WithFields(logrus.Fields{"store": v.storePath, "preallocated": prealloc, "elapsed": time.Since(t0).Round(time.Millisecond)}).
			Info("snapshot store created and formatted")
	}
	if v.eng, err = snapstore.Open(v.origin, v.store, snapstore.Options{OnEvent: engineEvents(log)}); err != nil {
		return nil, fmt.Errorf("opening the snapshot store %s: %w", v.storePath, err)
	}
	return v, nil
}

// startDevServer runs the -dev volume's snapshot server in this process
// (standalone coordination: the lock is always ours); stop closes it.
func startDevServer(ctx context.Context, o *Config, eng *snapstore.Engine, node string, certs *pki.Holder, log *logrus.Entry) (_ *server.Server, addr string, stop func(), err error) {
	snapSrv, err := server.New(server.Config{
		Engine: eng, Volume: devVolume, Term: eng.Epoch() + 1, Node: node,
		Registry: server.NewMemRegistry(), Membership: server.AllowAll{},
		Log: log.WithField("component", "snapserver"), PeerNode: peerNode(certs),
		// One node: the lock is always ours; shared state holds LU states.
		LockCheck: server.StillOurs{}, ValidateShared: validateLUState,
		PersistShared: persistedSCSIState,
	})
	if err != nil {
		return nil, "", nil, err
	}
	sl, err := net.Listen("tcp", or(o.ServerAddr, devSrvAddr))
	if err != nil {
		return nil, "", nil, fmt.Errorf("snapshot server listener: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := snapSrv.Serve(sctx, tlsListener(sl, certs)); err != nil && !errors.Is(err, server.ErrServerClosed) {
			log.WithError(err).Error("snapshot server stopped")
		}
	}()
	return snapSrv, sl.Addr().String(), func() {
		snapSrv.Close()
		cancel()
		wg.Wait()
	}, nil
}

// devExport connects the node's snapshot client to the -dev server and
// exports the volume's targets.
func devExport(ctx context.Context, vol *devVolumeFiles, node, srvAddr string, certs *pki.Holder, isrv *iscsi.Server, chap *iscsi.CHAP, log *logrus.Entry) (*client.Client, *export, error) {
	var exp *export
	cl, err := client.New(ctx, client.Config{
		Volume: devVolume, Node: node, ID: clientID(node, devVolume),
		Locator: client.StaticServer{Addr: srvAddr, Node: node}, TLS: clientTLS(certs),
		Origin: vol.origin, Store: vol.store,
		Log: log.WithField("component", "snapclient"),
		OnChange: func(uint64) {
			if exp != nil {
				rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := exp.refresh(rctx); err != nil {
					log.WithError(err).Warn("refreshing snapshot targets")
				}
			}
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to the snapshot server: %w", err)
	}
	exp = newExport(devVolume, vol.eng.UUID(), cl, isrv, chap, nil, log.WithField("volume", devVolume))
	if err := exp.start(ctx); err != nil {
		cl.Close()
		return nil, nil, err
	}
	return cl, exp, nil
}

// serveDev opens the -dev node's portals and HTTP API, serves them on r
// and prints the banner.
func serveDev(ctx context.Context, r *runner, o *Config, svc *devService, stdout io.Writer, log *logrus.Entry) (*http.Server, error) {
	portals := splitAddrs(o.ISCSIAddr, devISCSIAddr)
	var portalLns []net.Listener
	for _, a := range portals {
		l, err := r.listen("iSCSI portal", a)
		if err != nil {
			return nil, err
		}
		portalLns = append(portalLns, l)
	}
	token, tokenFile, err := apiToken(o, svc.dir, os.Getenv)
	if err != nil {
		r.closeAll()
		return nil, err
	}
	tlsCfg, err := apiTLS(o)
	if err != nil {
		r.closeAll()
		return nil, err
	}
	initiators, err := loadDevState(svc.dir)
	if err != nil {
		r.closeAll()
		return nil, err
	}
	svc.exp.setInitiators(initiators)
	hl, err := r.listen("HTTP API", or(o.HTTPAddr, devHTTPAddr))
	if err != nil {
		return nil, err
	}
	hs := newHTTPServer(newAPI(svc, svc.iscsi, apiAccess(hl.Addr(), token, o)), tlsCfg)
	for _, l := range portalLns {
		r.serve(func() error { return svc.iscsi.Serve(ctx, l) })
	}
	r.serve(serveHTTP("HTTP API", hs, hl, tlsCfg != nil))
	printDevBanner(stdout, svc, portals, portalLns[0].Addr().String(), hl.Addr().String(), tlsCfg != nil, tokenFile)
	log.WithFields(logrus.Fields{"portals": portals, "http": hl.Addr().String(), "data_dir": svc.dir,
		"snapserver": svc.serverAddr, "term": svc.srv.Term()}).Info("csnapd -dev serving")
	return hs, nil
}

// printDevBanner prints how to use the -dev node.
func printDevBanner(stdout io.Writer, svc *devService, portals []string, p0, httpAddr string, tls bool, tokenFile string) {
	iqn := originIQN(devVolume)
	admin, tokenNote := devAdminCommand(httpAddr, tls, svc.dir, tokenFile)
	fmt.Fprintf(stdout, `csnapd -dev: volume %q (%d MiB, snapshot store %d MiB) in %s
  iSCSI portal%s %s; origin target %s, LUN 0; snapshots appear as %s:SNAPSHOT
  Log in with open-iscsi:
    iscsiadm -m discovery -t sendtargets -p %s
    iscsiadm -m node -T %s -p %s --login
  Or with libiscsi / qemu:
    iscsi-ls -s iscsi://%s
    qemu-io -f raw iscsi://%s/%s/0
  Snapshots (%s):
    %s snapshot create %s snap1
    %s snapshot list %s
`, devVolume, svc.eng.OriginSize()>>20, devSize>>20, svc.dir, plural(len(portals)), strings.Join(portals, ", "), iqn, iqn,
		p0, iqn, p0, p0, p0, iqn, tokenNote, admin, devVolume, admin, devVolume)
}

// engineEvents logs what the store engine reports (drops, recovery,
// reclamation) with structured fields.
func engineEvents(log *logrus.Entry) func(snapstore.Event) {
	return func(ev snapstore.Event) {
		log.WithField("component", "snapstore").WithField("event", fmt.Sprintf("%+v", ev)).Warn("snapshot store event")
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// splitAddrs splits a comma-separated address list, or returns def.
func splitAddrs(s, def string) []string {
	if s == "" {
		return []string{def}
	}
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// chapFromEnv reads CHAP credentials from the environment (never from
// flags, which other users can read in the process list):
// CSNAP_CHAP_USER and CSNAP_CHAP_SECRET require initiators to authenticate;
// CSNAP_CHAP_MUTUAL_USER and CSNAP_CHAP_MUTUAL_SECRET let them authenticate
// the target too. No variables: no CHAP.
func chapFromEnv(getenv func(string) string) (*iscsi.CHAP, error) {
	c := &iscsi.CHAP{
		User:         getenv("CSNAP_CHAP_USER"),
		Secret:       getenv("CSNAP_CHAP_SECRET"),
		MutualUser:   getenv("CSNAP_CHAP_MUTUAL_USER"),
		MutualSecret: getenv("CSNAP_CHAP_MUTUAL_SECRET"),
	}
	if *c == (iscsi.CHAP{}) {
		return nil, nil
	}
	if c.User == "" || c.Secret == "" {
		return nil, errors.New("CHAP: CSNAP_CHAP_USER and CSNAP_CHAP_SECRET must both be set")
	}
	if (c.MutualUser == "") != (c.MutualSecret == "") {
		return nil, errors.New("CHAP: CSNAP_CHAP_MUTUAL_USER and CSNAP_CHAP_MUTUAL_SECRET must both be set")
	}
	// RFC 7143 section 12.1.3: secrets of at least 12 bytes; open-iscsi
	// and Linux LIO refuse shorter ones too.
	for _, s := range []string{c.Secret, c.MutualSecret} {
		if s != "" && (len(s) < 12 || len(s) > 256) {
			return nil, errors.New("CHAP: secrets must be 12 to 256 bytes long")
		}
	}
	if c.MutualUser != "" && c.MutualSecret == c.Secret {
		return nil, errors.New("CHAP: the mutual secret must differ from the initiator's secret")
	}
	return c, nil
}

// devAdminCommand is the csnap-admin command line csnapd -dev prints, and
// a note on where its API token comes from. csnap-admin reads
// ./csnap-dev/api-token by itself, so with the default data directory the
// printed lines work as they are from the directory csnapd runs in;
// otherwise they name the token file.
func devAdminCommand(httpAddr string, tls bool, dir, tokenFile string) (cmd, note string) {
	addr := httpAddr
	if tls {
		addr = "https://" + httpAddr // the client needs -ca-file too
	}
	cmd = "csnap-admin -addr " + addr
	switch {
	case tokenFile == "":
		return cmd, "API token from $CSNAP_HTTP_TOKEN, which csnap-admin reads too"
	case filepath.Clean(dir) == filepath.Clean(devDataDir) && filepath.Clean(tokenFile) == filepath.Join(devDataDir, tokenFileName):
		abs := tokenFile
		if a, err := filepath.Abs(tokenFile); err == nil {
			abs = a
		}
		return cmd, "run here, csnap-admin reads the API token from ./" + filepath.ToSlash(filepath.Clean(tokenFile)) + "; elsewhere add -token-file " + abs
	}
	if abs, err := filepath.Abs(tokenFile); err == nil {
		tokenFile = abs
	}
	return cmd + " -token-file " + tokenFile, "API token in " + tokenFile
}
