package node

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// startDevInProcess runs runDev on ephemeral ports in a temporary data
// directory and returns the HTTP API address it printed.
func startDevInProcess(t *testing.T, dir string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	l := logrus.New()
	l.SetOutput(io.Discard)
	o := &Config{DataDir: dir, ISCSIAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", ServerAddr: "127.0.0.1:0",
		NodeName: "n1"}
	go func() {
		done <- runDev(ctx, o, logrus.NewEntry(l), pw)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("runDev: %v", err)
		}
	})
	re := regexp.MustCompile(`csnap-admin -addr (\S+)`)
	sc := bufio.NewScanner(pr)
	addr := ""
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil && addr == "" {
			addr = m[1]
			go io.Copy(io.Discard, pr)
			break
		}
	}
	if addr == "" {
		t.Fatal("csnapd -dev printed no csnap-admin line")
	}
	return addr
}

// TestDevAPIRefusesUnauthenticated: on csnapd -dev's real HTTP listener
// (loopback), no request changes state without the token, a text/plain
// POST, a foreign Origin and a rebinding Host are refused, and only then
// does an authorised request succeed. Issue 15: a cross-origin text/plain
// POST created a snapshot (HTTP 201).
func TestDevAPIRefusesUnauthenticated(t *testing.T) {
	dir := t.TempDir()
	addr := startDevInProcess(t, dir)
	base := "http://" + addr
	do := func(method, path, host, ctype, origin, auth, body string) int {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	snap := `{"name":"s1"}`
	// Attacks first: each must be refused (and create nothing).
	if c := do("POST", "/v1/volumes/dev/snapshots", "", "application/json", "", "", snap); c != 401 {
		t.Errorf("POST without a token from loopback: HTTP %d, want 401", c)
	}
	if c := do("POST", "/v1/volumes/dev/snapshots", "", "text/plain", "http://evil.example", "", snap); c == 201 {
		t.Errorf("cross-origin text/plain POST: HTTP %d", c)
	}
	if c := do("POST", "/v1/volumes/dev/snapshots", "evil.example:7862", "application/json", "", "", snap); c == 201 {
		t.Errorf("rebinding Host: HTTP %d", c)
	}
	b, err := os.ReadFile(filepath.Join(dir, "api-token"))
	if err != nil {
		t.Fatalf("no API token file in the data directory: %v", err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "api-token"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	auth := "Bearer " + strings.TrimSpace(string(b))
	if c := do("POST", "/v1/volumes/dev/snapshots", "", "text/plain", "", auth, snap); c != 415 {
		t.Errorf("text/plain POST with the token: HTTP %d, want 415", c)
	}
	if c := do("POST", "/v1/volumes/dev/snapshots", "", "application/json", "http://evil.example", auth, snap); c != 403 {
		t.Errorf("foreign Origin with the token: HTTP %d, want 403", c)
	}
	if c := do("POST", "/v1/volumes/dev/snapshots", "evil.example:7862", "application/json", "", auth, snap); c != 421 {
		t.Errorf("rebinding Host with the token: HTTP %d, want 421", c)
	}
	if c := do("GET", "/v1/volumes/dev/snapshots", "", "", "", "", ""); c != 401 {
		t.Errorf("GET snapshots without a token: HTTP %d, want 401", c)
	}
	if c := do("GET", "/v1/health", "", "", "", "", ""); c != 200 {
		t.Errorf("health without a token: HTTP %d, want 200", c)
	}
	req, _ := http.NewRequest("GET", base+"/v1/volumes/dev/snapshots", nil)
	req.Header.Set("Authorization", auth)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var snaps []json.RawMessage
	json.NewDecoder(resp.Body).Decode(&snaps)
	resp.Body.Close()
	if len(snaps) != 0 {
		t.Fatalf("refused requests created %d snapshots", len(snaps))
	}
	if c := do("POST", "/v1/volumes/dev/snapshots", "localhost:1", "application/json", "", auth, snap); c != 201 {
		t.Errorf("authorised POST: HTTP %d, want 201", c)
	}
}

// TestDevHTTPServerTimeouts: idle and slow connections are bounded.
func TestDevHTTPServerTimeouts(t *testing.T) {
	hs := newHTTPServer(http.NotFoundHandler(), nil)
	if hs.ReadHeaderTimeout <= 0 || hs.ReadTimeout <= 0 || hs.IdleTimeout <= 0 || hs.MaxHeaderBytes <= 0 || hs.IdleTimeout > 5*time.Minute {
		t.Fatalf("unbounded server: %+v", hs)
	}
}

// TestDevVolumeSetInitiators: volume set --initiators on -dev is stored
// in the data directory, shown by volume status, validated, and kept
// across a restart.
func TestDevVolumeSetInitiators(t *testing.T) {
	dir := t.TempDir()
	patch := func(addr, body string) (int, string) {
		t.Helper()
		tok, _ := os.ReadFile(filepath.Join(dir, "api-token"))
		req, _ := http.NewRequest("PATCH", "http://"+addr+"/v1/volumes/dev", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	func() {
		addr := startDevInProcess(t, dir)
		if c, b := patch(addr, `{"initiators":["iqn.2008-11.org.linux-kvm:a"]}`); c != 200 || !strings.Contains(b, `"iqn.2008-11.org.linux-kvm:a"`) {
			t.Fatalf("PATCH: HTTP %d %s", c, b)
		}
		if c, _ := patch(addr, `{"initiators":["`+strings.Repeat("x", 300)+`"]}`); c != 400 {
			t.Errorf("bad initiator name: HTTP %d, want 400", c)
		}
	}()
	b, err := os.ReadFile(filepath.Join(dir, devStateFile))
	if err != nil || !strings.Contains(string(b), "iqn.2008-11.org.linux-kvm:a") {
		t.Fatalf("dev state %q, %v", b, err)
	}
	got, err := loadDevState(dir)
	if err != nil || len(got) != 1 || got[0] != "iqn.2008-11.org.linux-kvm:a" {
		t.Fatalf("loadDevState: %v %v", got, err)
	}
}
