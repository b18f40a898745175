package node

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/snapstore/faultdev"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/target/iscsi"
	"github.com/csnap/csnap/target/scsi"
)

// TestFailedEngineHealthAndRecover: a store whose flush fails stops the
// engine; /v1/health then answers 503, volume status says "failed", the
// origin LU's SYNCHRONIZE CACHE is an error (MEDIUM ERROR) and stays one;
// `volume recover` (POST /v1/volumes/dev/recover) once the device works
// brings the engine back in place and flushes succeed again.
// getJSON GETs url, decodes the answer into out (if not nil) and returns
// the status code.
func getJSON(t *testing.T, url string, out any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// syncCache10 runs SYNCHRONIZE CACHE(10) on LUN 0, past the power-on
// unit attention.
func syncCache10(ctx context.Context, tgt *scsi.Target, nexus scsi.Nexus) scsi.Result {
	cdb := []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	var r scsi.Result
	for range 10 {
		r = tgt.Execute(ctx, &scsi.Command{CDB: cdb, Nexus: nexus, Attr: scsi.TaskSimple})
		if r.Status != scsi.StatusCheckCondition || r.Sense[2]&0x0f != scsi.SenseUnitAttention {
			break
		}
	}
	return r
}

func TestFailedEngineHealthAndRecover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := faultdev.NewPower(1)
	od, sd := p.NewDevice(4<<20), p.NewDevice(16<<20)
	if err := snapstore.Format(od, sd, snapstore.FormatOptions{ChunkSize: 64 << 10, JournalBlocks: 256}); err != nil {
		t.Fatal(err)
	}
	log := logrus.NewEntry(logrus.New())
	log.Logger.SetLevel(logrus.ErrorLevel)
	eng, err := snapstore.Open(od, sd, snapstore.Options{RecoverBackoff: -1, OnEvent: engineEvents(log)})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	srv, err := server.New(server.Config{Engine: eng, Volume: devVolume, Term: 1, Node: "n1",
		Registry: server.NewMemRegistry(), Membership: server.AllowAll{}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ctx, sl)
	defer srv.Close()
	cl, err := client.New(ctx, client.Config{Volume: devVolume, Node: "n1", ID: clientID("n1", devVolume),
		Locator: client.StaticLocator(sl.Addr().String()), Origin: od, Store: sd, Log: log,
		IOTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	isrv := iscsi.NewServer(iscsi.Config{Log: log})
	svc := &devService{node: "n1", cl: cl, srv: srv, eng: eng, iscsi: isrv,
		exp: newExport(devVolume, eng.UUID(), cl, isrv, nil, nil, log)}
	hs := httptest.NewServer(api.Handler(svc))
	defer hs.Close()
	get := func(path string, out any) int { return getJSON(t, hs.URL+path, out) }
	if code := get("/v1/health", nil); code != http.StatusOK {
		t.Fatalf("health of a working node: %d", code)
	}
	if _, err := cl.CreateSnapshot(ctx, "s1", 0, false); err != nil {
		t.Fatal(err)
	}
	be := &volumeBackend{v: cl.Origin()}
	tgt, err := scsi.NewTarget(map[uint64]*scsi.LU{0: scsi.NewLU(be)}, scsi.NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	nexus := scsi.Nexus{InitiatorPort: "iqn.test,i,0x1", Port: scsi.Port{Name: "p1"}}
	syncCache := func() scsi.Result { return syncCache10(ctx, tgt, nexus) }
	if r := syncCache(); r.Status != scsi.StatusGood {
		t.Fatalf("SYNCHRONIZE CACHE on a working volume: %+v", r)
	}
	// The store's next flush (the copy-out's journal commit) fails, and so
	// does the origin's (the flush that follows).
	p.FailAt(1, faultdev.Fault{Err: syscall.EIO, FlushOnly: true})
	p.FailAt(1, faultdev.Fault{Err: syscall.EIO, FlushOnly: true})
	werr := be.WriteAt(make([]byte, 4096), 0, false)
	ferr := be.Flush()
	if werr == nil && ferr == nil {
		t.Fatal("neither the write nor the flush reported the failed flushes")
	}
	for i := 0; i < 2; i++ {
		err := be.Flush()
		if err == nil {
			t.Fatalf("SYNCHRONIZE CACHE %d after a failed flush: GOOD", i)
		}
		var se *scsi.SenseError
		if errors.As(err, &se) {
			t.Fatalf("flush error mapped to %+v; want the SCSI layer's MEDIUM ERROR", se)
		}
	}
	for i := 0; i < 2; i++ {
		r := syncCache()
		if r.Status != scsi.StatusCheckCondition || r.Sense[2]&0x0f != scsi.SenseMediumError {
			t.Fatalf("SYNCHRONIZE CACHE %d after a failed flush: status %#x sense %x, want MEDIUM ERROR", i, r.Status, r.Sense)
		}
	}
	if code := get("/v1/health", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("health with a failed engine: %d, want 503", code)
	}
	var v api.Volume
	get("/v1/volumes/dev", &v)
	if v.Engine != "failed" || v.EngineError == "" || v.IOError == "" {
		t.Fatalf("volume status: engine %q (%q), io error %q", v.Engine, v.EngineError, v.IOError)
	}
	resp, err := http.Post(hs.URL+"/v1/volumes/dev/recover", "application/json", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	var rr api.RecoverReport
	json.NewDecoder(resp.Body).Decode(&rr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || rr.Engine != "ok" || rr.ClearedIOError == "" {
		t.Fatalf("recover: %d %+v", resp.StatusCode, rr)
	}
	if code := get("/v1/health", nil); code != http.StatusOK {
		t.Fatalf("health after recovery: %d", code)
	}
	if err := be.WriteAt(make([]byte, 4096), 0, false); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	if err := be.Flush(); err != nil {
		t.Fatalf("flush after recovery: %v", err)
	}
	if r := syncCache(); r.Status != scsi.StatusGood {
		t.Fatalf("SYNCHRONIZE CACHE after volume recover: %+v", r)
	}
}
