package main

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/target/iscsi"
)

// devService answers the HTTP API for -dev mode. Until the snapshot store
// is wired into -dev (issue 4), snapshot operations answer 503 with the
// reason; volume and health queries are real.
type devService struct {
	node  string
	vol   api.Volume
	iscsi *iscsi.Server
}

var errNoSnapshots = fmt.Errorf("%w: this build of csnapd -dev exports the origin from a plain file; snapshots arrive with the snapshot store", api.ErrUnavailable)

func (d *devService) Health(context.Context) (api.Health, error) {
	return api.Health{Status: "ok", Node: d.node, Targets: d.iscsi.TargetNames()}, nil
}

func (d *devService) Volumes(context.Context) ([]api.Volume, error) { return []api.Volume{d.vol}, nil }

func (d *devService) Volume(_ context.Context, name string) (api.Volume, error) {
	if name != d.vol.Name {
		return api.Volume{}, fmt.Errorf("volume %s: %w (csnapd -dev serves only %q)", name, api.ErrNotFound, d.vol.Name)
	}
	return d.vol, nil
}

func (d *devService) CreateVolume(_ context.Context, r api.CreateVolume) (api.Volume, error) {
	return api.Volume{}, fmt.Errorf("%w: csnapd -dev has the one volume %q; volume create needs cluster mode", api.ErrConflict, d.vol.Name)
}

func (d *devService) check(volume string) error {
	_, err := d.Volume(context.Background(), volume)
	return err
}

func (d *devService) Snapshots(_ context.Context, v string) ([]api.Snapshot, error) {
	if err := d.check(v); err != nil {
		return nil, err
	}
	return nil, errNoSnapshots
}

func (d *devService) CreateSnapshot(_ context.Context, v string, _ api.CreateSnapshot) (api.Snapshot, error) {
	if err := d.check(v); err != nil {
		return api.Snapshot{}, err
	}
	return api.Snapshot{}, errNoSnapshots
}

func (d *devService) DeleteSnapshot(_ context.Context, v, _ string) error {
	if err := d.check(v); err != nil {
		return err
	}
	return errNoSnapshots
}

func (d *devService) Server(_ context.Context, v string) (api.Server, error) {
	if err := d.check(v); err != nil {
		return api.Server{}, err
	}
	return api.Server{}, errNoSnapshots
}

func (d *devService) Clients(_ context.Context, v string) ([]api.ClientEntry, error) {
	if err := d.check(v); err != nil {
		return nil, err
	}
	return nil, errNoSnapshots
}

func (d *devService) Check(_ context.Context, v string) (api.CheckReport, error) {
	if err := d.check(v); err != nil {
		return api.CheckReport{}, err
	}
	return api.CheckReport{}, errNoSnapshots
}

// newAPI mounts the /v1/ API and the Prometheus metrics. With a token set,
// every request must carry it as "Authorization: Bearer TOKEN".
func newAPI(svc api.Service, srv *iscsi.Server, token string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/", api.Handler(svc))
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP csnap_iscsi_targets Targets exported by this node.\n# TYPE csnap_iscsi_targets gauge\ncsnap_iscsi_targets %d\n", len(srv.TargetNames()))
	})
	if token == "" {
		return mux
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, `{"error":"missing or wrong API token (Authorization: Bearer ...)"}`)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// checkAPIExposure refuses an API listening beyond loopback without a token
// (SPEC.md: off loopback the API requires one).
func checkAPIExposure(addr net.Addr, token string) error {
	ta, ok := addr.(*net.TCPAddr)
	if !ok || ta.IP.IsLoopback() || token != "" {
		return nil
	}
	return fmt.Errorf("HTTP API on %s is reachable from other hosts: set CSNAP_HTTP_TOKEN", addr)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return h
}
