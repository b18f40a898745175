package consul

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/internal/testutil"
)

func quietLog(t *testing.T) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(testWriter{t})
	return logrus.NewEntry(l)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// eventually polls cond for up to 15 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, what, cond)
}

// TestVolumesAndServerWatch publishes volumes (a second publish of a name
// is refused), sees them through WatchVolumes, and follows a volume's
// server lock with ServerWatch: no address until the holder announces
// its term, then the holder's, then none after it releases.
func TestVolumesAndServerWatch(t *testing.T) {
	c := devAgent(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k := Keys{Prefix: "t/"}
	d := VolumeDef{Name: "v1", Origin: "/o", Store: "/s", Size: 1 << 20, ChunkSize: 65536, UUID: "00112233445566778899aabbccddeeff"}
	if err := PublishVolume(ctx, c, k, d); err != nil {
		t.Fatal(err)
	}
	if err := PublishVolume(ctx, c, k, d); !errors.Is(err, ErrVolumeExists) {
		t.Fatalf("second publish: %v, want ErrVolumeExists", err)
	}
	got, err := GetVolume(ctx, c, k, "v1")
	if err != nil || got == nil || got.UUID != d.UUID {
		t.Fatalf("GetVolume = %+v, %v", got, err)
	}
	var mu sync.Mutex
	var seen []string
	go WatchVolumes(ctx, c, k, quietLog(t), func(defs []VolumeDef) {
		mu.Lock()
		defer mu.Unlock()
		seen = seen[:0]
		for _, d := range defs {
			seen = append(seen, d.Name)
		}
	})
	d.Name = "v2"
	if err := PublishVolume(ctx, c, k, d); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both volumes seen", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 2 && seen[0] == "v1" && seen[1] == "v2"
	})

	w := WatchServer(ctx, c, k, "v1", quietLog(t))
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	if addr, err := w.Server(short); err == nil {
		t.Fatalf("Server with no holder = %q", addr)
	}
	cancelShort()
	lock, err := NewAPILock(c, SessionConfig{Node: "n1", Name: "csnap server v1", LockDelay: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := lock.CreateSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := lock.Acquire(ctx, k.ServerLock("v1"), sess, ServerInfo{Node: "n1", Addr: "127.0.0.1:1"}.Encode()); !ok || err != nil {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, ok := w.Current(); ok {
		t.Fatal("a holder that has not announced its term is offered to clients")
	}
	if ok, _, err := lock.Acquire(ctx, k.ServerLock("v1"), sess, ServerInfo{Node: "n1", Addr: "127.0.0.1:2", Term: 1}.Encode()); !ok || err != nil {
		t.Fatalf("announce: %v %v", ok, err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	addr, err := w.Server(wctx)
	wcancel()
	if err != nil || addr != "127.0.0.1:2" {
		t.Fatalf("Server = %q, %v; want the announced address", addr, err)
	}
	wctx, wcancel = context.WithTimeout(ctx, 5*time.Second)
	addr, node, err := w.ServerNode(wctx)
	wcancel()
	if err != nil || addr != "127.0.0.1:2" || node != "n1" {
		t.Fatalf("ServerNode = %q %q, %v; want the announced address and the lock holder's node", addr, node, err)
	}
	_, servers, err := ListVolumes(ctx, c, k)
	if err != nil || servers["v1"].Node != "n1" || servers["v1"].Term != 1 {
		t.Fatalf("ListVolumes servers = %+v, %v", servers, err)
	}
	if err := lock.Release(ctx, k.ServerLock("v1"), sess); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the released lock seen", func() bool { _, ok := w.Current(); return !ok })
}

// TestMembersAndServices registers csnap-iscsi with an HTTP check on a
// test server: the node is a live member while the check passes; it
// leaves (OnLeft) when the check fails, comes back when it passes, and
// leaves again when the service is deregistered.
func TestMembersAndServices(t *testing.T) {
	c := devAgent(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var healthy sync.Mutex
	ok := true
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		healthy.Lock()
		defer healthy.Unlock()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer hs.Close()
	setHealthy := func(v bool) { healthy.Lock(); ok = v; healthy.Unlock() }

	left := make(chan string, 8)
	m := WatchMembers(ctx, c, ISCSIService, quietLog(t), func(n string) { left <- n })
	if err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if m.IsMember("n1") {
		t.Fatal("n1 is a member before registering")
	}
	if err := RegisterISCSI(ctx, c, ISCSIRegistration{Portal: "127.0.0.1:3260", HealthURL: hs.URL, Interval: 200 * time.Millisecond,
		Meta: map[string]string{"portal_group_tag": "7"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n1 live", func() bool { return m.IsMember("n1") })
	setHealthy(false)
	select {
	case n := <-left:
		if n != "n1" {
			t.Fatalf("left: %q", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no departure reported for a failing check")
	}
	// The departed node's service metadata is still known (its portal
	// group tag: the node layer forgets its nexuses by it).
	if got := m.Meta("n1", "portal_group_tag"); got != "7" {
		t.Fatalf("meta of the departed node: %q, want 7", got)
	}
	if m.IsMember("n1") {
		t.Fatal("n1 still a member with its check failing")
	}
	setHealthy(true)
	eventually(t, "n1 live again", func() bool { return m.IsMember("n1") })

	if err := RegisterServer(ctx, c, "v1", ServerInfo{Node: "n1", Addr: "127.0.0.1:7863", Term: 3}); err != nil {
		t.Fatal(err)
	}
	entries, _, err := c.Health().Service(ServerService, "v1", false, nil)
	if err != nil || len(entries) != 1 || entries[0].Service.Meta["term"] != "3" {
		t.Fatalf("csnap-server for v1: %+v, %v", entries, err)
	}
	if err := DeregisterServer(ctx, c, "v1"); err != nil {
		t.Fatal(err)
	}

	if err := DeregisterISCSI(ctx, c); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-left:
		if n != "n1" {
			t.Fatalf("left: %q", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no departure reported for a deregistered service")
	}
}
