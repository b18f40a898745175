package node

import (
	"context"
	"net"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/snapstore/client"
	"github.com/csnap/csnap/snapstore/server"
	"github.com/csnap/csnap/target/iscsi"
	"github.com/csnap/csnap/target/scsi"
)

// resetEnv is a snapshot server (validate: with csnapd's LU-state check)
// and one node's client and export over it.
func resetEnv(t *testing.T, validate bool) (*server.Server, volumeOps, *sharedStore) {
	t.Helper()
	od, sd := snapstore.NewMemDevice(1<<20), snapstore.NewMemDevice(8<<20)
	eng := testEngine(t, sd, od)
	log := logrus.NewEntry(logrus.New())
	cfg := server.Config{Engine: eng, Volume: "v1", Term: 2, Node: "n1", Log: log}
	if validate {
		cfg.ValidateShared = validateLUState
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go srv.Serve(ctx, ln)
	t.Cleanup(func() { cancel(); srv.Close() })
	cl, err := client.New(ctx, client.Config{Volume: "v1", Node: "n1", ID: clientID("n1", "v1"),
		Locator: client.StaticLocator(ln.Addr().String()), Origin: od, Store: sd, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	var uuid [16]byte
	uuid[3] = 9
	exp := newExport("v1", uuid, cl, iscsi.NewServer(iscsi.Config{}), nil, nil, log)
	return srv, volumeOps{name: "v1", exp: exp, cl: cl}, exp.store
}

// Junk in an LU's shared state (as a server without validation let in)
// puts the LU out of service, and the normal update path cannot repair it;
// reset-state does, through the client or on the server.
func TestResetStateRepairsJunk(t *testing.T) {
	for _, onServer := range []bool{false, true} {
		srv, o, store := resetEnv(t, false)
		ctx := context.Background()
		key := stateKey(o.exp.uuid, 0)
		if err := o.cl.UpdateShared(ctx, key, func([]byte) ([]byte, error) { return []byte("junk"), nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Get(key); err == nil {
			t.Fatal("junk state decoded")
		}
		if err := store.Update(key, func(*scsi.LUState) error { return nil }); err == nil {
			t.Fatal("the normal update path went through junk")
		}
		var s *server.Server
		if onServer {
			s = srv
		}
		r, err := o.resetState(ctx, s, "")
		if err != nil {
			t.Fatal(err)
		}
		if r.Key != key || r.Version <= 2<<32|1 {
			t.Fatalf("reset %+v", r)
		}
		st, err := store.Get(key)
		if err != nil || st.Reservation != nil || len(st.Registrations) != 0 {
			t.Fatalf("after reset (on server %v): %+v, %v", onServer, st, err)
		}
		if err := store.Update(key, func(st *scsi.LUState) error { st.Generation++; return nil }); err != nil {
			t.Fatalf("update after reset: %v", err)
		}
		if _, err := o.resetState(ctx, s, "nosuch"); err == nil {
			t.Fatal("reset of an unknown snapshot")
		}
	}
}

// With csnapd's validation the junk never gets in: the LU keeps serving.
func TestJunkSharedStateRefused(t *testing.T) {
	_, o, store := resetEnv(t, true)
	ctx := context.Background()
	key := stateKey(o.exp.uuid, 0)
	if err := store.Update(key, func(st *scsi.LUState) error { st.Generation = 5; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := o.cl.UpdateShared(ctx, key, func([]byte) ([]byte, error) { return []byte("junk"), nil }); err == nil {
		t.Fatal("junk SHARED_UPDATE accepted")
	}
	st, err := store.Get(key)
	if err != nil || st.Generation != 5 {
		t.Fatalf("LU state after a refused junk update: %+v, %v", st, err)
	}
}
