package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/target/iscsi"
)

// devService answers the HTTP API in -dev mode, where this node is the
// volume's snapshot server and its only client. Snapshot operations go
// through the client (the same path a remote node takes); status comes
// from the server and the engine in this process.
type devService struct {
	node       string
	exp        *export
	cl         *client.Client
	srv        *server.Server
	eng        *snapstore.Engine
	iscsi      *iscsi.Server
	serverAddr string
	origin     string
	store      string
	dir        string // data directory: holds the dev state (devStateFile)

	mu sync.Mutex // serialises SetVolume
}

func (d *devService) Health(context.Context) (api.Health, error) {
	h := api.Health{Status: "ok", Node: d.node, Targets: d.iscsi.TargetNames()}
	if err := devHealthErr(d.eng); err != nil { // hardening.go
		h.Status = "failed"
		return h, err
	}
	return h, nil
}

// engineStatus fills the engine fields of a volume's status.
func engineStatus(v *api.Volume, eng *snapstore.Engine) {
	if eng == nil {
		return
	}
	st, err := eng.State()
	v.Engine = st.String()
	if st == snapstore.EngineFailed && err != nil {
		v.EngineError = err.Error()
	}
}

func (d *devService) Recover(ctx context.Context, v string) (api.RecoverReport, error) {
	if err := d.check(v); err != nil {
		return api.RecoverReport{}, err
	}
	return d.ops().recover(ctx)
}

func (d *devService) Volumes(ctx context.Context) ([]api.Volume, error) {
	v, err := d.Volume(ctx, devVolume)
	if err != nil {
		return nil, err
	}
	return []api.Volume{v}, nil
}

func (d *devService) Volume(ctx context.Context, name string) (api.Volume, error) {
	if err := d.check(name); err != nil {
		return api.Volume{}, err
	}
	snaps, err := d.liveSnapshots(ctx)
	if err != nil {
		return api.Volume{}, err
	}
	st := d.eng.Stats()
	cs := int64(d.eng.ChunkSize())
	v := api.Volume{
		Name: devVolume, Origin: d.origin, Store: d.store,
		Size: d.eng.OriginSize(), ChunkSize: cs, Server: d.node, Snapshots: len(snaps),
		StoreUsed: int64(st.DataChunks-st.FreeChunks) * cs, StoreSize: int64(st.DataChunks) * cs,
		LocationCache: d.ops().locationCache(), Initiators: d.exp.initiatorList(),
	}
	engineStatus(&v, d.eng)
	if err := d.cl.IOError(); err != nil {
		v.IOError = err.Error()
	}
	return v, nil
}

// SetVolume changes the volume's settings: the initiator allow-list is
// kept in the data directory (devStateFile) and applies to every target
// at once.
func (d *devService) SetVolume(ctx context.Context, name string, r api.SetVolume) (api.Volume, error) {
	if err := d.check(name); err != nil {
		return api.Volume{}, err
	}
	if r.Initiators != nil {
		d.mu.Lock()
		err := saveDevState(d.dir, *r.Initiators)
		if err == nil {
			d.exp.setInitiators(*r.Initiators)
		}
		d.mu.Unlock()
		if err != nil {
			return api.Volume{}, err
		}
	}
	return d.Volume(ctx, name)
}

// devStateFile holds the -dev volume's settings in its data directory:
// JSON {"initiators": [...]}.
const devStateFile = "volume.json"

type devState struct {
	Initiators []string `json:"initiators,omitempty"`
}

// loadDevState reads the -dev volume's initiator allow-list (none when
// the file does not exist).
func loadDevState(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, devStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dev volume settings: %w", err)
	}
	var st devState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("dev volume settings %s: %w", filepath.Join(dir, devStateFile), err)
	}
	if err := api.ValidInitiators(st.Initiators); err != nil {
		return nil, fmt.Errorf("dev volume settings %s: %w", filepath.Join(dir, devStateFile), err)
	}
	return st.Initiators, nil
}

// saveDevState replaces the settings file (write, fsync, rename, fsync
// of the directory).
func saveDevState(dir string, initiators []string) error {
	b, _ := json.Marshal(devState{Initiators: initiators})
	p := filepath.Join(dir, devStateFile)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("saving the dev volume settings: %w", err)
	}
	_, werr := f.Write(b)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving the dev volume settings: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("saving the dev volume settings: %w", err)
	}
	return syncDir(dir)
}

func (d *devService) CreateVolume(_ context.Context, r api.CreateVolume) (api.Volume, error) {
	return api.Volume{}, fmt.Errorf("%w: csnapd -dev has the one volume %q; volume create needs cluster mode", api.ErrConflict, devVolume)
}

func (d *devService) check(volume string) error {
	if volume != devVolume {
		return fmt.Errorf("volume %s: %w (csnapd -dev serves only %q)", volume, api.ErrNotFound, devVolume)
	}
	return nil
}

func (d *devService) ops() volumeOps { return volumeOps{name: devVolume, exp: d.exp, cl: d.cl} }

func (d *devService) liveSnapshots(ctx context.Context) ([]client.SnapshotInfo, error) {
	return d.ops().live(ctx)
}

func (d *devService) Snapshots(ctx context.Context, v string) ([]api.Snapshot, error) {
	if err := d.check(v); err != nil {
		return nil, err
	}
	return d.ops().snapshots(ctx)
}

func (d *devService) CreateSnapshot(ctx context.Context, v string, r api.CreateSnapshot) (api.Snapshot, error) {
	if err := d.check(v); err != nil {
		return api.Snapshot{}, err
	}
	return d.ops().createSnapshot(ctx, r)
}

func (d *devService) DeleteSnapshot(ctx context.Context, v, name string) error {
	if err := d.check(v); err != nil {
		return err
	}
	return d.ops().deleteSnapshot(ctx, name)
}

func (d *devService) Server(_ context.Context, v string) (api.Server, error) {
	if err := d.check(v); err != nil {
		return api.Server{}, err
	}
	st := d.srv.Status()
	return api.Server{Node: st.Node, Address: d.serverAddr, Term: st.Term, Since: st.Since.UTC()}, nil
}

func (d *devService) Clients(_ context.Context, v string) ([]api.ClientEntry, error) {
	if err := d.check(v); err != nil {
		return nil, err
	}
	var out []api.ClientEntry
	for _, c := range d.srv.Clients() {
		out = append(out, api.ClientEntry{ID: c.ID.String(), Node: c.Node, State: c.State(), Locks: c.Locks})
	}
	return out, nil
}

func (d *devService) Check(ctx context.Context, v string) (api.CheckReport, error) {
	if err := d.check(v); err != nil {
		return api.CheckReport{}, err
	}
	r, err := d.srv.Check(ctx)
	if err != nil {
		return api.CheckReport{}, fmt.Errorf("checking the store: %w", err)
	}
	return api.CheckReport{Volume: v, Clean: r.Clean(), Problems: r.Problems, Checked: int64(r.TreeNodes)}, nil
}

// apiError maps snapshot-client errors to the API's error kinds.
func apiError(err error) error {
	switch {
	case errors.Is(err, client.ErrExists):
		return fmt.Errorf("%w: %v", api.ErrConflict, err)
	case errors.Is(err, client.ErrSnapshotGone):
		return fmt.Errorf("%w: %v", api.ErrNotFound, err)
	case errors.Is(err, client.ErrTimeout):
		return fmt.Errorf("%w: %v", api.ErrUnavailable, err)
	case errors.Is(err, snapstore.ErrBadName):
		return fmt.Errorf("%w: %v", api.ErrBadRequest, err)
	}
	return err
}

// newAPI mounts the /v1/ API and the Prometheus metrics behind the
// access policy (api.Protect: the token on every request but GET
// /v1/health; JSON bodies; Origin and Host checked).
func newAPI(svc api.Service, srv *iscsi.Server, access api.Access) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/", api.Handler(svc))
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP csnap_iscsi_targets Targets exported by this node.\n# TYPE csnap_iscsi_targets gauge\ncsnap_iscsi_targets %d\n", len(srv.TargetNames()))
	})
	return api.Protect(mux, access)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return h
}
