package tests

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/csnap/csnap/tests/cluster"
)

// TestClusterConsulACL runs the 3-node cluster with Consul ACLs on
// (default deny), gossip encryption, and each csnapd holding a token with
// only the shipped policy (configs/consul-policy-csnapd.hcl): volume
// create, snapshot create, a failover (kill -9 of the server's csnapd)
// and the snapshot read back through the new server's cluster all work;
// Consul refuses an anonymous read of csnap's keys.
func TestClusterConsulACL(t *testing.T) {
	policy, err := os.ReadFile("../configs/consul-policy-csnapd.hcl")
	if err != nil {
		t.Fatal(err)
	}
	c := startClusterWith(t, cluster.Options{ConsulACL: true, CsnapdPolicy: string(policy)})

	// ACLs are enforced: no token, no csnap state.
	resp, err := c.HTTPClient(1).Get(fmt.Sprintf("http://%s/v1/kv/csnap/volumes/%s", c.Node(1).ConsulAddr, clusterVolume))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("anonymous read of the volume definition: HTTP %d, want 403", resp.StatusCode)
	}

	s, term := serverOf(t, c, 1)
	surv := others(c, s)
	clusterAdmin(t, c, surv[0], "snapshot", "create", clusterVolume, "acl1")
	waitTarget(t, c, surv[1], clusterIQN+":acl1", true)
	must(t, c.KillCsnapd(s))
	// The lock moves once Consul sees the killed csnapd's check fail.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ns, nterm := serverOf(t, c, surv[0])
		if ns != s && nterm > term {
			t.Logf("n%d serves under term %d after n%d was killed", ns, nterm, s)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after killing n%d (term %d): server n%d term %d", s, term, ns, nterm)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out := clusterAdmin(t, c, surv[1], "snapshot", "list", clusterVolume)
	if !strings.Contains(out, "acl1") {
		t.Fatalf("snapshot list after the failover: %s", out)
	}
	clusterAdmin(t, c, surv[1], "snapshot", "create", clusterVolume, "acl2")
	must(t, c.StartCsnapd(ctxFor(t, time.Minute), s))
	waitTarget(t, c, s, clusterIQN+":acl2", true)
	// The shipped policy is enough: no csnapd was refused anything
	// (a token still replicating at start aside: "ACL not found").
	for i := 1; i <= c.Nodes(); i++ {
		for _, line := range strings.Split(c.CsnapdLog(i), "\n") {
			if strings.Contains(line, "Permission denied") || strings.Contains(line, "code: 403") && !strings.Contains(line, "ACL not found") {
				t.Errorf("n%d: %s", i, line)
			}
		}
	}
}
