package tests

import (
	"strings"
	"testing"
	"time"
)

// TestClusterMultipathIO runs libiscsi's MultipathIO suite with its two
// paths on two different nodes of a cluster: reservations, unit attentions
// and resets made through one node's portal must be seen through the
// other's, which needs the volume's shared SCSI state (cmd/csnapd's
// sharedStore over the snapshot server). Every test of the suite must run
// and pass: a skip here means the suite did not see two paths.
func TestClusterMultipathIO(t *testing.T) {
	requireTool(t, "iscsi-test-cu") // before starting the cluster
	c := startCluster(t)
	s, _ := serverOf(t, c, 1)
	o := others(c, s)
	results, out := runCU(t, "multipath-iscsi-test-cu.out", 5*time.Minute, "-d", "-t", "ALL.MultipathIO",
		lunOn(c, o[0], clusterIQN), lunOn(c, o[1], clusterIQN))
	if len(results) == 0 {
		t.Fatalf("no MultipathIO results parsed:\n%s", tail(out, 4000))
	}
	for _, r := range results {
		if !strings.HasPrefix(r.Name, "MultipathIO.") {
			t.Errorf("unexpected test %s", r.Name)
		}
		if r.Status != "passed" {
			t.Errorf("%s %s through n%d and n%d:\n%s", r.Name, r.Status, o[0], o[1], r.Detail)
		}
	}
	t.Logf("MultipathIO through n%d and n%d: %d tests, server on n%d", o[0], o[1], len(results), s)
}
