package tests

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestDevMetrics: a csnapd -dev node's GET /metrics (with its token; 401
// without) counts real initiators' IO by LU kind, logins by result (a
// failed CHAP login included), sessions, and reports the volume's store,
// snapshots and engine state; the exposition passes the linter promtool
// uses.
func TestDevMetrics(t *testing.T) {
	requireTool(t, "qemu-io")
	requireTool(t, "iscsi-inq")
	n := startDevEnv(t, "", []string{"CSNAP_CHAP_USER=guest", "CSNAP_CHAP_SECRET=initiator-secret"})
	lun := "iscsi://guest%initiator-secret@" + n.iscsiAddr + "/iqn.2026-11.io.csnap:dev/0"
	if out, err := runCmd(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 1M", "-c", "read -P 0x3c 0 1M", lun); err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	runCmd(t, 30*time.Second, "iscsi-inq", "iscsi://guest%wrong-secret-1@"+n.iscsiAddr+"/iqn.2026-11.io.csnap:dev/0")
	admin(t, n, "snapshot", "create", "dev", "m1")

	get := func(token string) (*http.Response, error) {
		req, _ := http.NewRequest("GET", "http://"+n.httpAddr+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return http.DefaultClient.Do(req)
	}
	if resp, err := get(""); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /metrics without the token: %v %v, want 401", resp, err)
	}
	tok, err := os.ReadFile(filepath.Join(n.dataDir, "api-token"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := get(strings.TrimSpace(string(tok)))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %v %v", resp, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the exposition: %v", err)
	}
	value := func(family string, labels map[string]string) float64 {
		f := fams[family]
		if f == nil {
			t.Fatalf("no family %s", family)
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
		t.Fatalf("no series %s%v", family, labels)
		return 0
	}
	for _, op := range []string{"read", "write"} {
		l := map[string]string{"volume": "dev", "kind": "origin", "op": op}
		if v := value("csnap_io_bytes_total", l); v < 1<<20 {
			t.Errorf("csnap_io_bytes_total%v = %v, want at least 1 MiB", l, v)
		}
		if v := value("csnap_io_duration_seconds", l); v < 1 {
			t.Errorf("csnap_io_duration_seconds%v has %v observations", l, v)
		}
	}
	if v := value("csnap_iscsi_logins_total", map[string]string{"target": "iqn.2026-11.io.csnap:dev", "result": "ok"}); v < 1 {
		t.Errorf("successful logins: %v", v)
	}
	if v := value("csnap_iscsi_logins_total", map[string]string{"target": "iqn.2026-11.io.csnap:dev", "result": "auth_failed"}); v != 1 {
		t.Errorf("CHAP failures: %v, want 1", v)
	}
	for family, want := range map[string]float64{"csnap_snapshots": 1, "csnap_server_serving": 1} {
		if v := value(family, map[string]string{"volume": "dev"}); v != want {
			t.Errorf("%s = %v, want %v", family, v, want)
		}
	}
	if v := value("csnap_engine_state", map[string]string{"volume": "dev", "state": "ok"}); v != 1 {
		t.Errorf("engine state ok = %v", v)
	}
	if v := value("csnap_store_size_bytes", map[string]string{"volume": "dev"}); v <= 0 {
		t.Errorf("store size %v", v)
	}
	value("csnap_build_info", nil)
	var list []*dto.MetricFamily
	for _, f := range fams {
		list = append(list, f)
	}
	problems, err := promlint.NewWithMetricFamilies(list).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "csnap_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}
