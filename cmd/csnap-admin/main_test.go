package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/csnap/csnap/api"
)

// admin runs the CLI against a handler and returns exit code and output.
func admin(t *testing.T, h http.Handler, argv ...string) (int, string, string) {
	t.Helper()
	ts := httptest.NewServer(h)
	defer ts.Close()
	var out, errb bytes.Buffer
	env := func(k string) string {
		if k == "CSNAP_HTTP_ADDR" {
			return strings.TrimPrefix(ts.URL, "http://")
		}
		return ""
	}
	code := run(context.Background(), argv, env, &out, &errb, false)
	return code, out.String(), errb.String()
}

// recorder answers every request with a canned reply and remembers it.
type recorder struct {
	method, path, body string
	status             int
	reply              string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.method, r.path = req.Method, req.URL.Path
	var b bytes.Buffer
	b.ReadFrom(req.Body)
	r.body = b.String()
	w.WriteHeader(r.status)
	fmt.Fprint(w, r.reply)
}

func TestCommands(t *testing.T) {
	for _, tc := range []struct {
		argv       []string
		reply      string
		method     string
		path       string
		bodyHas    string
		outHas     string
		wantStatus int
	}{
		{[]string{"snapshot", "create", "dev", "s1", "--priority", "5", "--writable"}, `{"name":"s1","id":7,"target":"iqn.2026-11.io.csnap:dev:s1"}`,
			"POST", "/v1/volumes/dev/snapshots", `"priority":5`, "created (id 7)", 201},
		{[]string{"snapshot", "create", "--writable=false", "dev", "s2"}, `{"name":"s2","id":8}`, "POST", "/v1/volumes/dev/snapshots", `"name":"s2"`, "s2", 201},
		{[]string{"snapshot", "delete", "dev", "s1"}, `{}`, "DELETE", "/v1/volumes/dev/snapshots/s1", "", "deleted", 200},
		{[]string{"snapshot", "list", "dev"}, `[{"name":"s1","id":7,"unique_bytes":65536,"shared_bytes":1048576,"dropped":true}]`, "GET", "/v1/volumes/dev/snapshots", "", "s1 (dropped)", 200},
		{[]string{"volume", "list"}, `[{"name":"dev","size":1073741824,"chunk_size":65536}]`, "GET", "/v1/volumes", "", "1GiB", 200},
		{[]string{"volume", "create", "v2", "--origin", "/o", "--store=/s", "--chunk-size", "16KiB", "--size", "2GiB"}, `{"name":"v2","size":2147483648,"chunk_size":16384}`,
			"POST", "/v1/volumes", `"chunk_size":16384`, "volume v2 created", 201},
		{[]string{"volume", "status", "dev"}, `{"name":"dev","size":1073741824,"chunk_size":65536,"location_cache":{"hits":41,"misses":3,"entries":512,"bytes":2176}}`,
			"GET", "/v1/volumes/dev", "", "41 hits, 3 misses, 512 chunks", 200},
		{[]string{"server", "dev"}, `{"node":"n1","address":"127.0.0.1:7000","term":42}`, "GET", "/v1/volumes/dev/server", "", "42", 200},
		{[]string{"clients", "dev"}, `[{"id":"c1","node":"n2","state":"awaited","locks":3}]`, "GET", "/v1/volumes/dev/clients", "", "awaited", 200},
		{[]string{"check", "dev"}, `{"volume":"dev","clean":true,"checked_blocks":12}`, "POST", "/v1/volumes/dev/check", "", "clean", 200},
		{[]string{"volume", "create", "v3", "--origin", "/o", "--store", "/s", "--force", "--initiators", "iqn.2008-11.org.linux-kvm:a, iqn.1994-05.com.redhat:b"}, `{"name":"v3"}`,
			"POST", "/v1/volumes", `"force":true,"initiators":["iqn.2008-11.org.linux-kvm:a","iqn.1994-05.com.redhat:b"]`, "volume v3 created", 201},
		{[]string{"volume", "set", "dev", "--initiators", "iqn.2008-11.org.linux-kvm:a"}, `{"name":"dev","initiators":["iqn.2008-11.org.linux-kvm:a"]}`,
			"PATCH", "/v1/volumes/dev", `{"initiators":["iqn.2008-11.org.linux-kvm:a"]}`, "initiators iqn.2008-11.org.linux-kvm:a", 200},
		{[]string{"volume", "set", "dev", "--initiators", ""}, `{"name":"dev"}`,
			"PATCH", "/v1/volumes/dev", `{"initiators":[]}`, "any initiator", 200},
	} {
		r := &recorder{status: tc.wantStatus, reply: tc.reply}
		code, out, errs := admin(t, r, tc.argv...)
		if code != 0 {
			t.Errorf("%v: exit %d, stderr %q", tc.argv, code, errs)
			continue
		}
		if r.method != tc.method || r.path != tc.path || !strings.Contains(r.body, tc.bodyHas) {
			t.Errorf("%v: sent %s %s %s", tc.argv, r.method, r.path, r.body)
		}
		if !strings.Contains(out, tc.outHas) {
			t.Errorf("%v: output %q lacks %q", tc.argv, out, tc.outHas)
		}
	}
}

func TestJSONOutput(t *testing.T) {
	r := &recorder{status: 200, reply: `[{"name":"s1","id":7}]`}
	code, out, _ := admin(t, r, "snapshot", "list", "dev", "--json")
	var ss []api.Snapshot
	if code != 0 || json.Unmarshal([]byte(out), &ss) != nil || len(ss) != 1 || ss[0].ID != 7 {
		t.Fatalf("exit %d, output %q", code, out)
	}
}

func TestErrorsAndExitCodes(t *testing.T) {
	r := &recorder{status: 404, reply: `{"error":"volume nope: not found"}`}
	code, _, errs := admin(t, r, "volume", "status", "nope")
	if code != 1 || errs != "csnap-admin: volume nope: volume nope: not found\n" {
		t.Errorf("operation failure: exit %d, stderr %q", code, errs)
	}
	r = &recorder{status: 200, reply: `{"volume":"dev","clean":false,"problems":["block 7: bad checksum","chunk 9 used twice"]}`}
	code, out, errs := admin(t, r, "check", "dev")
	if code != 1 || !strings.Contains(out, "chunk 9 used twice") || strings.Count(errs, "\n") != 1 {
		t.Errorf("check with problems: exit %d, out %q, err %q", code, out, errs)
	}
	for _, argv := range [][]string{
		{},
		{"bogus"},
		{"snapshot"},
		{"snapshot", "create", "dev"},
		{"snapshot", "create", "dev", "s1", "--priority"},
		{"snapshot", "create", "dev", "s1", "--priority", "high"},
		{"snapshot", "create", "dev", "Bad"},
		{"snapshot", "list", "dev", "--colour"},
		{"volume", "create", "v", "--origin", "/o"},
		{"volume", "create", "v", "--origin", "/o", "--store", "/s", "--chunk-size", "3000"},
		{"-addr"},
	} {
		code, _, errs := admin(t, &recorder{status: 200, reply: "{}"}, argv...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", argv, code, errs)
		}
		if len(argv) > 0 && strings.Count(errs, "\n") != 1 {
			t.Errorf("%v: error is not one line: %q", argv, errs)
		}
	}
}

func TestUnreachable(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"-addr", "127.0.0.1:1", "volume", "list"}, func(string) string { return "" }, &out, &errb, false)
	if code != 1 || !strings.Contains(errb.String(), "cannot reach csnapd at 127.0.0.1:1") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "64KiB": 65536, "64K": 65536, "1GiB": 1 << 30, "2T": 2 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "x", "-1", "0", "1.5G", "99999999999T"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

// slow answers after a delay, like a long check or delete.
type slow struct {
	d     time.Duration
	reply string
}

func (s slow) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	time.Sleep(s.d)
	w.WriteHeader(200)
	fmt.Fprint(w, s.reply)
}

// TestProgressOnTerminal: long operations show an elapsed-time line on a
// terminal (and clear it when done); not on a pipe, not with --json.
func TestProgressOnTerminal(t *testing.T) {
	ts := httptest.NewServer(slow{700 * time.Millisecond, `{"volume":"dev","clean":true,"checked_blocks":3}`})
	defer ts.Close()
	env := func(k string) string {
		if k == "CSNAP_HTTP_ADDR" {
			return strings.TrimPrefix(ts.URL, "http://")
		}
		return ""
	}
	for _, tc := range []struct {
		terminal bool
		argv     []string
		want     bool
	}{
		{true, []string{"check", "dev"}, true},
		{false, []string{"check", "dev"}, false},
		{true, []string{"check", "dev", "--json"}, false},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), tc.argv, env, &out, &errb, tc.terminal); code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.argv, code, errb.String())
		}
		got := strings.Contains(errb.String(), "checking the store of dev (")
		if got != tc.want {
			t.Errorf("terminal=%v %v: progress shown=%v, want %v (stderr %q)", tc.terminal, tc.argv, got, tc.want, errb.String())
		}
		if got && !strings.HasSuffix(errb.String(), "\r\033[K") {
			t.Errorf("progress line not cleared: %q", errb.String())
		}
	}
}

// TestInitiatorsValidated: bad names never leave csnap-admin.
func TestInitiatorsValidated(t *testing.T) {
	for _, argv := range [][]string{
		{"volume", "set", "dev", "--initiators", "not-an-iqn"},
		{"volume", "set", "dev"},
		{"volume", "create", "v", "--origin", "/o", "--store", "/s", "--initiators", "iqn.2008-11.org.x:" + strings.Repeat("a", 223)},
	} {
		r := &recorder{status: 200, reply: "{}"}
		if code, _, _ := admin(t, r, argv...); code != 2 || r.method != "" {
			t.Errorf("%v: exit %d, sent %s", argv, code, r.method)
		}
	}
}

// TestToken: $CSNAP_HTTP_TOKEN, else -token-file, else ./csnap-dev/api-token
// for a node on loopback only.
func TestToken(t *testing.T) {
	var got string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Get("Authorization")
		fmt.Fprint(w, "[]")
	}))
	defer ts.Close()
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.MkdirAll("csnap-dev", 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile("csnap-dev/api-token", []byte("dev-token-0123456789\n"), 0o600)
	os.WriteFile("other", []byte("file-token-0123456789\n"), 0o600)
	addr := strings.TrimPrefix(ts.URL, "http://")
	for _, tc := range []struct {
		env  map[string]string
		argv []string
		want string
	}{
		{nil, []string{"-addr", addr}, "Bearer dev-token-0123456789"},
		{map[string]string{"CSNAP_HTTP_TOKEN": "env-token"}, []string{"-addr", addr}, "Bearer env-token"},
		{nil, []string{"-addr", addr, "-token-file", "other"}, "Bearer file-token-0123456789"},
		{map[string]string{"CSNAP_HTTP_TOKEN_FILE": "other"}, []string{"--addr=" + addr}, "Bearer file-token-0123456789"},
		{nil, []string{"-addr", "localhost:" + strings.Split(addr, ":")[1]}, "Bearer dev-token-0123456789"},
	} {
		got = ""
		var out, errb bytes.Buffer
		env := func(k string) string { return tc.env[k] }
		if code := run(context.Background(), append(tc.argv, "volume", "list"), env, &out, &errb, false); code != 0 {
			t.Errorf("%v: exit %d: %s", tc.argv, code, errb.String())
		}
		if got != tc.want {
			t.Errorf("%v %v: sent %q, want %q", tc.env, tc.argv, got, tc.want)
		}
	}
	// The -dev token is never sent to another host.
	if tok, _ := findToken("192.0.2.1:7862", "", func(string) string { return "" }); tok != "" {
		t.Errorf("-dev token offered to a remote node")
	}
	if tok, _ := findToken("https://127.0.0.1:7862", "", func(string) string { return "" }); tok != "dev-token-0123456789" {
		t.Errorf("https loopback: token %q", tok)
	}
}
