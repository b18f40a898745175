package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/csnap/csnap/api"
	"github.com/csnap/csnap/consul"
	"github.com/csnap/csnap/internal/testutil"
	"github.com/csnap/csnap/snapstore"
	"github.com/csnap/csnap/target/scsi"
)

// memDev is an in-memory device shared by every node of a test cluster,
// as a SAN volume is shared by hosts.
type memDev struct{ *snapstore.MemDevice }

func (memDev) Close() error { return nil }

// testCluster is nodes of this package over one fake Consul and shared
// in-memory devices, all in the test process.
type testCluster struct {
	t      *testing.T
	f      *fakeConsul
	nodes  map[string]*clusterNode
	cancel map[string]context.CancelFunc
	done   map[string]chan error

	mu     sync.Mutex
	events []ServingEvent
	byNode map[string][]ServingEvent
}

// Timings of the test cluster: the lease runs out well before Consul
// (the fake) detects a cut-off node and the lock-delay passes, as
// CheckTimings demands: 500ms + 500ms margin <= 2 x 500ms + 200ms.
const (
	tcLease            = 500 * time.Millisecond
	tcLockDelay        = 200 * time.Millisecond
	tcCheckInterval    = 500 * time.Millisecond
	tcFailureDetection = time.Second
)

func newTestCluster(t *testing.T, names ...string) *testCluster {
	t.Helper()
	if err := consul.CheckTimings(tcLease, tcFailureDetection, tcLockDelay); err != nil {
		t.Fatalf("test timings: %v", err)
	}
	c := &testCluster{t: t, f: newFakeConsul(t, tcFailureDetection, tcLockDelay),
		nodes: map[string]*clusterNode{}, cancel: map[string]context.CancelFunc{}, done: map[string]chan error{},
		byNode: map[string][]ServingEvent{}}
	dir := t.TempDir()
	devs := map[string]memDev{}
	origin, store := filepath.Join(dir, "v1.origin"), filepath.Join(dir, "v1.store")
	devs[origin] = memDev{snapstore.NewMemDevice(16 << 20)}
	devs[store] = memDev{snapstore.NewMemDevice(16 << 20)}
	if err := snapstore.Format(devs[origin], devs[store], snapstore.FormatOptions{ChunkSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	info, err := snapstore.Inspect(devs[store])
	if err != nil {
		t.Fatal(err)
	}
	c.f.publish(consul.VolumeDef{Name: "v1", Origin: origin, Store: store, Size: 16 << 20, ChunkSize: 64 << 10,
		UUID: hex.EncodeToString(info.UUID[:]), Created: time.Now().UTC()})
	for _, name := range names {
		c.start(name, dir, devs)
	}
	t.Cleanup(c.stopAll)
	return c
}

func (c *testCluster) start(name, dir string, devs map[string]memDev) {
	c.t.Helper()
	l := logrus.New()
	l.SetOutput(io.Discard)
	if testing.Verbose() {
		l.SetOutput(testWriter{c.t})
	}
	cfg := &Config{
		NodeName: name, DataDir: c.t.TempDir(), VolumePaths: []string{dir},
		ISCSIAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ServerAddr: "127.0.0.1:0",
		Lease: tcLease, LockDelay: tcLockDelay, CheckInterval: tcCheckInterval,
		IOTimeout: 10 * time.Second, AwaitTimeout: 2 * time.Second, InsecureNoTLS: true,
		OpenDevice: func(path string, _ bool) (Device, error) { return devs[path], nil },
		OnServing: func(e ServingEvent) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.events = append(c.events, e)
			c.byNode[name] = append(c.byNode[name], e)
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := startCluster(ctx, cfg, c.f.agent(name), logrus.NewEntry(l).WithField("node", name))
	if err != nil {
		cancel()
		c.t.Fatalf("starting %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- n.wait(ctx) }()
	c.nodes[name], c.cancel[name], c.done[name] = n, cancel, done
}

func (c *testCluster) stopAll() {
	for _, cancel := range c.cancel {
		cancel()
	}
	for name := range c.cancel {
		select {
		case err := <-c.done[name]:
			if err != nil {
				c.t.Errorf("node %s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			c.t.Errorf("node %s did not stop", name)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// server returns the node serving v1 now ("" if none or more than one).
func (c *testCluster) server() string {
	found := ""
	for name, n := range c.nodes {
		if v := n.volume("v1"); v != nil && v.server() != nil {
			if found != "" {
				return ""
			}
			found = name
		}
	}
	return found
}

// exported reports whether node name exports v1 (its client is connected).
func (c *testCluster) exported(name string) bool {
	v := c.nodes[name].volume("v1")
	if v == nil {
		return false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.exp != nil
}

// snapshotTargets returns the snapshots node name exports as targets.
func (c *testCluster) snapshotTargets(name string) map[string]uint32 {
	v := c.nodes[name].volume("v1")
	v.mu.Lock()
	exp := v.exp
	v.mu.Unlock()
	exp.mu.Lock()
	defer exp.mu.Unlock()
	out := map[string]uint32{}
	for k, id := range exp.snaps {
		out[k] = id
	}
	return out
}

// originTarget returns the SCSI target node name exports for v1's origin
// (what its iSCSI portal serves) and a nexus of an initiator on it.
func (c *testCluster) originTarget(name string) (*scsi.Target, scsi.Nexus) {
	c.t.Helper()
	v := c.nodes[name].volume("v1")
	v.mu.Lock()
	exp := v.exp
	v.mu.Unlock()
	tc, ok := exp.targetConfig(originIQN("v1"))
	if !ok {
		c.t.Fatalf("%s does not export %s", name, originIQN("v1"))
	}
	tgt := tc.Exec.(*scsi.Target)
	n := scsi.Nexus{InitiatorPort: "iqn.1993-08.org.debian:test,i,0x1", Port: scsi.Port{Name: originIQN("v1") + ",t,0x1", TargetName: originIQN("v1")}}
	return tgt, n
}

// scsiIO runs a WRITE(10) (data != nil) or READ(10) of len(p) bytes at
// block lba on node name's origin target, past unit attentions.
func (c *testCluster) scsiIO(name string, lba uint32, p []byte, write bool) {
	c.t.Helper()
	tgt, n := c.originTarget(name)
	blocks := len(p) / scsi.BlockSize
	cdb := []byte{0x28, 0, byte(lba >> 24), byte(lba >> 16), byte(lba >> 8), byte(lba), 0, byte(blocks >> 8), byte(blocks), 0}
	cmd := func() *scsi.Command {
		return &scsi.Command{CDB: cdb, Nexus: n, Attr: scsi.TaskSimple, ExpectedLen: uint32(len(p))}
	}
	if write {
		cdb[0] = 0x2a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for range 10 {
		c := cmd()
		if write {
			c.DataOut = p
		}
		r := tgt.Execute(ctx, c)
		if r.Status == scsi.StatusCheckCondition && r.Sense[2]&0x0f == scsi.SenseUnitAttention {
			continue
		}
		if r.Status != scsi.StatusGood {
			break
		}
		if !write {
			copy(p, r.Data)
		}
		return
	}
	c.t.Fatalf("%s through %s's origin target failed", map[bool]string{true: "WRITE(10)", false: "READ(10)"}[write], name)
}

// writeRead writes p at block lba of v1's origin through node name's
// exported target, then reads it back through node other's.
func (c *testCluster) writeRead(name, other string, p []byte, lba uint32) {
	c.t.Helper()
	c.scsiIO(name, lba, p, true)
	got := make([]byte, len(p))
	c.scsiIO(other, lba, got, false)
	if !bytes.Equal(got, p) {
		c.t.Fatalf("%s read %x..., %s wrote %x...", other, got[:8], name, p[:8])
	}
}

// TestInProcessCluster runs three nodes of this package in one process
// over the fake Consul and shared in-memory devices (issue 17): one node
// is elected and serves; IO written through one node is read through
// another; a snapshot created on one node is exported by every node
// within 2 s and its delete unexports it everywhere; the server is then
// cut off from Consul: it stops serving with its devices fenced before
// another node serves (from the nodes' timestamps), and IO goes on through
// the other two nodes. IO goes through each node's exported origin target
// (the SCSI target its iSCSI portal serves).
func TestInProcessCluster(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	testutil.Eventually(t, 10*time.Second, "one node serves v1 and every node exports it", func() bool {
		return c.server() != "" && c.exported("n1") && c.exported("n2") && c.exported("n3")
	})
	first := c.server()
	var others []string
	for _, n := range []string{"n1", "n2", "n3"} {
		if n != first {
			others = append(others, n)
		}
	}
	t.Logf("elected: %s", first)
	block := bytes.Repeat([]byte{0xa1}, 4096)
	c.writeRead(others[0], others[1], block, 0)
	c.writeRead(first, others[0], bytes.Repeat([]byte{0xa2}, 4096), 2048)

	// A snapshot made through one node appears on every node.
	svc := &clusterService{n: c.nodes[others[0]]}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := svc.CreateSnapshot(ctx, "v1", api.CreateSnapshot{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	testutil.Eventually(t, 2*time.Second, "snapshot s1 exported by every node", func() bool {
		for n := range c.nodes {
			if _, ok := c.snapshotTargets(n)["s1"]; !ok {
				return false
			}
		}
		return true
	})
	t.Logf("s1 on every node after %v", time.Since(t0).Round(time.Millisecond))
	if err := (&clusterService{n: c.nodes[others[1]]}).DeleteSnapshot(ctx, "v1", "s1"); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	testutil.Eventually(t, 2*time.Second, "snapshot s1 unexported by every node", func() bool {
		for n := range c.nodes {
			if _, ok := c.snapshotTargets(n)["s1"]; ok {
				return false
			}
		}
		return true
	})
	t.Logf("s1 gone from every node after %v", time.Since(t0).Round(time.Millisecond))

	// Cut the server off from Consul.
	cut := time.Now()
	c.f.partition(first, true)
	defer c.f.partition(first, false) // it comes back, so it can stop
	testutil.Eventually(t, 10*time.Second, "another node serves v1", func() bool {
		s := c.server()
		return s != "" && s != first
	})
	second := c.server()
	testutil.Eventually(t, 5*time.Second, first+" reports it stopped serving", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, e := range c.byNode[first] {
			if !e.Serving {
				return true
			}
		}
		return false
	})
	c.mu.Lock()
	var stopped, started ServingEvent
	for _, e := range c.byNode[first] {
		if !e.Serving {
			stopped = e
		}
	}
	for _, e := range c.byNode[second] {
		if e.Serving {
			started = e
		}
	}
	c.mu.Unlock()
	switch {
	case stopped.At.IsZero():
		t.Fatalf("%s never stopped serving", first)
	case !stopped.Fenced:
		t.Fatalf("%s stopped serving without fencing its devices: %+v", first, stopped)
	case !stopped.At.Before(started.At):
		t.Fatalf("%s stopped serving at %v, after %s started at %v", first, stopped.At, second, started.At)
	case started.Term <= stopped.Term:
		t.Fatalf("new term %d not above old term %d", started.Term, stopped.Term)
	}
	t.Logf("cut off at 0; %s stopped (fenced) at %v; %s serves term %d at %v",
		first, stopped.At.Sub(cut).Round(time.Millisecond), second, started.Term, started.At.Sub(cut).Round(time.Millisecond))

	// IO goes on through the two nodes still in the cluster, and sees
	// what was written before the failover.
	c.writeRead(others[0], others[1], bytes.Repeat([]byte{0xb1}, 4096), 16)
	c.writeRead(others[1], others[0], bytes.Repeat([]byte{0xb2}, 4096), 0)
	got := make([]byte, 4096)
	c.scsiIO(others[0], 2048, got, false)
	if !bytes.Equal(got, bytes.Repeat([]byte{0xa2}, 4096)) {
		t.Fatalf("data written before the failover: %x...", got[:8])
	}
}

// TestDepartedNodeNexusesForgotten: each node's initiators leave nexuses of
// that node's target port in the origin LU's shared state; when a node
// leaves the cluster, the volume's server forgets its nexuses (issue 14)
// and keeps the others'.
func TestDepartedNodeNexusesForgotten(t *testing.T) {
	c := newTestCluster(t, "n1", "n2", "n3")
	testutil.Eventually(t, 10*time.Second, "one node serves v1 and every node exports it", func() bool {
		return c.server() != "" && c.exported("n1") && c.exported("n2") && c.exported("n3")
	})
	srv := c.server()
	port := func(name string) string {
		return fmt.Sprintf("%s,t,0x%04x", originIQN("v1"), c.nodes[name].pgt)
	}
	// One command through each node, on a nexus of that node's port.
	for _, name := range []string{"n1", "n2", "n3"} {
		tgt, _ := c.originTarget(name)
		n := scsi.Nexus{InitiatorPort: "iqn.1993-08.org.debian:h-" + name + ",i,0x1",
			Port: scsi.Port{Name: port(name), TargetName: originIQN("v1"), RelativeID: uint16(c.nodes[name].pgt)}}
		tgt.Execute(context.Background(), &scsi.Command{CDB: make([]byte, 6), Nexus: n, Attr: scsi.TaskSimple})
	}
	var gone string
	for _, name := range []string{"n1", "n2", "n3"} {
		if name != srv {
			gone = name
			break
		}
	}
	nexusPorts := func() map[string]bool {
		v := c.nodes[srv].volume("v1")
		v.mu.Lock()
		exp := v.exp
		v.mu.Unlock()
		st, err := exp.store.Get(stateKey(v.uuid, 0))
		if err != nil {
			t.Fatal(err)
		}
		ports := map[string]bool{}
		for id := range st.Nexuses {
			ports[id.TargetPort] = true
		}
		return ports
	}
	testutil.Eventually(t, 5*time.Second, "every node's nexus is in the shared state", func() bool {
		p := nexusPorts()
		return p[port("n1")] && p[port("n2")] && p[port("n3")]
	})
	c.f.partition(gone, true)
	defer c.f.partition(gone, false)
	testutil.Eventually(t, 10*time.Second, "the departed node's nexus forgotten", func() bool {
		return !nexusPorts()[port(gone)]
	})
	for _, name := range []string{"n1", "n2", "n3"} {
		if name != gone && !nexusPorts()[port(name)] {
			t.Fatalf("%s's nexus forgotten with %s's", name, gone)
		}
	}
}
