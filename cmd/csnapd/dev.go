package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/target/fileback"
	"github.com/csnap/csnap/target/iscsi"
	"github.com/csnap/csnap/target/scsi"
)

// Defaults of the embedded -dev mode (SPEC.md).
const (
	devVolume    = "dev"
	devSize      = 1 << 30
	devDataDir   = "./csnap-dev"
	devISCSIAddr = "127.0.0.1:3260"
	devHTTPAddr  = "127.0.0.1:7862"
	iqnPrefix    = "iqn.2026-11.io.csnap:"
)

// volumeID returns the volume's persistent identity, creating it on first
// start. It names the logical unit (VPD 0x80/0x83), so a restart presents
// the same device to initiators.
func volumeID(dir string) (string, error) {
	p := filepath.Join(dir, "volume.id")
	b, err := os.ReadFile(p)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(raw[:])
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", err
	}
	return id, os.Rename(tmp, p)
}

// runDev runs one node with the embedded volume "dev": no Consul, origin in
// a sparse file under the data directory.
func runDev(ctx context.Context, o *options, log *logrus.Entry, stdout io.Writer) error {
	dir := o.dataDir
	if dir == "" {
		dir = devDataDir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	id, err := volumeID(dir)
	if err != nil {
		return fmt.Errorf("volume identity in %s: %w", dir, err)
	}
	origin := filepath.Join(dir, "origin.img")
	if err := fileback.Create(origin, devSize); err != nil {
		return err
	}
	be, err := fileback.Open(origin, 0, false, fileback.IdentityFor(id, "csnap origin"))
	if err != nil {
		return err
	}
	defer be.Close()

	chap, err := chapFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	icfg := iscsi.Config{Log: log.WithField("component", "iscsi")}
	if o.chapDiscovery {
		if chap == nil {
			return errors.New("-chap-discovery needs CSNAP_CHAP_USER and CSNAP_CHAP_SECRET")
		}
		icfg.DiscoveryCHAP = chap
	}
	srv := iscsi.NewServer(icfg)
	iqn := iqnPrefix + devVolume
	exec, err := newExecutor(be, srv)
	if err != nil {
		return err
	}
	if err := srv.AddTarget(iscsi.TargetConfig{Name: iqn, Alias: "csnap " + devVolume + " origin", Exec: exec, CHAP: chap}); err != nil {
		return err
	}

	portals := splitAddrs(o.iscsiAddr, devISCSIAddr)
	httpAddr := o.httpAddr
	if httpAddr == "" {
		httpAddr = devHTTPAddr
	}
	var listeners []net.Listener
	for _, a := range portals {
		l, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("iSCSI portal: %w", err)
		}
		listeners = append(listeners, l)
	}
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		for _, l := range listeners {
			l.Close()
		}
		return fmt.Errorf("HTTP API: %w", err)
	}

	var wg sync.WaitGroup
	errc := make(chan error, len(listeners)+1)
	for _, l := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ctx, l); err != nil {
				errc <- err
			}
		}()
	}
	node := o.nodeName
	if node == "" {
		node = hostname()
	}
	svc := &devService{node: node, iscsi: srv, vol: api.Volume{
		Name: devVolume, Origin: origin, Store: filepath.Join(dir, "store.img"), Size: be.Size(), Server: node,
	}}
	token := os.Getenv("CSNAP_HTTP_TOKEN")
	if err := checkAPIExposure(hl.Addr(), token); err != nil {
		hl.Close()
		for _, l := range listeners {
			l.Close()
		}
		return err
	}
	hs := &http.Server{Handler: newAPI(svc, srv, token), ReadHeaderTimeout: 10 * time.Second}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := hs.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()

	p0 := listeners[0].Addr().String()
	fmt.Fprintf(stdout, `csnapd -dev: volume %q (%d MiB) in %s
  iSCSI portal%s %s, target %s, LUN 0
  Log in with open-iscsi:
    iscsiadm -m discovery -t sendtargets -p %s
    iscsiadm -m node -T %s -p %s --login
  Or with libiscsi / qemu:
    iscsi-ls -s iscsi://%s
    qemu-io -f raw iscsi://%s/%s/0
  HTTP API http://%s/v1/health
`, devVolume, devSize>>20, dir, plural(len(portals)), strings.Join(portals, ", "), iqn,
		p0, iqn, p0, p0, p0, iqn, hl.Addr())
	log.WithFields(logrus.Fields{"portals": portals, "http": hl.Addr().String(), "data_dir": dir}).Info("csnapd -dev serving")

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case runErr = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs.Shutdown(shutdownCtx)
	srv.Close()
	wg.Wait()
	if err := be.Flush(); err != nil && runErr == nil {
		runErr = fmt.Errorf("final flush: %w", err)
	}
	return runErr
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

// newExecutor presents one backend as LUN 0 of a SCSI target whose
// reservation state is local to this node.
func newExecutor(be scsi.Backend, srv *iscsi.Server) (*scsi.Target, error) {
	t, err := scsi.NewTarget(map[uint64]*scsi.LU{0: scsi.NewLU(be)}, scsi.NewMemStore())
	if err != nil {
		return nil, err
	}
	t.SetPreemptAbortHandler(srv.PreemptAbort)
	return t, nil
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
