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

	srv := iscsi.NewServer(iscsi.Config{Log: log.WithField("component", "iscsi")})
	iqn := iqnPrefix + devVolume
	exec, err := newExecutor(be, srv)
	if err != nil {
		return err
	}
	if err := srv.AddTarget(iscsi.TargetConfig{Name: iqn, Alias: "csnap " + devVolume + " origin", Exec: exec}); err != nil {
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
	hs := &http.Server{Handler: newAPI(srv), ReadHeaderTimeout: 10 * time.Second}
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
