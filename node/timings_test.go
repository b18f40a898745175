package node

import (
	"context"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// The daemon's timing check is consul.CheckTimings (the inequality
// docs/CLUSTER.md cites) plus the sanity limits: the defaults pass, and a
// lease that outlasts failure detection plus the lock-delay is refused
// with the inequality named, before the node does anything.
func TestCheckTimings(t *testing.T) {
	if err := CheckTimings(DefaultLease, DefaultLockDelay, DefaultCheckInterval, DefaultIOTimeout, DefaultAwaitTimeout); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	err := CheckTimings(3*time.Second, time.Second, time.Second, DefaultIOTimeout, DefaultAwaitTimeout)
	if err == nil || !strings.Contains(err.Error(), "is not shorter than failure detection") || !strings.Contains(err.Error(), "-lease 3s") {
		t.Fatalf("lease 3s, check 1s, lock-delay 1s: %v", err)
	}
	for _, bad := range [][5]time.Duration{
		{100 * time.Millisecond, time.Second, time.Second, time.Second, time.Second},
		{time.Second, 0, time.Second, time.Second, time.Second},
		{time.Second, time.Second, 0, time.Second, time.Second},
		{time.Second, time.Second, time.Second, 0, time.Second},
	} {
		if err := CheckTimings(bad[0], bad[1], bad[2], bad[3], bad[4]); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
	f := newFakeConsul(t, time.Second, time.Second)
	o := &Config{NodeName: "n1", Lease: 3 * time.Second, LockDelay: time.Second, CheckInterval: time.Second,
		IOTimeout: time.Second, AwaitTimeout: time.Second, InsecureNoTLS: true}
	l := logrus.New()
	l.SetOutput(testWriter{t})
	if _, err := startCluster(context.Background(), o, f.agent("n1"), logrus.NewEntry(l)); err == nil || !strings.Contains(err.Error(), "failure detection") {
		t.Fatalf("cluster node started with unsafe timings: %v", err)
	}
}

// Consul is reached only through package consul: neither the node nor the
// daemon imports Consul's API.
func TestNoConsulAPIOutsideConsul(t *testing.T) {
	for _, dir := range []string{".", "../cmd/csnapd", "../cmd/csnap-admin"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: %v", dir, err)
		}
		for _, f := range files {
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				if strings.Contains(imp.Path.Value, "hashicorp/consul/api") {
					t.Errorf("%s imports %s: reach Consul through package consul", f, imp.Path.Value)
				}
			}
		}
	}
}
