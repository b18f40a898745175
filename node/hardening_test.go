package node

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/consul"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/target/iscsi"
	"github.com/csnap/csnap/target/scsi"
)

func TestConsulLockCheck(t *testing.T) {
	var session string
	var idx uint64
	var err error
	c := consulLockCheck{key: "k", session: "s1", term: 7,
		holder: func(_ context.Context, key string) (string, uint64, error) {
			if key != "k" {
				t.Errorf("read key %q", key)
			}
			return session, idx, err
		}}
	for _, tc := range []struct {
		session string
		idx     uint64
		err     error
		want    bool
	}{
		{"s1", 7, nil, true},
		{"s2", 7, nil, false}, // another session holds it
		{"s1", 8, nil, false}, // re-acquired: a newer term
		{"", 7, nil, false},   // free
	} {
		session, idx, err = tc.session, tc.idx, tc.err
		got, gerr := c.HoldsLock(context.Background())
		if gerr != nil || got != tc.want {
			t.Errorf("holder %q at %d: %v, %v; want %v", tc.session, tc.idx, got, gerr, tc.want)
		}
	}
	err = errors.New("no leader")
	if _, gerr := c.HoldsLock(context.Background()); gerr == nil {
		t.Error("a failed read reported an answer")
	}
}

// failingDev fails every flush once armed (a commit then fails, which
// fails the engine).
type failingDev struct {
	snapstore.Device
	fail bool
}

func (d *failingDev) Flush() error {
	if d.fail {
		return errors.New("injected IO error")
	}
	return d.Device.Flush()
}

func testEngine(t *testing.T, store snapstore.Device, origin snapstore.Device) *snapstore.Engine {
	t.Helper()
	if err := snapstore.Format(origin, store, snapstore.FormatOptions{ChunkSize: 8192, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	eng, err := snapstore.Open(origin, store, snapstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

func health(t *testing.T, svc api.Service) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	api.Handler(svc).ServeHTTP(rec, httptest.NewRequest("GET", "/v1/health", nil))
	return rec.Code, rec.Body.String()
}

// /v1/health fails (503) while a volume this node serves has fenced
// devices or a failed engine, and a fenced term is resigned.
func TestHealthFencedOrFailedEngine(t *testing.T) {
	od, sd := snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(8<<20)
	fo, fs := &fencedDev{Device: od}, &fencedDev{Device: sd}
	eng := testEngine(t, fs, fo)
	log := logrus.NewEntry(logrus.New())
	v := &clusterVolume{def: consul.VolumeDef{Name: "v1"}, log: log, resign: make(chan uint64, 1),
		eng: eng, fences: []*fencedDev{fo, fs}, term: 3}
	n := &clusterNode{node: "n1", isrv: iscsi.NewServer(iscsi.Config{}), vols: map[string]*clusterVolume{"v1": v}}
	svc := &clusterService{n: n}
	if code, body := health(t, svc); code != 200 {
		t.Fatalf("healthy node: HTTP %d %s", code, body)
	}
	v.srv = nil // (fenceTerm acts only on the term being served)
	v.fenceTerm(2)
	if fs.isFenced() {
		t.Fatal("a stale term's fence reached the current devices")
	}
	v.fenceTerm(3) // srv nil: not serving
	if fs.isFenced() {
		t.Fatal("fenced while not serving")
	}
	for _, f := range v.fences {
		f.fence()
	}
	code, body := health(t, svc)
	if code != 503 || !strings.Contains(body, "fenced") {
		t.Fatalf("fenced engine: HTTP %d %s, want 503", code, body)
	}
	t.Log(body)

	// A failed engine (IO error) in -dev and in cluster mode.
	fd := &failingDev{Device: snapstore.NewMemDevice(8 << 20)}
	eng2 := testEngine(t, fd, snapstore.NewMemDevice(1<<20))
	dev := &devService{node: "n1", iscsi: iscsi.NewServer(iscsi.Config{}), eng: eng2}
	if code, body := health(t, dev); code != 200 {
		t.Fatalf("healthy dev: HTTP %d %s", code, body)
	}
	if _, err := eng2.CreateSnapshot(context.Background(), "s", snapstore.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fd.fail = true
	if _, err := eng2.PrepareOriginWrite(context.Background(), 0, 1); err == nil {
		t.Fatal("copy-out succeeded on a failing store")
	} else {
		t.Log(err)
	}
	if eng2.Err() == nil {
		t.Fatal("engine not failed after an IO error")
	}
	code, body = health(t, dev)
	if code != 503 {
		t.Fatalf("failed engine (-dev): HTTP %d %s, want 503", code, body)
	}
	v2 := &clusterVolume{def: consul.VolumeDef{Name: "v2"}, log: log, eng: eng2, term: 1}
	n2 := &clusterNode{node: "n1", isrv: iscsi.NewServer(iscsi.Config{}), vols: map[string]*clusterVolume{"v2": v2}}
	if code, body := health(t, &clusterService{n: n2}); code != 503 || !strings.Contains(body, "failed") {
		t.Fatalf("failed engine (cluster): HTTP %d %s, want 503", code, body)
	}
}

// fenceTerm fences the served term's devices and asks the election to
// resign it.
func TestFenceTermResigns(t *testing.T) {
	od, sd := snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(8<<20)
	fo, fs := &fencedDev{Device: od}, &fencedDev{Device: sd}
	eng := testEngine(t, fs, fo)
	v := &clusterVolume{def: consul.VolumeDef{Name: "v1"}, log: logrus.NewEntry(logrus.New()),
		resign: make(chan uint64, 1), eng: eng, fences: []*fencedDev{fo, fs}, term: 3}
	v.srv = newTestServer(t, eng)
	v.fence(3, 9)
	if !fo.isFenced() || !fs.isFenced() {
		t.Fatal("devices not fenced")
	}
	select {
	case term := <-v.resign:
		if term != 3 {
			t.Fatalf("resigned term %d, want 3", term)
		}
	default:
		t.Fatal("the election was not asked to resign")
	}
}

// validateLUState accepts an encoded LU state and refuses junk.
func TestValidateLUState(t *testing.T) {
	b, err := (&scsi.LUState{Generation: 2}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := validateLUState("k", b); err != nil {
		t.Fatal(err)
	}
	if validateLUState("k", []byte("junk")) == nil {
		t.Fatal("junk accepted")
	}
}

func TestStateKey(t *testing.T) {
	var uuid [16]byte
	uuid[0] = 1
	be := &volumeBackend{id: lunIdentity(uuid, 4, "csnap snapshot")}
	if got, want := stateKey(uuid, 4), scsi.NewLU(be).StateKey(); got != want || got == stateKey(uuid, 0) {
		t.Fatalf("stateKey %q, the exported LU's %q", got, want)
	}
}

func newTestServer(t *testing.T, eng *snapstore.Engine) *server.Server {
	t.Helper()
	srv, err := server.New(server.Config{Engine: eng, Volume: "v1", Term: 3, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}
