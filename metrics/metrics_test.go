package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/csnap/csnap/target/iscsi"
)

// exercise touches every family once.
func exercise(r *Registry) {
	for _, k := range []Kind{Origin, Snapshot} {
		io := r.IO("v1", k)
		io.Read(4096, time.Millisecond)
		io.Write(8192, 2*time.Millisecond)
		io.Unmap(time.Millisecond)
		io.Flush(time.Millisecond)
	}
	v := r.Volume("v1")
	v.Request("ORIGIN_WRITE", 300*time.Microsecond)
	v.CopyOut(2, 128<<10)
	v.JournalCommit()
	v.LockWait(time.Millisecond)
	v.SnapshotDropped()
	v.TermBegun(true)
	o := r.ISCSIObserver()
	o.LoginDone("iqn.2026-11.io.csnap:v1", iscsi.LoginOK)
	o.LoginDone("iqn.2026-11.io.csnap:v1", iscsi.LoginAuthFailed)
	o.SessionEnded("iqn.2026-11.io.csnap:v1")
	o.ConnectionRefused(iscsi.RefusedConnections)
	r.SetVolumeState("v1", func() VolumeState {
		return VolumeState{Serving: true, Engine: "ok", StoreSize: 1 << 30, StoreUsed: 1 << 20,
			Snapshots: []SnapshotState{{"s1", 4096}, {"s2", 0}}}
	})
	r.SetConsulUp(func() bool { return true })
}

// TestFamilies: every family of SPEC.md's list and issue 18 is there with
// its type and labels, and the exposition passes the linter promtool uses.
func TestFamilies(t *testing.T) {
	r := New("test")
	exercise(r)
	fams, err := r.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		got[f.GetName()] = f
	}
	want := []struct {
		name   string
		typ    dto.MetricType
		labels []string
	}{
		{"csnap_io_operations_total", dto.MetricType_COUNTER, []string{"kind", "op", "volume"}},
		{"csnap_io_bytes_total", dto.MetricType_COUNTER, []string{"kind", "op", "volume"}},
		{"csnap_io_duration_seconds", dto.MetricType_HISTOGRAM, []string{"kind", "op", "volume"}},
		{"csnap_copyouts_total", dto.MetricType_COUNTER, []string{"volume"}},
		{"csnap_copyout_bytes_total", dto.MetricType_COUNTER, []string{"volume"}},
		{"csnap_server_requests_total", dto.MetricType_COUNTER, []string{"type", "volume"}},
		{"csnap_server_request_duration_seconds", dto.MetricType_HISTOGRAM, []string{"type", "volume"}},
		{"csnap_journal_commits_total", dto.MetricType_COUNTER, []string{"volume"}},
		{"csnap_lock_wait_duration_seconds", dto.MetricType_HISTOGRAM, []string{"volume"}},
		{"csnap_store_size_bytes", dto.MetricType_GAUGE, []string{"volume"}},
		{"csnap_store_used_bytes", dto.MetricType_GAUGE, []string{"volume"}},
		{"csnap_snapshots", dto.MetricType_GAUGE, []string{"volume"}},
		{"csnap_snapshot_unique_bytes", dto.MetricType_GAUGE, []string{"snapshot", "volume"}},
		{"csnap_snapshots_dropped_total", dto.MetricType_COUNTER, []string{"volume"}},
		{"csnap_server_terms_total", dto.MetricType_COUNTER, []string{"volume"}},
		{"csnap_failovers_total", dto.MetricType_COUNTER, []string{"volume"}},
		{"csnap_server_serving", dto.MetricType_GAUGE, []string{"volume"}},
		{"csnap_engine_state", dto.MetricType_GAUGE, []string{"state", "volume"}},
		{"csnap_iscsi_sessions", dto.MetricType_GAUGE, []string{"target"}},
		{"csnap_iscsi_logins_total", dto.MetricType_COUNTER, []string{"result", "target"}},
		{"csnap_iscsi_connections_refused_total", dto.MetricType_COUNTER, []string{"reason"}},
		{"csnap_consul_up", dto.MetricType_GAUGE, nil},
		{"csnap_build_info", dto.MetricType_GAUGE, []string{"goversion", "version"}},
		{"go_goroutines", dto.MetricType_GAUGE, nil},
		{"process_resident_memory_bytes", dto.MetricType_GAUGE, nil},
	}
	for _, w := range want {
		f := got[w.name]
		if f == nil {
			t.Errorf("family %s missing", w.name)
			continue
		}
		if f.GetType() != w.typ {
			t.Errorf("%s is a %v, want %v", w.name, f.GetType(), w.typ)
		}
		var labels []string
		for _, l := range f.GetMetric()[0].GetLabel() {
			labels = append(labels, l.GetName())
		}
		if strings.Join(labels, ",") != strings.Join(w.labels, ",") {
			t.Errorf("%s labels %v, want %v", w.name, labels, w.labels)
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "iqn.") && l.GetName() != "target" {
					t.Errorf("%s carries an iSCSI name in label %s", w.name, l.GetName())
				}
			}
		}
	}
	problems, err := promlint.NewWithMetricFamilies(fams).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "csnap_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	if v := testutil.ToFloat64(r.iscsiSessions.WithLabelValues("iqn.2026-11.io.csnap:v1")); v != 0 {
		t.Errorf("sessions after one login and one end: %v", v)
	}
}

// TestHandler serves the text exposition.
func TestHandler(t *testing.T) {
	r := New("test")
	exercise(r)
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, s := range []string{`csnap_snapshots_dropped_total{volume="v1"} 1`, `csnap_engine_state{state="ok",volume="v1"} 1`, `csnap_build_info{`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("exposition lacks %s", s)
		}
	}
}

// TestNilRegistry: code runs without metrics.
func TestNilRegistry(t *testing.T) {
	var r *Registry
	r.IO("v", Origin).Read(1, time.Second)
	r.Volume("v").CopyOut(1, 1)
	r.Volume("v").Request("X", time.Second)
	r.SetVolumeState("v", nil)
}

// BenchmarkIORead is the hot-path cost of counting one read.
func BenchmarkIORead(b *testing.B) {
	m := New("bench").IO("v1", Origin)
	for b.Loop() {
		m.Read(4096, 50*time.Microsecond)
	}
}
