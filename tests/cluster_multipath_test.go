package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterMultipathIO runs libiscsi's MultipathIO suite (iscsi-test-cu
// with two URLs) against volume v through two different nodes' portals:
// the two paths of one LU as an initiator with dm-multipath sees them,
// served by two csnapd processes. Every test must pass or be a skip
// explained in tests/conformance/skips.txt.
func TestClusterMultipathIO(t *testing.T) {
	cu := requireTool(t, "iscsi-test-cu")
	c := startCluster(t)
	s, _ := serverOf(t, c, 1)
	o := others(c, s)[0]
	// One path through the server's node, one through a client-only node.
	out, err := runCmd(t, 5*time.Minute, cu, "-d", "-t", "ALL.MultipathIO", lunOn(c, s, clusterIQN), lunOn(c, o, clusterIQN))
	if dir := os.Getenv("CSNAP_TEST_ARTIFACTS"); dir != "" {
		os.WriteFile(filepath.Join(dir, "iscsi-test-cu-cluster-multipath.out"), []byte(out), 0o644)
	}
	if err != nil && !strings.Contains(out, "Run Summary") {
		t.Fatalf("iscsi-test-cu did not complete: %v\n%s", err, tail(out, 4000))
	}
	results := parseCU(out)
	skips := loadSkips(t)
	var passed []string
	for _, r := range results {
		switch r.Status {
		case "passed":
			passed = append(passed, r.Name)
		case "failed":
			t.Errorf("FAILED %s:\n%s", r.Name, r.Detail)
		case "skipped":
			if _, ok := skips[r.Name]; !ok {
				t.Errorf("skipped %s, not explained in tests/conformance/skips.txt:\n%s", r.Name, r.Detail)
			}
		}
	}
	t.Logf("MultipathIO through n%d and n%d: %d of %d passed: %s", s, o, len(passed), len(results), strings.Join(passed, ", "))
	if len(passed) == 0 || !strings.Contains(out, "Run Summary") {
		t.Errorf("no MultipathIO test passed:\n%s", tail(out, 4000))
	}
}
