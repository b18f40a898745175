package node

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/consul"
	"github.com/csnap/csnap/target/iscsi"
	"github.com/csnap/csnap/target/scsi"
)

// TestVolumePathAllowList: paths outside volume_paths are refused, after
// resolving symbolic links (a link inside pointing outside does not
// escape), and with no list configured nothing is allowed.
func TestVolumePathAllowList(t *testing.T) {
	base := t.TempDir()
	allowed := filepath.Join(base, "allowed")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{allowed, outside} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(outside, "secret.img"), []byte("x"), 0o600)
	os.Symlink(filepath.Join(outside, "secret.img"), filepath.Join(allowed, "link.img"))
	os.Symlink(outside, filepath.Join(allowed, "dirlink"))
	dev := filepath.Join(outside, "dev-sdb")
	os.WriteFile(dev, nil, 0o600)
	byID := filepath.Join(base, "by-id-wwn")
	os.Symlink(dev, byID)
	roots := []string{allowed, byID}
	for _, ok := range []string{filepath.Join(allowed, "o.img"), filepath.Join(allowed, "sub/../o.img"), dev, byID} {
		if _, err := checkVolumePath(roots, "origin", ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{
		filepath.Join(outside, "o.img"), "/etc/shadow", filepath.Join(allowed, "../outside/o.img"),
		filepath.Join(allowed, "link.img"), filepath.Join(allowed, "dirlink/new.img"), allowed + "x/o.img", "relative.img",
	} {
		if _, err := checkVolumePath(roots, "origin", bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if _, err := checkVolumePath(nil, "store", filepath.Join(allowed, "o.img")); !errors.Is(err, errPathNotAllowed) {
		t.Errorf("no volume_paths: %v", err)
	}
	p := filepath.Join(allowed, "same.img")
	if err := checkVolumePaths(roots, p, p); err == nil {
		t.Error("origin == store accepted")
	}
	os.WriteFile(p, nil, 0o600)
	os.Link(p, filepath.Join(allowed, "hard.img"))
	if err := checkVolumePaths(roots, p, filepath.Join(allowed, "hard.img")); err == nil {
		t.Error("origin and store hard links of one file accepted")
	}
}

// TestPrepareVolumeRefusesData: a store holding data that is not a csnap
// store is not formatted without force; a csnap store is never formatted
// over, nor taken as an origin.
func TestPrepareVolumeRefusesData(t *testing.T) {
	dir := t.TempDir()
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetOutput(io.Discard)
	const size = 8 << 20
	origin, store := filepath.Join(dir, "origin.img"), filepath.Join(dir, "store.img")
	if _, err := createSparse(origin, size); err != nil {
		t.Fatal(err)
	}
	// A "file system" in the store's first MiB.
	if _, err := createSparse(store, size); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(store, os.O_RDWR, 0)
	f.WriteAt([]byte{0x53, 0xef}, 1024+56) // ext4's magic
	f.Close()
	r := api.CreateVolume{Name: "v", Origin: origin, Store: store, ChunkSize: 64 << 10}
	if _, _, err := prepareVolume(r, false, log); !errors.Is(err, api.ErrConflict) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("store with data, no force: %v", err)
	}
	if b, _ := os.ReadFile(store); b[1024+56] != 0x53 {
		t.Fatal("the store's data was changed")
	}
	// Data only in the last MiB counts too.
	end := filepath.Join(dir, "end.img")
	createSparse(end, size)
	f, _ = os.OpenFile(end, os.O_RDWR, 0)
	f.WriteAt([]byte{1}, size-10)
	f.Close()
	if _, _, err := prepareVolume(api.CreateVolume{Name: "v", Origin: origin, Store: end, ChunkSize: 64 << 10}, false, log); err == nil {
		t.Fatal("store with data at its end formatted without force")
	}
	r.Force = true
	if _, _, err := prepareVolume(r, false, log); err != nil {
		t.Fatalf("with force: %v", err)
	}
	// Now a csnap store: never again, force or not.
	if _, _, err := prepareVolume(r, false, log); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("formatting over a csnap store: %v", err)
	}
	// A csnap store given as origin.
	r2 := api.CreateVolume{Name: "w", Origin: store, Store: filepath.Join(dir, "s2.img"), ChunkSize: 64 << 10, Force: true}
	if _, _, err := prepareVolume(r2, false, log); err == nil || !strings.Contains(err.Error(), "origin") {
		t.Fatalf("csnap store as origin: %v", err)
	}
	// A fresh store is formatted without force.
	r3 := api.CreateVolume{Name: "x", Origin: filepath.Join(dir, "o3.img"), Store: filepath.Join(dir, "s3.img"), Size: size, ChunkSize: 64 << 10}
	if _, _, err := prepareVolume(r3, false, log); err != nil {
		t.Fatalf("new files: %v", err)
	}
}

// nopExec stands in for a target's SCSI executor (never called here).
type nopExec struct{ scsi.Executor }

// TestExportInitiators: the volume's initiator allow-list reaches every
// target's TargetConfig.Initiators (origin and snapshots), and a change
// is applied to the targets already exported.
func TestExportInitiators(t *testing.T) {
	srv := iscsi.NewServer(iscsi.Config{})
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetOutput(io.Discard)
	first := []string{"iqn.2008-11.org.linux-kvm:a"}
	e := newExport("v", [16]byte{}, nil, srv, nil, first, log)
	e.mu.Lock()
	for _, iqn := range []string{originIQN("v"), snapshotIQN("v", "s1")} {
		tc := iscsi.TargetConfig{Name: iqn, Exec: nopExec{}, Initiators: slices.Clone(e.initiators)}
		if err := srv.AddTarget(tc); err != nil {
			t.Fatal(err)
		}
		e.targets[iqn] = tc
	}
	e.mu.Unlock()
	second := []string{"iqn.1994-05.com.redhat:b", "eui.02004567A425678D"}
	e.setInitiators(second)
	for _, iqn := range []string{originIQN("v"), snapshotIQN("v", "s1")} {
		tc, ok := e.targetConfig(iqn)
		if !ok || !slices.Equal(tc.Initiators, second) {
			t.Errorf("%s: initiators %v, want %v", iqn, tc.Initiators, second)
		}
	}
	if got := srv.TargetNames(); len(got) != 2 {
		t.Errorf("targets after the change: %v", got)
	}
	e.setInitiators(nil)
	if tc, _ := e.targetConfig(originIQN("v")); len(tc.Initiators) != 0 {
		t.Errorf("cleared list still %v", tc.Initiators)
	}
}

// TestClusterRefusesDefinitionOutsidePaths: a volume definition from
// Consul KV naming paths outside this node's volume_paths is not opened;
// the node logs why and reports it (api.Volume.Refused).
func TestClusterRefusesDefinitionOutsidePaths(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim.img")
	os.WriteFile(victim, []byte("precious"), 0o600)
	var logs strings.Builder
	l := logrus.New()
	l.SetOutput(&logs)
	n := &clusterNode{o: &Config{VolumePaths: []string{filepath.Join(dir, "volumes")}}, log: logrus.NewEntry(l),
		vols: map[string]*clusterVolume{}, refused: map[string]string{}, ctx: context.Background()}
	def := consul.VolumeDef{Name: "evil", Origin: victim, Store: filepath.Join(dir, "volumes", "s.img"), UUID: strings.Repeat("ab", 16)}
	n.syncVolumes([]consul.VolumeDef{def})
	n.syncVolumes([]consul.VolumeDef{def}) // logged once
	if len(n.vols) != 0 {
		t.Fatal("volume outside volume_paths opened")
	}
	if r := n.refusal("evil"); !strings.Contains(r, "volume_paths") || !strings.Contains(r, victim) {
		t.Errorf("refusal %q", r)
	}
	if c := strings.Count(logs.String(), "volume refused on this node"); c != 1 {
		t.Errorf("%d log lines, want 1:\n%s", c, logs.String())
	}
	n.syncVolumes(nil)
	if r := n.refusal("evil"); r != "" {
		t.Errorf("refusal of a deleted definition kept: %q", r)
	}
}
