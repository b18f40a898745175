package tests

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csnap/csnap/pki"
	"github.com/csnap/csnap/tests/cluster"
)

// TestClusterForeignCA: a node whose certificate comes from another CA
// cannot join the snapshot-server protocol. The cluster runs with mutual
// TLS (the harness's default); one node that does not serve the volume is
// restarted with a certificate of its own name signed by another CA: its
// client cannot connect (the server refuses its certificate, it refuses
// the server's), so it never exports the volume, and both logs say why;
// the other nodes go on serving. Restarted with the cluster's
// certificate, it joins again.
func TestClusterForeignCA(t *testing.T) {
	var foreign atomic.Pointer[pki.Paths]
	c := startClusterWith(t, cluster.Options{CsnapdArgsFor: func(n cluster.Node) []string {
		if p := foreign.Load(); p != nil && strings.HasSuffix(p.Cert, "csnap-node-"+n.Name+".pem") {
			return []string{"-tls-ca", p.CA, "-tls-cert", p.Cert, "-tls-key", p.Key}
		}
		return nil
	}})
	s, _ := serverOf(t, c, 1)
	i := others(c, s)[0]
	name := c.Node(i).Name

	dir := t.TempDir()
	ca, err := pki.NewCA("another CA", 0)
	must(t, err)
	must(t, ca.Write(dir, false))
	p, err := cluster.MakeNodeCert(ca, dir, name)
	must(t, err)
	foreign.Store(&p)

	must(t, c.StopCsnapd(i))
	must(t, c.StartCsnapd(ctxFor(t, time.Minute), i))
	// It does not get the volume in 10 s (a joining node exports it in
	// well under a second).
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ts, err := health(c, i)
		must(t, err)
		for _, tg := range ts {
			if tg == clusterIQN {
				t.Fatalf("%s exports %s with a certificate of another CA", name, clusterIQN)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if log := c.CsnapdLog(i); !strings.Contains(log, "certificate signed by unknown authority") {
		t.Errorf("%s's log does not say the server's certificate is of an unknown CA:\n%s", name, tail(log, 3000))
	}
	// (It refuses the server's certificate first, so the server sees its
	// alert. On loopback its connections come from 127.0.0.1.)
	if log := c.CsnapdLog(s); !strings.Contains(log, "TLS handshake failed") {
		t.Errorf("the server n%d's log does not show the failed TLS handshakes:\n%s", s, tail(log, 3000))
	}
	// The server does not list it as a client.
	if out := clusterAdmin(t, c, s, "clients", clusterVolume); strings.Contains(out, name) {
		t.Errorf("server lists %s as a client:\n%s", name, out)
	}
	// The others still serve the volume.
	for _, j := range []int{s, others(c, s)[1]} {
		waitTarget(t, c, j, clusterIQN, true)
	}

	// With the cluster's certificate again, it joins.
	foreign.Store(nil)
	must(t, c.StopCsnapd(i))
	must(t, c.StartCsnapd(ctxFor(t, time.Minute), i))
	waitTarget(t, c, i, clusterIQN, true)
}
